"""``stvh report``: one self-contained HTML page with the paper's figures for a run.

``write_report(RUN)`` reads what ``stvh train`` / ``stvh eval`` left in a run
folder and writes ``RUN/report.html``: every figure is a PNG drawn with
matplotlib (Agg, no pyplot state) and embedded as ``data:image/png;base64``;
no script, stylesheet, font or image is fetched from anywhere.

Sections (docs/report.md explains each choice):

* header — run, model, bits, depth, dataset, epochs, best epoch, headline numbers;
* metrics table — mAP@5/10/20/50 per depth, activity and visual focus (+ derived codes);
* training curves — loss terms, validation metrics and learning rate per epoch;
* confusion matrix (Fig. 7/8) — deepest activity head on the test split;
* mAP per depth (Fig. 10) — mAP@10 / mAP@50 vs depth, activity vs visual focus;
* retrieval examples (Fig. 9) — top-k retrieved clips per depth for a few queries;
* attention maps (Fig. 11) — O-MFAT (T x T) and G-MFAT (N x N) maps per depth;
* class Hamming distance (Fig. 12) — mean Hamming distance between class codes.

A missing input turns its section into a note naming the command that produces
it; an unexpected failure inside one section is reported in that section
(class ``note error``) and the rest of the page is still written.
"""

from __future__ import annotations

import base64
import csv
import html
import importlib.util
import io
import json
import math
import re
import shlex
import warnings
from pathlib import Path

import numpy as np

from ..data.atomic import write_text_atomic

GREEN, RED, BLUE = "#1a9850", "#d73027", "#4575b4"
THUMB_WIDTH = 240  # px, longest thumbnail side in the retrieval and attention figures
DPI = 96

SECTIONS = {  # anchor -> title (the order of the page)
    "metrics": "Metrics table",
    "curves": "Training curves",
    "confusion": "Confusion matrix (Fig. 7/8)",
    "map-depth": "mAP per depth (Fig. 10)",
    "retrieval": "Retrieval examples (Fig. 9)",
    "attention": "Attention maps (Fig. 11)",
    "hamming": "Class Hamming distance (Fig. 12)",
}

_MAP_KEY = re.compile(r"^map@(\d+)/(activity|visual)/K(\d+)/depth(\d+)(/derived)?$")


# --------------------------------------------------------------------------- pure helpers

