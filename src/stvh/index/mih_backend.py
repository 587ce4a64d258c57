"""Multi-index hashing inside an index: :class:`MIHMixin` (used by the auto backend) and backend ``"mih"``.

Per focus, the mixin keeps :class:`~stvh.index.mih.MIHTables` over the
focus's codes, or the decision that the scan is faster there:

* considered for 64- and 128-bit codes from :data:`MIN_ROWS` rows (below, a
  scan takes well under a millisecond and tables would only cost memory);
* decided by measurement on the index's own codes: 32 of its rows (evenly
  spaced) are searched for their 50 nearest by both engines (best of two runs), and the tables
  are kept when they answer in under :data:`KEEP_IF` of the scan's time and
  send at most a quarter of the queries to the scan (their budget) --
  the "estimate of its own neighbour radius" of issue 15: codes whose
  neighbours are far (uniform codes, loose clusters) make MIH probe more than
  it saves, and the index then scans.  Both engines are exact, so the choice
  changes speed, never results;
* appended rows are scanned as a tail until they exceed 1/8 of the index
  (then the tables are rebuilt and the choice re-measured); a removal drops
  the tables (positions shift) and the next search rebuilds them;
* the tables and the decision are saved with the index (``_extra_arrays``)
  and memory-mapped on load, so a loaded index searches at once.

Backend ``"mih"`` (:class:`stvh.index.faiss_backend.MIHIndex`) forces the
tables (no measurement; 64/128 bits) -- for tests and benchmarks; a query
whose budget runs out is still answered by the scan, so results stay exact.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from . import kernel, mih
from .mih import MIHTables

MIN_ROWS = 200_000
KEEP_IF = 0.8           # keep the tables when they take < 0.8 x the scan's time on the sample queries
SAMPLE_QUERIES = 32
SAMPLE_K = 50
log = logging.getLogger(__name__)


class MIHMixin:
    """Lazily built, measured, saved multi-index hashing tables per focus (needs ``InMemoryIndex``)."""

    force_mih = False
    _threads = 1

    # ---- threads (both engines split a batch of queries over them)
    @property
    def threads(self) -> int:
        return self._threads

    @threads.setter
    def threads(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= 64:
            raise ValueError(f"threads must be an integer in 1..64, got {value!r}")
        self._threads = int(value)

    # ---- the choice
    def _mih_cache(self) -> dict:
        return self.__dict__.setdefault("_mih_state", {})

    def mih_tables(self, d: int) -> MIHTables | None:
        """The focus-``d`` tables when searches there use them (built / measured on first use), else None."""
        if not mih.AVAILABLE or self._bits not in (64, 128) or (self._n < MIN_ROWS and not self.force_mih):
            return None
        cache = self._mih_cache()
        hit = cache.get(d)
        n = self._n
        if hit is not None:
            tables, n0 = hit
            if tables is None and n < 2 * n0 and not self.force_mih:
                return None                       # measured: the scan is faster here
            if tables is not None and tables.n <= n and not tables.stale(n):
                return tables
        tables = MIHTables.build(self.depth_codes(d), self._bits)
        keep = self.force_mih or self._faster_than_scan(tables, d)
        cache[d] = (tables if keep else None, n)
        return tables if keep else None

    def _faster_than_scan(self, tables: MIHTables, d: int) -> bool:
        db = self.depth_codes(d)
        rows = np.linspace(0, len(db) - 1, SAMPLE_QUERIES).astype(np.int64)
        q = np.ascontiguousarray(db[rows])
        k = min(SAMPLE_K + 1, len(db))
        t_scan = t_mih = float("inf")
        for _ in range(2):            # best of two, alternating: the first touch of new tables is slow
            t0 = time.perf_counter()
            _, _, stats = tables.search(db, q, k)
            t_mih = min(t_mih, time.perf_counter() - t0)
            t0 = time.perf_counter()
            kernel.kernel_topk(db, q, k)
            t_scan = min(t_scan, time.perf_counter() - t0)
        return stats["fallback"] <= SAMPLE_QUERIES // 4 and t_mih < KEEP_IF * t_scan

    def mih_engine(self, d: int | None = None) -> bool:
        """Does a search at depth index ``d`` (default deepest) use multi-index hashing now?"""
        d = self._depth - 1 if d is None else d
        return self.mih_tables(d) is not None

    def prepare(self, d: int | None = None) -> None:
        """Build (and measure) the tables of depth index ``d`` (default: the deepest) now, e.g. before a save."""
        self.mih_tables(self._depth - 1 if d is None else d)

    def _mih_search(self, d: int, q: np.ndarray, k: int):
        tables = self.mih_tables(d)
        if tables is None:
            return None
        try:
            pos, dist, _ = tables.search(self.depth_codes(d), q, k, threads=self._threads)
        except ValueError as exc:                 # damaged saved tables: say so once, rebuild, answer exactly
            log.warning("%s; rebuilding them in memory", exc)
            self._mih_cache().pop(d, None)
            tables = self.mih_tables(d)
            if tables is None:
                return None
            pos, dist, _ = tables.search(self.depth_codes(d), q, k, threads=self._threads)
        return pos, dist

    # ---- hooks of InMemoryIndex
    def _on_change(self, appended_from):
        if appended_from is None:                 # rows removed: positions shifted
            self._mih_cache().clear()
        super()._on_change(appended_from)

    def _extra_arrays(self) -> dict[str, np.ndarray]:
        out = dict(super()._extra_arrays()) if hasattr(super(), "_extra_arrays") else {}
        for d, (tables, n0) in self._mih_cache().items():
            out[f"mih{d}_n"] = np.array(n0 if tables is None else tables.n, np.int64)
            out[f"mih{d}_use"] = np.array(tables is not None)
            if tables is not None:
                out.update({f"mih{d}_{name}": a for name, a in tables.to_arrays().items()})
        return out

    def _adopt_extra(self, arrays: dict[str, np.ndarray]) -> None:
        if hasattr(super(), "_adopt_extra"):
            super()._adopt_extra(arrays)
        if not mih.AVAILABLE:
            return
        cache = self._mih_cache()
        for d in range(self._depth):
            if f"mih{d}_use" not in arrays:
                continue
            n0 = int(arrays[f"mih{d}_n"])
            if n0 > self._n:
                continue                          # not these codes: rebuilt on use
            if not bool(arrays[f"mih{d}_use"]):
                cache[d] = (None, n0)
                continue
            prefix = f"mih{d}_"
            sub = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
            try:
                cache[d] = (MIHTables.from_arrays(self._bits, sub), n0)
            except (KeyError, ValueError):
                continue                          # damaged tables: rebuilt on use
