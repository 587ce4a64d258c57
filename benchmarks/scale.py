"""Exact Hamming top-k at 1M-100M clips on codes like ours: stvh's scan and MIH vs FAISS (issue 15, part 3).

    python benchmarks/scale.py --measure-from RUN/codes.npz        # per-class code statistics -> results JSON
    python benchmarks/scale.py --quick                              # 1M clips, 64 + 128 bits, every code kind
    nice -n 5 python benchmarks/scale.py                            # 1M, 10M, 100M (about an hour)
    python benchmarks/scale.py --only trained/64/100M p15/64        # rerun some cells (kind[/bits[/n]])
    python benchmarks/scale.py --methods mih auto                   # rerun some methods (kept: the others')
    python benchmarks/scale.py --table                              # print the markdown table of the results

Code kinds (every draw is seeded; a 1M or 10M cell is the prefix of the 100M draw):

* ``trained``: like a trained model's codes.  ``--measure-from CODES.npz`` (``stvh encode``'s file, with its
  ``split``) takes the deepest code of every clip; per activity class the majority code of its train clips and,
  per bit, how many of its held-out (non-train) clips differ from it there, plus the class frequencies.  Only
  these statistics are stored (``benchmarks/results/trained_code_stats.json``, with the file they came from).
  A clip is drawn as: class by the frequencies, the class's majority code, each bit flipped independently
  with rate (flips + 0.5) / (held-out clips + 1) (Jeffreys: a bit never seen to flip in 27 clips still
  flips now and then).  Bit correlations are ignored.
* ``p05`` / ``p15``: 2,000 uniform random centres, each bit flipped with probability 0.05 / 0.15.
* ``uniform``: uniform random bytes.
Queries are fresh draws of the same kind (same centres / classes), independent of the database.

Methods (one core: ``faiss.omp_set_num_threads(1)``, stvh ``threads=1``):

* ``scan``: stvh's C kernel, ``kernel_topk`` -- the reference every figure is a ratio to;
* ``mih``: stvh's multi-index hashing (``stvh.index.mih.MIHTables``; exact, falls back to the scan itself);
* ``auto``: the index a user gets (``create_index("faiss", bits, 1)``; its engine is recorded);
* ``faiss-flat``: ``IndexBinaryFlat``;
* ``faiss-mh``: ``IndexBinaryMultiHash`` made exact: m = min(4, K // b) tables of b = min(20, round(log2 n))
  bits; probe with ``nflip`` f = 0, 1, 2, ... (``range_search``, radius m (f + 1)): every row within
  Hamming distance m (f + 1) - 1 has a substring within f flips of the query's (pigeonhole), so once that
  radius holds >= k rows their (distance, id) order is the exact top-k.  When the next f would take the
  probes (cumulated over the radii) past n / 100, the query goes to the ``IndexBinaryFlat`` holding the
  same codes;
* approximate, for context, on 64-bit cells (``--approx-all``: 128 too) of ``--approx-kinds`` (trained and
  p15; ``--quick``: trained): FAISS
  ``IndexBinaryIVF`` (nlist sqrt(n), nprobe 16, trained on 50 rows a list; n <= ``--approx-max-n``, 10M)
  and two HNSW graphs, FAISS ``IndexBinaryHNSW`` (M 16, efConstruction 40, efSearch 128) and usearch
  (``b1`` Hamming, connectivity 16, expansion 40 to add, 128 to search), n <= ``--graph-max-n`` (1M: one
  core inserts 7-9k codes a second into them, so 10M would take 20-25 min a graph), with recall@k: the share of
  the k results whose true distance is <= the scan's k-th distance (ties counted as hits).

Timing: one query per call; each method runs beside the scan, query by query, alternating which goes
first, ``--repeats`` times (2; once at 100M; the best time per query is kept).  ``ms`` is the median per query,
``x_scan`` the median over queries of method time / scan time of the same query (paired ratios, robust
to the load of a shared machine).  ``mismatch`` counts queries whose ids or distances differ from the
scan's (0 = exact).  ``B/clip``: index bytes / n where the index says (codes included), and the process's
resident memory growth over the build / n (glibc is told to map every block over 128 kB, so that freed
memory is returned and the growth is the index's).  Threads: the scan and MIH on the cell's queries as one
batch with 1 and 2 threads (best of 3): wall-time speedup, and the process CPU time of 2 threads over 1
(1.0 = threads add no work) and per wall second (the cores the 2 threads actually got: on a shared
machine the speedup is capped by it).
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import inspect
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
STATS = HERE / "results" / "trained_code_stats.json"
OUT = HERE / "results" / "scale.json"
KINDS = ("trained", "p05", "p15", "uniform")
KIND_ID = {k: i for i, k in enumerate(KINDS)}
EXACT = ("mih", "auto", "faiss-flat", "faiss-mh")
APPROX = ("faiss-hnsw", "faiss-ivf", "usearch")
GRAPHS = ("faiss-hnsw", "usearch")
CHUNK = 1 << 20
CENTRES = 2000


# ---------------------------------------------------------------- trained-code statistics
def measure_stats(path: Path) -> dict:
    """Per-class majority code (train clips) and per-bit flip counts (held-out clips) of a CODES file."""
    z = np.load(path, allow_pickle=False)
    codes = z["codes"]                                    # (n, depth, K/8) uint8
    codes = codes[:, -1] if codes.ndim == 3 else codes    # deepest focus
    bits = int(z["bits"])
    act = z["activity"].astype(np.int64)
    split = z["split"].astype(str)
    meta = json.loads(str(z["meta"])) if "meta" in z.files else {}
    names = meta.get("activities") or [str(c) for c in range(act.max() + 1)]
    held = split != "train"
    unpacked = np.unpackbits(codes, axis=1)[:, :bits]     # (n, K) 0/1
    out = {"bits": bits, "source": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
           "focus": "deepest", "clips": int(len(act)), "held_out": int(held.sum()),
           "run": meta.get("run"), "model": meta.get("model"), "classes": []}
    for c in range(len(names)):
        tr = (act == c) & ~held
        ho = (act == c) & held
        if not (act == c).any():
            continue
        ref = tr if tr.any() else (act == c)
        maj = (unpacked[ref].mean(axis=0) > 0.5).astype(np.uint8)
        flips = (unpacked[ho] != maj).sum(axis=0)
        out["classes"].append({"name": names[c], "clips": int((act == c).sum()), "held_out": int(ho.sum()),
                               "majority": np.packbits(maj).tobytes().hex(), "flips": flips.astype(int).tolist()})
    return out


def stats_summary(s: dict) -> dict:
    """Mean flip rate, held-out clips' mean distance to their class's majority, nearest other majority."""
    maj = np.array([np.unpackbits(np.frombuffer(bytes.fromhex(c["majority"]), np.uint8)) for c in s["classes"]])
    dist = (maj[:, None] != maj[None]).sum(-1) + np.eye(len(maj), dtype=int) * 10 ** 6
    rates = np.array([(np.array(c["flips"]) + 0.5) / (c["held_out"] + 1) for c in s["classes"]])
    raw = np.array([np.array(c["flips"]) / max(c["held_out"], 1) for c in s["classes"]])
    return {"classes": len(maj), "mean_rate_raw": round(float(raw.mean()), 4),
            "mean_rate_jeffreys": round(float(rates.mean()), 4),
            "bits_never_flipped": int((raw == 0).sum()),
            "expected_flips_per_clip": round(float(rates.sum(1).mean()), 2),
            "min_distance_between_majorities": int(dist.min())}


def load_stats(bits: int) -> dict:
    try:
        all_stats = json.loads(STATS.read_text())
    except FileNotFoundError:
        fail(f"{STATS} is missing: run benchmarks/scale.py --measure-from CODES.npz first")
    s = all_stats.get(str(bits))
    if s is None:
        fail(f"{STATS} has no {bits}-bit statistics: run benchmarks/scale.py --measure-from "
                 f"with a {bits}-bit CODES file")
    return s


# ---------------------------------------------------------------- code draws
def bernoulli_rows(rng: np.random.Generator, m: int, p: float) -> np.ndarray:
    """Sorted distinct rows of ``range(m)`` each kept independently with probability ``p`` (geometric gaps)."""
    if p <= 0 or m == 0:
        return np.empty(0, np.int64)
    out, start = [], 0
    while start < m:
        need = int((m - start) * p + 6 * math.sqrt((m - start) * p + 1) + 16)
        pos = start + np.cumsum(rng.geometric(p, need)) - 1
        out.append(pos[pos < m])
        start = int(pos[-1]) + 1
    return np.concatenate(out)


def flip_bits(rng: np.random.Generator, block: np.ndarray, rows: np.ndarray, rates: np.ndarray) -> None:
    """XOR bit j of ``block[rows]`` (packed, packbits order) with probability ``rates[j]``, in place."""
    for j, p in enumerate(rates):
        hit = rows[bernoulli_rows(rng, len(rows), float(p))]
        block[hit, j >> 3] ^= np.uint8(0x80 >> (j & 7))


def class_model(bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(majority codes (C, K/8), flip rates (C, K), class frequencies (C,)) of the stored statistics."""
    s = load_stats(bits)
    maj = np.array([np.frombuffer(bytes.fromhex(c["majority"]), np.uint8) for c in s["classes"]])
    rates = np.array([(np.array(c["flips"]) + 0.5) / (c["held_out"] + 1) for c in s["classes"]])
    freq = np.array([c["clips"] for c in s["classes"]], float)
    return maj, rates, freq / freq.sum()


