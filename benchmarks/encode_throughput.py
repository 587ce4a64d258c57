"""Encode throughput from cached features, as a fraction of the machine's matmul rate (same run).

    python benchmarks/encode_throughput.py                     # 512 clips, threads 1 and 2
    python benchmarks/encode_throughput.py --clips 128 --threads 1 --out /tmp/enc.json

What is timed: ``stvh.train.loop.predict`` (eval mode, no grad, batches of
``--batch-size`` = 64) over an in-memory random feature cache shaped like the
demo's PCA-64 EfficientNet-Lite0 cache: per clip ``roi (N=12, T=10, C=64, 5, 5)``
float16 plus boxes in a 180x320 frame.  The model is built from the model
section of ``configs/synthetic.yaml`` (``--config``; M-STVH, K=64, depth 3,
d=128) with random weights: the cost does not depend on the weight values.
``predict`` includes the float16 -> float32 conversion of each batch (done
chunk by chunk inside the model's inference path since 2026-12-03), the
forward pass and the stacking of codes and predictions, i.e. all of
``stvh encode`` except reading the cache from disk and writing the codes.

Baseline measured in the same run, at the same thread count: the FLOP rate of
``torch.mm`` on 1024x1024 float32 matrices (2 n^3 FLOP per product).  The
timing runs in ``--repeats`` rounds; each round measures, for every thread
count in turn, the matmul rate (0.5 s of products) and then one encoder pass,
so a change of load on a shared machine hits every thread count alike.  The
best of the rounds is kept (all runs are in the JSON).  The model's FLOP per clip is counted by
``torch.utils.flop_counter.FlopCounterMode`` on one batch (matrix products,
convolutions and attention; element-wise work, normalisations and indexing are
not counted, so the achieved rate is a lower bound of the work done).

Printed per thread count: clips/s, model GFLOP per clip, achieved GFLOP/s
(clips/s x GFLOP per clip), matmul GFLOP/s, and achieved / matmul (the fraction
of the machine's dense matmul rate that encoding reaches), plus the speed-up of
the largest thread count over 1 thread.  JSON to ``--out`` (default
``benchmarks/results/encode_throughput.json``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "results" / "encode_throughput.json"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(REPO / "configs" / "synthetic.yaml"),
                    help="config whose model section is used (default: %(default)s)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides, e.g. model.bits=128")
    ap.add_argument("--clips", type=int, default=512, help="clips in the random cache (default: %(default)s)")
    ap.add_argument("--persons", type=int, default=12, help="N (default: %(default)s)")
    ap.add_argument("--frames", type=int, default=10, help="T (default: %(default)s)")
    ap.add_argument("--channels", type=int, default=64, help="C of the cache, e.g. PCA-64 (default: %(default)s)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch thread counts to compare")
    ap.add_argument("--repeats", type=int, default=3,
                    help="rounds; each round times the matmul and one pass over the cache at every thread count")
    ap.add_argument("--matmul-n", type=int, default=1024, help="side of the square float32 matmul baseline")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="JSON results (default: %(default)s)")
    return ap.parse_args(argv)


def random_cache(n_clips: int, persons: int, frames: int, channels: int, seed: int, image_size=(180, 320)):
    """ClipTensors with random boxes inside the frame, 10..N real persons and a float16 roi cache."""
    import torch

    from stvh.train.tensors import ClipTensors

    g = torch.Generator().manual_seed(seed)
    H, W = image_size
    cx = torch.rand(n_clips, 1, persons, generator=g) * W
    cy = torch.rand(n_clips, 1, persons, generator=g) * H
    bw = 10 + torch.rand(n_clips, 1, persons, generator=g) * 30
    bh = 20 + torch.rand(n_clips, 1, persons, generator=g) * 50
    drift = torch.cumsum(torch.randn(n_clips, frames, persons, 2, generator=g) * 2, dim=1)
    x1 = (cx - bw / 2 + drift[..., 0]).clamp(0, W - 2)
    y1 = (cy - bh / 2 + drift[..., 1]).clamp(0, H - 2)
    x2 = torch.minimum(x1 + bw, torch.tensor(W - 1.0))
    y2 = torch.minimum(y1 + bh, torch.tensor(H - 1.0))
    boxes = torch.stack([x1, y1, x2, y2], dim=-1).float()  # (M, T, N, 4)
    n_real = torch.randint(min(10, persons), persons + 1, (n_clips,), generator=g)
    mask = torch.arange(persons)[None, :] < n_real[:, None]
    roi = torch.randn(n_clips, persons, frames, channels, 5, 5, generator=g).to(torch.float16)
    roi[~mask] = 0
    return ClipTensors(
        ids=[f"r/{i}" for i in range(n_clips)], groups=["r"] * n_clips, splits=["train"] * n_clips,
        boxes=boxes, mask=mask, image_size=torch.tensor([[H, W]], dtype=torch.float32).repeat(n_clips, 1),
        activity=torch.randint(0, 8, (n_clips,), generator=g), actions=torch.randint(0, 9, (n_clips, persons),
                                                                                     generator=g),
        roi=roi)


def matmul_rate(n: int, min_seconds: float = 1.0) -> dict:
    """Best and median GFLOP/s of float32 ``torch.mm`` (n x n), 2 n^3 FLOP per product."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty(n, n)
    for _ in range(3):
        torch.mm(a, b, out=out)
    rates = []
    t_end = time.perf_counter() + min_seconds
    while time.perf_counter() < t_end or len(rates) < 5:
        t = time.perf_counter()
        torch.mm(a, b, out=out)
        rates.append(2 * n ** 3 / (time.perf_counter() - t) / 1e9)
    return {"best": max(rates), "median": statistics.median(rates), "products": len(rates)}


