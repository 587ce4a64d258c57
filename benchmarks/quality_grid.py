"""Retrieval quality over a grid of synthetic data difficulties, through the CLI, with baselines and ceilings.

    python benchmarks/quality_grid.py --quick            # 2 cells x 1 seed, about 15 min on the 2-core reference VM
    python benchmarks/quality_grid.py --jobs 2 --threads 1   # the full grid: 8 cells x 3 seeds, about 2 h
    python benchmarks/quality_grid.py --estimate --axis matches   # the time it would take, run nothing
    python benchmarks/quality_grid.py --smoke            # 2 tiny cells, 1 seed, 2 epochs: checks the plumbing
    python benchmarks/quality_grid.py --config C --set train.epochs=40 --set model.d=192
    python benchmarks/quality_grid.py --quick --table    # print the table of the last results, run nothing
    python benchmarks/quality_grid.py --axis matches     # 6 / 20 / 55 matches, demo and hard knobs (issue 19)
    python benchmarks/quality_grid.py --axis curve       # 10 / 20 / 40 / 80 training clips a class (issue 16)

Every cell is a synthetic dataset (``stvh data synth``) whose knobs differ from the demo's setting one at a
time or together (:data:`CELLS`). For every cell and seed the script runs what a user types:

    stvh data synth --out D --seed S <knobs>
    stvh extract --config C --data D --out F --seed S           # once per cell and seed, shared by every model
    stvh train --config C --data D --features F --out R seed=S model.name=M <--set overrides>
    stvh eval --run R --json

for M = mstvh (the config's model, with its own recipe), stvh (plus ``loss.layer_weights=null
model.shared_bits=0 loss.filter=0 model.shared_bits_middle=0 loss.visual=0``: one code, one activity head, Eq. 9) and mstvh_bd (the transformer baseline of Table 5). In the same run it computes, in-process (:mod:`stvh.eval.baselines`):

* the ceiling that the cell's label noise allows: codes of the true activity, scored against the written
  labels (activity mAP@10 and accuracy);
* ``pca_sign``: mean-pooled RoI features of the cache F, K-bit PCA sign codes (activity and visual mAP@10);
* ``trajectory``: per-person box-track statistics pooled per court half (mean / max / min), logistic
  regression, codes of the predicted class (activity mAP@10 and accuracy).

Figures per model: activity mAP@10 of the deepest code, visual (same match) mAP@10 of the shallowest, the
same for the codes derived from the deepest by the filter matrix F (Eq. 16-17; every depth below the
deepest), ``mca``, and the wrong-side share of activity errors (:func:`wrong_side_share`). The goals of
issue 10 are checked per cell on the means over seeds (:func:`goals`).

Axes (``--axis``): ``grid`` (the cells above), ``matches`` (:data:`MATCH_COUNTS` matches with the demo's and
the hard cell's other knobs; M-STVH, PCA-sign and BD; visual mAP@10 at every depth; issue 19's goals,
:func:`matches_goals`) and ``curve`` (one dataset a seed, trained on at most 10 / 20 / 40 / 80 clips a class
with ``data.train_per_class``; validation, test and database fixed; :func:`curve_goals`). Data and features
are made first (one job per dataset and seed), then every (cell, seed, model) is trained and evaluated; the
time this takes is estimated at the start from the stage times of a results JSON (:func:`estimate`).

Resumable: each (cell, seed, model) writes its result file under ``--work`` (shared by the full grid and
``--quick``, whose units are a subset); a file that exists is not run again, and a killed ``stvh train`` is continued with ``--resume``, so a kill loses at most the run in
progress. The results of another config, other ``--set`` overrides or other training code (``src/stvh``
models, train, losses, eval) go to other files. Results: ``--out`` (default
``benchmarks/results/quality_grid[_AXIS][_quick].json``, rewritten after every run) and a markdown table,
printed and, with ``--readme``, written between the markers of its axis and mode in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
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
HARD_KNOBS = {k: v for k, v in CELLS["hard"].items() if k != "matches"}
# Matches axis: matches -> clips a match. Within 20-40 clips a match the three cannot have one clip count (6
# matches make at most 240 clips, 55 at least 1100); the clips a match fall as the matches grow instead.
MATCH_COUNTS = {6: 40, 20: 30, 55: 20}
for _kind, _knobs in (("demo", {}), ("hard", HARD_KNOBS)):
    for _m, _c in MATCH_COUNTS.items():
        CELLS[f"m{_m}-{_kind}"] = {**_knobs, "matches": _m, "clips_per_match": _c}
CELLS["smoke-m3-demo"] = {"matches": 3, "clips_per_match": 12}
CELLS["smoke-m8-hard"] = {**HARD_KNOBS, "matches": 8, "clips_per_match": 8}
# Learning curve: one dataset a seed (6 matches x 208 clips: 83-92 train clips a class at seeds 0-2 after the
# test and validation parts, see train_clips_per_class), trained on at most N clips a class.
CURVE_SIZES = (10, 20, 40, 80)
CURVE_KNOBS = {"matches": 6, "clips_per_match": 208}
CELL_TRAIN: dict[str, list[str]] = {}   # cell -> stvh train overrides of the cell
CELL_DATA: dict[str, str] = {}          # cell -> name of the dataset it shares with other cells (default: itself)
for _n in CURVE_SIZES:
    CELLS[f"curve-n{_n}"], CELL_TRAIN[f"curve-n{_n}"], CELL_DATA[f"curve-n{_n}"] = (
        dict(CURVE_KNOBS), [f"data.train_per_class={_n}"], "curve")
CELL_DATA["m6-demo"] = "demo"  # the grid's demo cell (same knobs): the two axes share its data and its results
for _n in (3, 6):
    CELLS[f"smoke-curve-n{_n}"], CELL_TRAIN[f"smoke-curve-n{_n}"], CELL_DATA[f"smoke-curve-n{_n}"] = (
        {"matches": 2, "clips_per_match": 48}, [f"data.train_per_class={_n}"], "smoke-curve")
_GRID = ["demo", "players4", "small", "jitter4", "pan16", "occluded", "noisy", "hard"]
_MATCHES = [f"m{m}-{k}" for k in ("demo", "hard") for m in MATCH_COUNTS]
_CURVE = [f"curve-n{n}" for n in CURVE_SIZES]
MODES = {  # (axis, mode) -> cells, seeds, extra overrides (before --set)
    ("grid", "full"): (_GRID, [0, 1, 2], []),
    ("grid", "quick"): (["demo", "hard"], [0], []),
    ("grid", "smoke"): (["smoke-demo", "smoke-hard"], [0], ["train.epochs=2"]),
    ("matches", "full"): (_MATCHES, [0, 1, 2], []),
    ("matches", "quick"): ([c for c in _MATCHES if c.endswith("demo")], [0], []),
    ("matches", "smoke"): (["smoke-m3-demo", "smoke-m8-hard"], [0], ["train.epochs=2"]),
    ("curve", "full"): (_CURVE, [0, 1, 2], []),
    ("curve", "quick"): (["curve-n10", "curve-n80"], [0], []),
    ("curve", "smoke"): (["smoke-curve-n3", "smoke-curve-n6"], [0], ["train.epochs=2"]),
}
AXIS_MODELS = {"grid": list(MODELS), "matches": ["mstvh", "mstvh_bd"], "curve": list(MODELS)}
TIME_GOALS = {("grid", "full"): 2 * 3600, ("grid", "quick"): 15 * 60}  # issue 16 item 3
REFERENCE = REPO / "benchmarks" / "results" / "quality_grid.json"      # stage times for the estimate
REFERENCE_EPOCHS = 25  # train.epochs of the reference runs when their JSON does not say
COMMAND_S = 10.0       # start-up of one stvh command (imports, model set-up), added to the estimate per command
SHORT = {"players_per_side": "P", "jitter": "jit ", "pan": "pan ", "occlusion": "occ ", "missing": "miss ",
         "label_noise": "noise "}
TRAIN_CODE = ("src/stvh/models", "src/stvh/train", "src/stvh/losses.py", "src/stvh/eval/evaluate.py",
              "src/stvh/eval/metrics.py", "src/stvh/data")
K_TOP = 10
# STVH has one code and one activity head (Eq. 9): the per-depth weights of Eq. 14, the bits shared between
# depths and the trained filter matrix of the config are M-STVH options that do not apply to it.
MODEL_OVERRIDES = {"stvh": ["loss.layer_weights=null", "model.shared_bits=0", "loss.filter=0",
                            "model.shared_bits_middle=0", "loss.visual=0"]}
_print_lock, _save_lock = threading.Lock(), threading.Lock()


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_const", dest="mode", const="quick",
                      help="grid: 2 cells (demo, hard) x 1 seed; matches: the demo knobs' cells, seed 0; "
                           "curve: 10 and 80 clips a class, seed 0")
    mode.add_argument("--smoke", action="store_const", dest="mode", const="smoke",
                      help="2 tiny cells of the axis x 1 seed, 2 epochs (plumbing check)")
    ap.set_defaults(mode="full")
    ap.add_argument("--axis", choices=("grid", "matches", "curve"), default="grid",
                    help="grid: the 8 difficulty cells; matches: 6 / 20 / 55 matches; curve: 10-80 training "
                         "clips a class (default: %(default)s)")
    ap.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="YAML config (default: %(default)s)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="config override passed to stvh train (repeat the flag)")
    ap.add_argument("--cells", nargs="+", choices=sorted(CELLS), help="only these cells (default: the mode's)")
    ap.add_argument("--seeds", nargs="+", type=int, help="seeds (default: the mode's)")
    ap.add_argument("--models", nargs="+", choices=MODELS,
                    help="default: mstvh stvh mstvh_bd (matches axis: mstvh mstvh_bd)")
    ap.add_argument("--jobs", type=int, default=1, help="runs at the same time (default 1)")
    ap.add_argument("--threads", type=int, help="OMP/torch threads per job (default: $OMP_NUM_THREADS, "
                                                "else cores / jobs)")
    ap.add_argument("--work", type=Path, help="folder for data, caches, runs and per-run results "
                                               "(default: runs/quality_grid, --smoke: runs/quality_grid_smoke)")
    ap.add_argument("--out", type=Path, help="results JSON (default: benchmarks/results/quality_grid[_AXIS][_MODE]"
                                              ".json; --smoke: under runs/)")
    ap.add_argument("--reference", type=Path, default=REFERENCE,
                    help="results JSON whose stage times give the time estimate (default: %(default)s)")
    ap.add_argument("--table", action="store_true", help="print the table of --out and exit (runs nothing)")
    ap.add_argument("--estimate", action="store_true", help="print the time estimate and exit (runs nothing)")
    ap.add_argument("--readme", action="store_true", help="also write the table into benchmarks/README.md")
    args = ap.parse_args(argv)
    suffix = ("" if args.axis == "grid" else f"_{args.axis}") + ("" if args.mode == "full" else f"_{args.mode}")
    args.work = args.work or REPO / "runs" / ("quality_grid_smoke" if args.mode == "smoke" else "quality_grid")
    default_dir = REPO / ("benchmarks/results" if args.mode != "smoke" else "runs/quality_grid_smoke")
    args.out = args.out or default_dir / f"quality_grid{suffix}.json"
    cells, seeds, extra = MODES[(args.axis, args.mode)]
    args.cells, args.seeds = args.cells or cells, args.seeds if args.seeds is not None else seeds
    args.models = args.models or AXIS_MODELS[args.axis]
    args.overrides = extra + args.overrides
    if args.jobs < 1:
        ap.error("--jobs must be >= 1")
    if args.threads is not None and args.threads < 1:
        ap.error("--threads must be >= 1")
    for item in args.overrides:
        if item.partition("=")[0].strip() == "data.train_per_class" and args.axis == "curve":
            ap.error(f"--set {item}: the curve axis sets data.train_per_class per cell; leave it out")
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
    n = train_per_class(cell)
    if n is not None:
        parts.append(f"<= {n} train clips a class")
    return " ".join(parts) or "demo setting"


def train_per_class(cell: str) -> int | None:
    """The cell's ``data.train_per_class`` (learning-curve cells), else None."""
    for item in CELL_TRAIN.get(cell, []):
        key, _, value = item.partition("=")
        if key == "data.train_per_class":
            return int(value)
    return None


