"""Quality on the REAL Volleyball sample: M-STVH / STVH (the shipped recipe) vs two baselines, over seeds.

    python benchmarks/volleyball_sample.py                      # M-STVH and STVH, seeds 0 1 2
    python benchmarks/volleyball_sample.py --models mstvh --seeds 0 --epochs 5 --out /tmp/vs.json
    python benchmarks/volleyball_sample.py --tracks on          # use the tracking files where present

Data: ``<repo>/../shared/data/volleyball-sample`` (``--data``): matches 7 and 10
(official train split, all their annotated clips; the trainer carves its
validation part out of them) are the database, match 4 (official test split)
gives the queries; matches 39 and 41 are left out (2 clips each, no tracking).

Recipe: the shipped default (``src/stvh/configs/default.yaml``, what ``stvh
train`` uses without ``--config``; ``--config`` replaces it), with only the
overrides the sample needs: ``model.backbone=none`` (frames exist for 5 of
the 320 clips, so no CNN features: per person per frame box geometry only),
``data.reader={videos: [4, 7, 10], use_tracks: ...}`` and ``train.device=cpu``.
STVH gets ``model.name=stvh model.depth=1 loss.layer_weights=null
model.shared_bits=0 loss.filter=0 model.shared_bits_middle=0 loss.visual=0`` (one code, one activity head at weight
1, as in benchmarks/quality_grid.py).  ``--epochs`` and ``--set KEY=VALUE``
change the recipe for both models.

Tracks: match 4 has tracking files for all of its clips, matches 7 and 10 for
2 clips each, so with ``--tracks on`` the training clips are (almost all)
static key-frame boxes while every query moves.  The default ``--tracks off``
reads every clip the same way (key-frame boxes on all T frames).

Figures (``stvh eval``'s protocol, docs/metrics.md): ``acc`` = accuracy of the
deepest activity head (mca), ``mpca`` = mean per-class accuracy, ``mAP@10`` =
activity mAP@10 of the deepest code (test split = queries, train split =
database), and visual mAP@10 per depth (relevant = same match) for the stored
codes and for those derived from the deepest code by the filter matrix F.
Visual protocol: the official split puts no test match in train, so ``stvh
eval`` mixes all clips of matches 4, 7 and 10 and sends a seeded 30 % of each
match's clips to the queries (the rest is the database): every match is on
both sides, as in the paper's "mix all videos, video id as label".

Baselines measured in the same run (same query/database masks):

* ``majority`` - always predicts the most frequent training activity; its
  mAP@10 (activity and visual) is that of constant codes (every distance 0:
  the ranking is the database order), computed with ``stvh.eval.metrics``.
* ``boxes`` - a hand-made descriptor per clip from the 13 ``box_geometry_features``
  (no learning of features): their mean over real persons and frames, the
  standard deviation over time of their per-frame mean over persons (motion),
  and the standard deviation over persons of their per-person mean over time
  (spread of the formation) - 39 numbers, columns constant on the train split
  dropped, standardised on the train split; accuracy of a logistic regression
  (and of a nearest-centroid classifier, ``boxes_nc``); mAP@10 of K-bit
  sign-of-random-projection codes (LSH, seeded) of the standardised descriptor.

Every model is trained once per seed (``--seeds``, default 0 1 2); the LSH
codes and the visual query split use the same seed.  The table gives mean ±
sample standard deviation over the seeds, and every figure's ratio to both
baselines; all of it goes to ``--out`` (default
``benchmarks/results/volleyball_sample.json``).  Exits 0 with a message when
the sample is absent.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "volleyball-sample"
DEFAULT_OUT = REPO / "benchmarks" / "results" / "volleyball_sample.json"
VIDEOS = ("4", "7", "10")
# STVH as in benchmarks/quality_grid.py: one code whose activity loss has weight 1 (the shipped config's
# layer weights fitted to depth 1 would keep only the shallowest weight, 0.1), no shared bits, no filter.
STVH_OVERRIDES = ("model.depth=1", "loss.layer_weights=null", "model.shared_bits=0", "loss.filter=0",
                  "model.shared_bits_middle=0", "loss.visual=0")
KEYS = ("acc", "mpca", "map@10", "visual@10")
LABELS = {"majority": "majority class", "boxes": "boxes mean-pool LR+LSH", "boxes_nc": "boxes mean-pool NC+LSH",
          "stvh": "STVH", "mstvh": "M-STVH"}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="Volleyball sample folder (default: %(default)s)")
    ap.add_argument("--config", default=None,
                    help="YAML config (default: the shipped src/stvh/configs/default.yaml, as `stvh train`)")
    ap.add_argument("--models", nargs="+", default=["mstvh", "stvh"], choices=["mstvh", "stvh"],
                    help="models to train (default: %(default)s)")
    ap.add_argument("--tracks", choices=["off", "on"], default="off",
                    help="off: key-frame boxes on every frame for every clip; on: tracking files where present")
    ap.add_argument("--epochs", type=int, default=None, help="train.epochs (default: the config's)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                    help="training, LSH and visual-split seeds; figures are means over them (default: %(default)s)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="extra config overrides for both models, e.g. loss.contrast=0.2")
    ap.add_argument("--runs", help="keep the run folders here (default: a temporary folder, removed)")
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="JSON results (default: %(default)s)")
    return ap.parse_args(argv)


def sample_missing(data: Path) -> str | None:
    videos = data / "videos" if (data / "videos").is_dir() else data
    missing = [v for v in VIDEOS if not (videos / v / "annotations.txt").is_file()]
    if not data.is_dir():
        return f"{data} does not exist"
    if missing:
        return f"{data}: no annotations for match(es) {', '.join(missing)}"
    return None


def sample_overrides(model: str, seed: int, tracks: str, epochs: int | None = None, extra=()) -> list[str]:
    """``key=value`` overrides of the recipe for one model and seed on the sample (see the module docstring)."""
    out = [
        f"seed={seed}",
        "data.format=volleyball",
        # one override for the whole reader mapping: a second data.reader.* override would be refused
        # (the default {} is replaced by the first one, which then has no other keys)
        f"data.reader={{videos: [{', '.join(VIDEOS)}], use_tracks: {'true' if tracks == 'on' else 'false'}}}",
        f"model.name={model}", "model.backbone=none", "train.device=cpu",
    ]
    if model == "stvh":
        out += list(STVH_OVERRIDES)
    if epochs is not None:
        out.append(f"train.epochs={epochs}")
    return out + list(extra)


def make_config(args, model: str, seed: int) -> dict:
    """The shipped (or ``--config``) recipe with the sample's overrides, as ``stvh train`` resolves it."""
    from stvh.train.config import resolve_config

    cfg, _ = resolve_config(args.config, sample_overrides(model, seed, args.tracks, args.epochs, args.set))
    return cfg


