"""Latency of ``stvh serve --watch``: from a clip's files being complete to the clip answering a search.

    python benchmarks/watch_latency.py                    # builds a small CNN run, 10 one-at-a-time videos, 100 queued
    python benchmarks/watch_latency.py --run RUN --videos 5 --queued 20

What runs:

1. a run, unless ``--run`` names one: tiny synthetic data (2 matches x 6 clips, 10 frames of 180x320), features of
   the shipped default config (EfficientNet-Lite0, PCA 64) and M-STVH trained for one epoch (64 bits, 3 depths):
   the model does not need to be good, only as costly as the default one;
2. footage: each video is ONE 10-frame clip of that data (an mp4 of 10 frames + its MOT tracks), named ``cNNN``;
3. the server as a user starts it, in its own process: ``stvh serve --run RUN --index IDX --watch DROP --port P``
   (defaults ``--poll 0.5 --settle 1.0``; a new, empty index);
4. **one at a time**: ``--videos`` videos are copied into DROP one after the other (tracks, then the mp4); the clock
   starts when both files are complete and stops at the first ``POST /api/search {"clip": "cNNN/000001"}`` that
   answers 200 (asked every 20 ms); the next video is copied after that;
5. **queued**: ``--queued`` more videos are copied at once; the server's RSS (``/proc/PID/status``) is sampled
   every 0.25 s until every clip is in the index: RSS when the copy ends (all queued), at 10 % and at 100 % done,
   and the peak; videos ingested per second.

Every search answer must be 200 or 404 (a 5xx is counted and reported). The machine is shared: its load average is
recorded at the start and the end. Figures go to ``benchmarks/results/watch_latency.json`` (``--out``), written
atomically.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
STVH = [sys.executable, "-m", "stvh.cli"]


def sh(*args: str) -> None:
    subprocess.run([*STVH, *args], check=True, stdout=subprocess.DEVNULL)


def make_run(root: Path) -> Path:
    """A small CNN run of the default recipe (see the module doc)."""
    sh("data", "synth", "--out", str(root / "data"), "--matches", "2", "--clips-per-match", "6", "--frames", "10",
       "--no-progress", "--seed", "5")
    sh("extract", "--data", str(root / "data"), "--out", str(root / "feats"), "--no-progress")
    sh("train", "--data", str(root / "data"), "--features", str(root / "feats"), "--out", str(root / "run"),
       "--no-progress", "train.epochs=1", "data.val_fraction=0.25", "filter.steps=10", "train.device=cpu")
    return root / "run"


def make_videos(data: Path, out: Path, n: int) -> list[str]:
    """``n`` one-clip videos ``out/cNNN.{mp4,txt}`` made from the clips of ``data`` (cycled)."""
    from stvh.data.formats import read_dataset
    from stvh.data.frames import read_frames
    from stvh.data.mot_export import _write_video

    clips = [c for c in read_dataset(data, flag=None).clips if c.frames is not None]
    names = []
    for i in range(n):
        c = clips[i % len(clips)]
        name = f"c{i:03d}"
        frames = read_frames(c.frames)  # (T, H, W, 3)
        _write_video(out / f"{name}.mp4", list(frames))
        lines = [f"{t + 1},{p + 1},{x1:.2f},{y1:.2f},{x2 - x1:.2f},{y2 - y1:.2f},1"
                 for t in range(len(frames)) for p in np.flatnonzero(c.mask)
                 for x1, y1, x2, y2 in [c.boxes[t, p]]]
        (out / f"{name}.txt").write_text("\n".join(lines) + "\n")
        names.append(name)
    return names


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Client:
    def __init__(self, port: int):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        self.errors: list[str] = []

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        data = json.dumps(body).encode() if body is not None else None
        self.conn.request(method, path, body=data, headers={"Content-Type": "application/json"} if data else {})
        r = self.conn.getresponse()
        payload = json.loads(r.read() or b"{}")
        if r.status >= 500:
            self.errors.append(f"{r.status} {method} {path}: {payload}")
        return r.status, payload

    def searchable(self, clip: str) -> bool:
        return self.request("POST", "/api/search", {"clip": clip, "k": 1})[0] == 200


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def drop_video(src: Path, drop: Path, name: str) -> None:
    shutil.copy(src / f"{name}.txt", drop / "tracks" / f"{name}.txt")
    shutil.copy(src / f"{name}.mp4", drop / "videos" / f"{name}.mp4")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, help="a trained run (default: build a small CNN run)")
    ap.add_argument("--data", type=Path, help="clips to make the videos from (default: the run's data)")
    ap.add_argument("--videos", type=int, default=10, help="videos copied one at a time")
    ap.add_argument("--queued", type=int, default=100, help="videos copied at once")
    ap.add_argument("--poll", type=float, default=0.5)
    ap.add_argument("--settle", type=float, default=1.0)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "watch_latency.json")
    args = ap.parse_args(argv)
    load_start = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="stvh-watch-bench-"))
    server = None
    try:
        t0 = time.perf_counter()
        run = args.run or make_run(tmp)
        build_s = time.perf_counter() - t0
        data = args.data or Path(json.loads((run / "run.json").read_text())["data"])
        src = tmp / "videos"
        src.mkdir()
        names = make_videos(data, src, args.videos + args.queued)
        drop = tmp / "drop"
        (drop / "tracks").mkdir(parents=True)
        (drop / "videos").mkdir()
        port = free_port()
        server = subprocess.Popen([*STVH, "serve", "--run", str(run), "--index", str(tmp / "index.npz"), "--watch",
                                   str(drop), "--port", str(port), "--poll", str(args.poll), "--settle",
                                   str(args.settle)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        client = None
        for _ in range(600):
            try:
                client = Client(port)
                client.request("GET", "/api/health")
                break
            except OSError:
                client = None
                time.sleep(0.1)
        if client is None:
            raise SystemExit(f"the server did not start: {server.stderr.read().decode()[-2000:]}")
        rss_idle = rss_mib(server.pid)
        latencies = []
        for name in names[:args.videos]:
            drop_video(src, drop, name)
            done = time.perf_counter()
            while not client.searchable(f"{name}/000001"):
                time.sleep(0.02)
            latencies.append(time.perf_counter() - done)
            print(f"{name}: searchable {latencies[-1]:.2f} s after its files were complete", flush=True)
        queued = names[args.videos:]
        for name in queued:
            drop_video(src, drop, name)
        t_queued = time.perf_counter()
        samples = [(0.0, rss_mib(server.pid), 0)]
        target = len(names)
        while True:
            clips = client.request("GET", "/api/health")[1]["clips"]
            samples.append((time.perf_counter() - t_queued, rss_mib(server.pid), clips - args.videos))
            if clips >= target:
                break
            time.sleep(0.25)
        took = samples[-1][0]
        tenth = next(s for s in samples if s[2] >= max(1, len(queued) // 10))
        status = client.request("GET", "/api/watch")[1]
        lat = np.array(latencies)
        result = {
            "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "load_average_start": [round(x, 2) for x in load_start],
            "load_average_end": [round(x, 2) for x in os.getloadavg()],
            "run": str(run) if args.run else "built (EfficientNet-Lite0, PCA 64, 64 bits, 3 depths)",
            "run_build_s": round(build_s, 1), "poll_s": args.poll, "settle_s": args.settle,
            "one_at_a_time": {"videos": len(latencies), "latency_s": [round(x, 2) for x in latencies],
                              "median_s": round(float(np.median(lat)), 2), "max_s": round(float(lat.max()), 2),
                              "goal_s": 10.0, "met": bool(lat.max() <= 10.0)},
            "queued": {"videos": len(queued), "all_in_s": round(took, 1),
                       "videos_per_s": round(len(queued) / took, 2) if took else None,
                       "rss_idle_mib": round(rss_idle, 1), "rss_all_queued_mib": round(samples[0][1], 1),
                       "rss_at_10pct_mib": round(tenth[1], 1), "rss_done_mib": round(samples[-1][1], 1),
                       "rss_peak_mib": round(max(s[1] for s in samples), 1)},
            "server_5xx": client.errors, "skipped": status.get("skipped", []),
        }
    finally:
        if server is not None:
            server.terminate()
            server.wait(30)
        shutil.rmtree(tmp, ignore_errors=True)
    from stvh.data.atomic import write_text_atomic

    write_text_atomic(args.out, json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