def cell_clips(cell: str) -> dict:
    """Clip counts of a cell: ``{"clips", "test", "train"}`` (train: clips trained on, about; test: queries)."""
    k = knobs_of(cell)
    clips = k["matches"] * k["clips_per_match"]
    test = k["matches"] * round(0.3 * k["clips_per_match"])
    train = round((clips - test) * 0.85)                          # data.val_fraction 0.15 of the rest
    n = train_per_class(cell)
    return {"clips": clips, "test": test, "train": train if n is None else min(train, 8 * n)}


def train_clips_per_class(cell: str, seed: int, val_fraction: float = 0.15) -> dict[int, int]:
    """Activity -> clips in the part that ``stvh train`` trains on (train split less validation), computed
    from the generator and the trainer's own partition without writing data (true activities)."""
    from types import SimpleNamespace

    from stvh.data.synth import FIRST_KEY, KEY_STEP, match_activities, match_test_mask
    from stvh.train.tensors import partition

    k = knobs_of(cell)
    clips = []
    for m in range(k["matches"]):
        acts = match_activities(seed, m, k["clips_per_match"])
        test = match_test_mask(seed, m, acts, 0.3)
        clips += [SimpleNamespace(id=f"{m}/{FIRST_KEY + KEY_STEP * i}", group=str(m), activity=int(a),
                                  split="test" if t else "train") for i, (a, t) in enumerate(zip(acts, test))]
    parts = partition(clips, val_fraction, seed)
    return {a: sum(c.activity == a for c in parts["train"]) for a in range(8)}


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
    """What every run shares: the merged config, the override lists, the hashes and the child env."""

    def __init__(self, args):
        from stvh.train.config import ConfigError, load_config

        try:
            self.cfg = load_config(args.config, args.overrides)
        except ConfigError as exc:
            fail(f"{str(exc).splitlines()[0]}")
        self.args = args
        self.bits, self.backbone = int(self.cfg["model"]["bits"]), self.cfg["model"]["backbone"]
        self.epochs = int(self.cfg["train"]["epochs"])
        self.config_text = args.config.read_bytes()
        self.extract_flags = extract_flags(args.overrides)
        # what the features are made from (not the whole config file: a new training key keeps the caches)
        self.feature_tag = digest({"backbone": self.cfg["model"]["backbone"], "extract": self.cfg["extract"],
                                   "data": self.cfg["data"]}, self.extract_flags)
        self.code = code_digest()
        self.train_tag = digest(self.config_text, args.overrides, self.code)
        threads = args.threads or int(os.environ.get("OMP_NUM_THREADS") or 0) or max(1, (os.cpu_count() or 1)
                                                                                      // args.jobs)
        self.env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
                    "PYTHONUNBUFFERED": "1"}
        self.git = git_state()
        self.t0 = time.time()
        self.estimate_s: float | None = None
        self.total = len(data_units(args.cells, args.seeds)) + len(args.cells) * len(args.seeds) * len(args.models)
        self.done = 0

    def epochs_for(self, train_clips: int, videos: int = 1) -> int:
        """Epochs a training on ``train_clips`` clips of ``videos`` videos runs at most: ``train.epochs``, or
        with ``train.steps`` / ``train.steps_per_video`` about that many optimizer steps
        (:func:`stvh.train.schedule.step_budget`, :class:`stvh.train.schedule.Schedule`); ``train.patience``
        may stop it earlier."""
        from stvh.train.schedule import Schedule, step_budget

        t = self.cfg["train"]
        steps = step_budget(t.get("steps"), t.get("steps_per_video"), videos)
        if not steps:
            return self.epochs
        batches = max(1, math.ceil(train_clips / int(t["batch_size"])))
        return Schedule(t["lr"], t["lr_steps"], self.epochs, batches, steps).epochs  # at most 2 x train.epochs

    def cell_tag(self, cell: str) -> str:
        """Tag of a cell's trained models: the config, the overrides (the cell's too) and the training code."""
        extra = CELL_TRAIN.get(cell, [])
        return self.train_tag if not extra else digest(self.config_text, self.args.overrides + extra, self.code)


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