# ---------------------------------------------------------------------------------------------
# pure helpers: per-depth figures, aggregation over seeds
# ---------------------------------------------------------------------------------------------


def per_depth(metrics: dict, focus: str, bits: int, depth: int, derived: bool = False, k: int = 10) -> list[float]:
    """mAP@k of ``focus`` (activity / visual) at depths 1..depth (stored) or 1..depth-1 (derived by F),
    read from ``stvh eval``'s flat metrics; shallow first."""
    suffix, last = ("/derived", depth - 1) if derived else ("", depth)
    return [metrics[f"map@{k}/{focus}/K{bits}/depth{t}{suffix}"] for t in range(1, last + 1)]


def mean_std(values) -> tuple:
    """Mean and sample standard deviation (ddof 1; 0 for one value) of numbers, or element-wise of
    equal-length lists."""
    import numpy as np

    a = np.asarray(values, dtype=float)  # (seeds,) or (seeds, depth)
    mean = a.mean(axis=0)
    std = a.std(axis=0, ddof=1) if len(a) > 1 else np.zeros_like(mean)
    return (float(mean), float(std)) if a.ndim == 1 else (mean.tolist(), std.tolist())


def summarise(per_seed: dict, seeds, methods) -> dict:
    """``{method: {key: mean, key_std: std}}`` over ``seeds`` for every key a method has in every seed
    (numbers or per-depth lists)."""
    out = {}
    for name in methods:
        runs = [per_seed[s][name] for s in seeds]
        keys = [k for k, v in runs[0].items() if isinstance(v, (int, float, list)) and not isinstance(v, bool)
                and all(k in r for r in runs)]
        out[name] = {}
        for k in keys:
            out[name][k], out[name][f"{k}_std"] = mean_std([r[k] for r in runs])
    return out


def ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b else None


def pm(mean, std, digits: int = 3) -> str:
    """``0.512 ± 0.034``; lists element-wise joined by `` / ``."""
    if isinstance(mean, list):
        return " / ".join(pm(m, s, digits) for m, s in zip(mean, std))
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


