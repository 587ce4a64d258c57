"""What ``stvh index build`` and ``stvh search`` run (the CLI only parses options).

* :func:`build_index` -- CODES file -> saved index, returns a summary dict.
* :func:`search_index` -- saved index + a query (a stored clip, or a codes file)
  -> result rows (dicts); :func:`format_results` renders them as a table.

Searching with ``clip_id`` uses that clip's own stored code at the chosen
focus (derived via F in compact mode) and *excludes the clip itself* from
its results: the k rows are the k nearest other clips.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from ..locks import output_lock
from ..outputs import check_output
from .base import CodeIndex, InMemoryIndex, UnknownIdError, check_k, create_index, load_index
from .codes import CodeFileError, CodeSet, pack_codes, read_rows, release_pages, unpack_codes
from .storage import check_mode


def _default_milvus_uri(out: Path) -> str:
    return str(out.with_name(out.name + ".milvus.db"))


def build_index(codes_path: str | Path, out: str | Path, *, mode: str = "all", backend: str = "faiss",
                uri: str | None = None, collection: str | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Build an index from a CODES file and save it to ``out``; returns a summary.

    ``out`` may not be the CODES file (or a Milvus Lite database) and may not
    exist unless ``overwrite`` (:func:`stvh.outputs.check_output`, raising
    :class:`~stvh.outputs.OutputError`); the file is written atomically with
    the user's umask, and a temp file left by a killed build is removed.

    ``backend``: ``faiss`` (default = auto), ``numpy``, ``short``,
    ``faiss-flat`` or ``milvus`` (``uri``: a ``.db`` path for Milvus Lite --
    default ``<out>.milvus.db`` -- or ``http://host:port``; the collection is
    replaced).  ``mode='compact'`` keeps only the deepest codes plus the
    filter F from the CODES file and derives the other foci (Eq. 16-17).
    """
    t0 = time.perf_counter()
    codes_path, out = Path(codes_path), Path(out)
    check_mode(mode)
    local_db = None
    if backend == "milvus":
        local_db = uri or _default_milvus_uri(out)
        local_db = None if "://" in local_db else local_db
    check_output(out, inputs=[(codes_path, "CODES file"), (local_db, "Milvus Lite database")],
                 overwrite=overwrite, what="index file")
    if local_db is not None:  # the collection is replaced; the database file itself is shared
        check_output(local_db, inputs=[(codes_path, "CODES file")], overwrite=True, what="Milvus Lite database",
                     flag="--uri")
    with output_lock(out, "stvh index build"):  # one writer per index file (stvh.locks)
        return _build(codes_path, out, mode, backend, uri, collection, t0)


def _build(codes_path: Path, out: Path, mode: str, backend: str, uri: str | None, collection: str | None,
           t0: float) -> dict[str, Any]:
    """:func:`build_index` once its output is checked and locked."""
    _require_archive(codes_path, "--codes", "a CODES file written by `stvh encode`")
    cs = CodeSet.load(codes_path, mmap=True)        # large arrays memory-mapped, ids checked without str objects
    t_load = time.perf_counter()
    if mode == "compact" and cs.depth > 1 and cs.filter is None:
        raise CodeFileError(codes_path, "compact mode needs the filter matrix F, but this CODES file has no "
                                        "'filter' (train M-STVH with a filter, or use --mode all)")
    meta = {"codes": str(codes_path), "source_meta": cs.meta}
    names = cs.meta.get("activity_names") or cs.meta.get("activities")   # `stvh encode` writes "activities"
    if isinstance(names, list) and all(isinstance(x, str) for x in names):
        meta["activity_names"] = names
    kw: dict[str, Any] = {"mode": mode, "filter": cs.filter if mode == "compact" and cs.depth > 1 else None,
                          "meta": meta}
    if backend == "milvus":
        kw["uri"] = uri or _default_milvus_uri(out)
        kw["collection"] = collection or "stvh_codes"
        kw["overwrite"] = True
    elif uri is not None:
        raise ValueError("--uri is only used with --backend milvus")
    index = create_index(backend, cs.bits, cs.depth, **kw)
    try:
        in_memory = isinstance(index, InMemoryIndex)
        # codes and activity read with plain reads (faster than faulting the mapped pages in)
        index.add(cs.encoded_ids if in_memory else cs.ids, read_rows(cs.codes), activity=read_rows(cs.activity),
                  group=cs.group)
        for a in (cs.ids, cs.codes, cs.activity, cs.group, cs.split):   # the index has its own copy now
            release_pages(a)
        # the engine is chosen before the save: what it builds to decide (MIH tables) is saved with the index
        engine = index.engine(detail=True) if hasattr(index, "engine") else None
        t_add = time.perf_counter()
        index.save(out)
        t_save = time.perf_counter()
        summary: dict[str, Any] = {"index": str(out), **index.describe(), **index.storage()}
        summary["bytes_on_disk"] = out.stat().st_size
        if engine is not None:
            summary["engine"] = engine
        if mode == "compact" and cs.depth > 1 and len(cs):
            # how well the derived foci reproduce the encoder's own codes (1.0 = identical)
            agree = []
            for f in range(1, cs.depth + 1):
                derived = index.depth_codes(f - 1) if in_memory else index.codes_of(cs.ids.tolist(), f)
                agree.append(round(float((unpack_codes(derived, cs.bits) == cs.signs(f)).mean()), 6))
            summary["derived_bit_agreement"] = agree
    finally:
        index.close()
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    summary["seconds_read"] = round(t_load - t0, 3)
    summary["seconds_add"] = round(t_add - t_load, 3)
    summary["seconds_save"] = round(t_save - t_add, 3)
    summary.update(memory_mib())
    return summary