def top_k_by_hamming(query_signs: np.ndarray, db_signs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and Hamming distances of the ``k`` database codes nearest to each query.

    ``query_signs`` is ``(K,)`` or ``(Q, K)``, ``db_signs`` ``(M, K)``, both ±1.
    Ties are broken by database order (stable sort), the ranking of
    :mod:`stvh.eval.metrics`. Returns ``(idx, dist)`` of shape ``(min(k, M),)``
    or ``(Q, min(k, M))``.
    """
    q = np.asarray(query_signs)
    single = q.ndim == 1
    q = np.atleast_2d(q).astype(np.int64)
    d = np.asarray(db_signs).astype(np.int64)
    if d.ndim != 2 or q.shape[1] != d.shape[1]:
        raise ValueError(f"code shapes differ: queries {q.shape}, database {d.shape}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    dist = (q.shape[1] - q @ d.T) // 2  # (Q, M)
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    top = np.take_along_axis(dist, order, axis=1)
    return (order[0], top[0]) if single else (order, top)


def choose_queries(activity, candidates, n: int) -> list[int]:
    """Deterministic query rows: the first candidate of each new activity class in
    row order, then (if fewer than ``n`` classes) the next unchosen candidates."""
    activity = np.asarray(activity)
    rows = [int(i) for i in np.flatnonzero(np.asarray(candidates, dtype=bool))]
    chosen, seen = [], set()
    for i in rows:
        if len(chosen) >= n:
            break
        if activity[i] >= 0 and activity[i] not in seen:
            seen.add(int(activity[i]))
            chosen.append(i)
    for i in rows:
        if len(chosen) >= n:
            break
        if i not in chosen:
            chosen.append(i)
    return chosen


def best_epoch(rows: list[dict]) -> int | None:
    """Epoch of the highest ``score`` (first one on ties, as ``fit`` keeps it)."""
    best, best_score = None, -math.inf
    for r in rows:
        s = r.get("score")
        if s is not None and not math.isnan(s) and s > best_score:
            best, best_score = int(r["epoch"]), s
    return best


def read_metrics_csv(path: Path) -> list[dict]:
    """Rows of ``metrics.csv`` with numeric values (empty cells -> NaN)."""
    rows = []
    with open(path, newline="") as fh:
        for raw in csv.DictReader(fh):
            row = {}
            for key, value in raw.items():
                if key is None:
                    continue
                try:
                    row[key] = float(value) if value not in ("", None) else math.nan
                except ValueError:
                    row[key] = math.nan
            rows.append(row)
    return rows


def map_table(metrics: dict) -> dict[int, dict[tuple[int, bool], dict[tuple[str, int], float]]]:
    """``{bits: {(depth, derived): {(focus, k): mAP@k}}}`` from a flat ``metrics.json``."""
    out: dict = {}
    for key, value in metrics.items():
        m = _MAP_KEY.match(key)
        if m:
            k, focus, bits, depth, derived = int(m[1]), m[2], int(m[3]), int(m[4]), bool(m[5])
            out.setdefault(bits, {}).setdefault((depth, derived), {})[(focus, k)] = float(value)
    return out


# --------------------------------------------------------------------------- html helpers

def _esc(x) -> str:
    return html.escape(str(x))


def _note(text: str, error: bool = False) -> str:
    return f'<p class="note{" error" if error else ""}">{text}</p>'


def _png(fig, alt: str) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", facecolor="white")
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="{_esc(alt)}" src="data:image/png;base64,{data}">'


def _figure(w: float, h: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h))


def _fmt(v, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return _esc(v)


def _cmd(text: str) -> str:
    return f"<code>{_esc(text)}</code>"


# --------------------------------------------------------------------------- the run

class _Run:
    """Lazily read inputs of a run folder; each ``get`` returns (value, note)."""

    def __init__(self, path: Path):
        self.path = path
        self._cache: dict[str, tuple] = {}

    def _load(self, name: str, fn):
        if name not in self._cache:
            try:
                self._cache[name] = (fn(), None)
            except _Missing as exc:
                self._cache[name] = (None, str(exc))
        return self._cache[name]

    def _file(self, name: str, hint: str) -> Path:
        p = self.path / name
        if not p.is_file():
            raise _Missing(f"{_cmd(name)} is missing in the run folder; {hint}")
        return p

    @property
    def train_hint(self) -> str:
        return f"train with {_cmd('stvh train --data DATA --out ' + shlex.quote(str(self.path)))}"

    @property
    def eval_hint(self) -> str:
        return f"run {_cmd('stvh eval --run ' + shlex.quote(str(self.path)))}"

    def config(self):
        def fn():
            import yaml

            return yaml.safe_load(self._file("config.yaml", self.train_hint).read_text()) or {}
        return self._load("config", fn)

    def info(self):
        return self._load("info", lambda: json.loads(self._file("run.json", self.train_hint).read_text()))

    def curves(self):
        return self._load("curves", lambda: read_metrics_csv(self._file("metrics.csv", self.train_hint)))

    def metrics(self):
        return self._load("metrics", lambda: json.loads(self._file("metrics.json", self.eval_hint).read_text()))

    def details(self):
        return self._load("details", lambda: json.loads(self._file("eval_details.json", self.eval_hint).read_text()))

    def codes(self):
        def fn():
            from ..index.codes import CodeSet

            return CodeSet.load(self._file("codes.npz", self.eval_hint + " (it encodes RUN/codes.npz)"))
        return self._load("codes", fn)

    def data_dir(self) -> str | None:
        cs, _ = self.codes()
        if cs is not None and cs.meta.get("data"):
            return str(cs.meta["data"])
        info, _ = self.info()
        return str(info["data"]) if info and info.get("data") else None

    def dataset(self):
        """The dataset read as the run read it (format, window, n_max of its config)."""
        def fn():
            from ..data.formats import read_dataset

            data = self.data_dir()
            if data is None:
                raise _Missing("the dataset location is unknown (no run.json and no codes.npz)")
            if not Path(data).is_dir():
                raise _Missing(f"the dataset {_cmd(data)} is not there any more (moved or deleted)")
            cfg, _ = self.config()
            d = (cfg or {}).get("data") or {}
            kwargs = {}
            if d.get("n_max") is not None:
                kwargs["n_max"] = d["n_max"]
            if d.get("window") is not None:
                kwargs["window"] = tuple(d["window"])
            try:
                return read_dataset(data, d.get("format"), **kwargs)
            except Exception as exc:  # a broken dataset must not break the page
                raise _Missing(f"the dataset {_cmd(data)} could not be read ({_esc(type(exc).__name__)}: "
                               f"{_esc(str(exc)[:200])})") from None
        return self._load("dataset", fn)

    def activity_names(self) -> list[str]:
        for getter, key in ((self.details, "activities"), (self.info, "activities")):
            value, _ = getter()
            if value and value.get(key):
                return [str(a) for a in value[key]]
        cs, _ = self.codes()
        if cs is not None and cs.meta.get("activities"):
            return [str(a) for a in cs.meta["activities"]]
        return []


class _Missing(Exception):
    """An input of the report is absent; the message (HTML) says how to produce it."""


def _class_name(names: list[str], i: int) -> str:
    if i < 0:
        return "unlabeled"
    return names[i] if i < len(names) else f"class {i}"


# --------------------------------------------------------------------------- sections

def _header(run: _Run) -> str:
    cfg, _ = run.config()
    info, _ = run.info()
    rows, _ = run.curves()
    metrics, _ = run.metrics()
    details, _ = run.details()
    cs, _ = run.codes()
    model = (cfg or {}).get("model") or {}
    items = [("run", _esc(run.path.resolve())),
             ("model", _esc(model.get("name") or (cs.meta.get("model") if cs is not None else None) or "?"))]
    bits = (details or {}).get("bits") or (cs.bits if cs is not None else None) or model.get("bits")
    depth = (details or {}).get("depth") or (cs.depth if cs is not None else None) or model.get("depth")
    items += [("bits", _fmt(bits)), ("depth", _fmt(depth))]
    data = run.data_dir()
    fmt = (info or {}).get("format")
    items.append(("dataset", _esc(f"{data} ({fmt})" if fmt else data or "?")))
    if info and info.get("splits"):
        items.append(("clips", _esc(", ".join(f"{k} {v}" for k, v in info["splits"].items()))))
    epochs_cfg = ((cfg or {}).get("train") or {}).get("epochs")
    if rows is not None:
        items.append(("epochs", f"{len(rows)} run" + (f" of {epochs_cfg} configured" if epochs_cfg else "")))
        be = best_epoch(rows)
        sel = ((cfg or {}).get("train") or {}).get("select", "score")
        items.append(("best epoch", f"{be} (highest score = {_esc(sel)})" if be is not None else "–"))
    if cs is not None and "epoch" in cs.meta:
        items.append(("codes from epoch", _fmt(cs.meta["epoch"])))
    if metrics:
        head = [("activity accuracy (MCA)", metrics.get("mca")), ("MPCA", metrics.get("mpca")),
                ("action accuracy", metrics.get("action_acc"))]
        table = map_table(metrics)
        if table:
            b = bits if bits in table else sorted(table)[-1]
            depths = sorted({d for d, der in table[b] if not der})
            if depths:
                deep, shallow = table[b][(depths[-1], False)], table[b][(depths[0], False)]
                head.append((f"activity mAP@10 (depth {depths[-1]})", deep.get(("activity", 10))))
                head.append((f"visual mAP@10 (depth {depths[0]})", shallow.get(("visual", 10))))
        items.append(("headline", " &nbsp;·&nbsp; ".join(f"{_esc(k)} <b>{_fmt(v)}</b>" for k, v in head)))
    dl = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in items)
    toc = " · ".join(f'<a href="#{a}">{_esc(t)}</a>' for a, t in SECTIONS.items())
    return f'<table class="header">{dl}</table><p class="toc">{toc}</p>'


def _metrics_section(run: _Run) -> str:
    metrics, note = run.metrics()
    if metrics is None:
        return _note(note)
    details, _ = run.details()
    table = map_table(metrics)
    if not table:
        return _note("metrics.json holds no <code>map@k/...</code> keys; " + run.eval_hint)
    parts = []
    head = [("MCA", metrics.get("mca")), ("MPCA", metrics.get("mpca")), ("action accuracy", metrics.get("action_acc"))]
    parts.append('<table class="grid"><tr>' + "".join(f"<th>{k}</th>" for k, _ in head) + "</tr><tr>"
                 + "".join(f"<td>{_fmt(v)}</td>" for _, v in head) + "</tr></table>")
    agreement = (details or {}).get("derived_bit_agreement") or []
    for bits in sorted(table):
        ks = sorted({k for row in table[bits].values() for _, k in row})
        cols = [(f, k) for f in ("activity", "visual") for k in ks]
        hdr = ("<tr><th rowspan=2>depth</th><th rowspan=2>codes</th><th rowspan=2>MCA</th>"
               f"<th colspan={len(ks)}>activity focus mAP@k</th><th colspan={len(ks)}>visual focus mAP@k</th></tr><tr>"
               + "".join(f"<th>@{k}</th>" for _, k in cols) + "</tr>")
        body = []
        for (depth, derived) in sorted(table[bits], key=lambda x: (x[0], x[1])):
            row = table[bits][(depth, derived)]
            if derived:
                agree = agreement[depth - 1] if depth - 1 < len(agreement) else None
                stored = table[bits].get((depth, False), {})
                ratios = [f"{focus} {row[(focus, 10)] / stored[(focus, 10)]:.2f}"
                          for focus in ("activity", "visual")
                          if (focus, 10) in row and stored.get((focus, 10))]
                what = "derived by F" + (f" ({agree:.1%} bits equal)" if agree is not None else "") + (
                    f"; mAP@10 / stored: {', '.join(ratios)}" if ratios else "")
                acc = None
            else:
                what, acc = "stored", metrics.get(f"mca/depth{depth}")
            body.append(f'<tr class="{"derived" if derived else ""}"><td>{depth}</td><td>{what}</td>'
                        f"<td>{_fmt(acc)}</td>" + "".join(f"<td>{_fmt(row.get(c))}</td>" for c in cols) + "</tr>")
        parts.append(f"<p>{bits}-bit codes</p><table class=\"grid\">{hdr}{''.join(body)}</table>")
    proto = (details or {}).get("visual_protocol")
    cap = ("mAP@k with the relevant-count convention (metrics.json also holds the divide-by-k variant "
           "<code>/byk</code> and <code>precision@k</code>). Activity focus: relevant = same activity, train split "
           "as database, test split as queries. Visual focus: relevant = same visual group"
           + (f" ({_esc(proto)})" if proto else "") + ". MCA per depth = accuracy of that depth's activity head. "
           "Derived rows: codes of a shallower depth computed from the deepest code by the filter matrix F (Sec. 5.4).")
    if details:
        cap += f" {details.get('queries', '?')} queries, {details.get('database', '?')} database clips."
    return "".join(parts) + f'<p class="caption">{cap}</p>'


def _curves_section(run: _Run) -> str:
    rows, note = run.curves()
    if rows is None:
        return _note(note)
    if not rows:
        return _note("metrics.csv has no epoch rows yet; " + run.train_hint)
    cols = list(rows[0])
    epochs = np.array([r.get("epoch", i) for i, r in enumerate(rows)], dtype=float)
    losses = [c for c in cols if c.startswith("loss_")]
    vals = [c for c in cols if c.startswith("val_")]
    series = lambda c: np.array([r.get(c, math.nan) for r in rows], dtype=float)  # noqa: E731
    if "score" in cols and not any(np.allclose(series("score"), series(v), equal_nan=True) for v in vals):
        vals.append("score")
    lr = ["lr"] if "lr" in cols else []
    panels = [p for p in (("loss terms", losses), ("validation", vals), ("learning rate", lr)) if p[1]]
    if not panels:
        return _note("metrics.csv has no loss, validation or lr columns")
    from matplotlib.ticker import MaxNLocator

    fig = _figure(4.6 * len(panels), 3.4)
    be = best_epoch(rows)
    marker = "o" if len(rows) < 30 else None
    for i, (title, names) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for c in names:
            y = series(c)
            if c == "loss_total":
                ax.plot(epochs, y, color="black", lw=2.2, marker=marker, ms=4, label=c, zorder=3)
            else:
                ax.plot(epochs, y, lw=1.3, marker=marker, ms=3, label=c)
        if title != "validation":
            finite = np.concatenate([series(c)[np.isfinite(series(c))] for c in names])
            if finite.size and finite.min() > 0 and finite.max() / finite.min() > 30:
                ax.set_yscale("log")
        if be is not None:
            ax.axvline(be, color="grey", ls=":", lw=1, label=f"best epoch {be}")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if len(rows) == 1:
            ax.set_xlim(epochs[0] - 1, epochs[0] + 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    return _png(fig, "training curves") + (
        '<p class="caption">Per-epoch means of the loss terms on the training part, validation metrics '
        "(on the validation part carved out of the train split) and the learning rate. The dotted line marks the "
        "epoch with the best selection score (the checkpoint saved as best.pt).</p>")


def _deepest(values: list, what: str):
    if not values:
        raise _Missing(f"eval_details.json has no {what}")
    return len(values), np.asarray(values[-1], dtype=float)


def _confusion_section(run: _Run) -> str:
    details, note = run.details()
    if details is None:
        return _note(note)
    try:
        depth, cm = _deepest(details.get("confusion") or [], "confusion matrices")
    except _Missing as exc:
        return _note(str(exc))
    names = run.activity_names()
    C = cm.shape[0]
    labels = [_class_name(names, i) for i in range(C)]
    per_true = cm.sum(1)  # rows = true class
    frac = np.divide(cm, per_true[:, None], out=np.zeros_like(cm), where=per_true[:, None] > 0)
    # Paper orientation (Fig. 7/8): horizontal axis = ground truth, vertical = predicted.
    show, counts = frac.T, cm.T.astype(int)
    side = max(4.0, 0.62 * C + 1.8)
    fig = _figure(side + 0.8, side)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(show, cmap="Blues", vmin=0, vmax=1)
    for p in range(C):
        for t in range(C):
            if per_true[t] == 0:
                continue
            colour = "white" if show[p, t] > 0.55 else "black"
            if counts[p, t] or p == t:
                ax.text(t, p, f"{show[p, t]:.2f}\n({counts[p, t]})", ha="center", va="center", fontsize=8,
                        color=colour)
    ax.set_xticks(range(C), [f"{labels[t]}\n(n={int(per_true[t])})" for t in range(C)], rotation=45, ha="right",
                  fontsize=8)
    ax.set_yticks(range(C), labels, fontsize=8)
    ax.set_xlabel("ground truth")
    ax.set_ylabel("predicted")
    ax.set_title(f"activity head of depth {depth} (test split)", fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    absent = [labels[t] for t in range(C) if per_true[t] == 0]
    cap = ("Confusion matrix of the deepest activity head on the test split, in the paper's orientation "
           "(columns = ground truth, rows = predicted), normalised per true class (each column sums to 1); "
           "cells show the fraction and, in brackets, the count.")
    if absent:
        cap += " Classes without test clips (empty columns): " + _esc(", ".join(absent)) + "."
    return _png(fig, "confusion matrix") + f'<p class="caption">{cap}</p>'


def _hamming_section(run: _Run) -> str:
    details, note = run.details()
    if details is None:
        return _note(note)
    try:
        depth, hm = _deepest(details.get("class_hamming") or [], "class Hamming distances")
    except _Missing as exc:
        return _note(str(exc))
    names = run.activity_names()
    bits = details.get("bits")
    C = hm.shape[0]
    keep = [i for i in range(C) if np.any(hm[i] >= 0)]
    if not keep:
        return _note("no class has codes on the test split: the Hamming distance matrix is undefined")
    sub = hm[np.ix_(keep, keep)]
    masked = np.ma.masked_less(sub, 0)
    labels = [_class_name(names, i) for i in keep]
    n = len(keep)
    side = max(4.0, 0.62 * n + 1.8)
    fig = _figure(side + 0.8, side)
    ax = fig.add_subplot(1, 1, 1)
    from matplotlib import colormaps

    cmap = colormaps["viridis"].copy()
    cmap.set_bad("#dddddd")
    vmax = float(bits) / 2 if bits else None
    im = ax.imshow(masked, cmap=cmap, vmin=0, vmax=max(vmax or 0, float(masked.max()) if masked.count() else 1))
    lim = im.get_clim()
    for i in range(n):
        for j in range(n):
            v = sub[i, j]
            if v < 0:
                ax.text(j, i, "–", ha="center", va="center", fontsize=8, color="grey")
            else:
                bright = (v - lim[0]) / max(lim[1] - lim[0], 1e-9) > 0.6
                ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=7, color="black" if bright else "white")
    ax.set_xticks(range(n), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), labels, fontsize=8)
    ax.set_title(f"mean Hamming distance, depth {depth}" + (f", {bits} bits" if bits else ""), fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="mean Hamming distance")
    dropped = [_class_name(names, i) for i in range(C) if i not in keep]
    cap = ("Mean Hamming distance between the test-split codes of the deepest depth of two classes (diagonal: "
           "between distinct clips of the same class). Colour scale from 0 to K/2 (the distance of unrelated codes); "
           "grey '–' = undefined (a class with a single clip on the diagonal).")
    if dropped:
        cap += " Classes without test clips are left out: " + _esc(", ".join(dropped)) + "."
    return _png(fig, "class Hamming distance") + f'<p class="caption">{cap}</p>'


def _map_depth_section(run: _Run) -> str:
    metrics, note = run.metrics()
    if metrics is None:
        return _note(note)
    table = map_table(metrics)
    if not table:
        return _note("metrics.json holds no <code>map@k/...</code> keys; " + run.eval_hint)
    details, _ = run.details()
    bits = (details or {}).get("bits")
    bits = bits if bits in table else sorted(table)[-1]
    t = table[bits]
    depths = sorted({d for d, der in t if not der})
    ks = [k for k in (10, 50) if any((f, k) in row for row in t.values() for f in ("activity", "visual"))]
    if not ks:
        ks = sorted({k for row in t.values() for _, k in row})[:2]
    fig = _figure(4.8 * len(ks), 3.6)
    colours = {"activity": RED, "visual": BLUE}
    for i, k in enumerate(ks):
        ax = fig.add_subplot(1, len(ks), i + 1)
        for focus in ("activity", "visual"):
            y = [t.get((d, False), {}).get((focus, k), math.nan) for d in depths]
            ax.plot(depths, y, color=colours[focus], marker="o", lw=2, label=f"{focus} focus")
            der = [d for d in depths if (d, True) in t]
            if der:
                xd = der + [depths[-1]]
                yd = [t[(d, True)].get((focus, k), math.nan) for d in der] + [y[-1]]
                ax.plot(xd, yd, color=colours[focus], marker="s", ms=4, ls="--", lw=1.3,
                        label=f"{focus} focus, derived by F")
        ax.set_xticks(depths)
        ax.set_xlabel("depth (MSF output)")
        ax.set_ylabel(f"mAP@{k}")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"mAP@{k}, {bits} bits", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    cap = ("Retrieval mAP of the code of each depth for the two foci: activity (relevant = same activity) and "
           "visual (relevant = same visual group). Solid = the codes the model outputs at that depth; dashed = "
           "codes derived from the deepest code by the filter matrix F (they meet the solid line at the deepest "
           "depth, where both are the same code). The paper expects visual mAP to fall and activity mAP to rise "
           "with depth.")
    if len(depths) < 2:
        cap += " This run has a single depth, so the figure has one point per line."
    return _png(fig, "mAP per depth") + f'<p class="caption">{cap}</p>'


# ---- thumbnails

def _key_frame(clip) -> np.ndarray | None:
    from ..data.clip import ImageFrames, VideoFrames

    src = clip.frames
    if isinstance(src, ImageFrames):
        from PIL import Image

        with Image.open(src.paths[clip.key_index]) as im:
            return np.asarray(im.convert("RGB"))
    if isinstance(src, VideoFrames):
        from ..data.frames import read_frames

        return read_frames(VideoFrames(src.path, (src.indices[clip.key_index],)))[0]
    return None


def clip_thumbnail(clip, width: int = THUMB_WIDTH, highlight: int | None = None):
    """Key frame of ``clip`` (or a blank canvas of its image size when it has no
    readable frame) with the boxes of its real persons, scaled to ``width`` px.

    Returns ``(image (h, w, 3) uint8, had_frame, boxes)`` with ``boxes`` a dict
    person slot -> ``(x1, y1, x2, y2)`` in thumbnail pixels.
    """
    from PIL import Image, ImageDraw

    H, W = (int(v) for v in clip.image_size)
    frame, had = None, False
    try:
        frame = _key_frame(clip)
        had = frame is not None
    except Exception:  # missing / unreadable frame: draw the boxes on a blank canvas
        frame = None
    if frame is None:
        img = Image.new("RGB", (max(W, 1), max(H, 1)), (236, 236, 236))
        sx = sy = 1.0
    else:
        img = Image.fromarray(frame)
        sx, sy = img.width / max(W, 1), img.height / max(H, 1)
    scale = width / img.width
    img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.BILINEAR)
    draw = ImageDraw.Draw(img)
    boxes = np.asarray(clip.boxes[clip.key_index], dtype=float)
    line = max(1, round(img.width / 160))
    drawn = {}
    for n in np.flatnonzero(clip.mask):
        x1, y1, x2, y2 = boxes[n]
        xy = (x1 * sx * scale, y1 * sy * scale, x2 * sx * scale, y2 * sy * scale)
        colour = (255, 40, 40) if n == highlight else ((255, 215, 0) if had else (40, 70, 160))
        draw.rectangle(xy, outline=colour, width=line + (1 if n == highlight else 0))
        drawn[int(n)] = xy
    return np.asarray(img), had, drawn


class _Thumbs:
    """Thumbnails by clip id, read once."""

    def __init__(self, dataset):
        self.by_id = {c.id: c for c in dataset.clips} if dataset is not None else {}
        self.cache: dict[str, np.ndarray] = {}
        self.missing_frames = 0
        self.unknown = 0

    def get(self, clip_id: str) -> np.ndarray:
        if clip_id not in self.cache:
            clip = self.by_id.get(clip_id)
            if clip is None:
                self.unknown += 1
                img = np.full((90, 160, 3), 236, np.uint8)
            else:
                img, had, _ = clip_thumbnail(clip)
                self.missing_frames += not had
            self.cache[clip_id] = img
        return self.cache[clip_id]


def _frame_axis(ax, colour: str, width: float = 4.0) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for sp in ax.spines.values():
        sp.set_edgecolor(colour)
        sp.set_linewidth(width)


def _retrieval_section(run: _Run, top_k: int, queries: int) -> str:
    cs, note = run.codes()
    if cs is None:
        return _note(note)
    from .evaluate import visual_protocol

    db, q, desc = visual_protocol(cs.ids, cs.group, cs.split, int(cs.meta.get("seed", 0)))
    if not q.any() or not db.any():
        return _note("codes.npz needs clips in both the train and the test split for retrieval examples")
    names = run.activity_names()
    dataset, dnote = run.dataset()
    thumbs = _Thumbs(dataset)
    rows = choose_queries(cs.activity, q, queries)
    db_rows = np.flatnonzero(db)
    signs = cs.signs()  # (M, depth, K)
    depth = cs.depth
    parts = []
    for qi in rows:
        fig = _figure(1.9 * (top_k + 1) + 0.7, 1.55 * depth + 0.7)
        gs = fig.add_gridspec(depth, top_k + 2, wspace=0.08, hspace=0.42, width_ratios=[1, 0.18] + [1] * top_k)
        ax = fig.add_subplot(gs[:, 0])
        ax.imshow(thumbs.get(str(cs.ids[qi])))
        _frame_axis(ax, BLUE)
        ax.set_title("query", fontsize=9)
        ax.set_xlabel(f"{_class_name(names, int(cs.activity[qi]))}\ngroup {cs.group[qi]}", fontsize=8)
        for t in range(depth):
            idx, dist = top_k_by_hamming(signs[qi, t], signs[db_rows, t], top_k)
            for j, (r, dd) in enumerate(zip(db_rows[idx], dist)):
                ax = fig.add_subplot(gs[t, j + 2])
                ax.imshow(thumbs.get(str(cs.ids[r])))
                _frame_axis(ax, GREEN if cs.group[r] == cs.group[qi] else RED)
                same_act = cs.activity[r] == cs.activity[qi] and cs.activity[qi] >= 0
                ax.set_xlabel(f"{_class_name(names, int(cs.activity[r]))}  d={int(dd)}", fontsize=8,
                              color=GREEN if same_act else RED, labelpad=2)
                if j == 0:
                    ax.set_ylabel(f"depth {t + 1}", fontsize=9)
                if t == 0:
                    ax.set_title(f"top-{j + 1}", fontsize=9)
        fig.suptitle(f"query {cs.ids[qi]}", fontsize=10)
        parts.append(_png(fig, f"retrieval for {cs.ids[qi]}"))
    cap = (f"For {len(rows)} query clip(s) (the first query of each activity class, in file order), the top-{top_k} "
           "database clips at each depth ranked by Hamming distance (ties by database order), key frame with the "
           "person boxes. Frame: <span style=\"color:%s\">green</span> = same visual group as the query, "
           "<span style=\"color:%s\">red</span> = different. Caption: activity and Hamming distance d, green = same "
           "activity, red = different. Queries and database follow the visual-focus protocol (%s)."
           % (GREEN, RED, _esc(desc)))
    notes = []
    if dnote:
        notes.append(_note("Thumbnails are grey placeholders: " + dnote))
    elif thumbs.missing_frames:
        notes.append(_note(f"{thumbs.missing_frames} clip(s) have no readable frames (e.g. tracks-only data): their "
                           "boxes are drawn on a blank canvas of the image size."))
    if thumbs.unknown:
        notes.append(_note(f"{thumbs.unknown} clip id(s) of codes.npz are not in the dataset: grey placeholders."))
    return "".join(parts) + f'<p class="caption">{cap}</p>' + "".join(notes)


# ---- attention

def attention_maps(attention: dict, mask: np.ndarray, key_index: int) -> tuple[str, list[dict]]:
    """Head-averaged maps of one clip (batch row 0) from ``ModelOutput.attention``.

    Returns ``(kind, layers)`` where ``kind`` is ``"mfat"`` (M-STVH: O-MFAT and
    G-MFAT per MSF block), ``"pvf"`` (STVH: temporal and spatial PVF block per
    layer) or ``"joint"`` (transformer baselines: the person's T x T block and the
    key frame's N x N block of the joint N*T attention, rows renormalised), and
    each layer is ``{"temporal": (N, T, T), "spatial": (n_real, n_real)}``:
    the temporal map of every person and the spatial map of the key frame over
    real persons only.
    """
    mask = np.asarray(mask, dtype=bool)
    real = np.flatnonzero(mask)

    def arr(maps):
        return maps["combined"][0].float().mean(-3).cpu().numpy()  # heads averaged

    layers = [attention[k] for k in sorted(attention, key=lambda s: int(re.sub(r"\D", "", s) or 0))]
    if layers and "o_mfat" in layers[0]:
        kind = "mfat"
        out = [{"temporal": arr(L["o_mfat"]), "spatial": arr(L["g_mfat"])[key_index][np.ix_(real, real)]}
               for L in layers]
    elif layers and ("temporal" in layers[0] or "spatial" in layers[0]):
        kind = "pvf"
        temporal = [arr(L["temporal"]) for L in layers if "temporal" in L]
        spatial = [arr(L["spatial"])[key_index][np.ix_(real, real)] for L in layers if "spatial" in L]
        out = [{"temporal": a, "spatial": b} for a, b in zip(temporal, spatial)]
    elif layers and "joint" in layers[0]:
        kind = "joint"
        out = []
        for L in layers:
            j = arr(L["joint"])[0]  # (N*T, N*T), token = n * T + t
            N = mask.shape[0]
            T = j.shape[0] // N
            j = j.reshape(N, T, N, T)
            temporal = np.stack([_renorm(j[n, :, n, :]) for n in range(N)])  # (N, T, T)
            spatial = _renorm(j[real, key_index][:, real, key_index])
            out.append({"temporal": temporal, "spatial": spatial})
    else:
        raise ValueError(f"unknown attention structure: {sorted(layers[0]) if layers else 'empty'}")
    return kind, out


def _renorm(a: np.ndarray) -> np.ndarray:
    s = a.sum(-1, keepdims=True)
    return np.divide(a, s, out=np.zeros_like(a), where=s > 0)


_KIND_LABELS = {  # kind -> (temporal title, spatial title, unit, caption text)
    "mfat": ("O-MFAT", "G-MFAT", "MSF block",
             "the combined map of Eq. 4 (visual x positional term). Top row: O-MFAT of one person over the frames "
             "of the clip; bottom row: G-MFAT over the real persons of the key frame"),
    "pvf": ("temporal PVF", "spatial PVF", "layer",
            "the combined map of Eq. 4 (visual x positional term). Top row: SGAT of the temporal PVF block "
            "(object interleaving) of one person over the frames of the clip; bottom row: SGAT of the spatial PVF "
            "block (group interleaving) over the real persons of the key frame"),
    "joint": ("joint: person", "joint: key frame", "block",
              "this baseline has no O-MFAT / G-MFAT: its transformer block attends jointly over all N x T "
              "person-frame tokens. Top row: the block of that joint map between the frames of one person; bottom "
              "row: the block between the real persons of the key frame (each row renormalised to sum to 1)"),
}


def _attention_section(run: _Run, attention_clips: int) -> str:
    if attention_clips < 1:
        return _note("attention maps not requested (attention_clips = 0)")
    for getter in (run.info, run.config):
        value, note = getter()
        if value is None:
            return _note(note)
    if not any((run.path / f"{c}.pt").is_file() for c in ("best", "last")):
        return _note(f"no checkpoint (best.pt / last.pt) in the run folder; {run.train_hint}")
    dataset, dnote = run.dataset()
    if dataset is None:
        return _note("attention maps skipped: " + dnote)
    import torch

    from ..train.encode import load_run
    from ..train.tensors import clips_to_tensors

    model, cfg, info, _ = load_run(run.path)
    if not hasattr(model, "set_keep_attention"):
        return _note(f"model {_esc(cfg['model']['name'])} has no attention maps to show")
    clips = dataset.clips
    test = np.array([c.split == "test" for c in clips])
    chosen = [clips[i] for i in choose_queries([c.activity for c in clips], test if test.any() else ~test,
                                               attention_clips)]
    if not chosen:
        return _note("the dataset has no clips to show attention maps for")
    roi = None
    backbone = cfg["model"].get("backbone", "none")
    if backbone != "none":
        features = info.get("features")
        if not features or not Path(features).is_dir():
            return _note(f"attention maps skipped: the feature cache {_cmd(str(features))} of this run is missing "
                         f"(moved or deleted); re-create it with {_cmd('stvh extract')}")
        from ..data.feature_cache import FeatureCache

        try:
            roi = FeatureCache(features).load([c.id for c in chosen])
        except Exception as exc:
            return _note(f"attention maps skipped: the feature cache {_cmd(str(features))} could not be read "
                         f"({_esc(str(exc)[:200])})")
    names = run.activity_names()
    actions = [str(a) for a in info.get("actions", [])]
    model.set_keep_attention(True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one clip: threads only contend
    parts = []
    try:
        for clip in chosen:
            batch = clips_to_tensors([clip], roi).batch(torch.arange(1))
            with torch.no_grad():
                out = model(batch["boxes"], batch["mask"], batch["image_size"], roi=batch.get("roi"))
            if not out.attention:
                return _note(f"model {_esc(cfg['model']['name'])} returned no attention maps")
            kind, layers = attention_maps(out.attention, clip.mask, clip.key_index)
            parts.append(_attention_figure(clip, kind, layers, names, actions))
    finally:
        torch.set_num_threads(threads)
        model.set_keep_attention(False)
    cap = (f"Attention of one test clip per figure, averaged over heads: {_KIND_LABELS[kind][3]}. Top row: rows = "
           "receiving frame, columns = attended frame, labelled by their offset from the key frame; the person shown "
           "is the one receiving the most attention in the key frame at the deepest layer (red box). Bottom row: "
           "rows = receiving person, columns = attended person, numbered as the boxes of the key frame. One column "
           "per depth, shallow to deep.")
    return "".join(parts) + f'<p class="caption">{cap}</p>'


def _attention_figure(clip, kind: str, layers: list[dict], names: list[str], actions: list[str]) -> str:
    real = np.flatnonzero(clip.mask)
    # the person most attended in the key frame at the deepest layer
    incoming = layers[-1]["spatial"].mean(0) if len(real) else np.zeros(0)
    person = int(real[int(np.argmax(incoming))]) if len(real) else 0
    thumb, _, boxes = clip_thumbnail(clip, width=2 * THUMB_WIDTH, highlight=person)
    D = len(layers)
    T = layers[0]["temporal"].shape[-1]
    fig = _figure(2.7 * D + 4.6, 5.8)
    gs = fig.add_gridspec(2, D + 1, wspace=0.35, hspace=0.45, width_ratios=[1.7] + [1] * D)
    ax = fig.add_subplot(gs[0, 0])
    ax.imshow(thumb)
    for n, (x1, y1, _, _) in boxes.items():
        ax.text(x1, y1 - 1, str(n), fontsize=7, fontweight="bold", ha="left", va="bottom",
                color="red" if n == person else "black",
                bbox=dict(boxstyle="square,pad=0.05", fc="white", ec="none", alpha=0.7))
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title("key frame (person slots)", fontsize=9)
    action = clip.actions[person] if person < len(clip.actions) else -1
    action_name = actions[action] if 0 <= action < len(actions) else "?"
    info = fig.add_subplot(gs[1, 0])
    info.axis("off")
    info.text(0, 0.9, f"clip {clip.id}\nactivity {_class_name(names, int(clip.activity))}\n"
                      f"{len(real)} persons, {T} frames\nperson shown: {person} ({action_name})",
              fontsize=8, va="top", transform=info.transAxes)
    tl, sl, unit, _ = _KIND_LABELS[kind]
    vt = max(float(L["temporal"][person].max()) for L in layers) or 1.0
    vs = max(float(L["spatial"].max()) if L["spatial"].size else 0.0 for L in layers) or 1.0
    offsets = [str(t - clip.key_index) for t in range(T)]
    for d, L in enumerate(layers):
        ax = fig.add_subplot(gs[0, d + 1])
        im_t = ax.imshow(L["temporal"][person], cmap="magma", vmin=0, vmax=vt)
        step = max(1, T // 8)
        ax.set_xticks(range(0, T, step), offsets[::step], fontsize=7)
        ax.set_yticks(range(0, T, step), offsets[::step], fontsize=7)
        ax.set_title(f"{tl}, {unit} {d + 1}", fontsize=8)
        if d == 0:
            ax.set_ylabel("frame (receiver)", fontsize=8)
        ax = fig.add_subplot(gs[1, d + 1])
        im_s = ax.imshow(L["spatial"], cmap="viridis", vmin=0, vmax=vs)
        step = max(1, len(real) // 12)
        ax.set_xticks(range(0, len(real), step), [str(p) for p in real[::step]], fontsize=7)
        ax.set_yticks(range(0, len(real), step), [str(p) for p in real[::step]], fontsize=7)
        ax.set_title(f"{sl}, {unit} {d + 1}", fontsize=8)
        if d == 0:
            ax.set_ylabel("person (receiver)", fontsize=8)
    temporal_axes, spatial_axes = fig.axes[2::2], fig.axes[3::2]
    fig.colorbar(im_t, ax=temporal_axes, fraction=0.02, pad=0.02)
    fig.colorbar(im_s, ax=spatial_axes, fraction=0.02, pad=0.02)
    return _png(fig, f"attention maps of {clip.id}")


# --------------------------------------------------------------------------- page

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1200px;margin:1.5em auto;padding:0 1em;
color:#222}
h1{font-size:1.5em;margin-bottom:.3em}h2{font-size:1.2em;border-bottom:1px solid #ccc;padding-bottom:.2em;
margin-top:2em}
table{border-collapse:collapse;margin:.5em 0}
table.header th{text-align:left;padding:2px 1em 2px 0;color:#555;font-weight:600;vertical-align:top}
table.grid th,table.grid td{border:1px solid #ccc;padding:3px 8px;text-align:right;font-variant-numeric:tabular-nums}
table.grid th{background:#f3f3f3;text-align:center}
tr.derived td{color:#666;font-style:italic}
img{max-width:100%;display:block;margin:.6em 0}
.note{background:#fff8e1;border-left:4px solid #f0b400;padding:.5em .8em}
.note.error{background:#fdecea;border-left-color:#d73027}
.caption{color:#555;font-size:.9em;max-width:60em}
code{background:#f3f3f3;padding:0 .25em}
.toc{font-size:.9em}
"""


def write_report(run: str | Path, out: str | Path | None = None, *, top_k: int = 5, queries: int = 3,
                 attention_clips: int = 1) -> Path:
    """Write the HTML report of run folder ``run`` to ``out`` (default ``RUN/report.html``); return its path."""
    path = Path(run)
    if not path.is_dir():
        raise FileNotFoundError(f"run folder {path} does not exist (train one with `stvh train --out {path}`)")
    if top_k < 1 or queries < 0 or attention_clips < 0:
        raise ValueError("top_k must be >= 1, queries and attention_clips >= 0")
    if importlib.util.find_spec("matplotlib") is None:
        raise ImportError("stvh report needs matplotlib: pip install matplotlib")
    out = path / "report.html" if out is None else Path(out)
    r = _Run(path)
    body = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        body.append(_guard(lambda: _header(r)))
        builders = {
            "metrics": lambda: _metrics_section(r),
            "curves": lambda: _curves_section(r),
            "confusion": lambda: _confusion_section(r),
            "map-depth": lambda: _map_depth_section(r),
            "retrieval": lambda: _retrieval_section(r, top_k, queries) if queries else _note("no queries requested"),
            "attention": lambda: _attention_section(r, attention_clips),
            "hamming": lambda: _hamming_section(r),
        }
        for anchor, title in SECTIONS.items():
            body.append(f'<h2 id="{anchor}">{_esc(title)}</h2>' + _guard(builders[anchor]))
    page = ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>stvh report: {_esc(path.resolve().name)}</title><style>{_CSS}</style></head><body>"
            f"<h1>stvh report: {_esc(path.resolve().name)}</h1>" + "\n".join(body) + "</body></html>\n")
    write_text_atomic(out, page)
    return out


def _guard(build) -> str:
    """Run one section builder; a failure becomes an error note instead of a crash."""
    try:
        return build()
    except _Missing as exc:
        return _note(str(exc))
    except Exception as exc:  # noqa: BLE001 - the page must still be written
        return _note(f"this section could not be drawn: {_esc(type(exc).__name__)}: {_esc(str(exc)[:300])}",
                     error=True)
