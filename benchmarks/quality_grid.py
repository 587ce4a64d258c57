"""Retrieval quality over a grid of synthetic data difficulties, through the CLI, with baselines and ceilings.

    python benchmarks/quality_grid.py --quick            # 2 cells x 1 seed, about 15 min on the 2-core reference VM
    python benchmarks/quality_grid.py --jobs 2 --threads 1   # the full grid: 8 cells x 3 seeds, about 1.6 h
    python benchmarks/quality_grid.py --smoke            # 2 tiny cells, 1 seed, 2 epochs: checks the plumbing
    python benchmarks/quality_grid.py --config C --set train.epochs=40 --set model.d=192
    python benchmarks/quality_grid.py --quick --table    # print the table of the last results, run nothing

Every cell is a synthetic dataset (``stvh data synth``) whose knobs differ from the demo's setting one at a
time or together (:data:`CELLS`). For every cell and seed the script runs what a user types:

    stvh data synth --out D --seed S <knobs>
    stvh extract --config C --data D --out F --seed S           # once per cell and seed, shared by every model
    stvh train --config C --data D --features F --out R seed=S model.name=M <--set overrides>
    stvh eval --run R --json

for M = mstvh (the config's model, with its own recipe), stvh (plus ``loss.layer_weights=null
model.shared_bits=0 loss.filter=0``: one code, one activity head, Eq. 9) and mstvh_bd (the transformer baseline of Table 5). In the same run it computes, in-process (:mod:`stvh.eval.baselines`):

* the ceiling that the cell's label noise allows: codes of the true activity, scored against the written
  labels (activity mAP@10 and accuracy);
* ``pca_sign``: mean-pooled RoI features of the cache F, K-bit PCA sign codes (activity and visual mAP@10);
* ``trajectory``: per-person box-track statistics pooled per court half (mean / max / min), logistic
  regression, codes of the predicted class (activity mAP@10 and accuracy).

Figures per model: activity mAP@10 of the deepest code, visual (same match) mAP@10 of the shallowest, the
same for the codes derived from the deepest by the filter matrix F (Eq. 16-17; every depth below the
deepest), and ``mca``. The goals of issue 10 are checked per cell on the means over seeds (:func:`goals`).

Resumable: each (cell, seed, model) writes its result file under ``--work`` (shared by the full grid and
``--quick``, whose units are a subset); a file that exists is not run again, and a killed ``stvh train`` is continued with ``--resume``, so a kill loses at most the run in
progress. The results of another config, other ``--set`` overrides or other training code (``src/stvh``
models, train, losses, eval) go to other files. Results: ``--out`` (default
``benchmarks/results/quality_grid[_quick].json``, rewritten after every run) and a markdown table, printed
and, with ``--readme``, written between the markers of its mode in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import shlex
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from stvh.data.atomic import write_text_atomic  # noqa: E402

DEFAULT_CONFIG = REPO / "configs" / "synthetic.yaml"
MODELS = ("mstvh", "stvh", "mstvh_bd")
# The demo's setting (src/stvh/configs/synthetic.yaml's generator knobs) at the grid's data size: 6 matches of
# 40 clips (the demo has 120 a match; the data size sets the run time, see benchmarks/README.md).
BASE = {"players_per_side": 6, "size": "180x320", "jitter": 1.0, "pan": 4.0, "occlusion": 0.05, "missing": 0.05,
        "label_noise": 0.0, "matches": 6, "clips_per_match": 40}
# One knob at a time, then all of them together (hard, with 10 matches).
CELLS = {
    "demo": {},
    "players4": {"players_per_side": 4},
    "small": {"size": "128x224"},
    "jitter4": {"jitter": 4.0},
    "pan16": {"pan": 16.0},
    "occluded": {"occlusion": 0.15, "missing": 0.15},
    "noisy": {"label_noise": 0.03},
    "hard": {"players_per_side": 4, "size": "128x224", "jitter": 4.0, "pan": 16.0, "occlusion": 0.15,
             "missing": 0.15, "label_noise": 0.03, "matches": 10},
}
SMOKE = {"matches": 2, "clips_per_match": 16}
CELLS["smoke-demo"] = dict(SMOKE)
CELLS["smoke-hard"] = {**CELLS["hard"], **SMOKE}
MODES = {  # cells, seeds, extra overrides (before --set)
    "full": ([c for c in CELLS if not c.startswith("smoke")], [0, 1, 2], []),
    "quick": (["demo", "hard"], [0], []),
    "smoke": (["smoke-demo", "smoke-hard"], [0], ["train.epochs=2"]),
}
SHORT = {"players_per_side": "P", "jitter": "jit ", "pan": "pan ", "occlusion": "occ ", "missing": "miss ",
         "label_noise": "noise "}
TRAIN_CODE = ("src/stvh/models", "src/stvh/train", "src/stvh/losses.py", "src/stvh/eval/evaluate.py",
              "src/stvh/eval/metrics.py", "src/stvh/data")
K_TOP = 10
# STVH has one code and one activity head (Eq. 9): the per-depth weights of Eq. 14, the bits shared between
# depths and the trained filter matrix of the config are M-STVH options that do not apply to it.
MODEL_OVERRIDES = {"stvh": ["loss.layer_weights=null", "model.shared_bits=0", "loss.filter=0"]}
_print_lock, _save_lock = threading.Lock(), threading.Lock()


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_const", dest="mode", const="quick", help="2 cells (demo, hard) x 1 seed")
    mode.add_argument("--smoke", action="store_const", dest="mode", const="smoke",
                      help="2 tiny cells x 1 seed, 2 epochs (plumbing check)")
    ap.set_defaults(mode="full")
    ap.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="YAML config (default: %(default)s)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="config override passed to stvh train (repeat the flag)")
    ap.add_argument("--cells", nargs="+", choices=sorted(CELLS), help="only these cells (default: the mode's)")
    ap.add_argument("--seeds", nargs="+", type=int, help="seeds (default: the mode's)")
    ap.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS), help="default: %(default)s")
    ap.add_argument("--jobs", type=int, default=1, help="(cell, seed) units run at the same time (default 1)")
    ap.add_argument("--threads", type=int, help="OMP/torch threads per job (default: $OMP_NUM_THREADS, "
                                                "else cores / jobs)")
    ap.add_argument("--work", type=Path, help="folder for data, caches, runs and per-run results "
                                               "(default: runs/quality_grid[_MODE])")
    ap.add_argument("--out", type=Path, help="results JSON (default: benchmarks/results/quality_grid[_MODE].json)")
    ap.add_argument("--table", action="store_true", help="print the table of --out and exit (runs nothing)")
    ap.add_argument("--readme", action="store_true", help="also write the table into benchmarks/README.md")
    args = ap.parse_args(argv)
    suffix = "" if args.mode == "full" else f"_{args.mode}"
    args.work = args.work or REPO / "runs" / ("quality_grid_smoke" if args.mode == "smoke" else "quality_grid")
    default_dir = REPO / ("benchmarks/results" if args.mode != "smoke" else f"runs/quality_grid{suffix}")
    args.out = args.out or default_dir / f"quality_grid{suffix}.json"
    cells, seeds, extra = MODES[args.mode]
    args.cells, args.seeds = args.cells or cells, args.seeds if args.seeds is not None else seeds
    args.overrides = extra + args.overrides
    if args.jobs < 1:
        ap.error("--jobs must be >= 1")
    return args


# ----------------------------------------------------------------------------- small helpers

def knobs_of(cell: str) -> dict:
    return {**BASE, **CELLS[cell]}


def knob_text(cell: str) -> str:
    """The knobs that differ from the demo's setting, e.g. ``P4 128x224 jit 4 pan 16``."""
    k, parts = knobs_of(cell), []
    for name, value in k.items():
        if name in ("matches", "clips_per_match"):
            continue
        if value != BASE[name]:
            parts.append(str(value) if name == "size" else f"{SHORT[name]}{value:g}")
    if (k["matches"], k["clips_per_match"]) != (BASE["matches"], BASE["clips_per_match"]):
        parts.append(f"{k['matches']}x{k['clips_per_match']} clips")
    return " ".join(parts) or "demo setting"