def count_flops(model, data, batch_size: int) -> tuple[float, dict]:
    """FLOP per clip of one forward pass over the first batch (FlopCounterMode), and per module."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from stvh.train.loop import _forward

    n = min(batch_size, len(data))
    batch = data.batch(torch.arange(n), "cpu")
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        _forward(model, batch)
    counts = {name: sum(ops.values()) / n / 1e9 for name, ops in counter.get_flop_counts().items()}
    root = type(model).__name__
    per_module = {}
    for child, _ in model.named_children():  # top-level parts; a ModuleList is the sum of its members
        key = f"{root}.{child}"
        if key in counts:
            per_module[child] = counts[key]
        else:
            members = [v for k, v in counts.items() if k.startswith(key + ".") and k.count(".") == 2]
            if members:
                per_module[child] = sum(members)
    return counter.get_total_flops() / n, per_module


def time_predict(model, data, batch_size: int) -> float:
    """Seconds of one ``predict`` pass over all of ``data``."""
    import torch

    from stvh.train.loop import predict

    t = time.perf_counter()
    predict(model, data, torch.device("cpu"), batch_size)
    return time.perf_counter() - t


def interleaved(model, data, batch_size: int, threads: list[int], repeats: int, matmul_n: int) -> dict:
    """Rounds of (matmul rate, one encoder pass) at every thread count in turn, so that a change of
    load on a shared machine hits every thread count alike; returns the runs per thread count."""
    import torch

    from stvh.train.loop import predict

    runs = {n: {"encode_s": [], "matmul": []} for n in threads}
    k = min(len(data), 2 * batch_size)  # two batches warm the allocator and kernels up
    warm = dataclasses.replace(data, ids=data.ids[:k], groups=data.groups[:k], splits=data.splits[:k],
                               boxes=data.boxes[:k], mask=data.mask[:k], image_size=data.image_size[:k],
                               activity=data.activity[:k], actions=data.actions[:k],
                               roi=data.roi[:k] if data.roi is not None else None)
    for n in threads:
        torch.set_num_threads(n)
        predict(model, warm, torch.device("cpu"), batch_size)
    for _ in range(repeats):
        for n in threads:
            torch.set_num_threads(n)
            runs[n]["matmul"].append(matmul_rate(matmul_n, min_seconds=0.5))
            runs[n]["encode_s"].append(time_predict(model, data, batch_size))
    return runs


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from stvh.data.atomic import write_text_atomic
    from stvh.train.config import load_config
    from stvh.train.loop import model_from_config

    cfg = load_config(args.config, args.set)
    torch.manual_seed(args.seed)
    in_channels = args.channels if cfg["model"]["backbone"] != "none" else None
    model = model_from_config(cfg, 8, 9, in_channels).eval()
    data = random_cache(args.clips, args.persons, args.frames, args.channels, args.seed)
    if in_channels is None:
        data.roi = None
    params = sum(p.numel() for p in model.parameters())
    flop_clip, flop_modules = count_flops(model, data, args.batch_size)
    m = cfg["model"]
    print(f"# model {m['name']} K={m['bits']} depth={m['depth']} d={m['d']} d_v={m['d_v']} heads={m['heads']} "
          f"backbone={m['backbone']} (cache C={args.channels}) geometry={m['geometry']}: {params / 1e6:.2f}M parameters")
    print(f"# {args.clips} clips of roi ({args.persons}, {args.frames}, {args.channels}, 5, 5) float16, "
          f"batch {args.batch_size}; torch {torch.__version__}; "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, cpus {os.cpu_count()}, "
          f"load {os.getloadavg()[0]:.2f}")
    print(f"# model FLOP per clip (FlopCounterMode): {flop_clip / 1e9:.4f} GFLOP")
    top = sorted(((v, k) for k, v in flop_modules.items()), reverse=True)[:6]
    print("#   largest parts: " + ", ".join(f"{k} {v:.4f}" for v, k in top))
    print()
    print(f"{'threads':>7}{'clips/s':>10}{'GFLOP/clip':>12}{'GFLOP/s':>10}{'matmul GFLOP/s':>16}{'achieved/matmul':>17}")
    rows = []
    base_threads = torch.get_num_threads()
    try:
        runs = interleaved(model, data, args.batch_size, args.threads, args.repeats, args.matmul_n)
    finally:
        torch.set_num_threads(base_threads)
    for n in args.threads:
        enc_s, mms = runs[n]["encode_s"], runs[n]["matmul"]
        clips_s = len(data) / min(enc_s)
        mm_rate = max(m["best"] for m in mms)
        achieved = clips_s * flop_clip / 1e9
        row = {"threads": n, "clips_per_s": clips_s, "clips_per_s_median": len(data) / statistics.median(enc_s),
               "gflop_per_clip": flop_clip / 1e9, "achieved_gflops": achieved, "matmul_gflops": mm_rate,
               "achieved_over_matmul": achieved / mm_rate, "encode_s_runs": enc_s,
               "matmul_gflops_runs": [m["best"] for m in mms]}
        rows.append(row)
        print(f"{n:>7}{row['clips_per_s']:>10.1f}{row['gflop_per_clip']:>12.4f}{achieved:>10.2f}"
              f"{mm_rate:>16.1f}{row['achieved_over_matmul']:>17.3f}", flush=True)
    speedup = None
    if len(rows) > 1 and rows[0]["threads"] == 1:
        last = rows[-1]
        speedup = {"threads": last["threads"], "encode": last["clips_per_s"] / rows[0]["clips_per_s"],
                   "matmul": last["matmul_gflops"] / rows[0]["matmul_gflops"]}
        print(f"\n{last['threads']} threads vs 1: encode x{speedup['encode']:.2f}, matmul x{speedup['matmul']:.2f}")
    record = {
        "info": {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "host": platform.node(),
                 "python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
                 "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "loadavg": os.getloadavg(),
                 "parameters": params, "model": m, "gflop_per_clip_by_module": flop_modules},
        "args": vars(args), "results": rows, "speedup": speedup,
    }
    write_text_atomic(args.out, json.dumps(record, indent=2))
    print(f"# wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
