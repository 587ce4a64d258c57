"""Milvus backend: the same API over a Milvus collection (scale-out).

Install with ``pip install 'stvh[milvus]'``.  ``uri`` selects the deployment:

* a local path ending in ``.db`` -> Milvus Lite (an embedded server process
  per file, started by pymilvus; stopped by :meth:`MilvusIndex.close`);
* ``http://host:19530`` (or ``https://``) -> a Milvus server or cluster
  (``token`` for authentication is passed through, never saved).

Collection schema: ``pos`` INT64 primary key (insertion counter, never reused:
it is the tie-break order), ``clip`` VARCHAR, ``activity`` INT64, ``group``
VARCHAR, and one ``BINARY_VECTOR`` field ``code_<focus>`` (dim K) per focus,
each with a ``HAMMING`` index: ``BIN_FLAT`` (exact, default) or
``BIN_IVF_FLAT`` for servers (approximate; tie/exactness guarantees then no
longer hold).  Consistency level ``Strong``.  Inserts go in batches of at most
2000 rows; a failed ``add`` deletes the rows it already inserted.

Compact mode: Milvus must search every focus, so the derived shallower codes
are inserted too; only the local manifest (written by :meth:`save`) records
mode and filter F.  The on-disk saving of compact mode applies to the
in-memory backends.

Exact ties: Milvus returns the top ``limit`` rows by distance in no defined
order among equal distances.  We ask for ``k + max(k, 16)`` rows, re-sort by
(distance, pos), and accept when a row farther than the k-th distance came
back (then every row at the k-th distance was returned).  Otherwise the limit
grows (up to Milvus's 16384); if that still ends in a tie, filtered searches
``pos < cutoff`` fetch the earlier-inserted tied rows until none is missing.
``k`` is limited to 16384.
"""

from __future__ import annotations

import json
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .base import (CodeIndex, DuplicateIdError, IndexFileError, UnknownIdError, _short, as_id_list, check_k,
                   first_duplicate)
from .codes import save_npz_atomic, scalar

INSERT_BATCH = 2000
QUERY_BATCH = 1000
MAX_LIMIT = 16384
INDEX_TYPES = ("BIN_FLAT", "BIN_IVF_FLAT")
_lite_refs: dict[str, int] = {}
_lite_lock = threading.Lock()


def import_pymilvus():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")            # milvus-lite imports the deprecated pkg_resources
            import pymilvus  # noqa: PLC0415
    except ImportError as exc:
        raise ImportError("the 'milvus' index backend needs pymilvus and milvus-lite: "
                          "pip install 'stvh[milvus]'") from exc
    return pymilvus


def is_local(uri: str) -> bool:
    return "://" not in uri


def _quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


