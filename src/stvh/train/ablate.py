"""``stvh ablate``: the paper's ablation Tables 5-7 (Sec. 6.5) as one resumable sweep.

Each table is a list of rows (config overrides) run with several seeds through the
same functions as ``stvh train`` / ``eval`` (:func:`stvh.train.loop.fit`,
:func:`stvh.train.encode.encode`, :func:`stvh.eval.evaluate.evaluate`)::

    Table 5  model.name  = mstvh_bd | mstvh_ed | mstvh      (transformer + positions at input / output vs MSF)
    Table 6  model.depth = 2 | 3 | 4 | 5                    (Upsilon, stacked MSF blocks, Eq. 10-12)
    Table 7  loss terms  = L_cls + mu3 L_recon | + mu1 L_q | + mu2 L_H    (Eq. 15, switched off by weight 0)

Layout of ``DIR`` (one folder may hold all three tables; they share the feature cache)::

    DIR/ablate.json                 the dataset (and cache) the folder belongs to
    DIR/features/                   RoI cache, extracted once from the config (CNN backbones, no --features)
    DIR/table{N}/{row}/seed{S}/     a run folder of `stvh train` (+ codes.npz, metrics.json of `stvh eval`)
    DIR/table{N}/{row}/seed{S}/result.json   written last: the run is finished and is skipped next time
                                    (or, for a row another table already ran with the same config and seed,
                                    the only file beside config.yaml: its figures and the run it shares)
    DIR/table{N}.md, .json          mean ± sample std over seeds per row, beside the paper's figures

Resuming: a run with ``result.json`` is skipped; a run whose ``last.pt`` holds fewer
epochs than ``train.epochs`` continues with ``fit(resume=True)``; a trained run without
``result.json`` is encoded and evaluated. A run folder trained with another config
(a changed recipe, other key=value overrides) is refused, never mixed into a table.
Why a plain loop and not Hydra / Optuna: docs/reproduce.md, "Ablations in one command".
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import yaml

from ..data.atomic import write_text_atomic
from .config import complete_config, dump_config, load_config, stretch_layer_weights

TABLES = (5, 6, 7)
DATASETS = ("VD", "CAD", "CAED")

# The paper's figures (Qi et al., Sec. 6.5): (classification accuracy "precision", mAP@10 at 128 bits, deepest code)
# in %, per dataset; visual-focus mAP is not reported in Tables 5-7 (only in Fig. 10).
PAPER: dict[int, dict[str, dict[str, tuple[float, float]]]] = {
    5: {  # Table 5: replacing the MSF module by a transformer block
        "mstvh_bd": {"VD": (94.69, 93.93), "CAD": (96.32, 96.77), "CAED": (94.25, 90.26)},
        "mstvh_ed": {"VD": (95.21, 94.56), "CAD": (95.53, 95.36), "CAED": (97.35, 96.05)},
        "mstvh": {"VD": (95.66, 96.00), "CAD": (97.78, 96.81), "CAED": (98.50, 98.00)},
    },
    6: {  # Table 6: number of stacked MSF layers Upsilon
        "depth2": {"VD": (93.87, 93.49), "CAD": (96.21, 88.91), "CAED": (97.01, 95.87)},
        "depth3": {"VD": (95.66, 96.00), "CAD": (96.74, 95.87), "CAED": (97.67, 96.50)},
        "depth4": {"VD": (94.99, 95.34), "CAD": (97.78, 96.81), "CAED": (98.50, 98.00)},
        "depth5": {"VD": (94.39, 95.05), "CAD": (95.29, 95.37), "CAED": (97.12, 95.12)},
    },
    7: {  # Table 7: loss-function constraints
        "cls_recon": {"VD": (94.24, 94.72), "CAD": (97.50, 95.50), "CAED": (97.35, 91.91)},
        "cls_q_recon": {"VD": (94.37, 94.86), "CAD": (96.97, 97.39), "CAED": (97.46, 94.63)},
        "full": {"VD": (95.66, 96.00), "CAD": (97.78, 96.81), "CAED": (98.50, 98.00)},
    },
}

TITLES = {5: "Table 5: MSF vs a transformer block with positional features (Sec. 6.5.1)",
          6: "Table 6: number of stacked MSF layers Upsilon (Sec. 6.5.1)",
          7: "Table 7: loss-function constraints (Sec. 6.5.2, Eq. 15)"}

METRICS = ("accuracy", "activity_map@10", "visual_map@10")  # per run, as fractions


@dataclass(frozen=True)
class Row:
    """One row of a table: a name (its folder), the paper's label and the config overrides it applies."""

    name: str
    label: str
    overrides: tuple[str, ...]


