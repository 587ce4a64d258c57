"""Load benchmark of ``stvh serve``: HTTP searches and uploads against the raw index search, on 127.0.0.1 only.

    python benchmarks/serve_load.py                     # 100,000 clips, 2,000 searches from 32 clients, 50 uploads
    python benchmarks/serve_load.py --clips 20000 --searches 500 --clients 8 --uploads 10

What runs:

1. a world in a temporary folder: a tiny synthetic dataset (2 matches x 12
   clips, 10 frames), a tiny M-STVH run on it (``backbone: none``, K = 64,
   3 depths; it encodes the uploads), and an index of ``--clips`` clips: the
   24 dataset clips plus clustered random codes (64 centres, each bit flipped
   with probability 0.1) at every depth;
2. the service, started as a user starts it (``stvh serve --run --index
   --port``) in its own process on 127.0.0.1;
3. **baseline**, in this process, on the same index file: the search the
   service runs for a query clip (``codes_of`` + ``search(k + 1)`` at the
   focus), timed per query (ms);
4. **sequential**: one client, ``--sequential`` searches by clip id (random
   query clip, random focus 1..3, k = 10): latency per request. HTTP overhead =
   latency - the index search time the server reports for that request
   (``search_ms``, paired), and p50(latency) - p50(baseline);
5. **concurrent**: ``--searches`` searches from ``--clients`` concurrent
   clients (asyncio + httpx, one connection each): throughput, p50/p99;
6. **uploads**: ``--uploads`` searches by upload (a zip of 10 PNG frames +
   MOT tracks of a dataset clip), encoded by the model on the fly, from 4
   concurrent clients.

Every request must answer 200 (errors are counted and reported). The client
runs on the same 2-core machine as the server, so its own cost (≈ 0.3 ms per
request for httpx) is inside every latency. Figures go to
``benchmarks/results/serve_load.json`` (``--out``), written atomically.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BITS, DEPTH = 64, 3
TINY = ["model.d=32", "model.d_v=8", "model.heads=2", f"model.bits={BITS}", f"model.depth={DEPTH}",
        "train.epochs=1", "train.batch_size=8", "data.val_fraction=0.25", "filter.steps=10", "train.device=cpu"]


def pct(values, q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else float("nan")


def summary(lat_ms: list[float]) -> dict:
    return {"n": len(lat_ms), "p50_ms": pct(lat_ms, 50), "p90_ms": pct(lat_ms, 90), "p99_ms": pct(lat_ms, 99),
            "mean_ms": float(np.mean(lat_ms)) if lat_ms else float("nan"), "max_ms": max(lat_ms, default=0.0)}


# --------------------------------------------------------------------------- the world

def make_world(root: Path, clips: int, seed: int) -> dict:
    import torch

    from stvh.data.formats import read_dataset
    from stvh.data.synth import generate
    from stvh.index.base import create_index
    from stvh.index.codes import pack_codes
    from stvh.train.config import load_config
    from stvh.train.loop import fit

    generate(root / "data", matches=2, clips_per_match=12, frames=10, size=(96, 160), progress=False, seed=seed)
    torch.manual_seed(seed)
    fit(load_config(None, TINY + [f"seed={seed}"]), root / "data", None, root / "run", progress=False,
        log=lambda *a: None)
    ds = read_dataset(root / "data")
    rng = np.random.default_rng(seed)
    centres = rng.integers(0, 2, (64, DEPTH, BITS), dtype=np.int8) * 2 - 1
    index = create_index("faiss", BITS, DEPTH, meta={"activity_names": list(ds.activities)})
    step = 50_000
    ids = [c.id for c in ds.clips] + [f"bench/{i:07d}" for i in range(max(0, clips - len(ds.clips)))]
    for s in range(0, len(ids), step):
        part = ids[s:s + step]
        signs = centres[rng.integers(0, 64, len(part))] * np.where(rng.random((len(part), DEPTH, BITS)) < 0.1, -1, 1)
        act = rng.integers(0, len(ds.activities), len(part))
        grp = [i.split("/")[0] for i in part]
        index.add(part, pack_codes(signs.astype(np.int8)), activity=act, group=grp)
    index.save(root / "index.npz")
    return {"run": root / "run", "index": root / "index.npz", "clips": ds.clips, "ids": ids,
            "engine": index.engine(detail=True)}


def upload_files(clip) -> dict:
    """A dataset clip as an upload: a zip of its frames (PNG) and its boxes as MOT tracks."""
    from PIL import Image

    from stvh.data.frames import read_frames

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for t, frame in enumerate(read_frames(clip.frames)):
            img = io.BytesIO()
            Image.fromarray(frame).save(img, format="PNG")
            z.writestr(f"{t + 1:06d}.png", img.getvalue())
    lines = [f"{t + 1},{n},{b[0]:.1f},{b[1]:.1f},{b[2] - b[0]:.1f},{b[3] - b[1]:.1f},1"
             for t in range(clip.num_frames) for n in np.flatnonzero(clip.mask) for b in [clip.boxes[t, n]]]
    return {"frames": ("frames.zip", buf.getvalue(), "application/zip"),
            "tracks": ("tracks.txt", ("\n".join(lines) + "\n").encode(), "text/plain")}


# --------------------------------------------------------------------------- phases

def baseline(index_path: Path, queries: list[tuple[str, int]], k: int) -> list[float]:
    """ms per query of the service's own search work, without HTTP."""
    from stvh.index.base import load_index

    index = load_index(index_path)
    out = []
    for clip, focus in queries:
        t = time.perf_counter()
        q = index.codes_of([clip], focus)
        index.search(q, k + 1, focus=focus)
        out.append((time.perf_counter() - t) * 1e3)
    return out