def digest(*parts) -> str:
    h = hashlib.sha1()
    for p in parts:
        h.update(p if isinstance(p, bytes) else json.dumps(p, sort_keys=True, default=str).encode())
    return h.hexdigest()[:10]


def code_digest() -> str:
    """Hash of the source that decides a trained model's figures (a change reruns the models)."""
    files = []
    for rel in TRAIN_CODE:
        p = REPO / rel
        files += sorted(p.rglob("*.py")) if p.is_dir() else [p]
    return digest(*[f.relative_to(REPO).as_posix().encode() + f.read_bytes() for f in files if f.is_file()])


def git_state() -> dict:
    """HEAD and whether the training code differs from it (the figures then belong to uncommitted code)."""
    def git(*a):
        p = subprocess.run(["git", *a], capture_output=True, text=True, cwd=REPO)
        return p.stdout.strip() if p.returncode == 0 else None
    changed = git("status", "--porcelain", "--", *TRAIN_CODE)
    return {"head": git("rev-parse", "HEAD"), "training_code_uncommitted": bool(changed) if changed is not None
            else None, "code_digest": code_digest()}


def stvh_command() -> list[str]:
    exe = Path(sys.executable).with_name("stvh")
    if not exe.is_file():
        fail(f"{exe} not found; install the project first (make install)")
    return [str(exe)]


