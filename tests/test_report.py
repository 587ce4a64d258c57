"""``stvh report``: the self-contained HTML page with the paper's figures (Sec. 6.2-6.5)."""

from __future__ import annotations

import base64
import csv
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

import matplotlib  # noqa: E402,F401  required dependencies: missing is a failure, not a skip
import torch  # noqa: E402

from PIL import Image  # noqa: E402

from stvh.data.clip import Clip  # noqa: E402
from stvh.data.formats import read_dataset  # noqa: E402
from stvh.data.synth import generate  # noqa: E402
from stvh.eval.report import (SECTIONS, attention_maps, choose_queries, clip_thumbnail,  # noqa: E402
                              top_k_by_hamming, write_report)
from stvh.index.codes import CodeSet  # noqa: E402

TITLES = ["Training curves", "Confusion matrix", "Class Hamming distance", "mAP per depth", "Retrieval examples",
          "Attention maps", "Metrics table"]
IMG = re.compile(r'<img alt="([^"]*)" src="data:image/png;base64,([^"]*)"')


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report") / "data"
    generate(out, matches=2, clips_per_match=6, frames=4, size=(90, 160), progress=False)
    return out


def _images(page: str) -> list[tuple[str, Image.Image]]:
    out = []
    for alt, data in IMG.findall(page):
        im = Image.open(io.BytesIO(base64.b64decode(data)))
        im.load()
        out.append((alt, im))
    return out


def _check_page(page: str) -> list[tuple[str, Image.Image]]:
    """Self-contained, every section present; returns the decoded figures."""
    assert page.startswith("<!DOCTYPE html>")
    assert 'src="http' not in page and "href=\"http" not in page and "<script" not in page
    assert "<link" not in page and "url(" not in page
    for src in re.findall(r'src="([^"]*)"', page):
        assert src.startswith("data:image/png;base64,")
    for title in TITLES:
        assert title in page, title
    images = _images(page)
    for alt, im in images:
        assert im.format == "PNG" and im.width > 50 and im.height > 50, alt
    return images


def _notes(page: str, error: bool = False) -> list[str]:
    cls = "note error" if error else "note"
    return re.findall(rf'<p class="{cls}">(.*?)</p>', page)


# --------------------------------------------------------------------------- pure helpers

def _brute_force(q, db, k):
    dist = [int(sum(a != b for a, b in zip(q, row))) for row in db]
    order = sorted(range(len(db)), key=lambda j: (dist[j], j))[:k]
    return order, [dist[j] for j in order]


def test_top_k_by_hamming_matches_brute_force():
    q = np.array([1, 1, -1, -1])
    db = np.array([[1, 1, -1, 1],     # d = 1
                   [-1, -1, 1, 1],    # d = 4
                   [1, 1, -1, -1],    # d = 0
                   [1, -1, -1, 1],    # d = 2
                   [-1, 1, -1, -1],   # d = 1 (tie with row 0: database order)
                   [1, 1, 1, -1]])    # d = 1
    idx, dist = top_k_by_hamming(q, db, 4)
    assert idx.tolist() == [2, 0, 4, 5] and dist.tolist() == [0, 1, 1, 1]
    rng = np.random.default_rng(0)
    queries = rng.choice([-1, 1], size=(7, 16))
    base = rng.choice([-1, 1], size=(40, 16))
    base[5] = base[3]  # exact ties
    for k in (1, 5, 40, 99):
        idx, dist = top_k_by_hamming(queries, base, k)
        assert idx.shape == dist.shape == (7, min(k, 40))
        for qi in range(7):
            order, d = _brute_force(queries[qi], base, k)
            assert idx[qi].tolist() == order and dist[qi].tolist() == d
    with pytest.raises(ValueError):
        top_k_by_hamming(q, base, 3)


def test_choose_queries_first_of_each_class_then_fill():
    activity = np.array([2, 2, 0, 1, 0, -1, 3])
    cand = np.array([False, True, True, True, True, True, False])
    assert choose_queries(activity, cand, 2) == [1, 2]
    assert choose_queries(activity, cand, 3) == [1, 2, 3]
    assert choose_queries(activity, cand, 5) == [1, 2, 3, 4, 5]
    assert choose_queries(activity, cand, 9) == [1, 2, 3, 4, 5]


def test_thumbnail_without_frames_is_a_canvas_of_the_image_size():
    boxes = np.zeros((2, 3, 4), np.float32)
    boxes[:, :2] = [[10, 20, 40, 80], [100, 10, 150, 60]]
    clip = Clip(video="v", clip="c", frame_ids=np.arange(2), boxes=boxes, mask=np.array([True, True, False]),
                actions=np.array([0, 1, -1]), activity=0, group="g", image_size=(120, 200), key_index=1)
    img, had, drawn = clip_thumbnail(clip, width=100)
    assert not had and img.shape == (60, 100, 3)
    assert sorted(drawn) == [0, 1] and drawn[1] == (50.0, 5.0, 75.0, 30.0)
    assert (img != 236).any()  # boxes were drawn