def baselines(ctx: Context, data: Path, features: Path | None, seed: int, per_class: int | None = None) -> dict:
    """Ceiling, PCA sign codes of mean-pooled RoI features, trajectory statistics + logistic regression.

    ``per_class`` (learning-curve cells): the logistic regression is fitted on the clips ``stvh train`` trains
    on with ``data.train_per_class`` (train split less validation, at most that many a class); else on the
    whole train split. Wrong-side shares: the regression's predictions and PCA-sign's top-1 neighbour."""
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
    if per_class is not None:
        from stvh.train.tensors import limit_per_class, partition

        kept, _ = limit_per_class(partition(clips, float(ctx.cfg["data"]["val_fraction"]), seed)["train"],
                                  per_class, seed)
        fit = np.isin(ids, [c.id for c in kept]) & labelled
    pred = fit_predict_logistic(x[fit], y[fit], x, seed=seed)
    codes = class_codes(n_cls, ctx.bits)[pred]
    q = test & labelled
    out["trajectory"] = {"activity": focus_map(codes, y, ~test & labelled, q, K_TOP),
                         "mca": float((pred[q] == y[q]).mean()), "features": x.shape[1], "fit_clips": int(fit.sum()),
                         "wrong_side": wrong_side_share(y[q], pred[q], ds.activities)}
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
        adb, aq = ~test & labelled & have, test & labelled & have
        out["pca_sign"] = {"activity": focus_map(codes, y, adb, aq, K_TOP),
                           "visual": focus_map(codes, groups, vdb, vq, K_TOP), "bits": int(codes.shape[1]),
                           "wrong_side_top1": wrong_side_share(y[aq], top1_labels(codes, y, adb, aq), ds.activities)}
    out["true_labels"] = true is not None
    return out


