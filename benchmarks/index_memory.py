"""Resident memory, open, build and save time of the version-2 index (issue 15, part 1).

    python benchmarks/index_memory.py --make-codes 10000000 codes10m.npz [--bits 64] [--depth 1]
    python benchmarks/index_memory.py [--sizes 1000000 10000000] [--bits 64 128] [--work DIR]
    python benchmarks/index_memory.py --direct 100000000 --bits 64        # no CODES file (see below)

``--make-codes N OUT`` writes a CODES file of N clips (ids ``video0001/000123``
in a shuffled order, uniform random codes, 8 activities, 8 groups) for users
and benchmarks, without Python strings per clip.

The measurement runs every step in a fresh process (so that resident
memory is the step's own): (1) ``build_index`` from a CODES file (time, peak
RSS); (2) open the index (time, RSS delta), one search (RSS delta after it, an
id lookup and the labels of the 50 results: what a searching process keeps
resident), then touch every id and label page (RSS delta: the worst case);
(3) the first add after the load (copy-on-write) and a save.  Step 2 runs
twice: with the index file dropped from the OS page cache first ("cold", as
a fresh open of an index finds it) and right after writing it ("warm").  RSS
is ``VmRSS`` of ``/proc/self/status`` (file pages of the memory maps
included; ``RssAnon``, the process's own memory, is given beside it).  ``--direct N`` builds the index
from generated arrays instead of a CODES file (a CODES file of 100M clips
holds 6.4 GB of fixed-width ids) and then measures (2) and (3) the same way.
Results: ``benchmarks/results/index_memory.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
V1_BYTES_PER_CLIP = "92-214"      # issue 15: the version-1 index (object ids + dict), measured before this change
GOAL = "resident memory <= code bytes + 16 bytes per clip"


def rss_mib(kind: str = "VmRSS") -> float:
    """Resident memory in MiB: ``VmRSS`` (all), ``RssAnon`` (the process's own) or ``RssFile`` (mapped files)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(kind + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def drop_from_page_cache(path: str) -> None:
    """Evict a (clean, fsynced) file from the OS page cache: the next open reads it from disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def peak_mib() -> float:
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --------------------------------------------------------------------------- data

def id_digits(n: int, seed: int) -> tuple[np.ndarray, int]:
    """Ids ``video<V>/<C:06d>`` of n clips in a shuffled order as ASCII bytes ``uint8 (n, w)``."""
    vw = max(4, len(str(max(n - 1, 0) // 1000)))
    w = 5 + vw + 1 + 6
    num = np.random.default_rng(seed).permutation(n).astype(np.int64)
    out = np.empty((n, w), np.uint8)
    out[:, :5] = np.frombuffer(b"video", np.uint8)
    out[:, 5 + vw] = ord("/")
    video, clip = num // 1000, num % 1000
    for j in range(vw):
        out[:, 5 + vw - 1 - j] = ord("0") + (video // 10 ** j) % 10
    for j in range(6):
        out[:, w - 1 - j] = ord("0") + (clip // 10 ** j) % 10
    return out, w


def make_codes(n: int, out: Path, bits: int = 64, depth: int = 1, seed: int = 0) -> None:
    """Write a CODES file of n clips (see the module docstring)."""
    from stvh.index.codes import CodeSet

    digits, w = id_digits(n, seed)
    ids = digits.astype(np.uint32).view(f"<U{w}").reshape(n)         # the same bytes as str code points
    del digits
    rng = np.random.default_rng(seed + 1)
    codes = rng.integers(0, 256, (n, depth, bits // 8), dtype=np.uint8)
    names = np.array([f"match{g}" for g in range(8)])
    cs = CodeSet(ids=ids, codes=codes, bits=bits, activity=rng.integers(0, 8, n),
                 group=names[rng.integers(0, 8, n)], split=np.full(n, "", "<U1"),
                 meta={"activities": [f"a{i}" for i in range(8)], "synthetic": "benchmarks/index_memory.py"})
    cs.save(out)


# --------------------------------------------------------------------------- steps (one process each)

def step_build(codes: str, out: str) -> dict:
    from stvh.index.commands import build_index
    r0 = rss_mib()
    s = build_index(codes, out, overwrite=True)
    return {"build_seconds": s["seconds"], "build_seconds_read": s["seconds_read"],
            "build_seconds_add": s["seconds_add"], "build_seconds_save": s["seconds_save"],
            "build_peak_rss_mib": round(peak_mib(), 1), "build_rss_before_mib": round(r0, 1),
            "bytes_on_disk": s["bytes_on_disk"]}


def step_direct(n: int, bits: int, out: str, seed: int = 0) -> dict:
    """Build an index of n clips from generated arrays (no CODES file) and save it."""
    from stvh.index import create_index
    from stvh.index.ids import EncodedIds, hash_segments

    r0 = rss_mib()
    t0 = time.perf_counter()
    digits, w = id_digits(n, seed)
    buf = digits.reshape(-1)
    off = np.arange(n + 1, dtype=np.int64) * w
    enc = EncodedIds(buf, off, hash_segments(buf, off))
    rng = np.random.default_rng(seed + 1)
    codes = rng.integers(0, 256, (n, bits // 8), dtype=np.uint8)
    act = rng.integers(0, 8, n)
    index = create_index("faiss", bits, 1)
    t1 = time.perf_counter()
    index.add(enc, codes, activity=act, group=np.full(n, "", "<U1"))
    del enc, codes, act, digits, buf, off
    t2 = time.perf_counter()
    index.save(out)
    t3 = time.perf_counter()
    return {"build_seconds": round(t3 - t0, 2), "build_seconds_generate": round(t1 - t0, 2),
            "build_seconds_add": round(t2 - t1, 2), "build_seconds_save": round(t3 - t2, 2),
            "build_peak_rss_mib": round(peak_mib(), 1), "build_rss_before_mib": round(r0, 1),
            "bytes_on_disk": os.path.getsize(out)}


def step_open(path: str, work: str, cache: str = "cold") -> dict:
    from stvh.index import load_index
    from stvh.index.faiss_backend import import_faiss

    import_faiss()                    # the engines' modules (about 15 MiB) before the baseline
    if cache == "cold":
        drop_from_page_cache(path)
    rng = np.random.default_rng(7)
    r0, a0 = rss_mib(), rss_mib("RssAnon")
    t0 = time.perf_counter()
    index = load_index(path)
    t1 = time.perf_counter()
    r1 = rss_mib()
    n = len(index)
    q = rng.integers(0, 256, (1, index.nbytes_code), dtype=np.uint8)
    index.search(q, 50)                                       # warm-up: the first scan faults the codes in
    t2 = time.perf_counter()
    ids, dist = index.search(q, 50)
    t3 = time.perf_counter()
    clip = str(ids[0, 0])
    t4 = time.perf_counter()
    pos = index.positions([clip])                              # an id lookup: a few pages of the id table
    act, grp = index.labels_of(ids[0].tolist())
    t5 = time.perf_counter()
    r2, a2 = rss_mib(), rss_mib("RssAnon")
    t = index._table
    touched = int(np.asarray(t.buf).sum(dtype=np.uint64)) + int(np.asarray(t.off[-1])) + \
        int(np.asarray(t.hkey).sum(dtype=np.uint64) % 7) + int(np.asarray(t.hpos).sum(dtype=np.uint64) % 7) + \
        int(np.asarray(index._activity).sum()) + int(np.asarray(index._group).sum())
    r3 = rss_mib()
    code_bytes = n * index.nbytes_code * index.depth
    per = (lambda mib: round((mib * 2 ** 20 - code_bytes) / n, 2)) if n else (lambda mib: None)
    res = {"page_cache": cache, "clips": n, "bits": index.bits, "depth": index.depth,
           "code_bytes_per_clip": index.nbytes_code * index.depth,
           "open_seconds": round(t1 - t0, 4), "open_rss_delta_mib": round(r1 - r0, 1),
           "search_ms": round(1000 * (t3 - t2), 2), "lookup_and_labels_ms": round(1000 * (t5 - t4), 2),
           "rss_delta_after_search_mib": round(r2 - r0, 1),
           "bytes_per_clip_after_search": round((r2 - r0) * 2 ** 20 / n, 2) if n else None,
           "bytes_per_clip_beyond_codes_after_search": per(r2 - r0),
           "anon_rss_delta_after_search_mib": round(a2 - a0, 1),
           "rss_delta_after_touching_all_mib": round(r3 - r0, 1),
           "bytes_per_clip_beyond_codes_after_touching_all": per(r3 - r0),
           "found": int(pos[0]) >= 0 and touched >= 0 and act.shape[0] == 50}
    # copy-on-write: the first add after the load, then a save
    t6 = time.perf_counter()
    index.add(["bench/new"], q)
    t7 = time.perf_counter()
    out = os.path.join(work, "resaved.idx")
    index.save(out)
    t8 = time.perf_counter()
    res.update({"first_add_after_load_seconds": round(t7 - t6, 3), "save_seconds": round(t8 - t7, 3),
                "peak_rss_mib": round(peak_mib(), 1)})
    os.remove(out)
    return res


def run_child(args: list[str]) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", *args]
    p = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if p.returncode:
        raise SystemExit(f"step {args[0]} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def measure(n: int, bits: int, work: Path, direct: bool) -> dict:
    idx = work / f"i{n}_{bits}.idx"
    row = {"clips": n, "bits": bits, "source": "generated arrays" if direct else "CODES file"}
    if direct:
        row.update(run_child(["direct", str(n), str(bits), str(idx)]))
    else:
        codes = work / f"c{n}_{bits}.npz"
        t0 = time.perf_counter()
        make_codes(n, codes, bits)
        row["make_codes_seconds"] = round(time.perf_counter() - t0, 1)
        row["codes_file_bytes"] = codes.stat().st_size
        row.update(run_child(["build", str(codes), str(idx)]))
        codes.unlink()
    row["open_cold"] = run_child(["open", str(idx), str(work), "cold"])
    row["open_warm"] = run_child(["open", str(idx), str(work), "warm"])
    idx.unlink()
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--make-codes", nargs=2, metavar=("N", "OUT"))
    ap.add_argument("--sizes", nargs="*", type=int, default=[1_000_000, 10_000_000])
    ap.add_argument("--bits", nargs="+", type=int, default=[64, 128])
    ap.add_argument("--depth", type=int, default=1)
    ap.add_argument("--direct", type=int, default=None, help="also measure N clips built from generated arrays")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "index_memory.json")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        kind, *rest = a.child
        res = {"build": lambda: step_build(*rest), "open": lambda: step_open(*rest),
               "direct": lambda: step_direct(int(rest[0]), int(rest[1]), rest[2])}[kind]()
        print(json.dumps(res))
        return
    if a.make_codes:
        t0 = time.perf_counter()
        make_codes(int(a.make_codes[0]), Path(a.make_codes[1]), a.bits[0], a.depth)
        print(f"wrote {a.make_codes[1]}: {int(a.make_codes[0]):,} clips, {a.bits[0]} bits, depth {a.depth} "
              f"in {time.perf_counter() - t0:.1f} s")
        return
    work = a.work or Path(tempfile.mkdtemp(prefix="stvh-index-memory-"))
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    old = json.loads(a.out.read_text()) if a.out.exists() else {}
    plan = [(n, b, False) for n in a.sizes for b in a.bits] + ([(a.direct, a.bits[0], True)] if a.direct else [])
    for n, b, direct in plan:
        row = measure(n, b, work, direct)
        print(json.dumps(row), flush=True)
        rows.append(row)
    keep = [r for r in old.get("rows", []) if (r["clips"], r["bits"], r["source"]) not in
            {(x["clips"], x["bits"], x["source"]) for x in rows}]
    result = {"goal": GOAL, "v1_bytes_per_clip_from_issue_15": V1_BYTES_PER_CLIP,
              "machine": f"{os.cpu_count()} cores, {os.uname().sysname} {os.uname().release}",
              "measured": time.strftime("%Y-%m-%d"),
              "rows": sorted(keep + rows, key=lambda r: (r["source"], r["clips"], r["bits"]))}
    from stvh.data.atomic import write_text_atomic

    a.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(a.out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