def fail(message: str) -> None:
    """Bad input: one line on stderr, exit status 2 (as the stvh CLI)."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def say(line: str) -> None:
    with _print_lock:
        print(line, flush=True)


def clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class StepFailed(Exception):
    pass


def run_cli(args: list[str], log: Path, env: dict) -> str:
    """Run ``stvh ARGS``; stdout is returned, stdout + stderr also go to ``log``. Raises StepFailed."""
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = stvh_command() + args
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    log.write_text(f"$ {shlex.join(cmd)}\n--- stdout\n{p.stdout}\n--- stderr\n{p.stderr}", encoding="utf-8")
    if p.returncode != 0:
        tail = (p.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise StepFailed(f"`stvh {args[0]}` exited with {p.returncode}: {tail} (log: {log})")
    return p.stdout


def last_json(text: str) -> dict:
    """The JSON object a stvh command printed (it is the last thing on stdout)."""
    start = text.find("{")
    return json.loads(text[start:]) if start >= 0 else {}


# ----------------------------------------------------------------------------- one (cell, seed) unit

class Context:
    """What every unit shares: the merged config, the override lists, the hashes and the child env."""

    def __init__(self, args):
        from stvh.train.config import ConfigError, load_config

        try:
            self.cfg = load_config(args.config, args.overrides)
        except ConfigError as exc:
            fail(f"{str(exc).splitlines()[0]}")
        self.args = args
        self.bits, self.backbone = int(self.cfg["model"]["bits"]), self.cfg["model"]["backbone"]
        config_text = args.config.read_bytes()
        self.extract_flags = extract_flags(args.overrides)
        self.feature_tag = digest(config_text, self.extract_flags)
        self.train_tag = digest(config_text, args.overrides, code_digest())
        threads = args.threads or int(os.environ.get("OMP_NUM_THREADS") or 0) or max(1, (os.cpu_count() or 1)
                                                                                      // args.jobs)
        self.env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
                    "PYTHONUNBUFFERED": "1"}
        self.git = git_state()
        self.t0 = time.time()
        self.total = len(args.cells) * len(args.seeds) * (len(args.models) + 1)
        self.done = 0


def extract_flags(overrides: list[str]) -> list[str]:
    """``stvh extract`` flags for the overrides that change the feature cache (it reads the rest from C)."""
    flags = []
    for item in overrides:
        key, _, value = item.partition("=")
        value = value.strip()
        if key == "extract.pca":
            flags += ["--pca", value] if value not in ("null", "~", "") else []
        elif key == "extract.frame_size":
            h, w = json.loads(value)
            flags += ["--frame-size", f"{h}x{w}"]
        elif key == "model.backbone":
            flags += ["--backbone", value]
        elif key == "model.weights":
            flags += ["--weights", value]
        elif key.startswith("extract.") or key == "data.format":
            fail(f"--set {item}: stvh extract has no flag for {key}; put it in a --config file")
    return flags


def synth_args(cell: str, seed: int, out: Path) -> list[str]:
    a = ["data", "synth", "--out", str(out), "--seed", str(seed), "--no-progress"]
    for name, value in knobs_of(cell).items():
        a += [f"--{name.replace('_', '-')}", str(value)]
    return a


def dataset_complete(data: Path) -> bool:
    try:
        return bool(json.loads((data / "dataset.json").read_text(encoding="utf-8")).get("complete"))
    except (OSError, ValueError):
        return False


def model_summary(m: dict, model: str) -> dict:
    """The benchmark's figures from a metrics.json: deepest activity, shallowest visual, derived, mca."""
    keys = [k for k in m if k.startswith(f"map@{K_TOP}/activity/K") and k.count("/") == 3]
    bits = int(keys[0].split("/")[2][1:])
    depth = max(int(k.split("/")[3][5:]) for k in keys)
    at = lambda focus, t, suffix="": m.get(f"map@{K_TOP}/{focus}/K{bits}/depth{t}{suffix}")  # noqa: E731
    per = {f"{focus}{suffix.replace('/', '_')}": [at(focus, t, suffix) for t in range(1, depth + 1)]
           for focus in ("activity", "visual") for suffix in ("", "/derived")}
    ratios = [d / s for focus in ("activity", "visual")
              for s, d in zip(per[focus], per[f"{focus}_derived"]) if d is not None and s]
    return {"model": model, "bits": bits, "depth": depth, "activity": at("activity", depth),
            "visual": at("visual", 1), "activity_derived": at("activity", depth - 1, "/derived") if depth > 1 else None,
            "visual_derived": at("visual", 1, "/derived"), "derived_ratio_min": min(ratios) if ratios else None,
            "mca": m["mca"], "mpca": m["mpca"], "per_depth": per}