class MilvusIndex(CodeIndex):
    """Exact Hamming top-k in a Milvus collection (see the module docstring)."""

    backend = "milvus"

    def __init__(self, bits: int, depth: int = 1, *, mode: str = "all", filter=None, meta=None,
                 uri: str = "stvh_index.db", collection: str = "stvh_codes", index_type: str = "BIN_FLAT",
                 nlist: int = 1024, token: str | None = None, overwrite: bool = False,
                 _existing: bool = False, _next_pos: int = 0):
        super().__init__(bits, depth, mode=mode, filter=filter, meta=meta)
        if index_type not in INDEX_TYPES:
            raise ValueError(f"unknown Milvus index type {index_type!r}: choose one of {INDEX_TYPES}")
        pymilvus = import_pymilvus()
        uri = str(uri)
        if is_local(uri):
            if not uri.endswith(".db"):
                raise ValueError(f"a local Milvus Lite uri must be a file ending in .db, got {uri!r}")
            uri = str(Path(uri).expanduser().resolve())
            Path(uri).parent.mkdir(parents=True, exist_ok=True)
        self.uri, self.collection, self.index_type, self.nlist = uri, collection, index_type, int(nlist)
        kw = {"uri": uri}
        if token:
            kw["token"] = token
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._client = pymilvus.MilvusClient(**kw)
        except Exception as exc:
            raise ConnectionError(f"cannot connect to Milvus at {uri}: {exc}") from exc
        if is_local(uri):
            with _lite_lock:
                _lite_refs[uri] = _lite_refs.get(uri, 0) + 1
        self._closed = False
        self._next_pos = int(_next_pos)
        try:
            exists = self._client.has_collection(collection)
            if _existing:
                if not exists:
                    raise IndexFileError(uri, f"Milvus collection {collection!r} not found")
                self._client.load_collection(collection)
                self._next_pos = self._recover_next_pos()
            else:
                if exists and not overwrite:
                    raise ValueError(f"Milvus collection {collection!r} already exists at {uri}; "
                                     "pass overwrite=True to replace it")
                if exists:
                    self._client.drop_collection(collection)
                self._create()
        except BaseException:
            self.close()
            raise

    # ---- collection
    def field(self, d: int) -> str:
        return f"code_{d + 1}"

    def _create(self) -> None:
        from pymilvus import DataType
        c = self._client
        schema = c.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("pos", DataType.INT64, is_primary=True)
        schema.add_field("clip", DataType.VARCHAR, max_length=1024)
        schema.add_field("activity", DataType.INT64)
        schema.add_field("group", DataType.VARCHAR, max_length=1024)
        for d in range(self._depth):
            schema.add_field(self.field(d), DataType.BINARY_VECTOR, dim=self._bits)
        params = c.prepare_index_params()
        for d in range(self._depth):
            extra = {"params": {"nlist": self.nlist}} if self.index_type == "BIN_IVF_FLAT" else {}
            params.add_index(field_name=self.field(d), index_type=self.index_type, metric_type="HAMMING", **extra)
        c.create_collection(self.collection, schema=schema, index_params=params, consistency_level="Strong")
        c.load_collection(self.collection)

    def _query(self, expr: str, fields: list[str], limit: int | None = None) -> list[dict]:
        kw: dict[str, Any] = {"filter": expr, "output_fields": fields}
        if limit is not None:
            kw["limit"] = limit
        return list(self._client.query(self.collection, **kw))

    def _recover_next_pos(self) -> int:
        # rows may have been added after the manifest was saved: continue after the largest pos
        nxt = self._next_pos
        while True:
            rows = self._query(f"pos >= {nxt}", ["pos"], limit=MAX_LIMIT)
            if not rows:
                return nxt
            nxt = max(r["pos"] for r in rows) + 1

    def _rows_for(self, ids: list[str], fields: list[str]) -> dict[str, dict]:
        out: dict[str, dict] = {}
        for s in range(0, len(ids), QUERY_BATCH):
            chunk = ids[s:s + QUERY_BATCH]
            expr = "clip in [" + ", ".join(_quote(i) for i in chunk) + "]"
            for r in self._query(expr, ["clip", *fields], limit=len(chunk) + 1):
                out[r["clip"]] = r
        return out

    def __len__(self) -> int:
        rows = self._query("", ["count(*)"])
        return int(rows[0]["count(*)"]) if rows else 0

    def __contains__(self, clip_id) -> bool:
        return isinstance(clip_id, str) and bool(self._rows_for([clip_id], ["pos"]))

    # ---- API
    def add(self, ids, codes, *, activity=None, group=None) -> None:
        ids = self._ids_to_add(ids)
        n = len(ids)
        packed = self.prepare_add_codes(codes, n)
        act, grp = self.prepare_labels(n, activity, group)
        if any(len(i) > 1024 for i in ids) or any(len(g) > 1024 for g in grp):
            raise ValueError("clip ids and group names are limited to 1024 characters in Milvus")
        present = self._rows_for(ids, ["pos"])
        if present:
            raise DuplicateIdError(f"id(s) already in the index: {_short(list(present))}")
        if n == 0:
            return
        start = self._next_pos
        try:
            for s in range(0, n, INSERT_BATCH):
                rows = []
                for j in range(s, min(n, s + INSERT_BATCH)):
                    row = {"pos": start + j, "clip": ids[j], "activity": int(act[j]), "group": str(grp[j])}
                    for d in range(self._depth):
                        row[self.field(d)] = packed[j, d].tobytes()
                    rows.append(row)
                self._client.insert(self.collection, rows)
        except BaseException:
            try:  # best effort: no partial add
                self._client.delete(self.collection, filter=f"pos >= {start} and pos < {start + n}")
            finally:
                self._next_pos = start + n
            raise
        self._next_pos = start + n

    def remove(self, ids) -> None:
        ids = as_id_list(ids)
        dup = first_duplicate(ids)
        if dup is not None:
            raise DuplicateIdError(f"duplicate id {dup!r} in this remove() call")
        rows = self._rows_for(ids, ["pos"])
        missing = [i for i in ids if i not in rows]
        if missing:
            raise UnknownIdError(f"cannot remove id(s) not in the index: {_short(missing)}")
        pos = [int(rows[i]["pos"]) for i in ids]
        for s in range(0, len(pos), QUERY_BATCH):
            chunk = pos[s:s + QUERY_BATCH]
            self._client.delete(self.collection, filter="pos in [" + ", ".join(map(str, chunk)) + "]")

    def codes_of(self, ids, focus: int | None = None) -> np.ndarray:
        d = self.focus_index(focus)
        ids = as_id_list(ids)
        rows = self._rows_for(ids, [self.field(d)])
        missing = [i for i in ids if i not in rows]
        if missing:
            raise UnknownIdError(f"id(s) not in the index: {_short(missing)}")
        out = np.empty((len(ids), self.nbytes_code), np.uint8)
        for j, i in enumerate(ids):
            v = rows[i][self.field(d)]
            out[j] = np.frombuffer(bytes(v[0] if isinstance(v, list) else v), np.uint8)
        return out

    def labels_of(self, ids) -> tuple[np.ndarray, np.ndarray]:
        ids = as_id_list(ids)
        rows = self._rows_for(ids, ["activity", "group"])
        missing = [i for i in ids if i not in rows]
        if missing:
            raise UnknownIdError(f"id(s) not in the index: {_short(missing)}")
        return (np.array([rows[i]["activity"] for i in ids], np.int64),
                np.array([rows[i]["group"] for i in ids], object))

    def _search(self, qs: list[bytes], field: str, limit: int, expr: str = "") -> list[list[tuple[int, int, str]]]:
        res = self._client.search(self.collection, data=qs, anns_field=field, limit=limit, filter=expr,
                                  output_fields=["clip"], search_params={"metric_type": "HAMMING"})
        return [[(int(round(h["distance"])), int(h["id"]), h["entity"]["clip"]) for h in hits] for hits in res]

    def search(self, queries, k: int, focus: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        k = check_k(k)
        if k > MAX_LIMIT:
            raise ValueError(f"the Milvus backend returns at most {MAX_LIMIT} results per query (k={k})")
        d = self.focus_index(focus)
        q = self.prepare_queries(queries, d)
        field = self.field(d)
        qs = [row.tobytes() for row in q]
        limit = min(k + max(k, 16), MAX_LIMIT)
        first = self._search(qs, field, limit) if qs else []
        results = [self._exact(qs[i], field, k, limit, hits) for i, hits in enumerate(first)]
        kk = min((len(r) for r in results), default=0)
        ids = np.empty((len(qs), kk), object)
        dist = np.empty((len(qs), kk), np.int32)
        for i, r in enumerate(results):
            ids[i] = [c for _, _, c in r[:kk]]
            dist[i] = [x for x, _, _ in r[:kk]]
        return ids, dist

    def _exact(self, q: bytes, field: str, k: int, limit: int, hits):
        """Top-k by (distance, pos), fetching more rows while the k-th distance may hide ties."""
        cands: dict[int, tuple[int, int, str]] = {}

        def absorb(hs):
            for h in hs:
                cands[h[1]] = h

        absorb(hits)
        # 1) unfiltered, growing limit: exact once a row beyond the k-th distance came back
        while True:
            top = sorted(cands.values())[:k]
            if len(hits) < limit:                              # the whole collection came back
                return top
            if max(h[0] for h in hits) > top[-1][0]:
                return top
            if limit >= MAX_LIMIT:
                break
            limit = min(4 * limit, MAX_LIMIT)
            hits = self._search([q], field, limit)[0]
            absorb(hits)
        # 2) every row closer than the k-th distance dk is known; rows at dk inserted before the
        #    last chosen one may be missing: fetch them with pos filters until none is
        while True:
            top = sorted(cands.values())[:k]
            dk, cutoff = top[-1][0], top[-1][1]
            hits = self._search([q], field, MAX_LIMIT, f"pos < {cutoff}")[0]
            absorb(hits)
            if len(hits) < MAX_LIMIT or max(h[0] for h in hits) > dk:
                return sorted(cands.values())[:k]

    # ---- persistence
    def save(self, path: str | Path) -> None:
        arrays: dict[str, Any] = {
            "format": np.array("stvh-index"), "version": np.array(1), "backend": np.array("milvus"),
            "bits": np.array(self._bits), "depth": np.array(self._depth), "mode": np.array(self._mode),
            "uri": np.array(self.uri), "collection": np.array(self.collection),
            "index_type": np.array(self.index_type), "nlist": np.array(self.nlist),
            "next_pos": np.array(self._next_pos),
            "meta": np.array(json.dumps(self.meta, sort_keys=True)),
        }
        if self._filter is not None:
            arrays["filter"] = self._filter
        if hasattr(self._client, "flush"):
            self._client.flush(self.collection)
        save_npz_atomic(path, arrays)

    @classmethod
    def _from_manifest(cls, path: Path, d: dict, *, bits, depth, mode, meta, token=None, uri=None, **_):
        for key in ("uri", "collection"):
            if key not in d:
                raise IndexFileError(path, f"Milvus index manifest lacks key {key!r}")
        return cls(bits, depth, mode=mode, filter=d.get("filter"), meta=meta,
                   uri=uri or str(d["uri"]), collection=str(d["collection"]),
                   index_type=str(d["index_type"]) if "index_type" in d else "BIN_FLAT",
                   nlist=scalar(d, "nlist", path, error=IndexFileError) if "nlist" in d else 1024, token=token,
                   _existing=True, _next_pos=scalar(d, "next_pos", path, error=IndexFileError) if "next_pos" in d else 0)

    def close(self) -> None:
        if getattr(self, "_closed", True):
            return
        self._closed = True
        try:
            self._client.close()
        finally:
            if is_local(self.uri):
                with _lite_lock:
                    _lite_refs[self.uri] -= 1
                    last = _lite_refs[self.uri] == 0
                    if last:
                        del _lite_refs[self.uri]
                if last:
                    try:
                        from milvus_lite.server_manager import server_manager_instance
                        server_manager_instance.release_server(self.uri)
                    except Exception:  # pragma: no cover - best effort
                        pass

    def __del__(self):  # pragma: no cover - safety net
        try:
            self.close()
        except Exception:
            pass

    def describe(self) -> dict:
        return {**super().describe(), "uri": self.uri, "collection": self.collection, "index_type": self.index_type}