def sequential(base: str, queries: list[tuple[str, int]], k: int) -> dict:
    import httpx

    lat, server, errors = [], [], 0
    with httpx.Client(base_url=base, timeout=30) as c:
        for clip, focus in queries[:50]:  # warm-up
            c.post("/api/search", json={"clip": clip, "k": k, "focus": focus})
        for clip, focus in queries:
            t = time.perf_counter()
            r = c.post("/api/search", json={"clip": clip, "k": k, "focus": focus})
            ms = (time.perf_counter() - t) * 1e3
            if r.status_code != 200:
                errors += 1
                continue
            lat.append(ms)
            server.append(r.json()["search_ms"])
    overhead = [a - b for a, b in zip(lat, server)]
    return {**summary(lat), "errors": errors, "server_search_p50_ms": pct(server, 50),
            "overhead_paired_p50_ms": pct(overhead, 50), "overhead_paired_p99_ms": pct(overhead, 99)}


async def _concurrent(base: str, jobs: list, clients: int, timeout: float) -> tuple[list[float], int, float]:
    import httpx

    queue: asyncio.Queue = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)
    lat: list[float] = []
    errors = 0

    async def worker():
        nonlocal errors
        async with httpx.AsyncClient(base_url=base, timeout=timeout) as c:
            while True:
                try:
                    kwargs = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                t = time.perf_counter()
                try:
                    r = await c.post("/api/search", **kwargs)
                    ok = r.status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    lat.append((time.perf_counter() - t) * 1e3)
                else:
                    errors += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    return lat, errors, time.perf_counter() - t0


def concurrent(base: str, jobs: list, clients: int, timeout: float = 60) -> dict:
    lat, errors, seconds = asyncio.run(_concurrent(base, jobs, clients, timeout))
    return {**summary(lat), "errors": errors, "clients": clients, "seconds": seconds,
            "throughput_per_s": len(lat) / seconds if seconds else 0.0}