def baselines(ctx: Context, data: Path, features: Path | None, seed: int) -> dict:
    """Ceiling, PCA sign codes of mean-pooled RoI features, trajectory statistics + logistic regression."""
    from stvh.data.feature_cache import FeatureCache
    from stvh.data.formats import read_dataset
    from stvh.eval.baselines import (class_codes, fit_predict_logistic, focus_map, mean_pooled_roi, oracle_ceiling,
                                     pca_sign_codes, synth_true_activities, trajectory_features)
    from stvh.eval.evaluate import visual_protocol

    ds = read_dataset(data)
    clips = ds.clips
    ids = [c.id for c in clips]
    y = np.array([c.activity for c in clips])                      # (M,) written labels
    groups = np.array([c.group for c in clips])
    splits = np.array([c.split for c in clips])
    test, n_cls = splits == "test", len(ds.activities)
    labelled = y >= 0
    out: dict = {}
    true = synth_true_activities(data, ids)
    out["ceiling"] = oracle_ceiling(true if true is not None else y, y, test, ctx.bits, n_cls, K_TOP)
    x = np.stack([trajectory_features(c.boxes, c.mask, c.image_size) for c in clips])  # (M, F)
    fit = ~test & labelled
    pred = fit_predict_logistic(x[fit], y[fit], x, seed=seed)
    codes = class_codes(n_cls, ctx.bits)[pred]
    out["trajectory"] = {"activity": focus_map(codes, y, fit, test & labelled, K_TOP),
                         "mca": float((pred[test & labelled] == y[test & labelled]).mean()), "features": x.shape[1]}
    if features is not None:
        cache = FeatureCache(features)
        have = np.array([cid in cache for cid in ids])
        roi = cache.load([cid for cid, h in zip(ids, have) if h])
        feats = np.zeros((len(clips), int(cache.meta["channels"])))
        for i, c in enumerate(clips):
            if have[i]:
                feats[i] = mean_pooled_roi(roi[c.id], c.mask)
        vdb, vq, _ = visual_protocol(ids, groups, splits, seed)
        vdb, vq = vdb & have, vq & have
        codes = pca_sign_codes(feats[vdb], feats, ctx.bits)
        out["pca_sign"] = {"activity": focus_map(codes, y, ~test & labelled & have, test & labelled & have, K_TOP),
                           "visual": focus_map(codes, groups, vdb, vq, K_TOP), "bits": int(codes.shape[1])}
    out["true_labels"] = true is not None
    return out


def unit_paths(ctx: Context, cell: str, seed: int) -> dict:
    d = ctx.args.work / f"{cell}-{digest(knobs_of(cell))}" / f"s{seed}"  # new knobs: new data, new results
    p = {"dir": d, "data": d / "data", "features": d / f"features-{ctx.feature_tag}", "logs": d / "logs",
         "baselines": d / f"baselines-{ctx.feature_tag}-K{ctx.bits}.json"}
    for model in ctx.args.models:
        p[model] = d / f"{model}-{ctx.train_tag}.json"
        p[f"run:{model}"] = d / f"run-{model}-{ctx.train_tag}"
    return p