def draw_block(kind: str, m: int, bits: int, rng: np.random.Generator, model) -> np.ndarray:
    """``m`` packed codes ``(m, K/8)`` of ``kind``; ``model`` = centres (clustered) or class_model (trained)."""
    nb = bits // 8
    if kind == "uniform":
        return rng.integers(0, 256, (m, nb), dtype=np.uint8)
    if kind == "trained":
        maj, rates, freq = model
        cls = rng.choice(len(freq), m, p=freq)
        block = maj[cls]
        for c in range(len(freq)):
            flip_bits(rng, block, np.flatnonzero(cls == c), rates[c])
        return block
    p = {"p05": 0.05, "p15": 0.15}[kind]
    block = model[rng.integers(0, len(model), m)]
    flip_bits(rng, block, np.arange(m), np.full(bits, p))
    return block


def kind_model(kind: str, bits: int, seed: int):
    if kind == "trained":
        return class_model(bits)
    if kind in ("p05", "p15"):
        return np.random.default_rng([seed, 7, bits]).integers(0, 256, (CENTRES, bits // 8), dtype=np.uint8)
    return None


def draw_codes(kind: str, n: int, bits: int, seed: int, chunk: int = CHUNK) -> np.ndarray:
    """``n`` database codes; chunk i comes from its own seeded stream, so smaller n are prefixes."""
    model = kind_model(kind, bits, seed)
    out = np.empty((n, bits // 8), np.uint8)
    for i, s in enumerate(range(0, n, chunk)):
        rng = np.random.default_rng([seed, KIND_ID[kind], bits, i])
        out[s:s + chunk] = draw_block(kind, chunk, bits, rng, model)[:n - s]
    return out


def draw_queries(kind: str, nq: int, bits: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng([seed, KIND_ID[kind], bits, 1 << 30])
    return draw_block(kind, nq, bits, rng, kind_model(kind, bits, seed))


# ---------------------------------------------------------------- helpers
def rss() -> int:
    """Resident memory of this process in bytes."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def hamming(db: np.ndarray, ids: np.ndarray, q: np.ndarray) -> np.ndarray:
    """True distances of rows ``ids (k,)`` (-1 = none: returned as a huge value) to the packed query ``q``."""
    ok = ids >= 0
    d = np.full(ids.shape, 1 << 20, np.int64)
    d[ok] = np.bitwise_count(db[ids[ok]] ^ q).sum(axis=1)
    return d


def fmt_n(n: int) -> str:
    return f"{n // 1_000_000}M" if n % 1_000_000 == 0 else (f"{n // 1000}k" if n % 1000 == 0 else str(n))


def parse_n(s: str) -> int:
    """``"200k"``, ``"10M"``, ``"1000"`` -> a positive count (argparse reports a ValueError as a bad value)."""
    t = s.strip().lower()
    mult = {"k": 1000, "m": 1_000_000}.get(t[-1:], 1)
    n = int(float(t[:-1] if mult > 1 else t) * mult)
    if n < 1:
        raise ValueError(s)
    return n


parse_n.__name__ = "size"          # argparse: "invalid size value: '1X'"


def fail(msg: str) -> None:
    """One line ``error: ...`` on stderr, exit status 2."""
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


# ---------------------------------------------------------------- methods
def scan_fn(db, k):
    from stvh.index.kernel import kernel_topk
    return lambda q: kernel_topk(db, q, k)


def mih_available() -> str | None:
    """None when stvh's MIH can be used, else why not."""
    try:
        from stvh.index import mih
    except ImportError as exc:
        return f"not available yet ({exc})"
    if not getattr(mih, "AVAILABLE", True):
        return "not available (extension not built)"
    return None


class Method:
    """A built index: ``search(q (1, nb)) -> (ids (1, k), dist (1, k))``, memory, notes."""

    exact = True

    def __init__(self, name: str):
        self.name = name
        self.nbytes: int | None = None
        self.notes: dict = {}

    def close(self) -> None:
        pass


class Mih(Method):
    def __init__(self, db, bits, k):
        super().__init__("mih")
        from stvh.index.mih import MIHTables
        self.t = MIHTables.build(db, bits)
        self.db, self.k = db, k
        tb = getattr(self.t, "table_bytes", None)
        tb = getattr(self.t, "nbytes", None) if tb is None else tb
        self.nbytes = None if tb is None else int(tb) + db.nbytes
        self.notes = {"tables": list(getattr(self.t, "sizes", [])), "fallback": 0, "queries": 0}

    def search(self, q):
        pos, dist, st = self.t.search(self.db, q, self.k, threads=1)
        self.notes["fallback"] += int(st.get("fallback", 0))
        self.notes["queries"] += len(q)
        return pos, dist


class Auto(Method):
    """The user's index: ``create_index("faiss", bits, 1)`` over the same codes (string ids c0, c1, ...)."""

    def __init__(self, db, bits, k):
        super().__init__("auto")
        from stvh.index import create_index
        self.ix = create_index("faiss", bits, 1)
        n = len(db)
        for s in range(0, n, CHUNK):
            part = db[s:s + CHUNK]
            self.ix.add(np.char.add("c", np.arange(s, s + len(part)).astype(str)), part)
        self.k = k
        self.ix.search_positions(db[:1], k)          # builds (and measures) whatever engine it chooses
        try:
            self.notes["engine"] = self.ix.engine(detail=True)
        except TypeError:
            self.notes["engine"] = self.ix.engine()

    def search(self, q):
        return self.ix.search_positions(q, self.k)


class FaissFlat(Method):
    def __init__(self, db, bits, k):
        super().__init__("faiss-flat")
        import faiss
        self.ix = faiss.IndexBinaryFlat(bits)
        self.ix.add(db)
        self.k = k
        self.nbytes = db.nbytes

    def search(self, q):
        d, i = self.ix.search(q, self.k)
        return i, d


class FaissMHExact(Method):
    """IndexBinaryMultiHash, certified by growing the probe radius (see the module docstring)."""

    def __init__(self, db, bits, k):
        super().__init__("faiss-mh")
        import faiss
        n = len(db)
        self.b = min(20, max(8, round(math.log2(max(n, 2)))))
        self.m = min(4, bits // self.b)
        self.ix = faiss.IndexBinaryMultiHash(bits, self.m, self.b)
        self.ix.add(db)
        self.flat = faiss.downcast_IndexBinary(self.ix.storage)
        self.k = k
        budget, cum, self.fmax = n / 100, 0, -1
        while self.fmax < self.b:
            cost = self.m * sum(math.comb(self.b, i) for i in range(self.fmax + 2))
            if cum + cost > budget and self.fmax >= 0:
                break
            cum += cost
            self.fmax += 1
        self.notes = {"tables": f"{self.m} x {self.b} bits", "max_nflip": self.fmax, "fallback": 0, "queries": 0}

    def search(self, q):
        self.notes["queries"] += 1
        for f in range(self.fmax + 1):
            self.ix.nflip = f
            lims, D, I = self.ix.range_search(q, self.m * (f + 1))     # distances < m (f + 1)
            if len(I) >= self.k:
                o = np.lexsort((I, D))[:self.k]
                return I[o][None].astype(np.int64), D[o][None].astype(np.int32)
        self.notes["fallback"] += 1
        d, i = self.flat.search(q, self.k)
        return i, d


class FaissHNSW(Method):
    exact = False

    def __init__(self, db, bits, k):
        super().__init__("faiss-hnsw")
        import faiss
        self.ix = faiss.IndexBinaryHNSW(bits, 16)
        self.ix.add(db)
        self.ix.hnsw.efSearch = 128
        self.k = k
        self.notes = {"M": 16, "efSearch": 128}

    def search(self, q):
        d, i = self.ix.search(q, self.k)
        return i, d


class FaissIVF(Method):
    exact = False

    def __init__(self, db, bits, k):
        super().__init__("faiss-ivf")
        import faiss
        n = len(db)
        nlist = max(16, int(math.sqrt(n)))
        self.quantizer = faiss.IndexBinaryFlat(bits)
        self.ix = faiss.IndexBinaryIVF(self.quantizer, bits, nlist)
        sample = db[np.random.default_rng(0).choice(n, min(n, 50 * nlist), replace=False)]
        self.ix.train(sample)
        self.ix.add(db)
        self.ix.nprobe = 16
        self.k = k
        self.notes = {"nlist": nlist, "nprobe": 16}

    def search(self, q):
        d, i = self.ix.search(q, self.k)
        return i, d


class USearch(Method):
    exact = False

    def __init__(self, db, bits, k):
        super().__init__("usearch")
        from usearch.index import Index
        self.ix = Index(ndim=bits, metric="hamming", dtype="b1", connectivity=16, expansion_add=40,
                        expansion_search=128)
        self.ix.add(np.arange(len(db), dtype=np.uint64), db, threads=1)
        self.k = k
        self.nbytes = int(self.ix.memory_usage)
        self.notes = {"connectivity": 16, "expansion_add": 40, "expansion_search": 128}

    def search(self, q):
        m = self.ix.search(q, self.k, threads=1)
        keys = np.asarray(m.keys, np.int64).reshape(1, -1)
        return keys, np.asarray(m.distances).reshape(1, -1)


BUILDERS = {"mih": Mih, "auto": Auto, "faiss-flat": FaissFlat, "faiss-mh": FaissMHExact,
            "faiss-hnsw": FaissHNSW, "faiss-ivf": FaissIVF, "usearch": USearch}


# ---------------------------------------------------------------- one cell
def run_method(name, db, queries, bits, k, scan, ref, repeats, log) -> dict:
    """Build ``name``, time it query by query beside the scan, check it against ``ref``."""
    n = len(db)
    if name == "mih":
        why = mih_available()
        if why:
            return {"status": why}
    gc.collect()                  # an earlier index held in a reference cycle must not be freed mid-build
    r0, t0 = rss(), time.perf_counter()
    try:
        meth = BUILDERS[name](db, bits, k)
    except (ImportError, MemoryError) as exc:
        return {"status": f"not run: {type(exc).__name__}: {exc}"}
    build_s = time.perf_counter() - t0
    grown = rss() - r0
    nq = len(queries)
    t_m = np.full(nq, np.inf)
    t_s = np.full(nq, np.inf)
    res = [None] * nq
    for rep in range(repeats):
        for i in range(nq):
            q = queries[i:i + 1]
            first = (i + rep) % 2 == 0
            for which in ((0, 1) if first else (1, 0)):
                t = time.perf_counter()
                out = meth.search(q) if which == 0 else scan(q)
                dt = time.perf_counter() - t
                if which == 0:
                    t_m[i] = min(t_m[i], dt)
                    res[i] = out
                else:
                    t_s[i] = min(t_s[i], dt)
    row = {"status": "ok", "exact": meth.exact, "build_s": round(build_s, 3),
           "bytes_per_clip": None if meth.nbytes is None else round(meth.nbytes / n, 2),
           "rss_per_clip": round(max(grown, 0) / n, 2),
           "ms": round(float(np.median(t_m)) * 1e3, 4), "ms_mean": round(float(t_m.mean()) * 1e3, 4),
           "scan_ms": round(float(np.median(t_s)) * 1e3, 4),
           "x_scan": round(float(np.median(t_m / t_s)), 3), **meth.notes}
    rp, rd = ref
    if meth.exact:
        bad = sum(not (np.array_equal(np.asarray(p).ravel(), rp[i]) and np.array_equal(np.asarray(d).ravel(), rd[i]))
                  for i, (p, d) in enumerate(res))
        row["mismatch"] = int(bad)
    else:
        hits = []
        for i, (p, _) in enumerate(res):
            ids = np.asarray(p, np.int64).ravel()[:k]
            ids = np.where(ids >= n, -1, ids)
            _, first_at = np.unique(ids, return_index=True)
            uniq = np.full(ids.shape, -1)
            uniq[first_at] = ids[first_at]
            hits.append(min(k, int((hamming(db, uniq, queries[i]) <= rd[i][-1]).sum())) / k)
        row["recall"] = round(float(np.mean(hits)), 4)
    meth.close()
    del meth
    gc.collect()
    log(f"    {name:10s} build {build_s:7.2f} s  {row['ms']:9.3f} ms/q  x{row['x_scan']:<7.3f} "
        + (f"mismatch {row['mismatch']}" if "mismatch" in row else f"recall {row['recall']:.3f}")
        + (f"  fallback {row['fallback'] / row['queries']:.0%}" if "fallback" in row else "")
        + (f"  engine {row['engine']}" if "engine" in row else ""))
    return row


def thread_figures(db, bits, k, batch) -> dict:
    """Batch of queries, 1 vs 2 threads (best of 3, interleaved): the scan and MIH."""
    from stvh.index.kernel import kernel_topk
    out = {"batch": len(batch)}
    fns = {}
    if "threads" in inspect.signature(kernel_topk).parameters:
        fns["scan"] = lambda th: kernel_topk(db, batch, k, threads=th)
    if mih_available() is None:
        from stvh.index.mih import MIHTables
        t = MIHTables.build(db, bits)
        fns["mih"] = lambda th: t.search(db, batch, k, threads=th)
    for name, fn in fns.items():
        best = {1: math.inf, 2: math.inf}
        cpu = {1: math.inf, 2: math.inf}
        for rep in range(3):
            for th in ((1, 2) if rep % 2 == 0 else (2, 1)):
                t0, c0 = time.perf_counter(), time.process_time()
                fn(th)
                best[th] = min(best[th], time.perf_counter() - t0)
                cpu[th] = min(cpu[th], time.process_time() - c0)
        out[name] = {"ms_per_query_1": round(best[1] * 1e3 / len(batch), 4),
                     "ms_per_query_2": round(best[2] * 1e3 / len(batch), 4),
                     "speedup_2": round(best[1] / best[2], 3),
                     "cpu_2_over_1": round(cpu[2] / cpu[1], 3),        # extra work of 2 threads (1.0 = none)
                     "cores_used_2": round(cpu[2] / best[2], 2)}       # CPU time / wall time with 2 threads
    return out


def calibrate(kind: str, bits: int, n: int, nq: int, seed: int, log) -> dict:
    """Seconds of one MIH work unit (a probed key or a checked row) in scan rows of 8 bytes.

    MIH searches ``nq`` queries with an unlimited budget (no query falls back) and
    reports its work; the scan's time per 8-byte row comes from the same queries.
    ``stvh.index.mih.UNIT_IN_SCAN_ROWS`` is this figure.
    """
    from stvh.index.kernel import kernel_topk
    from stvh.index.mih import MIHTables
    db = draw_codes(kind, n, bits, seed)
    q = draw_queries(kind, nq, bits, seed)
    t = MIHTables.build(db, bits)
    best_m = best_s = math.inf
    for _ in range(3):
        t0 = time.perf_counter()
        _, _, st = t.search(db, q, 50, budget=1 << 62)
        best_m = min(best_m, time.perf_counter() - t0)
        t0 = time.perf_counter()
        for i in range(nq):
            kernel_topk(db, q[i:i + 1], 50)
        best_s = min(best_s, time.perf_counter() - t0)
    per_unit = best_m / max(st["work"], 1)
    per_row = best_s / (nq * n * (bits // 64))
    out = {"kind": kind, "bits": bits, "n": n, "queries": nq, "fallback": st["fallback"],
           "work_per_query": round(st["work"] / nq), "ns_per_unit": round(per_unit * 1e9, 2),
           "ns_per_scan_row": round(per_row * 1e9, 3), "unit_in_scan_rows": round(per_unit / per_row, 1)}
    log(f"calibrate {kind}/{bits}/{fmt_n(n)}: {out}")
    return out


def run_cell(kind, bits, n, db, args, log) -> dict:
    nq = args.queries or (args.quick_queries if args.quick else {1_000_000: 200, 10_000_000: 100}.get(n, 20))
    queries = draw_queries(kind, nq, bits, args.seed)
    scan = scan_fn(db, args.k)
    ref = scan(queries)
    kth = ref[1][:, -1]
    log(f"  {kind}/{bits}/{fmt_n(n)}: {nq} queries, k-th distance median {np.median(kth):g} "
        f"(min {kth.min()}, max {kth.max()}), load {os.getloadavg()[0]:.1f}")
    cell = {"kind": kind, "bits": bits, "n": n, "queries": nq, "k": args.k, "seed": args.seed,
            "kth_distance": {"median": float(np.median(kth)), "min": int(kth.min()), "max": int(kth.max())},
            "loadavg_start": round(os.getloadavg()[0], 2), "methods": {}}
    approx_ok = kind in args.approx_kinds and (bits == 64 or args.approx_all)
    for name in args.methods:
        if name in APPROX and not (approx_ok and n <= (args.graph_max_n if name in GRAPHS else args.approx_max_n)):
            continue
        if name == "faiss-mh" and args.mh_max_n and n > args.mh_max_n:
            cell["methods"][name] = {"status": f"not run above {fmt_n(args.mh_max_n)} (--mh-max-n)"}
            continue
        if name == "auto" and n > args.auto_max_n:
            cell["methods"][name] = {"status": f"not run above {fmt_n(args.auto_max_n)} (--auto-max-n): "
                                               "the index's string ids"}
            continue
        reps = args.repeats if n < 50_000_000 else 1          # 100M: one pass (a query reads 0.8-1.6 GB)
        cell["methods"][name] = run_method(name, db, queries, bits, args.k, scan, ref, reps, log)
    scans = [m["scan_ms"] for m in cell["methods"].values() if "scan_ms" in m]
    cell["scan_ms"] = round(statistics.median(scans), 4) if scans else None
    if not args.no_threads:
        cell["threads"] = thread_figures(db, bits, args.k, queries)
        log(f"    threads (batch {cell['threads']['batch']}): " + "  ".join(
            f"{m} x{v['speedup_2']} (cpu x{v['cpu_2_over_1']}, {v['cores_used_2']} cores)"
            for m, v in cell["threads"].items() if isinstance(v, dict)))
    cell["loadavg_end"] = round(os.getloadavg()[0], 2)
    return cell


# ---------------------------------------------------------------- results, table
def write_json(path: Path, data: dict) -> None:
    from stvh.data.atomic import write_text_atomic
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(data, indent=1) + "\n")


def cell_key(kind, bits, n) -> str:
    return f"{kind}/{bits}/{fmt_n(n)}"


def selected(only: list[str] | None, kind: str, bits: int, n: int) -> bool:
    if not only:
        return True
    key = cell_key(kind, bits, n).lower().split("/")
    return any(all(a == b for a, b in zip(sel.lower().split("/"), key)) for sel in only)


def fmt_ms(ms: float) -> str:
    return f"{ms:.0f}" if ms >= 100 else (f"{ms:.1f}" if ms >= 10 else f"{ms:.3g}")


def table(results: dict) -> str:
    """Markdown: one row per cell; ms per query and (x scan) per method; mismatches / recall."""
    cols = ["scan", "mih", "auto", "faiss-flat", "faiss-mh", "faiss-hnsw", "faiss-ivf", "usearch"]
    head = ("| clips | bits | codes | k-th dist | " + " | ".join(cols)
            + " | exact (mismatches) | recall@k | B/clip: mih (RSS) / faiss-mh RSS"
            + " | 2 threads: scan / mih (cores got) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    order = {k: i for i, k in enumerate(KINDS)}
    cells = sorted(results["cells"].values(), key=lambda c: (c["n"], c["bits"], order[c["kind"]]))
    for c in cells:
        m = c["methods"]
        row = [fmt_n(c["n"]), str(c["bits"]), c["kind"], f"{c['kth_distance']['median']:g}",
               f"{fmt_ms(c['scan_ms'])} ms" if c.get("scan_ms") else "–"]
        for col in cols[1:]:
            r = m.get(col)
            if r is None:
                row.append("–")
            elif r.get("status") != "ok":
                row.append("n/a" if r.get("status", "").startswith("not available") else "–")
            else:
                extra = f", fb {r['fallback'] / r['queries']:.0%}" if r.get("fallback") else ""
                row.append(f"{fmt_ms(r['ms'])} ms (x{r['x_scan']:.2g}{extra})")
        mis = {k: v["mismatch"] for k, v in m.items() if "mismatch" in v}
        row.append((f"{sum(mis.values())} ({len(mis)} methods)" if not any(mis.values()) else
                    ", ".join(f"{k} {v}" for k, v in mis.items() if v)) if mis else "–")
        rec = [f"{k.replace('faiss-', '')} {v['recall']:.2f}" for k, v in m.items() if "recall" in v]
        row.append(", ".join(rec) or "–")
        mi, mh = m.get("mih", {}), m.get("faiss-mh", {})
        rss_txt = (lambda r: f"{r['rss_per_clip']:.0f}" if r.get("rss_per_clip") else "?")
        row.append((f"{mi['bytes_per_clip']:.1f} ({rss_txt(mi)})" if mi.get("bytes_per_clip") else "–")
                   + " / " + (rss_txt(mh) if mh.get("status") == "ok" else "–"))
        th = c.get("threads", {})
        cores = th.get("scan", {}).get("cores_used_2")
        row.append(" / ".join(f"x{th[x]['speedup_2']:.2f}" if x in th else "–" for x in ("scan", "mih"))
                   + (f" ({cores:.1f})" if cores else ""))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------- main
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--measure-from", type=Path, metavar="CODES.npz",
                    help="measure the trained-code statistics from this CODES file and store them, then stop")
    ap.add_argument("--quick", action="store_true", help="1M clips only, fewer queries (about 10 min)")
    ap.add_argument("--sizes", nargs="+", type=parse_n, help="database sizes (default 1M 10M 100M; --quick: 1M)")
    ap.add_argument("--bits", nargs="+", type=int, default=[64, 128], choices=[64, 128])
    ap.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    ap.add_argument("--methods", nargs="+", default=list(EXACT + APPROX), choices=EXACT + APPROX)
    ap.add_argument("--only", nargs="+", metavar="KIND[/BITS[/N]]", help="run only these cells, e.g. trained/64/100M")
    ap.add_argument("--queries", type=int, help="queries per cell (default 200 at 1M, 100 at 10M, 20 at 100M)")
    ap.add_argument("--quick-queries", type=int, default=50, help=argparse.SUPPRESS)
    ap.add_argument("-k", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--approx-max-n", type=parse_n, default=parse_n("10M"),
                    help="largest n for the approximate methods (default 10M)")
    ap.add_argument("--graph-max-n", type=parse_n, default=parse_n("1M"),
                    help="largest n for the HNSW graphs, FAISS's and usearch's (default 1M)")
    ap.add_argument("--approx-kinds", nargs="+", choices=KINDS,
                    help="code kinds of the approximate methods (default trained p15; --quick: trained)")
    ap.add_argument("--approx-all", action="store_true", help="approximate methods on 128-bit cells too")
    ap.add_argument("--auto-max-n", type=parse_n, default=parse_n("10M"),
                    help="largest n for the user's index (its string ids cost memory; default 10M)")
    ap.add_argument("--mh-max-n", type=parse_n, help="largest n for faiss-mh (default: every n)")
    ap.add_argument("--no-threads", action="store_true", help="skip the 1-vs-2-thread batch figures")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--table", action="store_true", help="print the table of --out and stop")
    ap.add_argument("--calibrate", action="store_true",
                    help="measure MIH's work unit in scan rows (stvh.index.mih.UNIT_IN_SCAN_ROWS) on --sizes "
                         "(default 10M) x --bits x --kinds, store it in --out and stop")
    args = ap.parse_args(argv)

    if args.measure_from:
        try:
            s = measure_stats(args.measure_from)
        except (OSError, ValueError, KeyError) as exc:
            fail(f"{args.measure_from}: not a CODES file with codes, bits, activity and split ({exc})")
        s["summary"] = stats_summary(s)
        try:
            all_stats = json.loads(STATS.read_text())
        except FileNotFoundError:
            all_stats = {}
        all_stats[str(s["bits"])] = s
        write_json(STATS, all_stats)
        print(json.dumps(s["summary"]), f"-> {STATS} [{s['bits']} bits]")
        return
    if args.table:
        try:
            shown = json.loads(args.out.read_text())
        except (OSError, ValueError) as exc:
            fail(f"{args.out}: no results to show ({exc})")
        print(table(shown))
        return

    import ctypes
    try:                     # M_MMAP_THRESHOLD = 128 kB, fixed: freed index memory goes back (RSS figures)
        ctypes.CDLL("libc.so.6").mallopt(-3, 128 * 1024)
    except OSError:
        pass
    if args.approx_kinds is None:
        args.approx_kinds = ["trained"] if args.quick else ["trained", "p15"]
    import faiss
    from stvh.index import kernel
    faiss.omp_set_num_threads(1)
    if not kernel.AVAILABLE:
        fail("stvh's C kernel is not built (reinstall stvh): the scan is the reference")
    sizes = args.sizes or [parse_n(s) for s in (["1M"] if args.quick else ["1M", "10M", "100M"])]
    try:
        results = json.loads(args.out.read_text())
    except FileNotFoundError:
        results = {"cells": {}}
    import subprocess
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=HERE).stdout.strip()
    results["info"] = {"python": sys.version.split()[0], "numpy": np.__version__, "faiss": faiss.__version__,
                       "machine": platform.machine(), "cpus": os.cpu_count(), "kernel_simd": kernel.simd(),
                       "commit": commit, "mih": mih_available() or "available"}
    t_all = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - t_all:7.1f}s] {msg}", flush=True)

    if args.calibrate:
        rows = [calibrate(kind, bits, n, args.queries or 100, args.seed, log)
                for n in (args.sizes or [parse_n("10M")]) for bits in args.bits for kind in args.kinds]
        results["calibration"] = {"measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                  "commit": commit, "rows": rows}
        write_json(args.out, results)
        return

    for bits in args.bits:
        for kind in args.kinds:
            want = [n for n in sizes if selected(args.only, kind, bits, n)]
            if not want:
                continue
            t = time.perf_counter()
            db_all = draw_codes(kind, max(want), bits, args.seed)
            log(f"{kind}/{bits}: drew {fmt_n(max(want))} codes in {time.perf_counter() - t:.1f} s")
            for n in sorted(want):
                cell = run_cell(kind, bits, n, db_all[:n], args, log)
                cell["measured"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
                cell["commit"] = commit
                for row in cell["methods"].values():
                    row.update(measured=cell["measured"], commit=commit)
                old = results["cells"].get(cell_key(kind, bits, n))
                if old and all(old.get(f) == cell[f] for f in ("queries", "k", "seed")):
                    cell["methods"] = {**old["methods"], **cell["methods"]}     # a rerun of some methods
                results["cells"][cell_key(kind, bits, n)] = cell
                write_json(args.out, results)
            del db_all
    log(f"done -> {args.out}")
    print(table(results))


if __name__ == "__main__":
    main()
