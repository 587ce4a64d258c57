"""Search benchmark: stvh (auto) vs raw FAISS IndexBinaryFlat vs numpy, exact Hamming top-k.

    python benchmarks/search.py                       # 1M codes, K = 16 32 64 128, random + clustered
    python benchmarks/search.py --n 100000 --bits 16 128 --out results.json
    python benchmarks/search.py --crossover           # also: short-code tables vs flat scans by n (auto rule)

Data: ``random`` = uniform bits; ``clustered`` = 64 random centres, each bit
flipped with probability ``--flip`` (0.1).  Queries are fresh draws from the
same process.  ``kernel`` is stvh's C kernel alone (the auto backend's flat scan
when the extension is built; not timed without it).  Every method runs
single-threaded (``faiss.omp_set_num_threads(1)``; the C kernel has no threads)
in two modes: ``single`` (one query per call) and ``batched`` (all queries in
one call).  Times are ms per query, best of ``--repeats`` interleaved runs
(the machine may be shared), median also recorded; in single mode the
methods are interleaved query by query (paired timing) and ``x med`` is the
median over queries of FAISS time / stvh time (the most noise-robust ratio).  ``bound`` is a compute
bound measured in the same run: one numpy XOR+popcount pass over the whole
database (ms per full scan).  ``agree`` checks that stvh and FAISS return the
same ids and distances (FAISS's heap breaks ties by id = insertion order).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np


def make_data(kind: str, n: int, bits: int, rng: np.random.Generator, flip: float, centres=None):
    if kind == "random":
        return rng.integers(0, 256, (n, bits // 8), dtype=np.uint8), None
    if centres is None:
        centres = rng.integers(0, 2, (64, bits), dtype=np.uint8)
    out = np.empty((n, bits // 8), np.uint8)
    step = 131072
    for s in range(0, n, step):
        m = min(step, n - s)
        b = centres[rng.integers(0, len(centres), m)] ^ (rng.random((m, bits)) < flip)
        out[s:s + m] = np.packbits(b, axis=1)
    return out, centres


def timed(fn, repeats: int) -> tuple[float, float, object]:
    times, res = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        res = fn()
        times.append(time.perf_counter() - t)
    return min(times), statistics.median(times), res


def run_case(kind, n, bits, nq, k, repeats, flip, rng, numpy_queries):
    import faiss

    from stvh.index import create_index, kernel
    from stvh.index.numpy_backend import as_words, hamming_to_all

    db, centres = make_data(kind, n, bits, rng, flip)
    queries, _ = make_data(kind, nq, bits, rng, flip, centres)
    ids = np.char.add("c", np.arange(n).astype(str))

    t = time.perf_counter()
    stvh = create_index("faiss", bits, 1)
    stvh.add(ids, db)
    t_add = time.perf_counter() - t
    t = time.perf_counter()
    stvh.search(queries[:1], k)                # builds the short-code tables when used
    t_first = time.perf_counter() - t
    engine = stvh.engine(detail=True)

    npi = create_index("numpy", bits, 1)
    npi._append(ids.tolist(), db[:, None, :], np.full(n, -1, np.int64), np.full(n, "", object))

    flat = faiss.IndexBinaryFlat(bits)
    t = time.perf_counter()
    flat.add(db)
    t_faiss_add = time.perf_counter() - t

    words = as_words(db)
    qwords = as_words(queries)

    one = {"stvh": lambda q: stvh.search_positions(q, k), "faiss": lambda q: flat.search(q, k),
           "numpy": lambda q: npi.search_positions(q, k)}
    nqs = {"stvh": nq, "faiss": nq, "numpy": numpy_queries}
    if kernel.AVAILABLE:
        one["kernel"] = lambda q: kernel.kernel_topk(db, q, k)
        nqs["kernel"] = nq
    best = {m: {"single": [], "batched": []} for m in one}
    out = {}
    paired: list[float] = []                         # per-query FAISS time / stvh time (single mode)
    for rep in range(repeats):
        order = list(one) if rep % 2 == 0 else list(one)[::-1]     # alternate the order
        # batched: all queries in one call
        for m in order:
            t = time.perf_counter()
            out[m] = one[m](queries[:nqs[m]])
            best[m]["batched"].append((time.perf_counter() - t) * 1000 / nqs[m])
        # single: one query per call, methods interleaved query by query (paired timing
        # cancels the drift of a shared machine's load)
        acc = dict.fromkeys(one, 0.0)
        for i in range(nq):
            t_q = {}
            for m in (order if i % 2 == 0 else order[::-1]):          # alternate per query too
                if i < nqs[m]:
                    t = time.perf_counter()
                    one[m](queries[i:i + 1])
                    t_q[m] = time.perf_counter() - t
                    acc[m] += t_q[m]
            paired.append(t_q["faiss"] / t_q["stvh"])
        for m in one:
            best[m]["single"].append(acc[m] * 1000 / nqs[m])
    bound = timed(lambda: hamming_to_all(words, qwords[0]), max(5, repeats))[0] * 1000

    sp, sd = out["stvh"]
    fd, fi = out["faiss"]
    pp, pd = out["numpy"]
    agree = bool(np.array_equal(sp, fi) and np.array_equal(sd, fd))
    agree_numpy = bool(np.array_equal(sp[:numpy_queries], pp) and np.array_equal(sd[:numpy_queries], pd))
    if "kernel" in out:
        agree = agree and bool(np.array_equal(out["kernel"][0], fi) and np.array_equal(out["kernel"][1], fd))

    row = {"data": kind, "n": n, "bits": bits, "queries": nq, "k": k, "engine": engine,
           "add_s": round(t_add, 3), "first_search_s": round(t_first, 3), "faiss_add_s": round(t_faiss_add, 3),
           "simd": kernel.simd(),
           "bound_ms_per_scan": round(bound, 4), "agree_faiss": agree, "agree_numpy": agree_numpy,
           "kth_distance_median": float(np.median(sd[:, -1]))}
    for m in one:
        for mode in ("single", "batched"):
            row[f"{m}_{mode}_ms"] = round(min(best[m][mode]), 4)
            row[f"{m}_{mode}_ms_median"] = round(statistics.median(best[m][mode]), 4)
    for mode in ("single", "batched"):
        row[f"speedup_vs_faiss_{mode}"] = round(row[f"faiss_{mode}_ms"] / row[f"stvh_{mode}_ms"], 2)
    row["speedup_vs_faiss_single_paired_median"] = round(float(np.median(paired)), 3)
    return row


def crossover(bits_list, k, rng, repeats, nq=50):
    """Engines by index size (random codes), to set SHORT_MIN_ROWS and check the flat-scan choice.

    K <= 32: short-code tables vs stvh's C kernel vs FAISS, n from 3k to 3M;
    K >= 64: C kernel vs FAISS at small n.  ms per query, one query per call
    (``1q``) and ``nq`` queries in one call (``bat``), best of ``repeats``.
    """
    from stvh.index import create_index, kernel
    rows = []
    for bits in bits_list:
        if bits <= 32:
            sizes = [3000, 10000, 30000, 100000, 300000, 1_000_000, 2_000_000, 3_000_000]
            backends = ["short", "kernel", "faiss-flat"]
        else:
            sizes = [1000, 3000, 10000, 30000, 100000]
            backends = ["kernel", "faiss-flat"]
        if not kernel.AVAILABLE:
            backends.remove("kernel")
        for n in sizes:
            db = rng.integers(0, 256, (n, bits // 8), dtype=np.uint8)
            q = rng.integers(0, 256, (nq, bits // 8), dtype=np.uint8)
            ids = np.char.add("c", np.arange(n).astype(str))
            ixs = {}
            for backend in backends:
                ix = ixs[backend] = create_index(backend, bits, 1)
                ix._append(ids.tolist(), db[:, None, :], np.full(n, -1, np.int64), np.full(n, "", object))
                ix.search_positions(q[:1], k)
            single = {b: [] for b in backends}
            batched = {b: [] for b in backends}
            for rep in range(repeats):
                order = backends if rep % 2 == 0 else backends[::-1]
                for b in order:
                    ix = ixs[b]
                    t = time.perf_counter()
                    for i in range(nq):
                        ix.search_positions(q[i:i + 1], k)
                    single[b].append((time.perf_counter() - t) * 1000 / nq)
                    t = time.perf_counter()
                    ix.search_positions(q, k)
                    batched[b].append((time.perf_counter() - t) * 1000 / nq)
            row = {"bits": bits, "n": n}
            for b in backends:
                row[f"{b}_1q_ms"] = round(min(single[b]), 4)
                row[f"{b}_bat_ms"] = round(min(batched[b]), 4)
            rows.append(row)
            print(f"  crossover K={bits:3d} n={n:8d}  " + "  ".join(
                f"{b} 1q {row[f'{b}_1q_ms']:.4f} bat {row[f'{b}_bat_ms']:.4f}" for b in backends), flush=True)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="database size (default 1M)")
    ap.add_argument("--bits", type=int, nargs="+", default=[16, 32, 64, 128])
    ap.add_argument("--data", nargs="+", default=["random", "clustered"], choices=["random", "clustered"])
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("-k", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--flip", type=float, default=0.1, help="bit-flip probability of clustered data")
    ap.add_argument("--numpy-queries", type=int, default=20, help="queries timed for the (slow) numpy scan")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--crossover", action="store_true", help="also time small n for the auto rule")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="write results as JSON here")
    args = ap.parse_args(argv)

    import faiss

    from stvh.index import kernel
    faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    info = {"python": sys.version.split()[0], "numpy": np.__version__, "faiss": faiss.__version__,
            "machine": platform.machine(), "cpus": os.cpu_count(), "threads": args.threads,
            "loadavg": os.getloadavg() if hasattr(os, "getloadavg") else None, "kernel_simd": kernel.simd()}
    print(f"# n={args.n} queries={args.queries} k={args.k} threads={args.threads} repeats={args.repeats} "
          f"numpy {np.__version__} faiss {faiss.__version__} kernel {kernel.simd()} load {info['loadavg']}")
    print(f"{'data':9s} {'K':>4s} {'engine':>6s} | {'stvh 1q':>8s} {'faiss 1q':>8s} {'x':>6s} {'x med':>6s} | "
          f"{'stvh bat':>8s} {'faiss bat':>9s} {'x':>6s} | {'kern 1q':>8s} {'kern bat':>8s} | "
          f"{'numpy 1q':>8s} {'bound':>7s} | agree  (ms/query)")
    rows = []
    for kind in args.data:
        for bits in args.bits:
            r = run_case(kind, args.n, bits, args.queries, args.k, args.repeats, args.flip, rng,
                         min(args.numpy_queries, args.queries))
            rows.append(r)
            print(f"{kind:9s} {bits:4d} {r['engine']:>6s} | {r['stvh_single_ms']:8.4f} {r['faiss_single_ms']:8.4f} "
                  f"{r['speedup_vs_faiss_single']:6.2f} {r['speedup_vs_faiss_single_paired_median']:6.2f} | {r['stvh_batched_ms']:8.4f} {r['faiss_batched_ms']:9.4f} "
                  f"{r['speedup_vs_faiss_batched']:6.2f} | {r.get('kernel_single_ms', float('nan')):8.4f} "
                  f"{r.get('kernel_batched_ms', float('nan')):8.4f} | {r['numpy_single_ms']:8.4f} {r['bound_ms_per_scan']:7.4f} | "
                  f"{r['agree_faiss'] and r['agree_numpy']}", flush=True)
    result = {"info": info, "args": vars(args), "results": rows}
    if args.crossover:
        result["crossover"] = crossover(args.bits, args.k, rng, args.repeats)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=2)
        print(f"# wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