# ---------------------------------------------------------------------------------------------
# baselines
# ---------------------------------------------------------------------------------------------


def clip_descriptor(tensors):
    """(M, 39): the 13 box-geometry features' mean over real persons and frames, the std over time of
    their per-frame mean over real persons, and the std over real persons of their per-person mean
    over time."""
    import torch

    from stvh.models.visual import box_geometry_features

    with torch.no_grad():
        f = box_geometry_features(tensors.boxes, tensors.mask, tensors.image_size)  # (M, N, T, 13), pads 0
        m = tensors.mask.to(f.dtype).unsqueeze(-1)  # (M, N, 1)
        n = m.sum(dim=1).clamp(min=1)  # (M, 1)
        per_frame = f.sum(dim=1) / n.unsqueeze(1)  # (M, T, 13) mean over real persons
        per_person = f.mean(dim=2)  # (M, N, 13) mean over frames
        centre = (per_person * m).sum(dim=1) / n
        spread = ((((per_person - centre.unsqueeze(1)) ** 2) * m).sum(dim=1) / n).sqrt()
        desc = torch.cat([per_frame.mean(dim=1), per_frame.std(dim=1, unbiased=False), spread], dim=1)
    return desc.numpy().astype("float64")


def baselines(tensors, seed: int, bits: int, ks=(5, 10, 20, 50)) -> dict:
    """Majority class / constant codes and the boxes descriptor (LR, nearest centroid, LSH codes): activity
    figures on the official split, visual mAP@10 under ``stvh eval``'s visual protocol with this seed."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import NearestCentroid
    from sklearn.preprocessing import StandardScaler

    from stvh.eval.evaluate import visual_protocol
    from stvh.eval.metrics import mca, mpca, retrieval_metrics

    y = tensors.activity.numpy()
    split = np.asarray(tensors.splits)
    groups = np.asarray(tensors.groups)
    test = (split == "test") & (y >= 0)
    train = (split != "test") & (y >= 0)
    vdb, vq, _ = visual_protocol(tensors.ids, tensors.groups, tensors.splits, seed)
    num_classes = int(y.max()) + 1
    ytr, yte = y[train], y[test]
    out = {}

    def visual(codes):  # (M, bits) codes of every clip
        return retrieval_metrics(codes[vq], groups[vq], codes[vdb], groups[vdb], ks)["map@10"]

    # (a) majority class; constant codes rank the database in its own order
    majority = int(np.bincount(ytr, minlength=num_classes).argmax())
    pred = np.full(len(yte), majority)
    const = np.ones((len(y), bits), np.int8)
    r = retrieval_metrics(const[test], yte, const[train], ytr, ks)
    out["majority"] = {"acc": mca(yte, pred), "mpca": mpca(yte, pred, num_classes), "map@10": r["map@10"],
                       "visual@10": visual(const), "retrieval": r, "class": majority}

    # (b) boxes-only mean-pool descriptor: logistic regression / nearest centroid, LSH codes
    x = clip_descriptor(tensors)
    x = x[:, x[train].std(axis=0) > 1e-12]  # e.g. every motion feature when all boxes are static
    scaler = StandardScaler().fit(x[train])
    z = scaler.transform(x)
    lr = LogisticRegression(max_iter=5000, C=1.0).fit(z[train], ytr)
    nc = NearestCentroid().fit(z[train], ytr)
    proj = np.random.default_rng(seed).standard_normal((x.shape[1], bits))
    codes = np.where(z @ proj >= 0, 1, -1).astype(np.int8)  # (M, bits)
    r = retrieval_metrics(codes[test], yte, codes[train], ytr, ks)
    p_lr, p_nc = lr.predict(z[test]), nc.predict(z[test])
    vis = visual(codes)
    out["boxes"] = {"acc": mca(yte, p_lr), "mpca": mpca(yte, p_lr, num_classes), "map@10": r["map@10"],
                    "visual@10": vis, "retrieval": r, "descriptor_dim": int(x.shape[1])}
    out["boxes_nc"] = {"acc": mca(yte, p_nc), "mpca": mpca(yte, p_nc, num_classes), "map@10": r["map@10"],
                       "visual@10": vis}
    out["_sizes"] = {"train": int(train.sum()), "test": int(test.sum()), "classes": num_classes,
                     "visual_queries": int(vq.sum()), "visual_database": int(vdb.sum())}
    return out


# ---------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------


def train_and_eval(cfg: dict, data: Path, run: Path) -> dict:
    from stvh.eval.evaluate import evaluate
    from stvh.train.encode import encode
    from stvh.train.loop import fit

    t0 = time.perf_counter()
    summary = fit(cfg, data, None, run, progress=False)
    t_train = time.perf_counter() - t0
    codes = run / "codes.npz"
    t0 = time.perf_counter()
    encode(run, codes, device="cpu")
    res = evaluate(codes, run)
    t_eval = time.perf_counter() - t0
    m = res["metrics"]
    depth, bits = res["details"]["depth"], res["details"]["bits"]
    deep = f"K{bits}/depth{depth}"
    out = {
        "acc": m["mca"], "mpca": m["mpca"], "map@10": m[f"map@10/activity/{deep}"],
        "visual@10": m[f"map@10/visual/K{bits}/depth1"],  # the shallowest code: the visual focus
        "map@10/byk": m[f"map@10/activity/{deep}/byk"], "precision@10": m[f"precision@10/activity/{deep}"],
        "map@10_per_depth": per_depth(m, "activity", bits, depth),
        "visual@10_per_depth": per_depth(m, "visual", bits, depth),
        "acc_per_depth": [m[f"mca/depth{t + 1}"] for t in range(depth)],
        "action_acc": m["action_acc"], "best_epoch": summary["best_epoch"],
        "best_val": summary["best_score"], "train_s": round(t_train, 1), "encode_eval_s": round(t_eval, 1),
        "visual_protocol": res["details"]["visual_protocol"], "metrics": m,
    }
    if depth > 1 and f"map@10/visual/K{bits}/depth1/derived" in m:
        out["map@10_derived_per_depth"] = per_depth(m, "activity", bits, depth, derived=True)
        out["visual@10_derived_per_depth"] = per_depth(m, "visual", bits, depth, derived=True)
    return out


def print_tables(summary: dict, n_seeds: int) -> dict:
    """The main table (mean ± std, ratios to both baselines) and per-depth lines; returns the ratios."""
    maj, box = summary["majority"], summary["boxes"]
    print(f"\nmean ± std over {n_seeds} seed(s)")
    print(f"{'method':<24}{'acc':>15}{'mpca':>15}{'mAP@10':>15}{'visual@10':>15}   "
          f"{'acc/maj':>8}{'acc/box':>8}{'mAP/maj':>8}{'mAP/box':>8}{'vis/box':>8}")
    ratios = {}
    for name, r in summary.items():
        q = ratios[name] = {"acc/majority": ratio(r["acc"], maj["acc"]), "acc/boxes": ratio(r["acc"], box["acc"]),
                            "map@10/majority": ratio(r["map@10"], maj["map@10"]),
                            "map@10/boxes": ratio(r["map@10"], box["map@10"]),
                            "visual@10/boxes": ratio(r["visual@10"], box["visual@10"])}
        print(f"{LABELS[name]:<24}" + "".join(f"{pm(r[k], r[k + '_std']):>15}" for k in KEYS) + "   "
              + "".join(f"{q[k]:>8.2f}" for k in ("acc/majority", "acc/boxes", "map@10/majority", "map@10/boxes",
                                                  "visual@10/boxes")))
    for name in ("mstvh", "stvh"):
        r = summary.get(name)
        if r is None:
            continue
        print(f"\n{LABELS[name]} per depth (shallow -> deep), mean ± std:")
        for key, what in (("acc_per_depth", "acc"), ("map@10_per_depth", "activity mAP@10"),
                          ("map@10_derived_per_depth", "activity mAP@10, derived by F"),
                          ("visual@10_per_depth", "visual mAP@10"),
                          ("visual@10_derived_per_depth", "visual mAP@10, derived by F")):
            if key in r:
                print(f"  {what:<32}{pm(r[key], r[key + '_std'])}")
    return ratios


def git_commit(where: Path) -> str | None:
    """The commit of the git tree holding ``where`` (``+dirty`` when its files differ from it), if any."""
    try:
        run = lambda *a: subprocess.run(["git", "-C", str(where), *a], capture_output=True, text=True,  # noqa: E731
                                        check=True).stdout.strip()
        return run("rev-parse", "HEAD") + ("+dirty" if run("status", "--porcelain", "--", ".") else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def main(argv=None) -> int:
    args = parse_args(argv)
    data = Path(args.data).resolve()
    why = sample_missing(data)
    if why:
        print(f"skip: the Volleyball sample is not available ({why}); pass --data DIR")
        return 0
    if args.runs:
        held = [Path(args.runs) / f"{m}-seed{s}" for s in args.seeds for m in args.models]
        held = [run for run in held if (run / "last.pt").exists()]
        if held:
            print(f"error: --runs {args.runs}: {held[0]} already holds a run; choose another --runs folder",
                  file=sys.stderr)
            return 2

    import numpy as np
    import stvh
    import torch

    from stvh.data.atomic import write_text_atomic
    from stvh.train.loop import load_data
    from stvh.train.tensors import clips_to_tensors

    t_start = time.perf_counter()
    cfg0 = make_config(args, args.models[0], args.seeds[0])
    bits = int(cfg0["model"]["bits"])
    dataset, _, _ = load_data(cfg0, data, None)
    tensors = clips_to_tensors(dataset.clips)
    groups = sorted({(c.group, c.split) for c in dataset.clips}, key=lambda g: int(g[0]))
    tracked = {s: sum(c.tracked for c in dataset.clips if c.split == s) for s in ("train", "test")}
    per_seed: dict[int, dict] = {seed: baselines(tensors, seed, bits) for seed in args.seeds}
    sizes = {seed: r.pop("_sizes") for seed, r in per_seed.items()}
    s0 = sizes[args.seeds[0]]
    print(f"# data {data}: matches {', '.join(f'{g}({s})' for g, s in groups)}; "
          f"{s0['train']} database clips (train split, incl. the trainer's val part), {s0['test']} queries; "
          f"tracks {args.tracks} (tracked clips: train {tracked['train']}, test {tracked['test']}); "
          f"visual: {s0['visual_queries']} queries / {s0['visual_database']} database (seed {args.seeds[0]})")
    src, commit = Path(stvh.__file__).parent, git_commit(Path(stvh.__file__).parent)
    print(f"# stvh from {src}, commit {commit}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
          f"load {os.getloadavg()[0]:.2f}; seeds {' '.join(map(str, args.seeds))}")

    configs = {}
    tmp = None
    root = Path(args.runs) if args.runs else Path(tmp := tempfile.mkdtemp(prefix="stvh-vs-"))
    try:
        for seed in args.seeds:
            for name in args.models:
                cfg = make_config(args, name, seed)
                configs[name] = cfg
                run = root / f"{name}-seed{seed}"
                print(f"# training {name}, seed {seed} ({cfg['train']['epochs']} epochs) ...", flush=True)
                r = per_seed[seed][name] = train_and_eval(cfg, data, run)
                print(f"#   {name}: best epoch {r['best_epoch']} (val {r['best_val']:.3f}), acc {r['acc']:.3f}, "
                      f"mAP@10 {r['map@10']:.3f}, visual@10 per depth "
                      + " ".join(f"{v:.3f}" for v in r["visual@10_per_depth"])
                      + f"; train {r['train_s']:.0f}s, encode+eval {r['encode_eval_s']:.1f}s", flush=True)
    finally:
        if tmp is not None:
            import shutil
            shutil.rmtree(tmp, ignore_errors=True)

    methods = ["majority", "boxes", "boxes_nc"] + list(args.models)
    summary = summarise(per_seed, args.seeds, methods)
    ratios = print_tables(summary, len(args.seeds))
    n_q = s0["test"]
    se = {name: (r["acc"] * (1 - r["acc"]) / n_q) ** 0.5 if n_q else None for name, r in summary.items()}
    print(f"(binomial standard error of one seed's acc over {n_q} queries: "
          + ", ".join(f"{k} {v:.3f}" for k, v in se.items()) + ")")

    total = time.perf_counter() - t_start
    record = {
        "info": {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "host": platform.node(), "commit": commit,
                 "stvh": str(src), "python": platform.python_version(),
                 "torch": torch.__version__, "threads": torch.get_num_threads(),
                 "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "loadavg": os.getloadavg(),
                 "data": str(data), "sizes": s0, "visual_sizes": {str(k): v for k, v in sizes.items()},
                 "tracked_clips": tracked, "seconds": round(total, 1),
                 "overrides": {m: sample_overrides(m, 0, args.tracks, args.epochs, args.set) for m in args.models}},
        "args": vars(args), "configs": configs, "summary": summary, "ratios": ratios,
        "acc_standard_error": se, "per_seed": {str(k): v for k, v in per_seed.items()},
    }
    write_text_atomic(args.out, json.dumps(record, indent=2, default=lambda o: o.tolist()
                                           if isinstance(o, np.ndarray) else str(o)))
    print(f"\n# {total:.0f}s in all; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
