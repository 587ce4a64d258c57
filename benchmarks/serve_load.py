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
   client threads (one keep-alive connection each): throughput, p50/p99;
6. **uploads**: ``--uploads`` searches by upload (a zip of 10 PNG frames +
   MOT tracks of a dataset clip), encoded by the model on the fly, from 4
   concurrent clients.

Every request must answer 200 (errors are counted and reported). The client
runs on the same 2-core machine as the server, so its own cost is inside
every latency: it is the stdlib's ``http.client`` (one keep-alive connection
per client thread), about ten times cheaper per request than httpx; the CPU
time per request of the server process and of the client are reported. Figures go to
``benchmarks/results/serve_load.json`` (``--out``), written atomically.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import platform
import queue
import random
import socket
import subprocess
import sys
import tempfile
import threading
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


class Client:
    """One keep-alive HTTP/1.1 connection (stdlib ``http.client``: ~10x less client CPU per request than httpx,
    which matters when client and server share 2 cores). ``post`` returns (status, body bytes)."""

    def __init__(self, port: int, timeout: float = 60):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)

    def post(self, path: str, body: bytes, content_type: str) -> tuple[int, bytes]:
        self.conn.request("POST", path, body=body, headers={"Content-Type": content_type})
        r = self.conn.getresponse()
        return r.status, r.read()

    def close(self):
        self.conn.close()


def search_body(clip: str, k: int, focus: int) -> tuple[bytes, str]:
    return json.dumps({"clip": clip, "k": k, "focus": focus}).encode(), "application/json"


def upload_body(files: dict, k: int) -> tuple[bytes, str]:
    """A multipart body (built by httpx, sent by :class:`Client`)."""
    import httpx

    req = httpx.Request("POST", "http://127.0.0.1/api/search", files=files, data={"k": str(k)})
    return req.read(), req.headers["content-type"]


def sequential(port: int, queries: list[tuple[str, int]], k: int) -> dict:
    lat, server, errors = [], [], 0
    c = Client(port)
    for clip, focus in queries[:50]:  # warm-up
        c.post("/api/search", *search_body(clip, k, focus))
    for clip, focus in queries:
        body = search_body(clip, k, focus)
        t = time.perf_counter()
        status, data = c.post("/api/search", *body)
        ms = (time.perf_counter() - t) * 1e3
        if status != 200:
            errors += 1
            continue
        lat.append(ms)
        server.append(json.loads(data)["search_ms"])
    c.close()
    overhead = [a - b for a, b in zip(lat, server)]
    return {**summary(lat), "errors": errors, "server_search_p50_ms": pct(server, 50),
            "overhead_paired_p50_ms": pct(overhead, 50), "overhead_paired_p99_ms": pct(overhead, 99)}


def concurrent(port: int, bodies: list[tuple[bytes, str]], clients: int, timeout: float = 60) -> dict:
    """``clients`` threads, one connection each, take the requests from one queue; every answer must be 200."""
    jobs: queue.SimpleQueue = queue.SimpleQueue()
    for b in bodies:
        jobs.put(b)
    lat: list[float] = []
    errors = [0]
    lock = threading.Lock()

    def worker():
        c = Client(port, timeout)
        mine, bad = [], 0
        while True:
            try:
                body = jobs.get_nowait()
            except queue.Empty:
                break
            t = time.perf_counter()
            try:
                status, _ = c.post("/api/search", *body)
            except (OSError, http.client.HTTPException):
                status = 0
                c.close()
                c = Client(port, timeout)
            if status == 200:
                mine.append((time.perf_counter() - t) * 1e3)
            else:
                bad += 1
        c.close()
        with lock:
            lat.extend(mine)
            errors[0] += bad

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    seconds = time.perf_counter() - t0
    return {**summary(lat), "errors": errors[0], "clients": clients, "seconds": seconds,
            "throughput_per_s": len(lat) / seconds if seconds else 0.0}


# --------------------------------------------------------------------------- main

def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def with_cpu(pid: int, n: int, fn, *args, **kw) -> dict:
    """Run a phase; add the server's and this client's CPU ms per request."""
    s0, c0 = cpu_seconds(pid), time.process_time()
    out = fn(*args, **kw)
    out["server_cpu_ms_per_request"] = (cpu_seconds(pid) - s0) * 1e3 / max(n, 1)
    out["client_cpu_ms_per_request"] = (time.process_time() - c0) * 1e3 / max(n, 1)
    return out


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
        conc_q = [search_body(rng.choice(ids), args.k, rng.randint(1, DEPTH)) for _ in range(args.searches)]
        uploads = [upload_files(c) for c in world["clips"]]
        up_q = [upload_body(uploads[i % len(uploads)], args.k) for i in range(args.uploads)]

        base_ms = baseline(world["index"], seq_q, args.k)
        print(f"baseline (raw index search): p50 {pct(base_ms, 50):.3f} ms, p99 {pct(base_ms, 99):.3f} ms")
        port = free_port()
        proc = start_server(world, port, tmp / "serve.log")
        try:
            seq = with_cpu(proc.pid, len(seq_q) + 50, sequential, port, seq_q, args.k)
            print(f"sequential: p50 {seq['p50_ms']:.3f} ms, p99 {seq['p99_ms']:.3f} ms, HTTP overhead p50 "
                  f"{seq['overhead_paired_p50_ms']:.3f} ms (paired), errors {seq['errors']}")
            conc = with_cpu(proc.pid, len(conc_q), concurrent, port, conc_q, args.clients)
            print(f"concurrent ({args.clients} clients): {conc['throughput_per_s']:.0f} searches/s, p50 "
                  f"{conc['p50_ms']:.2f} ms, p99 {conc['p99_ms']:.2f} ms, errors {conc['errors']}; CPU ms/request: server "
                  f"{conc['server_cpu_ms_per_request']:.2f}, client {conc['client_cpu_ms_per_request']:.2f}")
            up = with_cpu(proc.pid, len(up_q), concurrent, port, up_q, min(4, max(1, args.uploads)),
                          timeout=120) if up_q else {}
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