def progress(ctx: Context, cell: str, seed: int, what: str, text: str) -> None:
    with _print_lock:
        ctx.done += 1
        print(f"[{clock(time.time() - ctx.t0)}] ({ctx.done}/{ctx.total}) {cell}/s{seed} {what:<9} {text}", flush=True)


def run_unit(ctx: Context, cell: str, seed: int) -> None:
    """Data, features, baselines and every model of one (cell, seed); each result file written atomically."""
    p = unit_paths(ctx, cell, seed)
    todo = [m for m in ["baselines", *ctx.args.models] if not p[m].is_file()]
    for m in ["baselines", *ctx.args.models]:
        if m not in todo:
            progress(ctx, cell, seed, m, "done earlier (result file exists)")
    if not todo:
        return
    env, times = ctx.env, {}
    if not dataset_complete(p["data"]):
        t = time.time()
        run_cli(synth_args(cell, seed, p["data"]), p["logs"] / "synth.log", env)
        times["synth_s"] = round(time.time() - t, 1)
    features = None
    if ctx.backbone != "none":
        features = p["features"]
        t = time.time()
        run_cli(["extract", "--config", str(ctx.args.config), "--data", str(p["data"]), "--out", str(features),
                 "--seed", str(seed), "--no-progress", *ctx.extract_flags], p["logs"] / "extract.log", env)
        times["extract_s"] = round(time.time() - t, 1)
    if "baselines" in todo:
        t = time.time()
        r = {**baselines(ctx, p["data"], features, seed), **times, "seconds": round(time.time() - t, 1)}
        write_text_atomic(p["baselines"], json.dumps(r, indent=1))
        pca = r.get("pca_sign", {})
        progress(ctx, cell, seed, "baselines",
                 f"{r['seconds']:.0f}s (synth {times.get('synth_s', 0):.0f}s, extract {times.get('extract_s', 0):.0f}s)"
                 f" | ceiling act {r['ceiling'][f'map@{K_TOP}']:.3f} mca {r['ceiling']['mca']:.3f}"
                 f" | traj act {r['trajectory']['activity']:.3f} mca {r['trajectory']['mca']:.3f}"
                 f" | pca act {pca.get('activity', float('nan')):.3f} vis {pca.get('visual', float('nan')):.3f}")
    for model in ctx.args.models:
        if model in todo:
            run_model(ctx, p, cell, seed, model, features)


def run_model(ctx: Context, p: dict, cell: str, seed: int, model: str, features: Path | None) -> None:
    run, logs = p[f"run:{model}"], p["logs"]
    t = time.time()
    if (run / "run.json").is_file() and (run / "config.yaml").is_file():   # killed earlier: continue
        train_args = ["train", "--resume", str(run), "--no-progress"]
    else:
        train_args = ["train", "--config", str(ctx.args.config), "--data", str(p["data"]), "--out", str(run),
                      "--overwrite", "--no-progress", *(["--features", str(features)] if features else []),
                      f"seed={seed}", f"model.name={model}", *ctx.args.overrides, *MODEL_OVERRIDES.get(model, [])]
    trained = last_json(run_cli(train_args, logs / f"train-{model}.log", ctx.env))
    train_s = time.time() - t
    (run / "codes.npz").unlink(missing_ok=True)  # encode the checkpoint this training selected
    t = time.time()
    metrics = last_json(run_cli(["eval", "--run", str(run), "--json"], logs / f"eval-{model}.log", ctx.env))
    r = {**model_summary(metrics, model), "best_epoch": trained.get("best_epoch"),
         "train_s": round(train_s, 1), "eval_s": round(time.time() - t, 1)}
    write_text_atomic(p[model], json.dumps(r, indent=1))
    derived = (f" (F: act {r['activity_derived']:.3f} vis {r['visual_derived']:.3f} min ratio "
               f"{r['derived_ratio_min']:.2f})" if r["visual_derived"] is not None else "")
    progress(ctx, cell, seed, model, f"train {r['train_s']:.0f}s eval {r['eval_s']:.0f}s | act {r['activity']:.3f} "
                                     f"vis {r['visual']:.3f} mca {r['mca']:.3f}{derived}")


