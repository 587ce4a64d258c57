"""Mutation testing of the numeric core with mutmut (``make mutation``; docs/testing.md).

For each module below, a copy of ``src/`` and ``tests/`` is made under the work folder (never the repository),
mutmut mutates that one file (optionally only some of its functions) and runs, for every mutant, the covering
tests it selected from the listed test files (``-x``: the first failure kills the mutant). The per-file figures
(killed, timed out, survived, explained as equivalent) and the commit they ran on are printed and merged into
``benchmarks/results/mutation.json``.

    python benchmarks/mutation.py                      # every module (about an hour on 2 busy cores)
    python benchmarks/mutation.py losses.py            # one module (a suffix of its path is enough)
    python benchmarks/mutation.py mot.py --retest      # rerun only the survivors of the last run
    python benchmarks/mutation.py --show               # the diff of every unexplained survivor

A surviving mutant is either killed by a new test or listed in ``EQUIVALENT`` with the reason it cannot change
any result; the score per file is ``(killed + timeout) / (mutants - equivalent)``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path

from stvh.data.atomic import atomic_path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "mutation.json"
GOAL = 0.90

# module (under src/stvh) -> (covering test files, mutant name globs or None for the whole file)
MODULES: dict[str, tuple[list[str], list[str] | None]] = {
    "eval/metrics.py": (["tests/test_ref_metrics.py", "tests/test_metrics.py"], None),
    "losses.py": (["tests/test_ref_losses.py", "tests/test_losses.py"], None),
    "models/graphs.py": (["tests/test_ref_graphs.py", "tests/test_models_graphs.py"], None),
    "models/attention.py": (["tests/test_ref_attention.py", "tests/test_models_attention.py"], None),
    "models/filter.py": (["tests/test_ref_filter.py", "tests/test_models_filter.py"], None),
    "index/codes.py": (["tests/test_ref_codes.py", "tests/test_index_codes.py"],
                       ["*x_check_bits*", "*x_pack_codes*", "*x_unpack_codes*", "*xǁCodeSetǁsigns*",
                        "*xǁCodeSetǁ_focus_index*", "*xǁCodeSetǁfrom_signs*"]),
    "index/numpy_backend.py": (["tests/test_ref_codes.py", "tests/test_index_search.py"], None),
    "data/geometry.py": (["tests/test_ref_readers.py"], None),
    # the readers: their box conversions and frame fills (the rest is error reporting, tested elsewhere)
    "data/mot.py": (["tests/test_ref_readers.py", "tests/test_mot.py"],
                    ["*x__persons__*", "*x__window_starts__*"]),
    "data/volleyball.py": (["tests/test_ref_readers.py", "tests/test_volleyball.py"],
                           ["*x__tracked_boxes__*", "*x_parse_annotation_line__*"]),
    "data/cad.py": (["tests/test_ref_readers.py", "tests/test_cad.py"],
                    ["*x_xywh_to_box__*", "*x__keep_largest__*"]),
}

GPU_ONLY = "device placement: the CPU either way on a CPU-only machine (the CUDA tests would tell)"
# mutants that survive because they cannot change any result: name -> why (see docs/testing.md)
EQUIVALENT: dict[str, str] = {
    "stvh.eval.metrics.x_hamming_ranking__mutmut_11": "argsort's default axis is the last, axis 1 of (nq, nd)",
    "stvh.eval.metrics.x_retrieval_metrics__mutmut_18":
        "rel is already cut to k; the 'relevant' convention uses k only to cut (rel[:None] is rel)",
    "stvh.eval.metrics.x_retrieval_metrics__mutmut_22": "'relevant' is the default convention",
    "stvh.eval.metrics.x_class_hamming_matrix__mutmut_11": "astype(None) is astype(float64)",
    "stvh.eval.metrics.x_hamming_ranking__mutmut_15": "numpy reads the sort kind case-insensitively",
    "stvh.eval.metrics.x_hamming_ranking__mutmut_21": "take_along_axis's default axis is the last (numpy >= 2)",
    "stvh.losses.x_quantization_loss__mutmut_8": "h is (B, K): shape[+1] is shape[-1]",
    **{f"stvh.losses.x_cosine_sim_exp__mutmut_{i}": "F.normalize's default dim is 1, the last axis of (B, K)"
       for i in (5, 6, 11, 12)},
    "stvh.losses.x_recon_loss__mutmut_7":
        "the loss is the mean of every (T, r) entry of the real persons: averaging T first gives the same mean",
    **{f"stvh.losses.x_total_loss__mutmut_{i}": "the default mask is only used through .bool()" for i in (6, 9)},
    **{f"stvh.losses.x_total_loss__mutmut_{i}":
       GPU_ONLY for i in (7, 10)},
    **{f"stvh.models.graphs.x_{f}__mutmut_{i}": GPU_ONLY for f, i in
       [("temporal_support", 5), ("temporal_support", 9), ("iou_graph", 15), ("iou_graph", 18)]},
    "stvh.models.graphs.x__box_iou_over_time__mutmut_79":
        "only where the union is 0, where the intersection is 0 too: 0 / 1e-12 is 0",
    "stvh.models.graphs.x_distance_graph__mutmut_13": "an integer count divides a float tensor into floats alike",
    "stvh.models.graphs.x_distance_graph__mutmut_17":
        "count 1 vs 2 differs only with one real person, whose only entry is the diagonal (1 either way)",
    **{f"stvh.models.attention.xǁ{c}ǁ__init____mutmut_{i}": "nn.Linear(bias=None) has no bias, as bias=False"
       for c, i in [("EdgeLogits", 11), ("SGAT", 10), ("SGAT", 18), ("SGAT", 26)]},
    "stvh.models.attention.xǁSGATǁforward__mutmut_20": "d is a multiple of heads (checked): d / heads == d // heads",
    "stvh.models.filter.x_filter_loss__mutmut_17": "float minus integer codes promotes to float alike",
    "stvh.models.filter.x_bit_agreement__mutmut_3": "== between float and integer codes promotes alike",
    **{f"stvh.models.filter.x_fit_filter__mutmut_{i}": GPU_ONLY for i in (6, 11)},
    "stvh.models.filter.x_fit_filter__mutmut_8": "every depth has the same code length K",
    "stvh.models.filter.x_fit_filter__mutmut_9": "codes are (M, K): shape[+1] is shape[-1]",
    "stvh.models.filter.x_compression_ratio__mutmut_4": "the compact storage does not depend on the depth",
    "stvh.models.filter.x_compression_ratio__mutmut_19": "'all' is storage_bits' default mode",
    **{f"stvh.index.numpy_backend.x_popcount__mutmut_{i}": "astype's copy flag changes no value"
       for i in (2, 4, 6)},
    **{f"stvh.index.numpy_backend.x_as_words__mutmut_{i}": "packed codes are (n, nb): axis +1 is axis -1"
       for i in (7, 12)},
    **{f"stvh.index.numpy_backend.x_counting_topk__mutmut_{i}": "numpy reads the sort kind case-insensitively"
       for i in (24, 114)},
    **{f"stvh.index.numpy_backend.x_counting_topk__mutmut_{i}":
       "the sampled guess (and its lower bound lo) only sets where the exact count starts: rows within any guess "
       "are counted exactly and the guess is raised until k rows are in, so the top-k is the same (speed only)"
       for i in (1, 27, 28, 29, 36, 37, 38, 45, 46, 47, 48, 49, 51)},
    **{f"stvh.index.numpy_backend.x_counting_topk__mutmut_{i}":
       "a larger or smaller raise of a too-low guess still ends at a guess with k rows (speed only)"
       for i in (66, 68, 69, 81, 82, 83, 84)},
    "stvh.index.numpy_backend.x_popcount__mutmut_17": "popcount is given 1-D word arrays: axis +1 of (n, bytes) is -1",
    **{f"stvh.index.numpy_backend.x_counting_topk__mutmut_{i}":
       "the exact threshold is found within the selection's own distances: bincount's minlength changes no index"
       for i in (91, 92, 93)},
    **{f"stvh.data.geometry.x_iou_matrix__mutmut_{i}": "numpy infers a dimension given as any negative number"
       for i in (11, 23)},
    **{f"stvh.data.geometry.x_iou_matrix__mutmut_{i}":
       "only where the union is 0, where the intersection is 0 too and the result is replaced by 0"
       for i in (94, 105)},
    "stvh.data.volleyball.x_parse_annotation_line__mutmut_21": "parse_int's default upper bound is MAX_INT",
    "stvh.data.volleyball.x_parse_annotation_line__mutmut_72": "numpy infers a dimension given as any negative number",
    **{f"stvh.data.mot.x__persons__mutmut_{i}": "pad_persons copies the boxes into a float32 array"
       for i in (17, 19)},
    **{f"stvh.data.mot.x__persons__mutmut_{i}": "frame numbers are Python ints: numpy makes them int64 anyway"
       for i in (25, 27)},
}

KILLED = {1, 3}
# mutants whose tests ran into an endless loop that mutmut 3.8's timer did not stop (it does not reach the
# children of its fork server); the child was ended by hand after minutes: counted as timeouts
STOPPED_BY_HAND = {"stvh.index.numpy_backend.x_counting_topk__mutmut_76"}
# SIGXCPU from mutmut's timer; -15: a child stopped by hand after minutes in an endless loop (mutmut's timer
# does not reach children of its fork server in mutmut 3.8)
TIMEOUT = {-24, 24, 152, 255, 36, -15}


def git_commit() -> str:
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def git_dirty(paths: list[str]) -> bool:
    out = subprocess.run(["git", "status", "--porcelain", "--", *paths], cwd=ROOT, capture_output=True, text=True)
    return bool(out.stdout.strip())


def prepare(work: Path, module: str, tests: list[str], fresh: bool) -> None:
    """Copy src/, tests/ and pyproject.toml (with a [tool.mutmut] section for ``module``) into ``work``."""
    if fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    for name in ("src", "tests"):
        if (work / name).exists():
            shutil.rmtree(work / name)
        shutil.copytree(ROOT / name, work / name, ignore=shutil.ignore_patterns("__pycache__"))
    pyproject = (ROOT / "pyproject.toml").read_text()
    pyproject = pyproject.split("\n[tool.mutmut]")[0]
    pyproject += "\n[tool.mutmut]\n" + "\n".join([
        'source_paths = ["src"]',
        f'only_mutate = ["src/stvh/{module}"]',
        f"pytest_add_cli_args_test_selection = {json.dumps(tests)}",
        'pytest_add_cli_args = ["-x", "-q", "-p", "no:cacheprovider"]',
        'process_isolation = "forkserver"',    # torch is not fork-safe after use
        # error-message statements are not mutated: their text is checked by the error tests, not here
        r"""do_not_mutate_patterns = ['^\s*raise ', 'problems\.report\(', '^\s*log\.']""",
        "timeout_multiplier = 10.0",
        "timeout_constant = 30.0",             # 2 shared cores: a slow fork is not an infinite loop
    ]) + "\n"
    (work / "pyproject.toml").write_text(pyproject)


def read_meta(work: Path, module: str) -> dict:
    meta = work / "mutants" / "src" / "stvh" / (module + ".meta")
    return json.loads(meta.read_text()) if meta.exists() else {"exit_code_by_key": {}}


def selected(names, globs: list[str] | None) -> list[str]:
    from fnmatch import fnmatch
    return sorted(n for n in names if globs is None or any(fnmatch(n, g) for g in globs))


def summarise(module: str, codes: dict[str, int | None], seconds: float, tests: list[str]) -> dict:
    killed = sorted(k for k, v in codes.items() if v in KILLED)
    timeout = sorted(k for k, v in codes.items() if v in TIMEOUT or k in STOPPED_BY_HAND)
    survived = sorted(k for k, v in codes.items() if v == 0 and k not in STOPPED_BY_HAND)
    equivalent = [k for k in survived if k in EQUIVALENT]
    other = sorted(k for k in codes if k not in killed + timeout + survived)
    total = len(codes)
    denom = total - len(equivalent)
    score = (len(killed) + len(timeout)) / denom if denom else 1.0
    return {"mutants": total, "killed": len(killed), "timeout": len(timeout), "survived": len(survived),
            "equivalent": len(equivalent), "other": len(other), "score": round(score, 4),
            "goal_met": score >= GOAL and not other, "seconds": round(seconds, 1), "tests": tests,
            "survivors": [k for k in survived if k not in EQUIVALENT],
            "equivalent_mutants": {k: EQUIVALENT[k] for k in equivalent}, "not_run": other}


def mutmut(work: Path, jobs: int, names: list[str], module: str) -> None:
    """``mutmut run`` in ``work`` (all not-yet-checked mutants, or the named ones), logged to mutmut.log."""
    cmd = [sys.executable, "-m", "mutmut", "run", "--max-children", str(jobs), *names]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}      # a shared machine; one thread per test process
    with open(work / "mutmut.log", "a") as fh:
        rc = subprocess.run(cmd, cwd=work, stdout=fh, stderr=subprocess.STDOUT, env=env).returncode
    if rc != 0:
        print(f"{module}: mutmut exited with {rc}; see {work / 'mutmut.log'}", file=sys.stderr)


def run_module(module: str, work_root: Path, jobs: int, retest: bool, fresh: bool) -> dict:
    tests, globs = MODULES[module]
    work = work_root / module.replace("/", "_").removesuffix(".py")
    before = read_meta(work, module)["exit_code_by_key"] if retest else {}
    if retest and not before:  # nothing to retest: never replace a full run's figures with an empty one
        raise SystemExit(f"{module}: no earlier run in {work} to retest (its work folder is gone); run without --retest")
    prepare(work, module, tests, fresh=fresh and not retest)
    names: list[str] = list(globs or [])
    if retest:
        names = [k for k in selected(before, globs) if before[k] == 0] or ["__none__"]
    t0 = time.time()
    names = [n for n in names if n not in STOPPED_BY_HAND] or ["__none__"]
    if names != ["__none__"]:
        mutmut(work, jobs, names, module)
    codes = read_meta(work, module)["exit_code_by_key"]
    if retest and any(codes[k] is None for k in selected(codes, globs)):
        mutmut(work, jobs, list(globs or []), module)   # functions changed since the last run: their new mutants
        codes = read_meta(work, module)["exit_code_by_key"]
    codes = {k: codes[k] for k in selected(codes, globs)}
    return summarise(module, codes, time.time() - t0, tests)


def show(module: str, work_root: Path, names: list[str]) -> None:
    work = work_root / module.replace("/", "_").removesuffix(".py")
    for name in names:
        out = subprocess.run([sys.executable, "-m", "mutmut", "show", name], cwd=work, capture_output=True, text=True)
        print(out.stdout)


def markdown(results: dict) -> str:
    """The per-file table and the explained survivors, for docs/testing.md."""
    rows = ["| file | mutants | killed | timeout | survived | equivalent | score | commit | seconds |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |"]
    notes = []
    for m, r in results["modules"].items():
        rows.append(f"| `{m}` | {r['mutants']} | {r['killed']} | {r['timeout']} | {r['survived'] - r['equivalent']} "
                    f"| {r['equivalent']} | {r['score']:.1%} | {r['commit'][:7]}{'+' if r['dirty'] else ''} "
                    f"| {r['seconds']:.0f} |")
        notes += [f"* `{k.split('.', 2)[2]}` ({m}): {why}" for k, why in r["equivalent_mutants"].items()]
        notes += [f"* `{k.split('.', 2)[2]}` ({m}): **survives, unexplained**" for k in r["survivors"]]
    return "\n".join(rows + [""] + notes)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("modules", nargs="*", help="module paths under src/stvh, or a suffix (default: all)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/stvh-mutation"), help="scratch folder")
    ap.add_argument("--jobs", type=int, default=2, help="mutants tested at once")
    ap.add_argument("--retest", action="store_true", help="rerun only the survivors of the last run")
    ap.add_argument("--keep", action="store_true", help="reuse mutmut's cached results in the work folder")
    ap.add_argument("--show", action="store_true", help="print the diff of each unexplained survivor and stop")
    ap.add_argument("--out", type=Path, default=RESULTS, help="JSON file the figures are merged into")
    ap.add_argument("--markdown", action="store_true", help="print the last results as a table and stop")
    args = ap.parse_args(argv)
    chosen = [m for m in MODULES if not args.modules or any(m.endswith(s) for s in args.modules)]
    if not chosen:
        ap.error(f"no module matches {args.modules}; known: {', '.join(MODULES)}")
    results = json.loads(args.out.read_text()) if args.out.exists() else {"modules": {}}
    if args.markdown:
        print(markdown(results))
        return 0
    if args.show:
        for m in chosen:
            show(m, args.workdir, results["modules"].get(m, {}).get("survivors", []))
        return 0
    commit = git_commit()
    for m in chosen:
        r = run_module(m, args.workdir, args.jobs, args.retest, fresh=not args.keep)
        if not r["mutants"]:  # mutmut made no mutant (a stale --keep folder, a failed copy): keep the last figures
            print(f"{m}: no mutant was generated or run (see {args.workdir}); figures not recorded", file=sys.stderr)
            continue
        r.update(commit=commit, dirty=git_dirty([f"src/stvh/{m}", *MODULES[m][0]]),
                 date=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
        if args.retest and m in results["modules"]:   # keep the full run's figures, update the survivors
            r["retest_of"] = results["modules"][m].get("commit")
        results["modules"][m] = r
        print(f"{m:28s} {r['mutants']:4d} mutants  killed {r['killed']:4d}  timeout {r['timeout']:3d}  "
              f"survived {r['survived']:3d}  equivalent {r['equivalent']:3d}  score {r['score']:.1%}  "
              f"({r['seconds']:.0f} s)", flush=True)
        results.update(tool=f"mutmut {version('mutmut')}", goal=GOAL)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(args.out) as tmp:
            Path(tmp).write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
