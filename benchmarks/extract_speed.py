"""Feature extraction speed as a multiple of the bare backbone forward on the same frames (same run).

    python benchmarks/extract_speed.py                                   # efficientnet_lite0, mobilenet_v3_small
    python benchmarks/extract_speed.py --backbones mobilenet_v3_small --clips-per-match 3 --repeats 1

Data: a tiny synthetic dataset generated into a temporary folder
(``stvh.data.synth.generate``: ``--matches`` 2 x ``--clips-per-match`` 6 clips,
10 frames of 180x320, i.e. 120 frames by default).

Timed, per backbone:

* ``extract`` - ``stvh.train.extract.extract(data, backbone, out)`` end to end
  (reading the annotations, building the backbone, JPEG decoding, backbone,
  RoIAlign, cache write with LZF float16 shards), once with the raw channels
  and once with ``pca=64`` (which also fits the PCA on the features of its
  sample - whole batches, up to 24 training clips - whose backbone maps it
  keeps and writes projected after the fit: the backbone runs once per clip).  ``wall`` is the whole call; ``loop`` is
  the extraction as ``extract`` reports it (no dataset reading or backbone
  building; the PCA sample and fit are in it).
* ``bare`` (the baseline) - ``build_backbone(name)`` forward only, eval mode,
  no grad, over the same frames already decoded and in memory as float
  tensors, in the same batches as ``extract`` (``batch_clips`` = 4 clips,
  16 frames per backbone call).

Printed: frames/s of each, and the overhead factors extract / bare (time
ratios, > 1 = slower than the bare forward).  Each timing is the best of
``--repeats`` runs (fresh cache folders); the bare forward is timed
``--repeats`` times before and again after the extract runs, so a burst of
load from other processes does not make the baseline look slow.  Threads: ``--threads`` (default:
torch's default).  JSON to ``--out`` (default
``benchmarks/results/extract_speed.json``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "results" / "extract_speed.json"
BATCH_CLIPS = 4   # extract()'s default batch_clips
CHUNK = 16        # frames per backbone call in VisualModule.extract_roi


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbones", nargs="+", default=["efficientnet_lite0", "mobilenet_v3_small"],
                    help="backbones to time (default: %(default)s)")
    ap.add_argument("--matches", type=int, default=2)
    ap.add_argument("--clips-per-match", type=int, default=6)
    ap.add_argument("--frames", type=int, default=10)
    ap.add_argument("--size", default="180x320", help="frame size HxW (default: %(default)s)")
    ap.add_argument("--frame-size", metavar="HxW",
                    help="resize frames before the backbone, as `stvh extract --frame-size` "
                         "(the demo uses 112x200; default: native size)")
    ap.add_argument("--pca", type=int, default=64, help="channels kept by the PCA variant; 0 skips it")
    ap.add_argument("--repeats", type=int, default=2,
                    help="timed runs per measurement, best kept (the bare forward runs this many times before "
                         "and after the extract runs)")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="JSON results (default: %(default)s)")
    return ap.parse_args(argv)


def decoded_batches(data: Path, size: tuple[int, int] | None):
    """The frames of every clip with frames, decoded like extract() does, grouped as extract() batches them."""
    import torch

    from stvh.data.formats import read_dataset
    from stvh.data.frames import read_frames
    from stvh.train.extract import _resize

    clips = [c for c in read_dataset(data).clips if c.frames is not None]
    batches = []
    for start in range(0, len(clips), BATCH_CLIPS):
        group = clips[start:start + BATCH_CLIPS]
        frames = torch.stack([_resize(read_frames(c.frames), size) for c in group])  # (B, T, 3, H, W)
        batches.append(frames.reshape(-1, *frames.shape[2:]))
    return batches


def time_bare(backbone, batches, repeats: int) -> list[float]:
    import torch

    backbone.eval()
    with torch.no_grad():
        backbone(batches[0][:CHUNK])  # warm-up
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            for x in batches:
                for i in range(0, x.shape[0], CHUNK):
                    backbone(x[i:i + CHUNK])
            times.append(time.perf_counter() - t)
    return times


def time_extract(data: Path, backbone: str, work: Path, pca: int | None, repeats: int,
                 size: tuple[int, int] | None) -> dict:
    from stvh.train.extract import extract

    walls, loops, summary = [], [], None
    for r in range(repeats):
        out = work / f"feats-{backbone}-{'pca' + str(pca) if pca else 'raw'}-{r}"
        t = time.perf_counter()
        summary = extract(data, backbone, out, progress=False, pca=pca, frame_size=size)
        walls.append(time.perf_counter() - t)
        loops.append(float(summary["seconds"]))
        nbytes = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
        shutil.rmtree(out, ignore_errors=True)
    return {"wall": walls, "loop": loops, "cache_bytes": nbytes, "summary": summary}


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from stvh.data.atomic import write_text_atomic
    from stvh.data.synth import generate
    from stvh.models.visual import build_backbone

    if args.threads:
        torch.set_num_threads(args.threads)
    # torchvision backbones have no local ImageNet weights: random init is fine for timing; keep the
    # (logged and warned) notice out of the table
    logging.getLogger("stvh.models.visual").setLevel(logging.ERROR)
    h, w = (int(v) for v in args.size.lower().split("x"))
    fsize = tuple(int(v) for v in args.frame_size.lower().split("x")) if args.frame_size else None
    work = Path(tempfile.mkdtemp(prefix="stvh-extract-speed-"))
    rows = []
    try:
        data = work / "data"
        generate(data, matches=args.matches, clips_per_match=args.clips_per_match, frames=args.frames,
                 size=(h, w), progress=False, seed=args.seed)
        t = time.perf_counter()
        batches = decoded_batches(data, fsize)
        t_decode = time.perf_counter() - t
        n_frames = sum(int(x.shape[0]) for x in batches)
        print(f"# {n_frames} frames ({args.matches}x{args.clips_per_match} clips x {args.frames}) of {h}x{w}"
              f"{f' resized to {fsize[0]}x{fsize[1]}' if fsize else ''}; "
              f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
              f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, load {os.getloadavg()[0]:.2f}")
        print(f"# decoding them alone (read_frames + to float{' + resize' if fsize else ''}): "
              f"{n_frames / t_decode:.0f} frames/s")
        print()
        print(f"{'backbone':<20}{'bare f/s':>9}{'extract f/s':>12}{'x bare':>8}{'loop x':>8}"
              f"{'pca f/s':>9}{'x bare':>8}{'loop x':>8}")
        for name in args.backbones:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # random-init warning of torchvision backbones
                torch.manual_seed(args.seed)
                module, channels = build_backbone(name)
                bare = time_bare(module, batches, args.repeats)
                raw = time_extract(data, name, work, None, args.repeats, fsize)
                pca = time_extract(data, name, work, args.pca, args.repeats, fsize) if args.pca else None
                bare += time_bare(module, batches, args.repeats)  # bracket the extract runs (shared machine)
            b = min(bare)
            row = {"backbone": name, "channels": channels, "frames": n_frames,
                   "bare_s": b, "bare_s_all": bare, "bare_fps": n_frames / b,
                   "extract_wall_s": min(raw["wall"]), "extract_loop_s": min(raw["loop"]),
                   "extract_fps": n_frames / min(raw["wall"]),
                   "extract_over_bare": min(raw["wall"]) / b, "extract_loop_over_bare": min(raw["loop"]) / b,
                   "extract_runs": raw["wall"], "cache_bytes": raw["cache_bytes"]}
            line = (f"{name:<20}{row['bare_fps']:>9.1f}{row['extract_fps']:>12.1f}{row['extract_over_bare']:>8.2f}"
                    f"{row['extract_loop_over_bare']:>8.2f}")
            if pca:
                row.update({"pca": args.pca, "pca_wall_s": min(pca["wall"]), "pca_loop_s": min(pca["loop"]),
                            "pca_fps": n_frames / min(pca["wall"]), "pca_over_bare": min(pca["wall"]) / b,
                            "pca_loop_over_bare": min(pca["loop"]) / b, "pca_runs": pca["wall"],
                            "pca_cache_bytes": pca["cache_bytes"]})
                line += f"{row['pca_fps']:>9.1f}{row['pca_over_bare']:>8.2f}{row['pca_loop_over_bare']:>8.2f}"
            rows.append(row)
            print(line, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("\n(x bare: whole extract() call / bare forward time; loop x: extract's own loop only; "
          "cache sizes in the JSON)")
    record = {
        "info": {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "host": platform.node(),
                 "python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
                 "threads": torch.get_num_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                 "loadavg": os.getloadavg(), "decode_fps": n_frames / t_decode,
                 "median_note": "times are best of repeats; every run is in *_runs / bare_s_all"},
        "args": vars(args), "results": rows,
    }
    write_text_atomic(args.out, json.dumps(record, indent=2))
    print(f"# wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