def data_name(cell: str) -> str:
    return CELL_DATA.get(cell, cell)


def data_units(cells: list[str], seeds: list[int]) -> list[tuple[str, int, list[str]]]:
    """(dataset name, seed, its cells): every dataset is made and extracted once, for all the cells it serves."""
    groups: dict[str, list[str]] = {}
    for cell in cells:
        groups.setdefault(data_name(cell), []).append(cell)
    return [(name, seed, group) for seed in seeds for name, group in groups.items()]


def unit_paths(ctx: Context, cell: str, seed: int) -> dict:
    name = data_name(cell)
    d = ctx.args.work / f"{name}-{digest(knobs_of(cell))}" / f"s{seed}"  # new knobs: new data, new results
    n = train_per_class(cell)
    tag = ctx.cell_tag(cell)
    p = {"dir": d, "data": d / "data", "features": d / f"features-{ctx.feature_tag}", "logs": d / "logs",
         "extracted": d / f"features-{ctx.feature_tag}.done",
         "baselines": d / f"baselines-{ctx.feature_tag}-K{ctx.bits}{'' if n is None else f'-n{n}'}.json"}
    for model in ctx.args.models:
        p[model] = d / f"{model}-{tag}.json"
        p[f"run:{model}"] = d / f"run-{model}-{tag}"
    return p


def progress(ctx: Context, cell: str, seed: int, what: str, text: str) -> None:
    with _print_lock:
        ctx.done += 1
        print(f"[{clock(time.time() - ctx.t0)}] ({ctx.done}/{ctx.total}) {cell}/s{seed} {what:<9} {text}", flush=True)


def prepare(ctx: Context, name: str, seed: int, cells: list[str]) -> None:
    """Data and features of one dataset and seed, then the baselines of each cell it serves."""
    p = unit_paths(ctx, cells[0], seed)
    todo = [c for c in cells if not unit_paths(ctx, c, seed)["baselines"].is_file()
            or any(not unit_paths(ctx, c, seed)[m].is_file() for m in ctx.args.models)]
    if not todo:
        progress(ctx, name, seed, "data", "done earlier (every result file exists)")
        return
    env, times = ctx.env, {}
    if not dataset_complete(p["data"]):
        p["extracted"].unlink(missing_ok=True)  # new data: extract again
        t = time.time()
        run_cli(synth_args(cells[0], seed, p["data"]), p["logs"] / "synth.log", env)
        times["synth_s"] = round(time.time() - t, 1)
    features = None
    if ctx.backbone != "none":
        features = p["features"]
        if not p["extracted"].is_file():
            t = time.time()
            run_cli(["extract", "--config", str(ctx.args.config), "--data", str(p["data"]), "--out", str(features),
                     "--seed", str(seed), "--no-progress", *ctx.extract_flags], p["logs"] / "extract.log", env)
            times["extract_s"] = round(time.time() - t, 1)
            write_text_atomic(p["extracted"], json.dumps(times) + "\n")
        elif not times:  # made by an earlier, interrupted run: its stage times
            try:
                times = json.loads(p["extracted"].read_text(encoding="utf-8"))
            except (OSError, ValueError):
                times = {}
    text = []
    for cell in todo:
        pc = unit_paths(ctx, cell, seed)
        if pc["baselines"].is_file():
            continue
        t = time.time()
        r = {**baselines(ctx, pc["data"], features, seed, train_per_class(cell)),
             **(times if cell == todo[0] else {}), "seconds": round(time.time() - t, 1)}  # stage times once
        write_text_atomic(pc["baselines"], json.dumps(r, indent=1))
        pca = r.get("pca_sign", {})
        text.append(f"{cell}: ceiling act {r['ceiling'][f'map@{K_TOP}']:.3f} mca {r['ceiling']['mca']:.3f}"
                    f" | traj act {r['trajectory']['activity']:.3f} mca {r['trajectory']['mca']:.3f}"
                    f" | pca act {pca.get('activity', float('nan')):.3f} vis {pca.get('visual', float('nan')):.3f}")
    progress(ctx, name, seed, "data", f"synth {times.get('synth_s', 0):.0f}s, extract {times.get('extract_s', 0):.0f}s"
                                      + "".join(f"\n    {line}" for line in text))