ROWS: dict[int, tuple[Row, ...]] = {
    5: (Row("mstvh_bd", "M-STVH^BD (transformer, positions added at its input)", ("model.name=mstvh_bd",)),
        Row("mstvh_ed", "M-STVH^ED (transformer, positions added to every block's output)", ("model.name=mstvh_ed",)),
        Row("mstvh", "M-STVH (MSF)", ("model.name=mstvh",))),
    6: tuple(Row(f"depth{u}", f"Upsilon = {u}", (f"model.depth={u}",)) for u in (2, 3, 4, 5)),
    # L_cls = L_acty + 0.5 L_action stays on in every row; the row switches the other Eq. 15 terms off (weight 0)
    # and keeps the config's weights for the terms it keeps (mu1 = loss.quant, mu2 = loss.contrast, mu3 = loss.recon).
    7: (Row("cls_recon", "L_cls + mu3 L_recon", ("loss.quant=0", "loss.contrast=0")),
        Row("cls_q_recon", "L_cls + mu1 L_q + mu3 L_recon", ("loss.contrast=0",)),
        Row("full", "L_cls + mu1 L_q + mu2 L_H + mu3 L_recon", ())),
}


def rows(table: int) -> tuple[Row, ...]:
    if table not in ROWS:
        raise ValueError(f"--table must be one of {', '.join(map(str, TABLES))}, got {table}")
    return ROWS[table]


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``; one line naming the bad entry otherwise."""
    seeds = []
    for part in str(text).split(","):
        part = part.strip()
        if not part.isdigit():
            raise ValueError(f"--seeds: expected comma-separated integers >= 0 (e.g. 0,1,2), got {text!r}")
        if int(part) in seeds:
            raise ValueError(f"--seeds: seed {int(part)} is given twice in {text!r}")
        seeds.append(int(part))
    return seeds


def run_config(config: str | Path | None, overrides: list[str] | tuple[str, ...], row: Row, seed: int) -> dict:
    """Config of one run: file <- user overrides <- the row's overrides <- ``seed``; validated."""
    base = load_config(config, list(overrides))  # validates the user's overrides on their own
    extra = list(row.overrides)
    depth = next((int(o.split("=", 1)[1]) for o in extra if o.startswith("model.depth=")), base["model"]["depth"])
    lw = base["loss"]["layer_weights"]
    if lw is not None and len(lw) != depth:
        extra.append(f"loss.layer_weights={json.dumps(stretch_layer_weights(lw, depth))}")
    return load_config(config, [*overrides, *extra, f"seed={seed}"])


def _plain(obj):
    """Nested dict as YAML reads it back (tuples -> lists), for comparing configs."""
    return yaml.safe_load(yaml.safe_dump(obj, sort_keys=True))


def _first_difference(a, b, prefix: str = "") -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            diff = _first_difference(a.get(key), b.get(key), f"{prefix}{key}.")
            if diff:
                return diff
        return None
    return None if a == b else f"{prefix.rstrip('.')}: {a!r} there, {b!r} now"


