"""Quality on the REAL Volleyball sample: M-STVH / STVH from tracks vs two baselines of the same run.

    python benchmarks/volleyball_sample.py                      # M-STVH and STVH, 30 epochs each
    python benchmarks/volleyball_sample.py --models mstvh --epochs 5 --out /tmp/vs.json
    python benchmarks/volleyball_sample.py --tracks on          # use the tracking files where present
    python benchmarks/volleyball_sample.py --seeds 0 1 2        # means (and std) over three seeds

Data: ``<repo>/../shared/data/volleyball-sample`` (``--data``): matches 7 and 10
(official train split, all their annotated clips; the trainer carves its
validation part out of them) are the database, match 4 (official test split)
gives the queries; matches 39 and 41 are left out (``data.reader.videos``).
The sample has no frames for most clips, so the models run tracks only
(``model.backbone=none``: per person per frame box-geometry features).

Tracks: match 4 has tracking files for all of its clips, matches 7 and 10 for
2 clips each, so with ``--tracks on`` the training clips are (almost all)
static key-frame boxes while every query moves.  The default ``--tracks off``
reads every clip the same way (key-frame boxes on all T frames): train and
test then come from one distribution.

Figures (test split = queries, train split = database, docs/metrics.md):
``acc`` = accuracy of the deepest activity head (``mca``), ``mpca`` = mean
per-class accuracy, ``mAP@10`` = activity mAP@10 of the deepest code
(relevant-count convention, ties by database order).

Baselines measured in the same run:

* ``majority`` - always predicts the most frequent training activity; its
  mAP@10 is that of constant codes (every distance 0: the ranking is the
  database order), computed with ``stvh.eval.metrics``.
* ``boxes`` - a hand-made descriptor per clip from the 13 ``box_geometry_features``
  (no learning of features): their mean over real persons and frames, the
  standard deviation over time of their per-frame mean over persons (motion),
  and the standard deviation over persons of their per-person mean over time
  (spread of the formation) - 39 numbers, columns constant on the train split
  dropped, standardised on the train split; accuracy of a logistic regression
  (and of a nearest-centroid classifier, ``boxes_nc``); mAP@10 of 64-bit
  sign-of-random-projection codes (LSH, seeded) of the standardised descriptor.

One seed is noisy on 111 queries (the binomial standard error of an accuracy
near 0.5 is 0.047, and two seeds of the same model can differ by more than
that): ``--seeds`` trains every model once per seed and prints means (and
standard deviations); the LSH codes of the ``boxes`` baseline use the same
seeds.  Every figure is printed beside its ratio to both baselines; all of it goes to
``--out`` (default ``benchmarks/results/volleyball_sample.json``).  Exits 0
with a message when the sample is absent.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "volleyball-sample"
DEFAULT_OUT = REPO / "benchmarks" / "results" / "volleyball_sample.json"
VIDEOS = ("4", "7", "10")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="Volleyball sample folder (default: %(default)s)")
    ap.add_argument("--models", nargs="+", default=["mstvh", "stvh"], choices=["mstvh", "stvh"],
                    help="models to train (default: %(default)s)")
    ap.add_argument("--tracks", choices=["off", "on"], default="off",
                    help="off: key-frame boxes on every frame for every clip; on: tracking files where present")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--bits", type=int, default=64)
    ap.add_argument("--depth", type=int, default=3, help="M-STVH depth (STVH has one)")
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--d-v", type=int, default=32)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0],
                    help="training and LSH seeds; figures are means over them (default: %(default)s)")
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


def make_config(args, model: str, seed: int) -> dict:
    from stvh.train.config import load_config

    overrides = [
        f"seed={seed}",
        "data.format=volleyball",
        # one override for the whole reader mapping: a second data.reader.* override would be refused
        # (the default {} is replaced by the first one, which then has no other keys)
        f"data.reader={{videos: [{', '.join(VIDEOS)}], use_tracks: {'true' if args.tracks == 'on' else 'false'}}}",
        f"model.name={model}", "model.backbone=none", f"model.bits={args.bits}",
        f"model.depth={args.depth if model != 'stvh' else 1}", f"model.d={args.d}", f"model.d_v={args.d_v}",
        f"model.heads={args.heads}",
        f"train.epochs={args.epochs}", f"train.batch_size={args.batch_size}", f"train.lr={args.lr}",
        "train.device=cpu",
    ] + list(args.set)
    return load_config(None, overrides)


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
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import NearestCentroid
    from sklearn.preprocessing import StandardScaler

    from stvh.eval.metrics import mca, mpca, retrieval_metrics

    y = tensors.activity.numpy()
    split = np.asarray(tensors.splits)
    test = (split == "test") & (y >= 0)
    train = (split != "test") & (y >= 0)
    num_classes = int(y.max()) + 1
    ytr, yte = y[train], y[test]
    out = {}

    # (a) majority class; constant codes rank the database in its own order
    majority = int(np.bincount(ytr, minlength=num_classes).argmax())
    pred = np.full(len(yte), majority)
    const_q, const_db = np.ones((len(yte), bits), np.int8), np.ones((len(ytr), bits), np.int8)
    r = retrieval_metrics(const_q, yte, const_db, ytr, ks)
    out["majority"] = {"acc": mca(yte, pred), "mpca": mpca(yte, pred, num_classes), "map@10": r["map@10"],
                       "retrieval": r, "class": majority}

    # (b) boxes-only mean-pool descriptor: logistic regression / nearest centroid, LSH codes
    x = clip_descriptor(tensors)
    x = x[:, x[train].std(axis=0) > 1e-12]  # e.g. every motion feature when all boxes are static
    scaler = StandardScaler().fit(x[train])
    xtr, xte = scaler.transform(x[train]), scaler.transform(x[test])
    lr = LogisticRegression(max_iter=5000, C=1.0).fit(xtr, ytr)
    nc = NearestCentroid().fit(xtr, ytr)
    proj = np.random.default_rng(seed).standard_normal((x.shape[1], bits))

    def lsh(z):
        return np.where(z @ proj >= 0, 1, -1).astype(np.int8)

    r = retrieval_metrics(lsh(xte), yte, lsh(xtr), ytr, ks)
    p_lr, p_nc = lr.predict(xte), nc.predict(xte)
    out["boxes"] = {"acc": mca(yte, p_lr), "mpca": mpca(yte, p_lr, num_classes), "map@10": r["map@10"],
                    "retrieval": r, "descriptor_dim": int(x.shape[1])}
    out["boxes_nc"] = {"acc": mca(yte, p_nc), "mpca": mpca(yte, p_nc, num_classes), "map@10": r["map@10"]}
    out["_sizes"] = {"train": int(train.sum()), "test": int(test.sum()), "classes": num_classes}
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
    return {
        "acc": m["mca"], "mpca": m["mpca"], "map@10": m[f"map@10/activity/{deep}"],
        "map@10/byk": m[f"map@10/activity/{deep}/byk"], "precision@10": m[f"precision@10/activity/{deep}"],
        "map@10_per_depth": [m[f"map@10/activity/K{bits}/depth{t + 1}"] for t in range(depth)],
        "acc_per_depth": [m[f"mca/depth{t + 1}"] for t in range(depth)],
        "action_acc": m["action_acc"], "best_epoch": summary["best_epoch"] + 1,
        "best_val": summary["best_score"], "train_s": round(t_train, 1), "encode_eval_s": round(t_eval, 1),
        "metrics": m,
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    data = Path(args.data).resolve()
    why = sample_missing(data)
    if why:
        print(f"skip: the Volleyball sample is not available ({why}); pass --data DIR")
        return 0

    import numpy as np
    import torch

    from stvh.data.atomic import write_text_atomic
    from stvh.train.loop import load_data
    from stvh.train.tensors import clips_to_tensors

    t_start = time.perf_counter()
    cfg0 = make_config(args, args.models[0], args.seeds[0])
    dataset, _, _ = load_data(cfg0, data, None)
    tensors = clips_to_tensors(dataset.clips)
    groups = sorted({(c.group, c.split) for c in dataset.clips}, key=lambda g: int(g[0]))
    tracked = {s: sum(c.tracked for c in dataset.clips if c.split == s) for s in ("train", "test")}
    per_seed: dict[int, dict] = {}
    for seed in args.seeds:
        per_seed[seed] = baselines(tensors, seed, args.bits)
    sizes = per_seed[args.seeds[0]]["_sizes"]
    for r in per_seed.values():
        r.pop("_sizes")
    print(f"# data {data}: matches {', '.join(f'{g}({s})' for g, s in groups)}; "
          f"{sizes['train']} database clips (train split, incl. the trainer's val part), {sizes['test']} queries; "
          f"tracks {args.tracks} (tracked clips: train {tracked['train']}, test {tracked['test']})")
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, load {os.getloadavg()[0]:.2f}; "
          f"seeds {' '.join(map(str, args.seeds))}")

    configs = {}
    tmp = None
    root = Path(args.runs) if args.runs else Path(tmp := tempfile.mkdtemp(prefix="stvh-vs-"))
    try:
        for seed in args.seeds:
            for name in args.models:
                cfg = make_config(args, name, seed)
                configs[name] = cfg
                run = root / f"{name}-seed{seed}"
                if (run / "last.pt").exists():
                    raise SystemExit(f"error: {run} already holds a run; choose another --runs folder")
                print(f"# training {name}, seed {seed} ({args.epochs} epochs) ...", flush=True)
                r = per_seed[seed][name] = train_and_eval(cfg, data, run)
                print(f"#   {name}: best epoch {r['best_epoch']} (val mAP@10 {r['best_val']:.3f}), "
                      f"train {r['train_s']:.0f}s, encode+eval {r['encode_eval_s']:.1f}s", flush=True)
    finally:
        if tmp is not None:
            import shutil
            shutil.rmtree(tmp, ignore_errors=True)

    methods = ["majority", "boxes", "boxes_nc"] + list(args.models)
    keys = ("acc", "mpca", "map@10")
    summary = {}
    for name in methods:
        vals = {k: np.array([per_seed[s][name][k] for s in args.seeds]) for k in keys}
        summary[name] = {k: float(v.mean()) for k, v in vals.items()}
        summary[name].update({f"{k}_std": float(v.std()) for k, v in vals.items()})
        if name == "mstvh":
            for k in ("acc_per_depth", "map@10_per_depth"):
                summary[name][k] = np.mean([per_seed[s][name][k] for s in args.seeds], axis=0).tolist()
    maj, box = summary["majority"], summary["boxes"]

    def ratio(a, b):
        return round(a / b, 3) if b else None

    many = len(args.seeds) > 1
    print()
    print(("mean over seeds (std)\n" if many else "")
          + f"{'method':<24}{'acc':>7}{'mpca':>7}{'mAP@10':>8}   {'acc/maj':>8}{'acc/box':>8}"
          f"{'mAP/maj':>8}{'mAP/box':>8}" + (f"{'acc std':>9}{'mAP std':>9}" if many else ""))
    labels = {"majority": "majority class", "boxes": "boxes mean-pool LR+LSH", "boxes_nc": "boxes mean-pool NC+LSH",
              "stvh": f"STVH K{args.bits}", "mstvh": f"M-STVH K{args.bits} depth{args.depth}"}
    ratios = {}
    for name, r in summary.items():
        ratios[name] = {"acc/majority": ratio(r["acc"], maj["acc"]), "acc/boxes": ratio(r["acc"], box["acc"]),
                        "map@10/majority": ratio(r["map@10"], maj["map@10"]),
                        "map@10/boxes": ratio(r["map@10"], box["map@10"])}
        q = ratios[name]
        print(f"{labels[name]:<24}{r['acc']:>7.3f}{r['mpca']:>7.3f}{r['map@10']:>8.3f}   "
              f"{q['acc/majority']:>8.2f}{q['acc/boxes']:>8.2f}{q['map@10/majority']:>8.2f}{q['map@10/boxes']:>8.2f}"
              + (f"{r['acc_std']:>9.3f}{r['map@10_std']:>9.3f}" if many else ""))
    n_q = sizes["test"]
    se = {name: (r["acc"] * (1 - r["acc"]) / n_q) ** 0.5 if n_q else None for name, r in summary.items()}
    print(f"(binomial standard error of one seed's acc over {n_q} queries: "
          + ", ".join(f"{k} {v:.3f}" for k, v in se.items()) + ")")
    if "mstvh" in summary:
        r = summary["mstvh"]
        print("\nM-STVH per depth (shallow -> deep): acc " + " ".join(f"{v:.3f}" for v in r["acc_per_depth"])
              + " | mAP@10 " + " ".join(f"{v:.3f}" for v in r["map@10_per_depth"]))

    total = time.perf_counter() - t_start
    record = {
        "info": {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "host": platform.node(),
                 "python": platform.python_version(), "torch": torch.__version__,
                 "threads": torch.get_num_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                 "loadavg": os.getloadavg(), "data": str(data), "sizes": sizes, "tracked_clips": tracked,
                 "seconds": round(total, 1)},
        "args": vars(args), "configs": configs, "summary": summary, "ratios": ratios,
        "acc_standard_error": se, "per_seed": {str(k): v for k, v in per_seed.items()},
    }
    write_text_atomic(args.out, json.dumps(record, indent=2, default=lambda o: o.tolist()
                                           if isinstance(o, np.ndarray) else str(o)))
    print(f"\n# {total:.0f}s in all; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