def run_model(ctx: Context, cell: str, seed: int, model: str) -> None:
    p = unit_paths(ctx, cell, seed)
    if p[model].is_file():
        progress(ctx, cell, seed, model, "done earlier (result file exists)")
        return
    features = p["features"] if ctx.backbone != "none" else None
    run, logs = p[f"run:{model}"], p["logs"]
    t = time.time()
    if (run / "run.json").is_file() and (run / "config.yaml").is_file():   # killed earlier: continue
        train_args = ["train", "--resume", str(run), "--no-progress"]
    else:
        train_args = ["train", "--config", str(ctx.args.config), "--data", str(p["data"]), "--out", str(run),
                      "--overwrite", "--no-progress", *(["--features", str(features)] if features else []),
                      f"seed={seed}", f"model.name={model}", *ctx.args.overrides, *CELL_TRAIN.get(cell, []),
                      *MODEL_OVERRIDES.get(model, [])]
    trained = last_json(run_cli(train_args, logs / f"train-{model}.log", ctx.env))
    train_s = time.time() - t
    (run / "codes.npz").unlink(missing_ok=True)  # encode the checkpoint this training selected
    t = time.time()
    metrics = last_json(run_cli(["eval", "--run", str(run), "--json"], logs / f"eval-{model}.log", ctx.env))
    r = {**model_summary(metrics, model), **run_wrong_side(run), "best_epoch": trained.get("best_epoch"),
         "epochs": ctx.epochs, "epochs_run": trained.get("epochs_run"),
         "train_s": round(train_s, 1), "eval_s": round(time.time() - t, 1)}
    write_text_atomic(p[model], json.dumps(r, indent=1))
    derived = (f" (F: act {r['activity_derived']:.3f} vis {r['visual_derived']:.3f} min ratio "
               f"{r['derived_ratio_min']:.2f})" if r["visual_derived"] is not None else "")
    side = r.get("wrong_side")
    progress(ctx, cell, seed, model, f"train {r['train_s']:.0f}s eval {r['eval_s']:.0f}s | act {r['activity']:.3f} "
                                     f"vis {r['visual']:.3f} mca {r['mca']:.3f}{derived}"
                                     + (f" | wrong side {side:.2f}" if side is not None else ""))


# ----------------------------------------------------------------------------- wrong-side share

def wrong_side_share(true, pred, names) -> float | None:
    """Of the wrong predictions (``true >= 0``, ``pred != true``), the share that is the right activity on the
    other court side (``l_x`` <-> ``r_x``); None when there is no error or no name has a side."""
    true, pred = np.asarray(true), np.asarray(pred)
    keep = (true >= 0) & (pred != true)
    if not keep.any():
        return None
    swap = {n: ("r" if n[0] == "l" else "l") + n[1:] for n in names if n[:2] in ("l_", "r_")}
    if not swap:
        return None
    index = {n: i for i, n in enumerate(names)}
    mirror = np.array([index.get(swap.get(n, ""), -1) for n in names])                   # (C,) other side
    return float((pred[keep] == mirror[true[keep]]).mean())


def confusion_wrong_side(confusion, names) -> float | None:
    """:func:`wrong_side_share` from a confusion matrix ``C[true, pred]``."""
    c = np.asarray(confusion, np.int64)
    t, p = np.nonzero(c)
    counts = c[t, p]
    return wrong_side_share(np.repeat(t, counts), np.repeat(p, counts), names)