def check_same_config(run: Path, cfg: dict) -> None:
    """Refuse to resume or reuse ``run`` when it was trained with another configuration."""
    saved_path = run / "config.yaml"
    if not saved_path.is_file():
        return
    try:
        saved = complete_config(yaml.safe_load(saved_path.read_text(encoding="utf-8")))
    except (yaml.YAMLError, ValueError) as exc:
        raise ValueError(f"{saved_path}: unreadable run config ({str(exc).splitlines()[0]}); delete {run} to "
                         "train it again") from None
    diff = _first_difference(_plain(saved), _plain(cfg))
    if diff:
        raise ValueError(f"{run} was trained with another config ({diff}); use another --out or delete {run}")


def pick_metrics(metrics: dict, cfg: dict) -> dict[str, float]:
    """Accuracy of the deepest head, activity mAP@10 at the deepest code, visual mAP@10 at the shallowest."""
    bits, depth = cfg["model"]["bits"], cfg["model"]["depth"]
    return {"accuracy": float(metrics["mca"]),
            "activity_map@10": float(metrics[f"map@10/activity/K{bits}/depth{depth}"]),
            "visual_map@10": float(metrics[f"map@10/visual/K{bits}/depth1"])}


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n - 1); std is None for one value, both None for none."""
    if not values:
        return None, None
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), (float(arr.std(ddof=1)) if len(arr) > 1 else None)


def aggregate(runs: list[dict]) -> dict[str, dict[str, float | None]]:
    """``{metric: {"mean", "std", "n"}}`` over the finished runs of one row."""
    out = {}
    for key in METRICS:
        vals = [r[key] for r in runs if r.get(key) is not None and math.isfinite(r[key])]
        mean, std = mean_std(vals)
        out[key] = {"mean": mean, "std": std, "n": len(vals)}
    return out


def _cell(stat: dict) -> str:
    if stat["mean"] is None:
        return "–"
    text = f"{100 * stat['mean']:.2f}"
    return text + (f" ± {100 * stat['std']:.2f}" if stat["std"] is not None else "")


def format_markdown(summary: dict) -> str:
    """The table in markdown: ours (mean ± std in %) beside the paper's accuracy / mAP@10 per dataset."""
    t = summary["table"]
    lines = [f"### {TITLES[t]}", "",
             f"data `{summary['data']}`, config `{summary['config'] or 'defaults'}`"
             + (f" + `{' '.join(summary['overrides'])}`" if summary["overrides"] else "")
             + f"; seeds {', '.join(map(str, summary['seeds']))}; mean ± sample std over seeds, in %. "
             "Paper: accuracy / activity mAP@10 at 128 bits (the paper gives no visual mAP here).", "",
             "| row | runs | accuracy | activity mAP@10 (deepest) | visual mAP@10 (shallowest) | "
             + " | ".join(f"paper {d}" for d in DATASETS) + " |",
             "|---|---|---|---|---|" + "---|" * len(DATASETS)]
    for r in summary["rows"]:
        paper = [f"{r['paper'][d][0]:.2f} / {r['paper'][d][1]:.2f}" for d in DATASETS]
        n = r["stats"]["accuracy"]["n"]
        lines.append(f"| {r['label']} | {n} | " + " | ".join(_cell(r["stats"][k]) for k in METRICS)
                     + " | " + " | ".join(paper) + " |")
    return "\n".join(lines) + "\n"


@dataclass
class RunResult:
    row: str
    seed: int
    status: str  # "done before", "trained", "resumed", "evaluated", "same run as table{N}/{row}/seed{S}"
    values: dict = field(default_factory=dict)
    seconds: float = 0.0