# ----------------------------------------------------------------------------- aggregation and table

def flat(unit: dict) -> dict:
    """Per-seed numbers under flat keys (``mstvh/activity``, ``ceiling/map``, ...)."""
    f = {}
    b = unit.get("baselines") or {}
    if b:
        f["ceiling/map"], f["ceiling/mca"] = b["ceiling"][f"map@{K_TOP}"], b["ceiling"]["mca"]
        f["trajectory/activity"], f["trajectory/mca"] = b["trajectory"]["activity"], b["trajectory"]["mca"]
        if "pca_sign" in b:
            f["pca_sign/activity"], f["pca_sign/visual"] = b["pca_sign"]["activity"], b["pca_sign"]["visual"]
    for model in MODELS:
        for key in ("activity", "visual", "mca", "activity_derived", "visual_derived", "derived_ratio_min"):
            v = (unit.get(model) or {}).get(key)
            if v is not None:
                f[f"{model}/{key}"] = v
    return f


def goals(mean: dict) -> dict:
    """Issue 10's goals (items 2-3) on a cell's means; None where a figure is missing."""
    def need(*keys):
        return all(k in mean for k in keys)
    g = {}
    if need("mstvh/activity", "ceiling/map"):
        g["activity>=0.90*ceiling"] = mean["mstvh/activity"] >= 0.90 * mean["ceiling/map"]
    if "mstvh/visual" in mean:
        g["visual>=0.95"] = mean["mstvh/visual"] >= 0.95
    if need("mstvh/mca", "ceiling/mca"):
        g["mca>=0.90*ceiling"] = mean["mstvh/mca"] >= 0.90 * mean["ceiling/mca"]
    rivals = {"activity": ["pca_sign", "trajectory", "stvh", "mstvh_bd"], "visual": ["pca_sign", "stvh", "mstvh_bd"]}
    for focus, names in rivals.items():
        best = [mean[f"{n}/{focus}"] for n in names if f"{n}/{focus}" in mean]
        if f"mstvh/{focus}" in mean and best:
            g[f"{focus} lead>=0.03"] = mean[f"mstvh/{focus}"] >= max(best) + 0.03
    if "mstvh/derived_ratio_min" in mean:
        g["derived>=0.95*stored"] = mean["mstvh/derived_ratio_min"] >= 0.95
    return g


def collect(ctx: Context) -> dict:
    cells = {}
    for cell in ctx.args.cells:
        runs = {}
        for seed in ctx.args.seeds:
            p = unit_paths(ctx, cell, seed)
            unit = {m: json.loads(p[m].read_text(encoding="utf-8")) for m in ["baselines", *ctx.args.models]
                    if p[m].is_file()}
            if unit:
                runs[str(seed)] = unit
        values: dict[str, list] = {}
        for unit in runs.values():
            for k, v in flat(unit).items():
                values.setdefault(k, []).append(v)
        mean = {k: float(np.mean(v)) for k, v in values.items()}
        cells[cell] = {"knobs": knobs_of(cell), "knob_text": knob_text(cell), "seeds": sorted(runs, key=int),
                       "mean": mean, "std": {k: float(np.std(v)) for k, v in values.items()},
                       "n": {k: len(v) for k, v in values.items()}, "goals": goals(mean), "runs": runs}
    return cells


