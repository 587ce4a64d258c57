"""`stvh extract --engine ray`: clips per second with 1 and with 2 Ray workers (one torch thread each).

    nice -n 5 python benchmarks/ray_scaling.py                 # 6 videos x 10 clips, 10 frames of 180x320
    python benchmarks/ray_scaling.py --matches 4 --clips-per-match 4 --repeats 1   # quicker

Data: a synthetic dataset generated into a temporary folder (``stvh.data.synth.generate``), extracted with
the shipped default config (EfficientNet-Lite0, frames resized to 112x200, PCA 64). For each worker count
a local Ray instance with that many CPUs is started (``ray.init(address="local", num_cpus=W)``), its
workers are warmed on a 2-video dataset (starting a worker, importing torch and oneDNN's first call per
input shape are not extraction), then
the dataset is extracted ``--repeats`` times into fresh folders; the figure is the best run's
``clips_per_s`` as ``extract`` reports it: the loop from the first task sent to the last clip written
(the PCA fit on the driver, before it, is the same for every worker count and is not timed). A
single-process run with one thread is timed too (``local``), and every cache is checked to hold the same
bytes per clip as the first. Printed: clips/s per engine and the 2-worker / 1-worker ratio (goal >= 1.8),
and the CPU seconds per clip of the driver and the Ray workers (psutil): equal figures for 1 and 2
workers mean the engine adds no work per clip, and a ratio below 2 is CPU that other processes took.
JSON to ``--out`` (default ``benchmarks/results/ray_scaling.json``), with the load average before and after:
other processes on the machine take CPU from the workers.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "results" / "ray_scaling.json"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--matches", type=int, default=6, help="videos (default: %(default)s)")
    ap.add_argument("--clips-per-match", type=int, default=10, help="clips per video (default: %(default)s)")
    ap.add_argument("--frames", type=int, default=10, help="frames per clip (default: %(default)s)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per engine, best kept (default: %(default)s)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return ap.parse_args(argv)


def same_bytes(a: Path, b: Path) -> bool:
    """Whether caches ``a`` and ``b`` hold the same clips with the same dtype and bytes."""
    from stvh.data.feature_cache import FeatureCache

    ca, cb = FeatureCache(a), FeatureCache(b)
    if sorted(ca.ids()) != sorted(cb.ids()):
        return False
    la, lb = ca.load(ca.ids()), cb.load(ca.ids())
    return all(la[i].dtype == lb[i].dtype and la[i].tobytes() == lb[i].tobytes() for i in la)


def cpu_seconds() -> float:
    """CPU seconds used so far by this process and every Ray worker process (``ray::...``) alive now."""
    import psutil

    total = 0.0
    for p in psutil.process_iter(["cmdline"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
            if p.pid == os.getpid() or cmd.startswith("ray::"):
                t = p.cpu_times()
                total += t.user + t.system
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def main(argv=None) -> dict:
    args = parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    import ray
    import torch

    from stvh.data.synth import generate
    from stvh.train.config import resolve_config
    from stvh.train.extract import extract_with_config

    torch.set_num_threads(1)
    cfg, _ = resolve_config(None, [], fitted_notes=False)  # what `stvh extract` without --config runs
    work = Path(tempfile.mkdtemp(prefix="stvh-ray-scaling-"))
    load_before = os.getloadavg()
    try:
        data, warm = work / "data", work / "warm"
        generate(data, matches=args.matches, clips_per_match=args.clips_per_match, frames=args.frames,
                 progress=False, seed=0)
        # 2 videos of 6 clips: batches of 4 and 2, the shapes of the measured run (each worker process pays
        # oneDNN's first call per input shape, ~3 s of CPU here, once)
        generate(warm, matches=2, clips_per_match=6, frames=args.frames, progress=False, seed=1)
        first = work / "local-0"
        # the PCA is fitted once, by the first run, and copied into every other fresh folder: the same
        # projection everywhere, and no engine's figure waits on a fit
        runs: dict[str, list[float]] = {}
        cpu_per_clip: dict[str, list[float]] = {}  # CPU seconds (driver + workers) per clip: the engine's cost
        identical = True
        for engine, workers in (("local", None), ("ray", 1), ("ray", 2)):
            name = "local" if engine == "local" else f"ray-{workers}"
            if engine == "ray":
                ray.init(address="local", num_cpus=workers, include_dashboard=False, log_to_driver=False,
                         configure_logging=False)
                extract_with_config(cfg, warm, work / f"warm-{workers}", progress=False, engine="ray")
            try:
                for rep in range(args.repeats):
                    out = work / f"{name}-{rep}"
                    if out != first:
                        out.mkdir()
                        shutil.copy(first / "pca.npz", out / "pca.npz")
                    cpu0 = cpu_seconds()
                    r = extract_with_config(cfg, data, out, progress=False, engine=engine, threads=1)
                    cpu = cpu_seconds() - cpu0
                    assert r["extracted"] == args.matches * args.clips_per_match, r
                    runs.setdefault(name, []).append(r["clips_per_s"])
                    cpu_per_clip.setdefault(name, []).append(round(cpu / r["extracted"], 3))
                    identical = identical and (out == first or same_bytes(first, out))
                    print(f"{name:<6} run {rep + 1}: {r['clips_per_s']:.2f} clips/s ({r['seconds']:.1f} s), "
                          f"{cpu / r['extracted']:.3f} CPU s per clip", flush=True)
            finally:
                if engine == "ray":
                    ray.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    best = {k: max(v) for k, v in runs.items()}
    ratio = best["ray-2"] / best["ray-1"]
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                text=True).stdout.strip()
    except OSError:
        commit = ""
    result = {
        "what": "stvh extract clips/s: single process (1 thread) and --engine ray with 1 and 2 workers "
                "(1 thread each), best of the runs",
        "clips": args.matches * args.clips_per_match, "videos": args.matches, "frames": args.frames,
        "config": "shipped default (efficientnet_lite0, frame_size 112x200, pca 64)",
        "clips_per_s": best, "runs": runs, "cpu_s_per_clip": {k: min(v) for k, v in cpu_per_clip.items()},
        "cpu_s_per_clip_runs": cpu_per_clip, "ratio_2_to_1_workers": round(ratio, 3), "goal": 1.8,
        "goal_met": ratio >= 1.8, "bit_identical": identical,
        "cpus": os.cpu_count(), "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()], "ray": ray.__version__,
        "torch": torch.__version__, "python": platform.python_version(), "commit": commit,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    print(f"clips/s  local {best['local']:.2f}  ray 1 worker {best['ray-1']:.2f}  ray 2 workers {best['ray-2']:.2f}"
          f"  ratio {ratio:.2f} (goal >= 1.8)  bytes identical: {identical}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"written to {args.out}")
    return result


if __name__ == "__main__":
    main()