# --------------------------------------------------------------------------- fake run folder

def _fake_run(run: Path, data: Path, bits: int = 16, depth: int = 3) -> None:
    ds = read_dataset(data)
    names = list(ds.activities)
    C = len(names)
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"data": str(data), "format": ds.format, "activities": names,
                                              "actions": list(ds.actions), "features": None,
                                              "splits": {"train": 8, "test": 4}}))
    (run / "config.yaml").write_text(f"model:\n  name: mstvh\n  bits: {bits}\n  depth: {depth}\n"
                                     "train:\n  epochs: 4\n  select: val_map@10\n")
    with open(run / "metrics.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["epoch", "lr", "seconds", "loss_acty", "loss_quant", "loss_total", "val_mca", "val_map@10",
                    "score"])
        for e, score in enumerate([0.2, 0.5, 0.7, 0.6]):
            w.writerow([e, 1e-3, 1.0, 2.0 - e * 0.3, 0.5 / (e + 1), 2.5 - e * 0.3, score - 0.1, score, score])
    m = {"mca": 0.75, "mpca": 0.5, "action_acc": 0.6}
    for t in range(1, depth + 1):
        m[f"mca/depth{t}"] = 0.25 * t
        for k in (5, 10, 20, 50):
            m[f"map@{k}/activity/K{bits}/depth{t}"] = 0.3 + 0.2 * t
            m[f"map@{k}/visual/K{bits}/depth{t}"] = 0.9 - 0.2 * t
            m[f"map@{k}/activity/K{bits}/depth{t}/byk"] = 0.1
            if t < depth:
                m[f"map@{k}/activity/K{bits}/depth{t}/derived"] = 0.25 + 0.2 * t
                m[f"map@{k}/visual/K{bits}/depth{t}/derived"] = 0.8 - 0.2 * t
    m[f"map@10/visual/K{bits}/depth1"] = 0.123456
    (run / "metrics.json").write_text(json.dumps(m))
    rng = np.random.default_rng(1)
    confusion = [rng.integers(0, 3, (C, C)).tolist() for _ in range(depth)]
    ham = rng.uniform(0, bits / 2, (C, C))
    ham[0] = ham[:, 0] = -1  # a class without test clips
    ham[2, 2] = -1
    (run / "eval_details.json").write_text(json.dumps({
        "activities": names, "confusion": confusion, "class_hamming": [ham.tolist()] * depth,
        "visual_protocol": "train split as database, test split as queries", "bits": bits, "depth": depth,
        "queries": 4, "database": 8, "derived_bit_agreement": [0.9, 1.0]}))
    signs = rng.choice([-1, 1], size=(len(ds), depth, bits)).astype(np.int8)
    CodeSet.from_signs([c.id for c in ds.clips], signs, activity=np.array([c.activity for c in ds.clips]),
                       group=np.array([c.group for c in ds.clips]), split=np.array([c.split for c in ds.clips]),
                       meta={"model": "mstvh", "activities": names, "data": str(data), "epoch": 2}
                       ).save(run / "codes.npz")


def test_report_of_a_fake_run(data_dir, tmp_path):
    run = tmp_path / "run"
    _fake_run(run, data_dir)
    path = write_report(run, top_k=3, queries=2)
    assert path == run / "report.html" and path.is_file()
    page = path.read_text()
    images = _check_page(page)
    alts = [a for a, _ in images]
    for alt in ("training curves", "confusion matrix", "mAP per depth", "class Hamming distance"):
        assert alt in alts
    assert sum(a.startswith("retrieval for") for a in alts) == 2
    assert "0.1235" in page  # the hand-made visual mAP@10 of depth 1 in the table
    assert "best epoch</th><td>2 " in page  # argmax of score
    assert "derived by F (90.0% bits equal)" in page
    assert not _notes(page, error=True)
    # no checkpoint: the attention section explains instead of failing
    assert any("best.pt" in n for n in _notes(page))
    assert not list(run.glob(".report.html.*"))  # atomic write left no temporary file