def table(results: dict) -> str:
    """Markdown table of the cell means (± std over seeds where there are several)."""
    def cell_value(c, key, std=True):
        if key not in c["mean"]:
            return "–"
        s = f"{c['mean'][key]:.3f}"
        return s + (f" ± {c['std'][key]:.3f}" if std and c["n"][key] > 1 else "")

    head = ["cell", "knobs (vs demo)", "seeds", "ceiling act / mca", "M-STVH act", "M-STVH vis", "M-STVH act (F)",
            "M-STVH vis (F)", "M-STVH mca", "PCA-sign act / vis", "traj-LR act / mca", "STVH act / vis",
            "BD act / vis", "goals met"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, c in results["cells"].items():
        g = c["goals"]
        met = f"{sum(g.values())}/{len(g)}" + (" (miss: " + ", ".join(k for k, v in g.items() if not v) + ")"
                                                if not all(g.values()) else "")
        pair = lambda a, b: f"{cell_value(c, a, False)} / {cell_value(c, b, False)}"  # noqa: E731
        lines.append("| " + " | ".join([
            name, c["knob_text"], str(len(c["seeds"])), pair("ceiling/map", "ceiling/mca"),
            cell_value(c, "mstvh/activity"), cell_value(c, "mstvh/visual"), cell_value(c, "mstvh/activity_derived"),
            cell_value(c, "mstvh/visual_derived"), cell_value(c, "mstvh/mca"),
            pair("pca_sign/activity", "pca_sign/visual"), pair("trajectory/activity", "trajectory/mca"),
            pair("stvh/activity", "stvh/visual"), pair("mstvh_bd/activity", "mstvh_bd/visual"), met]) + " |")
    return "\n".join(lines)


def write_readme(results: dict, mode: str) -> None:
    path = REPO / "benchmarks" / "README.md"
    begin, end = f"<!-- quality_grid:{mode}:begin -->", f"<!-- quality_grid:{mode}:end -->"
    text = path.read_text(encoding="utf-8")
    if begin not in text or end not in text:
        say(f"note: {path} has no {begin} ... {end} markers; the table was not written there")
        return
    head, rest = text.split(begin, 1)
    write_text_atomic(path, head + begin + "\n" + table(results) + "\n" + end + rest.split(end, 1)[1])
    say(f"table written to {path}")


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and of the stvh commands it has run so far."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return round(own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime, 1)


def save(ctx: Context, finished: bool) -> dict:
    args = ctx.args
    results = {
        "benchmark": "quality_grid", "mode": args.mode, "finished": finished,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": str(args.config), "overrides": args.overrides, "models": args.models, "seeds": args.seeds,
        "top_k": K_TOP, "bits": ctx.bits, "train_tag": ctx.train_tag, "feature_tag": ctx.feature_tag,
        "git": ctx.git,
        "elapsed_s": round(time.time() - ctx.t0, 1), "cpu_s": cpu_seconds(), "load_avg": list(os.getloadavg()),
        "threads": ctx.env["OMP_NUM_THREADS"], "jobs": args.jobs,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "cells": collect(ctx),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with _save_lock:  # two jobs never write the file at once
        write_text_atomic(args.out, json.dumps(results, indent=1))
    return results


def _interrupt(*_):
    raise KeyboardInterrupt


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.table:
        if not args.out.is_file():
            fail(f"{args.out} does not exist; run the grid first")
        results = json.loads(args.out.read_text(encoding="utf-8"))
        print(table(results))
        if args.readme:
            write_readme(results, args.mode)
        return 0
    ctx = Context(args)
    signal.signal(signal.SIGTERM, _interrupt)  # a kill ends the stvh command in progress too (subprocess.run)
    say(f"quality grid ({args.mode}): {len(args.cells)} cells x {len(args.seeds)} seeds, models "
        f"{' '.join(args.models)}, config {args.config}{' ' + ' '.join(args.overrides) if args.overrides else ''}; "
        f"{ctx.env['OMP_NUM_THREADS']} thread(s) x {args.jobs} job(s); work {args.work}")
    failures = []

    def unit(cs):
        try:
            run_unit(ctx, *cs)
        except StepFailed as exc:
            failures.append(f"{cs[0]}/s{cs[1]}: {exc}")
            say(f"FAILED {cs[0]}/s{cs[1]}: {exc}")
        save(ctx, finished=False)

    units = [(cell, seed) for seed in args.seeds for cell in args.cells]  # every cell once before a 2nd seed
    try:
        if args.jobs == 1:
            for u in units:
                unit(u)
        else:
            with ThreadPoolExecutor(max_workers=args.jobs) as pool:
                list(pool.map(unit, units))
    except KeyboardInterrupt:
        say("interrupted; finished runs are kept, run the same command again to continue")
        save(ctx, finished=False)
        return 130
    results = save(ctx, finished=not failures)
    say(f"\n{table(results)}\n\nresults written to {args.out} ({clock(time.time() - ctx.t0)}, "
        f"{results['cpu_s'] / 60:.1f} CPU-minutes)")
    if args.readme:
        write_readme(results, args.mode)
    for f in failures:
        say(f"FAILED {f}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