def _claim_folder(out: Path, data: Path, features: Path | None) -> None:
    """``DIR/ablate.json`` ties DIR to one dataset (and cache): refuse to mix another one in."""
    from ..outputs import check_output

    check_output(out, inputs=[(data, "dataset"), (features, "feature cache")], overwrite=True, kind="dir",
                 what="ablation folder")
    marker = out / "ablate.json"
    mine = {"data": str(data.resolve()), "features": str(features.resolve()) if features else None}
    if marker.is_file():
        try:
            have = json.loads(marker.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise ValueError(f"{marker} is corrupt ({exc}); delete it if DIR holds this dataset's ablation") from None
        for key in ("data", "features"):
            if have.get(key) != mine[key] and not (key == "features" and mine[key] is None):
                raise ValueError(f"{out} holds an ablation of {key} {have.get(key)}, not {mine[key]}; "
                                 "choose another --out")
        return
    if out.is_dir() and any(out.iterdir()):
        raise ValueError(f"refusing to write ablation folder {out}: it holds other files (no ablate.json); "
                         "choose an empty or new --out")
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(marker, json.dumps(mine, indent=2))


def same_finished_run(out: Path, cfg: dict, run: Path) -> Path | None:
    """A finished run in ``out`` (another table's row) trained with exactly ``cfg``, or None.

    Table 5's M-STVH, Table 6's Upsilon = 3 and Table 7's full loss are one configuration: with the same
    seed, data and features it is one deterministic run, trained once and shared.
    """
    want = _plain(cfg)
    for result in sorted(out.glob(f"table*/*/seed{cfg['seed']}/result.json")):
        other = result.parent
        if other == run or not (other / "last.pt").is_file():
            continue
        try:
            saved = complete_config(yaml.safe_load((other / "config.yaml").read_text(encoding="utf-8")))
        except (OSError, yaml.YAMLError, ValueError):
            continue
        if _plain(saved) == want:
            return other
    return None


def share_run(out: Path, cfg: dict, run: Path) -> RunResult | None:
    """Reuse :func:`same_finished_run`'s figures for a run not started yet: ``run`` gets the config and a
    ``result.json`` naming the shared run (no checkpoints of its own)."""
    if (run / "result.json").exists() or (run / "last.pt").exists():
        return None
    other = same_finished_run(out, cfg, run)
    if other is None:
        return None
    saved = json.loads((other / "result.json").read_text(encoding="utf-8"))
    status = f"same run as {other.relative_to(out).as_posix()}"
    run.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run / "config.yaml", dump_config(cfg))
    write_text_atomic(run / "result.json", json.dumps({"seed": int(cfg["seed"]), "values": saved["values"],
                                                       "seconds": 0.0, "status": status,
                                                       "same_as": str(other.resolve())}, indent=2))
    return RunResult("", int(cfg["seed"]), status, saved["values"], 0.0)


def run_one(cfg: dict, data: Path, features: Path | None, run: Path, log: Callable[[str], None]) -> RunResult:
    """Train (or resume), encode and evaluate one row/seed; skip it when ``result.json`` exists."""
    from ..eval.evaluate import evaluate
    from .checkpoint import load_checkpoint
    from .encode import encode
    from .loop import fit, training_finished

    check_same_config(run, cfg)
    done_path = run / "result.json"
    if done_path.is_file():
        try:
            saved = json.loads(done_path.read_text(encoding="utf-8"))
            values = {k: float(saved["values"][k]) for k in METRICS}
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{done_path} is corrupt ({type(exc).__name__}: {exc}); delete it to evaluate "
                             "the run again") from None
        return RunResult("", int(cfg["seed"]), "done before", values, float(saved.get("seconds", 0.0)))
    t0 = time.time()
    last = run / "last.pt"
    status = "evaluated"
    if not (last.exists() and training_finished(load_checkpoint(last), cfg)):
        status = "resumed" if last.exists() else "trained"
        fit(cfg, data, features, run, resume=last.exists(), progress=False, log=log)
    codes = run / "codes.npz"
    encode(run, codes, device=cfg["train"]["device"], log=log)
    values = pick_metrics(evaluate(codes, run)["metrics"], cfg)
    seconds = round(time.time() - t0, 1)
    write_text_atomic(done_path, json.dumps({"seed": int(cfg["seed"]), "values": values, "seconds": seconds,
                                             "status": status}, indent=2))
    return RunResult("", int(cfg["seed"]), status, values, seconds)