def test_missing_inputs_give_notes(tmp_path, data_dir):
    run = tmp_path / "empty"
    run.mkdir()
    page = write_report(run).read_text()
    _check_page(page)
    assert not _IMG_ANY.search(page)
    assert not _notes(page, error=True)
    notes = " ".join(_notes(page))
    assert f"stvh eval --run {run}" in notes and "stvh train" in notes
    # only the training log present: curves drawn, the rest notes
    (run / "metrics.csv").write_text("epoch,lr,loss_total,score\n0,0.1,1.0,0.2\n")
    page = write_report(run, tmp_path / "elsewhere" / "r.html").read_text()
    assert [a for a, _ in _check_page(page)] == ["training curves"]
    assert not _notes(page, error=True)


_IMG_ANY = re.compile(r"<img ")


def test_missing_run_folder_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_report(tmp_path / "nope")


def test_tracks_only_data_draws_boxes_on_a_canvas(tmp_path, data_dir):
    data = tmp_path / "tracks"
    shutil.copytree(data_dir, data)
    run = tmp_path / "run"
    _fake_run(run, data)
    for name in ("metrics.csv", "metrics.json", "eval_details.json"):  # keep the test fast: Fig. 9 only
        (run / name).unlink()
    for clip_dir in (data / "videos").glob("*/*"):
        if clip_dir.is_dir():  # frames gone, annotations and tracks kept: a tracks-only dataset
            shutil.rmtree(clip_dir)
    page = write_report(run, top_k=2, queries=1).read_text()
    images = _check_page(page)
    assert sum(a.startswith("retrieval for") for a, _ in images) == 1
    assert any("blank canvas" in n for n in _notes(page))
    assert not _notes(page, error=True)
    # dataset gone entirely: placeholders and a note
    shutil.rmtree(data)
    page = write_report(run, top_k=2, queries=1).read_text()
    _check_page(page)
    assert any("not there any more" in n for n in _notes(page))
    assert not _notes(page, error=True)


# --------------------------------------------------------------------------- attention structures

SMALL = dict(d=16, heads=2, num_activities=4, num_actions=5, gcn_hidden=8, edge_hidden=4, ffn_mult=2, bits=16)


@pytest.mark.parametrize("name,kind", [("mstvh", "mfat"), ("stvh", "pvf"), ("mstvh_bd", "joint")])
def test_attention_maps_of_every_model_kind(name, kind):
    from stvh.models import build

    T, N, depth = 4, 5, 2
    model = build(name, depth=depth, **SMALL).eval()
    model.set_keep_attention(True)
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(1, T, N, 2, generator=g) * 300
    boxes = torch.cat([xy, xy + 40], -1)
    mask = torch.tensor([[True, True, True, True, False]])
    boxes[:, :, 4] = 0
    with torch.no_grad():
        out = model(boxes, mask, torch.tensor([[400.0, 600.0]]))
    got, layers = attention_maps(out.attention, mask[0].numpy(), key_index=1)
    assert got == kind and len(layers) == depth
    for L in layers:
        assert L["temporal"].shape == (N, T, T) and L["spatial"].shape == (4, 4)
        assert np.allclose(L["spatial"].sum(-1), 1, atol=1e-5)  # real persons attend only to real persons
        assert np.allclose(L["temporal"][:4].sum(-1), 1, atol=1e-5)


# --------------------------------------------------------------------------- a real (tiny) run

@pytest.fixture(scope="module")
def real_run(data_dir, tmp_path_factory) -> Path:
    from stvh.eval.evaluate import evaluate
    from stvh.train.config import load_config
    from stvh.train.encode import encode
    from stvh.train.loop import fit

    run = tmp_path_factory.mktemp("real") / "run"
    cfg = load_config(None, ["model.d=32", "model.d_v=16", "model.heads=2", "model.bits=16",
                             "model.backbone=none", "train.epochs=1", "train.batch_size=8", "train.lr=0.001",
                             "filter.steps=20"])
    fit(cfg, data_dir, None, run, progress=False)
    encode(run, run / "codes.npz", device="cpu")
    evaluate(run / "codes.npz", run)
    return run


def test_report_of_a_real_run(real_run, tmp_path, capsys):
    out = tmp_path / "page.html"
    threads = torch.get_num_threads()
    path = write_report(real_run, out, top_k=2, queries=1, attention_clips=2)
    assert path == out and torch.get_num_threads() == threads
    assert capsys.readouterr() == ("", "")  # prints nothing
    page = out.read_text()
    images = _check_page(page)
    alts = [a for a, _ in images]
    assert sum(a.startswith("attention maps of") for a in alts) == 2
    assert sum(a.startswith("retrieval for") for a in alts) == 1
    assert len(images) == 7  # curves, confusion, mAP, 1 retrieval, 2 attention, Hamming
    assert not _notes(page, error=True) and not _notes(page)
    assert "O-MFAT" in page and "G-MFAT" in page
    for anchor in SECTIONS:
        assert f'id="{anchor}"' in page