def top1_labels(codes: np.ndarray, labels: np.ndarray, database: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Label of each query's nearest database code (Hamming; ties: first in database order), ``(Q,)``."""
    from stvh.eval.metrics import hamming_ranking

    order, _ = hamming_ranking(codes[queries], codes[database])
    return np.asarray(labels)[database][order[:, 0]]


def run_wrong_side(run: Path) -> dict:
    """Wrong-side shares of a run: its deepest head's predicted activity (``eval_details.json``) and the top-1
    neighbour of its deepest code (``codes.npz``); missing files give no figure."""
    out: dict = {}
    try:
        details = json.loads((run / "eval_details.json").read_text(encoding="utf-8"))
        names = details.get("activities") or []
        out["wrong_side"] = confusion_wrong_side(details["confusion"][-1], names)
        from stvh.index.codes import CodeSet

        cs = CodeSet.load(run / "codes.npz")
        test, y = cs.split == "test", cs.activity
        db, q = ~test & (y >= 0), test & (y >= 0)
        out["wrong_side_top1"] = wrong_side_share(y[q], top1_labels(cs.signs(cs.depth), y, db, q), names)
    except (OSError, KeyError, IndexError, ValueError):
        pass
    return out


# ----------------------------------------------------------------------------- aggregation and table

def flat(unit: dict) -> dict:
    """Per-seed numbers under flat keys (``mstvh/activity``, ``ceiling/map``, ``mstvh/visual@2``, ...)."""
    f = {}
    b = unit.get("baselines") or {}
    if b:
        f["ceiling/map"], f["ceiling/mca"] = b["ceiling"][f"map@{K_TOP}"], b["ceiling"]["mca"]
        f["trajectory/activity"], f["trajectory/mca"] = b["trajectory"]["activity"], b["trajectory"]["mca"]
        if b["trajectory"].get("wrong_side") is not None:
            f["trajectory/wrong_side"] = b["trajectory"]["wrong_side"]
        if "pca_sign" in b:
            f["pca_sign/activity"], f["pca_sign/visual"] = b["pca_sign"]["activity"], b["pca_sign"]["visual"]
            if b["pca_sign"].get("wrong_side_top1") is not None:
                f["pca_sign/wrong_side_top1"] = b["pca_sign"]["wrong_side_top1"]
    for model in MODELS:
        r = unit.get(model) or {}
        for key in ("activity", "visual", "mca", "activity_derived", "visual_derived", "derived_ratio_min",
                    "wrong_side", "wrong_side_top1"):
            if r.get(key) is not None:
                f[f"{model}/{key}"] = r[key]
        per = r.get("per_depth") or {}
        for t, (v, d) in enumerate(zip(per.get("visual", []), per.get("visual_derived", [])), 1):
            if v is not None:
                f[f"{model}/visual@{t}"] = v
            if d is not None:
                f[f"{model}/visual_derived@{t}"] = d
                if v:
                    f[f"{model}/visual_ratio@{t}"] = d / v
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


def matches_goals(cell: str, mean: dict) -> dict:
    """Issue 19 item 2's goals on a matches-axis cell's means (M-STVH): shallowest visual >= 0.95 up to 20
    matches, >= 0.90 beyond; derived >= 0.95 x stored at every depth and focus; the middle depths' visual
    mAP@10 between the shallowest's and the deepest's."""
    g = {}
    floor = 0.95 if knobs_of(cell)["matches"] <= 20 else 0.90
    if "mstvh/visual" in mean:
        g[f"visual>={floor:.2f}"] = mean["mstvh/visual"] >= floor
    if "mstvh/derived_ratio_min" in mean:
        g["derived>=0.95*stored"] = mean["mstvh/derived_ratio_min"] >= 0.95
    depths = sorted(int(k.split("@")[1]) for k in mean if k.startswith("mstvh/visual@"))
    if len(depths) >= 3:
        lo, hi = sorted((mean[f"mstvh/visual@{depths[0]}"], mean[f"mstvh/visual@{depths[-1]}"]))
        g["middle between"] = all(lo - 1e-9 <= mean[f"mstvh/visual@{t}"] <= hi + 1e-9 for t in depths[1:-1])
    return g


def curve_goals(mean: dict) -> dict:
    """Issue 16 item 2's comparisons on a learning-curve cell's means: M-STVH >= BD + 0.02, >= STVH - 0.01."""
    g = {}
    if "mstvh/activity" in mean and "mstvh_bd/activity" in mean:
        g["act>=BD+0.02"] = mean["mstvh/activity"] >= mean["mstvh_bd/activity"] + 0.02
    if "mstvh/activity" in mean and "stvh/activity" in mean:
        g["act>=STVH-0.01"] = mean["mstvh/activity"] >= mean["stvh/activity"] - 0.01
    return g


def collect(ctx: Context) -> dict:
    cells = {}
    for cell in ctx.args.cells:
        runs = {}
        for seed in ctx.args.seeds:
            p = unit_paths(ctx, cell, seed)
            unit = {m: json.loads(p[m].read_text(encoding="utf-8")) for m in ["baselines", *ctx.args.models]
                    if p[m].is_file()}
            for m in ctx.args.models:  # result files written before the wrong-side figures: from the run folder
                if m in unit and "wrong_side" not in unit[m]:
                    unit[m].update(run_wrong_side(p[f"run:{m}"]))
            if unit:
                runs[str(seed)] = unit
        values: dict[str, list] = {}
        for unit in runs.values():
            for k, v in flat(unit).items():
                values.setdefault(k, []).append(v)
        mean = {k: float(np.mean(v)) for k, v in values.items()}
        g = {"grid": lambda: goals(mean), "matches": lambda: matches_goals(cell, mean),
             "curve": lambda: curve_goals(mean)}[ctx.args.axis]()
        cells[cell] = {"knobs": knobs_of(cell), "knob_text": knob_text(cell), "train": CELL_TRAIN.get(cell, []),
                       "clips": cell_clips(cell), "seeds": sorted(runs, key=int),
                       "mean": mean, "std": {k: float(np.std(v)) for k, v in values.items()},
                       "n": {k: len(v) for k, v in values.items()}, "goals": g, "runs": runs}
    return cells


def _value(c: dict, key: str, std: bool = True) -> str:
    if key not in c["mean"]:
        return "–"
    s = f"{c['mean'][key]:.3f}"
    return s + (f" ± {c['std'][key]:.3f}" if std and c["n"][key] > 1 else "")


def _pair(c: dict, a: str, b: str) -> str:
    return f"{_value(c, a, False)} / {_value(c, b, False)}"


def _met(g: dict) -> str:
    return f"{sum(g.values())}/{len(g)}" + (" (miss: " + ", ".join(k for k, v in g.items() if not v) + ")"
                                            if not all(g.values()) else "")


def _depths(c: dict, model: str, kind: str = "visual") -> str:
    """``0.990 / 0.500 / 0.800``: a model's mean visual mAP@10 (or derived, or derived/stored) per depth."""
    keys = sorted((k for k in c["mean"] if k.startswith(f"{model}/{kind}@")), key=lambda k: int(k.split("@")[1]))
    return " / ".join(f"{c['mean'][k]:.3f}" for k in keys) or "–"


def table(results: dict) -> str:
    """Markdown table of the cell means (± std over seeds where there are several), in the axis's layout."""
    axis = results.get("axis", "grid")
    if axis == "matches":
        head = ["cell", "knobs (vs demo)", "seeds", "clips (test)", "PCA-sign vis", "M-STVH act",
                "M-STVH vis by depth", "M-STVH vis (F) by depth", "vis derived / stored", "M-STVH wrong side",
                "BD act", "BD vis by depth", "BD wrong side", "goals met"]
        rows = [[name, c["knob_text"], str(len(c["seeds"])), f"{c['clips']['clips']} ({c['clips']['test']})",
                 _value(c, "pca_sign/visual", False), _value(c, "mstvh/activity"), _depths(c, "mstvh"),
                 _depths(c, "mstvh", "visual_derived"), _depths(c, "mstvh", "visual_ratio"),
                 _value(c, "mstvh/wrong_side", False), _value(c, "mstvh_bd/activity"), _depths(c, "mstvh_bd"),
                 _value(c, "mstvh_bd/wrong_side", False), _met(c["goals"])] for name, c in results["cells"].items()]
    elif axis == "curve":
        head = ["cell", "train clips a class", "seeds", "M-STVH act", "STVH act", "BD act", "traj-LR act",
                "M-STVH vis", "M-STVH mca", "wrong side M-STVH / STVH / BD / traj", "goals met"]
        rows = [[name, str(train_per_class(name) or "all"), str(len(c["seeds"])), _value(c, "mstvh/activity"),
                 _value(c, "stvh/activity"), _value(c, "mstvh_bd/activity"), _value(c, "trajectory/activity"),
                 _value(c, "mstvh/visual"), _value(c, "mstvh/mca"),
                 " / ".join(_value(c, f"{m}/wrong_side", False) for m in ("mstvh", "stvh", "mstvh_bd", "trajectory")),
                 _met(c["goals"])] for name, c in results["cells"].items()]
    else:
        head = ["cell", "knobs (vs demo)", "seeds", "ceiling act / mca", "M-STVH act", "M-STVH vis",
                "M-STVH act (F)", "M-STVH vis (F)", "M-STVH mca", "PCA-sign act / vis", "traj-LR act / mca",
                "STVH act / vis", "BD act / vis", "wrong side M-STVH / STVH / BD", "goals met"]
        rows = [[name, c["knob_text"], str(len(c["seeds"])), _pair(c, "ceiling/map", "ceiling/mca"),
                 _value(c, "mstvh/activity"), _value(c, "mstvh/visual"), _value(c, "mstvh/activity_derived"),
                 _value(c, "mstvh/visual_derived"), _value(c, "mstvh/mca"), _pair(c, "pca_sign/activity", "pca_sign/visual"),
                 _pair(c, "trajectory/activity", "trajectory/mca"), _pair(c, "stvh/activity", "stvh/visual"),
                 _pair(c, "mstvh_bd/activity", "mstvh_bd/visual"),
                 " / ".join(_value(c, f"{m}/wrong_side", False) for m in MODELS), _met(c["goals"])]
                for name, c in results["cells"].items()]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def readme_markers(axis: str, mode: str) -> tuple[str, str]:
    name = mode if axis == "grid" else f"{axis}:{mode}"
    return f"<!-- quality_grid:{name}:begin -->", f"<!-- quality_grid:{name}:end -->"


def write_readme(results: dict, axis: str, mode: str) -> None:
    path = REPO / "benchmarks" / "README.md"
    begin, end = readme_markers(axis, mode)
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
        "benchmark": "quality_grid", "axis": args.axis, "mode": args.mode, "finished": finished,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": str(args.config), "overrides": args.overrides, "models": args.models, "seeds": args.seeds,
        "top_k": K_TOP, "bits": ctx.bits, "epochs": ctx.epochs, "train_tag": ctx.train_tag,
        "feature_tag": ctx.feature_tag, "estimate_s": ctx.estimate_s,
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


# ----------------------------------------------------------------------------- time estimate

def makespan(durations: list[float], jobs: int) -> float:
    """Wall time of running ``durations`` in order on ``jobs`` workers, each taking the next job when free
    (as ``ThreadPoolExecutor.map`` does)."""
    free = [0.0] * max(1, jobs)
    for d in durations:
        i = int(np.argmin(free))
        free[i] += d
    return max(free)


def stage_rates(reference: dict) -> dict:
    """Seconds a clip of each stage in a results JSON: ``synth``, ``extract``, ``baselines``, ``eval`` per clip
    of the dataset, ``train:<model>`` per train clip and epoch, without :data:`COMMAND_S` a command; stages it
    lacks are left out."""
    sums: dict[str, list[float]] = {}

    def add(key, seconds, units, command=True):
        if seconds is not None and units:  # the start-up of a command is added back per command (estimate)
            acc = sums.setdefault(key, [0.0, 0.0])
            acc[0], acc[1] = acc[0] + max(0.0, float(seconds) - (COMMAND_S if command else 0.0)), acc[1] + float(units)

    for c in reference.get("cells", {}).values():
        k = {**BASE, **c.get("knobs", {})}
        clips = k["matches"] * k["clips_per_match"]
        train = (c.get("clips") or {}).get("train") or round((clips - k["matches"] * round(0.3 * k["clips_per_match"]))
                                                             * 0.85)
        for unit in c.get("runs", {}).values():
            b = unit.get("baselines") or {}
            add("synth", b.get("synth_s"), clips)
            add("extract", b.get("extract_s"), clips)
            add("baselines", b.get("seconds"), clips, command=False)
            for m in MODELS:
                r = unit.get(m) or {}
                epochs = r.get("epochs_run") or r.get("epochs") or reference.get("epochs") or REFERENCE_EPOCHS
                add(f"train:{m}", r.get("train_s"), train * epochs)
                add("eval", r.get("eval_s"), clips)
    return {k: s / u for k, (s, u) in sums.items() if u}


def estimate(ctx: Context, rates: dict, skip_done: bool = True) -> dict:
    """Seconds to run (``data``, ``models``, ``total``) on ``--jobs`` workers at the reference's per-job speed;
    ``skip_done`` leaves out what has a result file. Stages without a rate count 0 (``missing`` names them)."""
    args, missing = ctx.args, set()

    def rate(key):
        if key not in rates:
            missing.add(key)
        return rates.get(key, 0.0)

    prep, runs = [], []
    for name, seed, cells in data_units(args.cells, args.seeds):
        p = unit_paths(ctx, cells[0], seed)
        clips = cell_clips(cells[0])["clips"]
        todo = [c for c in cells if not skip_done or not unit_paths(ctx, c, seed)["baselines"].is_file()
                or any(not unit_paths(ctx, c, seed)[m].is_file() for m in args.models)]
        if not todo:
            continue
        d = 0.0 if skip_done and dataset_complete(p["data"]) else rate("synth") * clips + COMMAND_S
        d += (0.0 if ctx.backbone == "none" or (skip_done and p["extracted"].is_file())
              else rate("extract") * clips + COMMAND_S)
        prep.append(d + rate("baselines") * clips * len(todo))
    for seed in args.seeds:
        for cell in args.cells:
            p, n = unit_paths(ctx, cell, seed), cell_clips(cell)
            for m in args.models:
                if not (skip_done and p[m].is_file()):
                    runs.append(rate(f"train:{m}") * n["train"] * ctx.epochs_for(n["train"], knobs_of(cell)["matches"]) + rate("eval") * n["clips"]
                                + 2 * COMMAND_S)
    data_s, models_s = makespan(prep, args.jobs), makespan(runs, args.jobs)
    return {"data": data_s, "models": models_s, "total": data_s + models_s, "missing": sorted(missing)}


def say_estimate(ctx: Context) -> float | None:
    """Print the estimate (and the time goal of issue 16 item 3 for the grid); returns the seconds left."""
    args = ctx.args
    try:
        reference = json.loads(args.reference.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        say(f"estimate: none ({args.reference} is missing or unreadable)")
        return None
    rates = stage_rates(reference)
    left, scratch = estimate(ctx, rates), estimate(ctx, rates, skip_done=False)
    ref_epochs = reference.get("epochs") or REFERENCE_EPOCHS
    say(f"estimate: {clock(left['total'])} left to run (data {clock(left['data'])}, models {clock(left['models'])}); "
        f"{clock(scratch['total'])} from nothing; {args.jobs} job(s) at the per-job speed of {args.reference.name}'s "
        f"stage times ({reference.get('jobs', '?')} job(s) x {reference.get('threads', '?')} thread(s)), "
        f"training scaled by train clips and epochs ({ref_epochs} there, "
        + (f"{ctx.epochs} here" if not ctx.cfg["train"].get("steps") else
           f"train.steps={ctx.cfg['train']['steps']}"
           + (f", steps_per_video={ctx.cfg['train']['steps_per_video']}" if ctx.cfg["train"].get("steps_per_video")
              else "")
           + " here: " + ", ".join(f"{ctx.epochs_for(cell_clips(c)['train'], knobs_of(c)['matches'])} for {c}"
                                   for c in args.cells)) + ")"
        + ("; train.patience may stop runs earlier" if ctx.cfg["train"].get("patience") else "")
        + (f"; no stage time for {', '.join(left['missing'])}" if left["missing"] else ""))
    goal = TIME_GOALS.get((args.axis, args.mode))
    if goal and set(args.cells) == set(MODES[(args.axis, args.mode)][0]):
        over = scratch["total"] - goal
        say(f"time goal (issue 16 item 3): <= {clock(goal)} from nothing: "
            + ("met" if over <= 0 else f"over by {clock(over)}"))
    return round(left["total"], 1)


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
            write_readme(results, args.axis, args.mode)
        return 0
    ctx = Context(args)
    signal.signal(signal.SIGTERM, _interrupt)  # a kill ends the stvh command in progress too (subprocess.run)
    say(f"quality grid ({args.axis}, {args.mode}): {len(args.cells)} cells x {len(args.seeds)} seeds, models "
        f"{' '.join(args.models)}, config {args.config}{' ' + ' '.join(args.overrides) if args.overrides else ''}; "
        f"{ctx.env['OMP_NUM_THREADS']} thread(s) x {args.jobs} job(s); work {args.work}")
    ctx.estimate_s = say_estimate(ctx)
    if args.estimate:
        return 0
    failures, failed_data = [], set()

    def prep(unit):
        name, seed, cells = unit
        try:
            prepare(ctx, name, seed, cells)
        except (StepFailed, ImportError, OSError, ValueError, KeyError) as exc:  # baselines run in-process
            failed_data.add((name, seed))
            text = str(exc) if isinstance(exc, StepFailed) else f"baselines: {type(exc).__name__}: {exc}"
            failures.append(f"{name}/s{seed}: {text}")
            say(f"FAILED {name}/s{seed}: {text}")
        save(ctx, finished=False)

    def model_run(unit):
        cell, seed, model = unit
        if (data_name(cell), seed) in failed_data:
            return
        try:
            run_model(ctx, cell, seed, model)
        except StepFailed as exc:
            failures.append(f"{cell}/s{seed}/{model}: {exc}")
            say(f"FAILED {cell}/s{seed}/{model}: {exc}")
        save(ctx, finished=False)

    # data first (one job per dataset and seed), then every cell once before a 2nd seed
    runs = [(cell, seed, model) for seed in args.seeds for cell in args.cells for model in args.models]
    try:
        for fn, units in ((prep, data_units(args.cells, args.seeds)), (model_run, runs)):
            if args.jobs == 1:
                for u in units:
                    fn(u)
            else:
                with ThreadPoolExecutor(max_workers=args.jobs) as pool:
                    list(pool.map(fn, units))
    except KeyboardInterrupt:
        say("interrupted; finished runs are kept, run the same command again to continue")
        save(ctx, finished=False)
        return 130
    results = save(ctx, finished=not failures)
    say(f"\n{table(results)}\n\nresults written to {args.out} ({clock(time.time() - ctx.t0)}, "
        f"{results['cpu_s'] / 60:.1f} CPU-minutes)")
    if args.readme:
        write_readme(results, args.axis, args.mode)
    for f in failures:
        say(f"FAILED {f}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