def _fmt_elapsed(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


def run_table(table: int, *, data: str | Path, out: str | Path, config: str | Path | None = None,
              seeds: list[int] = (0, 1, 2), features: str | Path | None = None,
              overrides: list[str] | tuple[str, ...] = (), progress: bool = True,
              echo: Callable[[str], None] = print) -> dict:
    """Run every row x seed of ``table`` into ``out``, resuming; write ``out/table{N}.md`` and ``.json``.

    Returns the summary (also the JSON file's content) with the markdown under ``"markdown"``.
    """
    from tqdm import tqdm

    from .extract import extract_with_config

    table_rows = rows(table)
    if not seeds:
        raise ValueError("--seeds: give at least one seed")
    data, out = Path(data), Path(out)
    features = Path(features) if features is not None else None
    overrides = list(overrides)
    plan = [(row, seed, run_config(config, overrides, row, seed)) for row in table_rows for seed in seeds]
    base = load_config(config, overrides)
    _claim_folder(out, data, features)
    if base["model"]["backbone"] != "none" and features is None:
        features = out / "features"
        t0 = time.time()
        echo(f"RoI features ({base['model']['backbone']}) -> {features} (shared by every row)")
        r = extract_with_config(base, data, features, progress=progress)
        echo(f"  {r['cached']} clips cached, {r['extracted']} extracted now [{_fmt_elapsed(time.time() - t0)}]")

    per_row: dict[str, list[dict]] = {row.name: [] for row in table_rows}
    t_all = time.time()
    bar = tqdm(plan, desc=f"table {table}", unit="run", disable=not progress)
    write = tqdm.write if progress else echo
    for i, (row, seed, cfg) in enumerate(bar, start=1):
        run = out / f"table{table}" / row.name / f"seed{seed}"
        bar.set_postfix_str(f"{row.name} seed {seed}")
        res = share_run(out, cfg, run) or run_one(cfg, data, features, run,
                                                  log=lambda line, r=row.name, s=seed: write(f"  {r} seed {s}: {line}"))
        v = res.values
        write(f"[{i}/{len(plan)}] table {table} {row.name} seed {seed}: {res.status}; accuracy {v['accuracy']:.4f}, "
              f"activity mAP@10 {v['activity_map@10']:.4f}, visual mAP@10 {v['visual_map@10']:.4f} "
              f"[run {_fmt_elapsed(res.seconds)}, total {_fmt_elapsed(time.time() - t_all)}]")
        per_row[row.name].append({"seed": seed, **v, "seconds": res.seconds, "status": res.status})
    bar.close()

    summary = {"table": table, "title": TITLES[table], "data": str(data), "features": str(features) if features
               else None, "config": str(config) if config else None, "overrides": overrides, "seeds": list(seeds),
               "metrics": {"accuracy": "mca of the deepest head on the test split",
                           "activity_map@10": "map@10/activity at the deepest code",
                           "visual_map@10": "map@10/visual at the shallowest code"},
               "rows": []}
    for row in table_rows:
        cfg = next(c for r, _, c in plan if r is row)
        summary["rows"].append({"row": row.name, "label": row.label, "overrides": list(row.overrides),
                                "model": cfg["model"]["name"], "depth": cfg["model"]["depth"],
                                "loss": cfg["loss"], "runs": per_row[row.name],
                                "stats": aggregate(per_row[row.name]), "paper": PAPER[table][row.name]})
    markdown = format_markdown(summary)
    write_text_atomic(out / f"table{table}.json", json.dumps(summary, indent=2))
    write_text_atomic(out / f"table{table}.md", markdown)
    return {**summary, "markdown": markdown}