# --------------------------------------------------------------------------- main

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(world: dict, port: int, log: Path) -> subprocess.Popen:
    import httpx

    cmd = [sys.executable, "-m", "stvh.cli", "serve", "--run", str(world["run"]), "--index", str(world["index"]),
           "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"stvh serve exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("stvh serve did not answer within 120 s")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=100_000, help="clips in the index")
    ap.add_argument("--searches", type=int, default=2000, help="searches of the concurrent phase")
    ap.add_argument("--clients", type=int, default=32, help="concurrent clients")
    ap.add_argument("--sequential", type=int, default=500, help="searches of the one-client phase")
    ap.add_argument("--uploads", type=int, default=50, help="searches by upload")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "serve_load.json")
    args = ap.parse_args(argv)
    if min(args.clips, args.searches, args.clients, args.sequential) < 1 or args.uploads < 0:
        ap.error("--clips, --searches, --clients and --sequential must be >= 1, --uploads >= 0")

    from stvh.data.atomic import write_text_atomic

    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="stvh-serve-load-") as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        world = make_world(tmp, args.clips, args.seed)
        print(f"world: {len(world['ids'])} clips, engine {world['engine']}  [{time.perf_counter() - t:.0f}s]")
        ids = world["ids"]
        seq_q = [(rng.choice(ids), rng.randint(1, DEPTH)) for _ in range(args.sequential)]
        conc_q = [{"json": {"clip": rng.choice(ids), "k": args.k, "focus": rng.randint(1, DEPTH)}}
                  for _ in range(args.searches)]
        uploads = [upload_files(c) for c in world["clips"]]
        up_q = [{"files": uploads[i % len(uploads)], "data": {"k": str(args.k)}} for i in range(args.uploads)]

        base_ms = baseline(world["index"], seq_q, args.k)
        print(f"baseline (raw index search): p50 {pct(base_ms, 50):.3f} ms, p99 {pct(base_ms, 99):.3f} ms")
        port = free_port()
        proc = start_server(world, port, tmp / "serve.log")
        base = f"http://127.0.0.1:{port}"
        try:
            seq = sequential(base, seq_q, args.k)
            print(f"sequential: p50 {seq['p50_ms']:.3f} ms, p99 {seq['p99_ms']:.3f} ms, HTTP overhead p50 "
                  f"{seq['overhead_paired_p50_ms']:.3f} ms (paired), errors {seq['errors']}")
            conc = concurrent(base, conc_q, args.clients)
            print(f"concurrent ({args.clients} clients): {conc['throughput_per_s']:.0f} searches/s, p50 "
                  f"{conc['p50_ms']:.2f} ms, p99 {conc['p99_ms']:.2f} ms, errors {conc['errors']}")
            up = concurrent(base, up_q, min(4, max(1, args.uploads)), timeout=120) if up_q else {}
            if up:
                print(f"uploads: {up['throughput_per_s']:.1f}/s, p50 {up['p50_ms']:.0f} ms, p99 {up['p99_ms']:.0f} "
                      f"ms, errors {up['errors']}")
        finally:
            proc.terminate()
            proc.wait(10)
    base_p50 = pct(base_ms, 50)
    result = {
        "info": {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "host": platform.node(), "python": platform.python_version(),
                 "cpus": os.cpu_count(), "loadavg": list(os.getloadavg()), "engine": world["engine"],
                 "omp_num_threads": os.environ.get("OMP_NUM_THREADS")},
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "baseline": {**summary(base_ms), "what": "codes_of + search(k+1) on the same index, in-process"},
        "sequential": seq, "concurrent": conc, "uploads": up,
        "http_overhead_p50_ms": {"paired": seq["overhead_paired_p50_ms"], "p50_minus_baseline_p50":
                                 seq["p50_ms"] - base_p50, "goal": 2.0},
        "errors": seq["errors"] + conc["errors"] + (up.get("errors", 0) if up else 0),
    }
    write_text_atomic(args.out, json.dumps(result, indent=2) + "\n")
    print(f"HTTP overhead p50: {result['http_overhead_p50_ms']['paired']:.3f} ms paired, "
          f"{result['http_overhead_p50_ms']['p50_minus_baseline_p50']:.3f} ms vs baseline (goal <= 2 ms); "
          f"errors {result['errors']}; written to {args.out}")
    return result


if __name__ == "__main__":
    main()
