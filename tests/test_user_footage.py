"""Your own footage end to end, through the CLI a user types.

The first test runs, in order, every command of the walk-through in docs/data-user.md (a MOT dataset:
an mp4, a frame folder, no action labels, one unlabelled video), so the page and the commands agree.
The second trains a CNN-backbone model on a Volleyball-layout dataset where only some clips have frames.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import yaml
from typer.testing import CliRunner

from stvh.cli import app

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def walkthrough_commands() -> list[list[str]]:
    text = (ROOT / "docs" / "data-user.md").read_text(encoding="utf-8")
    section = text.split("## Walk-through", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [shlex.split(line)[1:] for line in block.splitlines() if line.startswith("stvh ")]


def run(args) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, f"stvh {' '.join(map(str, args))}\n{result.output}\n{result.exception!r}"
    return result.output


def test_docs_walkthrough_runs_on_mot_footage(tmp_path, monkeypatch):
    (tmp_path / "configs").mkdir()
    shutil.copy(ROOT / "configs" / "footage.yaml", tmp_path / "configs" / "footage.yaml")
    monkeypatch.chdir(tmp_path)
    commands = walkthrough_commands()
    assert len(commands) >= 15
    outputs = {}
    for args in commands:
        outputs[" ".join(args)] = run(args)

    assert (tmp_path / "footage" / "videos" / "v0.mp4").is_file()  # one video file ...
    assert any((tmp_path / "footage" / "frames" / "v1").glob("*.jpg"))  # ... and one frame folder
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["format"] == "mot" and info["action_head"] is False and info["actions"] == []
    assert any("action head" in n for n in info["notes"])
    train_out = next(v for k, v in outputs.items() if k.startswith("train"))
    assert train_out.count("note: no person action labels") == 1  # said once
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert 0 <= metrics["map@10/activity/K64/depth3"] <= 1 and "action_acc" not in metrics

    from stvh.index.codes import CodeSet
    new = CodeSet.load(tmp_path / "new.npz")
    assert len(new) == 8 and all(i.startswith("v2/") for i in new.ids) and (new.activity == -1).all()
    old = CodeSet.load(tmp_path / "run" / "codes.npz")
    same = [list(old.ids).index(i) for i in new.ids]  # v2 is in both: the same model gives the same codes
    assert np.array_equal(old.codes[same], new.codes)
    searched = outputs["search --index new-index.npz --clip v2/000001 -k 5"]
    assert len([ln for ln in searched.splitlines() if re.match(r"\s+\d+\s+v2/", ln)]) == 5
    cross = outputs["search --index index.npz --codes-file new.npz -k 3"]
    assert len([ln for ln in cross.splitlines() if ln.startswith("v2/")]) == 8 * 3
    demo = outputs[next(k for k in outputs if k.startswith("demo"))]
    assert "[7/7]" in demo and "activity mAP@10" in demo


def test_partial_frames_train_on_clips_with_features(tiny_synth, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_synth, data)
    dropped = ["0/1000", "1/1003"] if (data / "videos" / "0" / "1000").is_dir() else []
    clips = sorted(p for p in (data / "videos").glob("*/*") if p.is_dir())
    for p in clips[::3]:  # a third of the clips lose their frames
        shutil.rmtree(p)
    gone = len(clips[::3])
    del dropped
    out = run(["extract", "--data", data, "--backbone", "mobilenet_v3_small", "--out", tmp_path / "f", "--pca", 8,
               "--no-progress"])
    assert f"{len(clips) - gone} clips cached; {gone} of {len(clips)} clips have no frames" in out
    tiny = ["model.d=16", "model.d_v=8", "model.heads=2", "model.bits=16", "model.depth=2", "train.epochs=1",
            "train.batch_size=4", "data.val_fraction=0.25", "filter.steps=5", "model.backbone=mobilenet_v3_small",
            "extract.pca=8"]
    run(["train", "--data", data, "--features", tmp_path / "f", "--out", tmp_path / "run", "--no-progress", *tiny])
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["clips_without_features"] == gone and sum(info["splits"].values()) == len(clips) - gone
    refused = runner.invoke(app, ["train", "--data", str(data), "--features", str(tmp_path / "f"), "--out",
                                  str(tmp_path / "run2"), "--no-progress", *tiny, "data.require_features=true"])
    assert refused.exit_code == 2 and f"{gone} of {len(clips)} clips have no cached features" in refused.output
    assert len([ln for ln in refused.output.splitlines() if ln.strip()]) == 1
    # what the user sets must agree with the cache: the key, where it was set and both values are named
    bad = runner.invoke(app, ["train", "--data", str(data), "--features", str(tmp_path / "f"), "--out",
                              str(tmp_path / "run3"), "--no-progress", *tiny[:-1], "extract.pca=16"])
    assert bad.exit_code == 2 and ("override 'extract.pca=16': config key 'extract.pca' is 16 but the feature cache "
                                   f"{tmp_path / 'f'} was extracted with 8") in bad.output
    bad = runner.invoke(app, ["train", "--data", str(data), "--features", str(tmp_path / "f"), "--out",
                              str(tmp_path / "run3"), "--no-progress", *tiny, "extract.frame_size=[64, 64]"])
    assert bad.exit_code == 2 and "'extract.frame_size' is [64, 64] but the feature cache" in bad.output
    assert "extracted with [112, 200]" in bad.output  # the default config's frame size
    assert not (tmp_path / "run3").exists()
    # --features with a box-only model is refused, not ignored
    bad = runner.invoke(app, ["train", "--data", str(data), "--features", str(tmp_path / "f"), "--out",
                              str(tmp_path / "run4"), "--no-progress", *tiny[:-2], "model.backbone=none"])
    assert bad.exit_code == 2 and "'model.backbone' is 'none' but the feature cache" in bad.output
    # what the user leaves unset is taken from the cache (PCA 8 here), so the run trains
    run(["train", "--data", data, "--features", tmp_path / "f", "--out", tmp_path / "run5", "--no-progress",
         *tiny[:-1]])
    assert yaml.safe_load((tmp_path / "run5" / "config.yaml").read_text())["extract"]["pca"] == 8


def test_clips_csv_split_column(tiny_synth, tmp_path):
    """A split column in clips.csv gives the train/test split (splits.json, when present, overrides it)."""
    from stvh.data.formats import read_dataset
    from stvh.data.mot_export import export_mot

    mot = tmp_path / "mot"
    export_mot(tiny_synth, mot, media="frames", splits=False)
    rows = (mot / "clips.csv").read_text().splitlines()
    rows = [rows[0] + ",split"] + [r + ("," + ("test" if i % 4 == 0 else "train")) for i, r in enumerate(rows[1:])]
    (mot / "clips.csv").write_text("\n".join(rows) + "\n")
    ds = read_dataset(mot)
    assert [c.split for c in ds.clips] == ["test" if i % 4 == 0 else "train" for i in range(len(rows) - 1)]
    (mot / "splits.json").write_text('{"test": ["v0"], "train": ["v1"]}')
    ds = read_dataset(mot)
    assert {c.video: c.split for c in ds.clips} == {"v0": "test", "v1": "train"}