def memory_mib() -> dict[str, float | None]:
    """This process's resident memory now and at its peak, in MiB (``None`` where the OS does not say)."""
    now = None
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    now = round(int(line.split()[1]) / 1024, 1)
    except OSError:  # pragma: no cover - not Linux
        pass
    peak = None
    try:
        import resource  # noqa: PLC0415 - POSIX only
        peak = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)   # KiB on Linux
    except ImportError:  # pragma: no cover - Windows
        pass
    return {"rss_mib": now, "peak_rss_mib": peak}


def _read_query_codes(path: Path, index: CodeIndex, focus: int | None) -> tuple[list[str], np.ndarray]:
    """Queries from a CODES ``.npz``, a ``.npy`` array (packed or ±1), or text lines of K '0'/'1'."""
    d = index.focus_index(focus)
    if not path.exists():
        raise CodeFileError(path, "query codes file not found")
    if path.suffix == ".npz":
        cs = CodeSet.load(path)
        if cs.bits != index.bits:
            raise CodeFileError(path, f"codes have {cs.bits} bits but the index has {index.bits}")
        if cs.depth != index.depth:
            raise CodeFileError(path, f"codes have {cs.depth} foci but the index has {index.depth}")
        return cs.ids.tolist(), cs.codes[:, d]
    if path.suffix == ".npy":
        try:
            a = np.load(path, allow_pickle=False)
        except ValueError as exc:
            why = "it holds Python objects" if "pickle" in str(exc) else str(exc).splitlines()[0]
            raise ValueError(f"--codes-file {path} is not an array of codes ({why}); it must hold ±1 or 0/1 bits, "
                             "or packed uint8 codes") from None
        except (OSError, EOFError) as exc:
            raise CodeFileError(path, f"unreadable .npy ({exc})") from exc
        a = _query_bits(a, index.bits, path)
    else:
        try:
            lines = [ln.strip().replace(" ", "") for ln in path.read_text().splitlines() if ln.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise CodeFileError(path, f"unreadable text file ({exc})") from exc
        if not lines or any(set(ln) - {"0", "1"} for ln in lines):
            raise CodeFileError(path, f"expected lines of {index.bits} '0'/'1' characters")
        if any(len(ln) != index.bits for ln in lines):
            raise CodeFileError(path, f"wrong code length: every line must have {index.bits} bits")
        a = pack_codes(np.array([[c == "1" for c in ln] for ln in lines]))
    try:
        q = index.prepare_queries(a, d)
    except ValueError as exc:
        raise CodeFileError(path, str(exc)) from exc
    return [f"q{i}" for i in range(q.shape[0])], q


def _query_bits(a: np.ndarray, bits: int, path: Path) -> np.ndarray:
    """A ``.npy`` query array as the index takes it: packed uint8 kept, 0/1 values made bits, ±1 kept;
    anything else is one line naming ``--codes-file`` and the dtype."""
    if a.dtype == np.uint8 and a.ndim and a.shape[-1] == bits // 8:
        return a  # packed codes
    if a.dtype == np.bool_:
        return a
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise ValueError(f"--codes-file {path} holds {a.dtype} values; it must hold ±1 or 0/1 bits, or packed uint8 "
                         "codes")
    values = set(np.unique(a[np.isfinite(a)] if a.dtype.kind == "f" else a).tolist()) if a.size else set()
    if a.size and a.dtype.kind == "f" and not np.isfinite(a).all():
        values.add(float("nan"))
    if values <= {0, 1}:
        return a.astype(bool)
    if values <= {-1, 1}:
        return a
    bad = sorted(values - {-1, 0, 1}, key=str)[0]
    raise ValueError(f"--codes-file {path} holds {a.dtype} values (e.g. {bad}); it must hold ±1 or 0/1 bits, or "
                     f"packed uint8 codes ({bits // 8} bytes per code)")


def _require_archive(path: Path, flag: str, what: str) -> None:
    """Refuse a file that is not an ``.npz`` archive (text, pickle, ...) naming the CLI flag."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except (FileNotFoundError, IsADirectoryError):
        return  # the loader names these
    if head != b"PK\x03\x04":
        raise CodeFileError(path, f"{flag} must be {what} (an .npz archive); this file is not one"
                                  + (" (it looks like text)" if head and all(32 <= b < 127 or b in b"\t\r\n"
                                                                            for b in head) else ""))


def search_index(index_path: str | Path, *, clip_id: str | None = None, codes_file: str | Path | None = None,
                 focus: int | None = None, k: int = 10, stats: dict | None = None) -> list[dict[str, Any]]:
    """Search a saved index; returns rows ``{query, focus, rank, clip, distance, activity, group}``.

    Exactly one of ``clip_id`` (a stored clip ``VIDEO/CLIP``; itself excluded
    from the results) or ``codes_file`` (``.npz`` CODES, ``.npy`` codes, or
    text lines of K '0'/'1') is required.  ``focus`` is 1-based, default the
    deepest (ValueError naming the index's range 1..Y otherwise); ``k >= 1``
    (ValueError otherwise, before the index is opened).  ``stats``, when
    given, receives ``clips``, ``seconds_open``, ``seconds_search``,
    ``seconds`` and the process's memory (:func:`memory_mib`).
    """
    t0 = time.perf_counter()
    k = check_k(k)
    if (clip_id is None) == (codes_file is None):
        raise ValueError("give exactly one of clip_id (--clip) or codes_file (--codes-file)")
    index_path = Path(index_path)
    _require_archive(index_path, "--index", "an index file written by `stvh index build`")
    index = load_index(index_path)
    t_open = time.perf_counter()
    try:
        d = index.focus_index(focus)
        if clip_id is not None:
            if clip_id not in index:
                raise UnknownIdError(f"clip {clip_id!r} is not in the index {index_path}")
            names = [clip_id]
            q = index.codes_of([clip_id], d + 1)
            ids, dist = index.search(q, k + 1, focus=d + 1)
            keep = ids[0] != clip_id
            ids, dist = ids[:, keep][:, :k], dist[:, keep][:, :k]
        else:
            names, q = _read_query_codes(Path(codes_file), index, d + 1)
            t_open = time.perf_counter()
            ids, dist = index.search(q, k, focus=d + 1)
        t_search = time.perf_counter()
        n_clips = len(index)
        flat = list(dict.fromkeys(ids.ravel().tolist()))
        act, grp = index.labels_of(flat) if flat else (np.empty(0, np.int64), np.empty(0, object))
        labels = {c: (int(a), str(g)) for c, a, g in zip(flat, act, grp)}
        names_of = index.meta.get("activity_names") or []
    finally:
        index.close()
    rows = []
    for i, name in enumerate(names):
        for r in range(ids.shape[1]):
            clip = ids[i, r]
            a, g = labels[clip]
            row = {"query": name, "focus": d + 1, "rank": r + 1, "clip": clip, "distance": int(dist[i, r]),
                   "activity": a, "group": g}
            if names_of and 0 <= a < len(names_of):
                row["activity_name"] = names_of[a]
            rows.append(row)
    if stats is not None:
        stats.update({"clips": n_clips, "seconds_open": round(t_open - t0, 4),
                      "seconds_search": round(t_search - t_open, 4), "seconds": round(time.perf_counter() - t0, 4),
                      **memory_mib()})
    return rows


def format_stats(stats: dict) -> str:
    """One line of :func:`search_index`'s ``stats``: clips, times and memory."""
    def mib(v):
        return "?" if v is None else f"{v:,.0f} MiB"
    return (f"{stats['clips']:,} clips searched in {1000 * stats['seconds_search']:.1f} ms "
            f"(index opened in {1000 * stats['seconds_open']:.1f} ms, {stats['seconds']:.2f} s in all); "
            f"memory: {mib(stats['rss_mib'])} resident, peak {mib(stats['peak_rss_mib'])}")


def format_results(rows: list[dict[str, Any]]) -> str:
    """Plain-text table of :func:`search_index` rows (query column only when several queries)."""
    if not rows:
        return "(no results)"
    several = len({r["query"] for r in rows}) > 1
    cols = (["query"] if several else []) + ["rank", "clip", "distance", "activity", "group"]

    def cell(r, c):
        if c == "activity":
            return r.get("activity_name") or ("-" if r["activity"] < 0 else str(r["activity"]))
        return str(r[c]) if r[c] != "" else "-"

    table = [cols] + [[cell(r, c) for c in cols] for r in rows]
    widths = [max(len(row[j]) for row in table) for j in range(len(cols))]
    right = {"rank", "distance"}
    lines = []
    for n, row in enumerate(table):
        lines.append("  ".join(v.rjust(w) if cols[j] in right else v.ljust(w)
                               for j, (v, w) in enumerate(zip(row, widths))).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    header = f"focus {rows[0]['focus']}" + ("" if several else f", query {rows[0]['query']}")
    return header + "\n" + "\n".join(lines)
