"""Fuzz the readers (issue 8, item 8): mutated valid datasets give a valid dataset or a DataError naming a file.

Small valid Volleyball, CAD and MOT datasets (annotations, tracks, clips.csv,
splits.json, dataset.json, tiny JPEG/PNG frames) are built once; every example
copies one, applies 1-3 mutations (lines or fields deleted, duplicated or
swapped, fields replaced by other types or non-finite numbers, truncation,
random bytes, other encodings, JSON values replaced, images corrupted, files
removed) and reads it with ``read_dataset`` with and without ``skip_bad``.
The only allowed outcomes: a dataset whose clips all pass ``validate()`` with
finite boxes inside the image (and frames that decode to that size or raise a
``DataError``), or a ``DataError`` whose message starts with a file of the
dataset. Any other exception fails the test with the mutations that caused it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from stvh.data.clip import UNKNOWN, ClipDataset
from stvh.data.errors import DataError
from stvh.data.formats import read_dataset
from stvh.data.frames import read_frames

# Fixed examples by default (a repeatable suite of ~30 s); STVH_FUZZ_EXAMPLES=N explores N fresh random ones.
_EXPLORE = os.environ.get("STVH_FUZZ_EXAMPLES")
SETTINGS = settings(max_examples=int(_EXPLORE or 150), deadline=None, derandomize=not _EXPLORE, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

TOKENS = ("nan", "NaN", "inf", "-inf", "1e999", "-1", "0", "1", "2.5", "-0", "abc", "", " ", "1" * 25, "1e308",
          "1_0", "0x10", "r_set", "R_SET", "standing", "Right", "right", "walk", "7", "100", "seq01", "a", "\u00e9",
          ",", '"', "{", "}", "[]", "null", "true", "\t", "\ufeff", "\u2028", "12.jpg")
JSON_VALUES = (None, True, 0, -1, 7, 1.5, float("nan"), 1e309, "", "x", "7", "7/100", "seq01", "a/000001", [],
               {}, [1], [-2, 1], [1, 2, 3], [48, 64], [0, 0], ["7"], [["7"]], {"a": 1}, [None], "Train")
ENCODINGS = ("utf-16", "utf-32", "utf-16-le", "latin-1", "utf-8-sig", "cp1252")
TEXT_OPS = ("delete_line", "duplicate_line", "swap_lines", "delete_field", "duplicate_field", "replace_field",
            "insert_field", "add_line", "truncate", "insert_bytes", "reencode", "empty", "json_value", "delete_file")
IMAGE_OPS = ("truncate", "random_bytes", "empty", "delete_file")
IMAGE_SUFFIXES = (".jpg", ".png")


# --------------------------------------------------------------------------- valid templates

def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _images(folder: Path, names, size=(48, 64)) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", (size[1], size[0]), (120, 80, 40))
    for name in names:
        img.save(folder / name)


def build_volleyball(root: Path) -> Path:
    _write(root / "videos/7/annotations.txt",
           "100.jpg r_set 4 4 10 12 standing 30 10 8 20 moving\n"
           "200.jpg l-pass 2 2 6 6 digging\n"
           "300.jpg r_winpoint 40 20 10 10 waiting 10 30 5 5 falling\n")
    _write(root / "videos/8/annotations.txt", "50.jpg l_spike 1 1 5 5 spiking\n")
    _images(root / "videos/7/100", [f"{f}.jpg" for f in range(98, 102)])
    _write(root / "tracking/7/100/100.txt", "".join(
        f"1 {4 + d} 4 {14 + d} 16 {100 + d} {int(d == 1)} 0 0 standing\n"
        f"2 30 10 38 30 {100 + d} 0 0 0 moving\n" for d in range(-2, 2)))
    _write(root / "splits.json", json.dumps({"train": ["7"], "test": ["8/50", "7/300"]}, indent=1))
    _write(root / "dataset.json", json.dumps({"window": [-2, 1]}))
    return root


def build_cad(root: Path) -> Path:
    _write(root / "seq01/annotations.txt",
           "1\t4\t4\t10\t10\t2\t1\n1\t20\t4\t10\t12\t3\t2\n2\t4\t4\t10\t10\t2\t1\n"
           "11\t30\t20\t8\t8\t6\t1\n11\t5\t5\t5\t5\t6\t3\n")
    _images(root / "seq01", [f"frame{f:04d}.jpg" for f in range(1, 16)])
    _write(root / "seq02/annotations.txt", "1 100 100 50 80 4 1\n1 300 100 40 90 4 1\n")
    _write(root / "splits.json", json.dumps({"train": ["seq01"], "test": ["seq02/1"]}, indent=1))
    return root


def build_mot(root: Path) -> Path:
    rows = [f"{f},1,{f},5,10,12,1,-1,-1,-1" for f in range(1, 21)]
    rows += [f"{f},2,30,20,8,16,0.9" for f in range(5, 16)] + ["7,3,0,0,4,4,0"]
    _write(root / "tracks/a.txt", "\n".join(rows) + "\n")
    _write(root / "tracks/b.txt", "".join(f"{f} 1 2 2 20 20 1\n" for f in range(1, 11)))
    _images(root / "frames/a", [f"{f:06d}.jpg" for f in range(1, 21)])
    _images(root / "frames/b", [f"{f}.png" for f in range(1, 11)])
    _write(root / "clips.csv", "video,start,end,activity,group\na,1,10,walk,g1\na,11,20,run,\nb,1,10,walk,\n")
    _write(root / "splits.json", json.dumps({"train": ["a"], "test": ["b/000001"]}, indent=1))
    return root


BUILDERS = {"volleyball": build_volleyball, "cad": build_cad, "mot": build_mot}


@pytest.fixture(scope="module")
def templates(tmp_path_factory) -> dict[str, tuple[Path, list[str]]]:
    """Each format's valid dataset and its files (relative paths), checked to read cleanly."""
    out = {}
    for fmt, build in BUILDERS.items():
        root = build(tmp_path_factory.mktemp(fmt) / "data")
        ds = read_dataset(root, fmt)
        assert len(ds) >= 3 and not ds.skipped
        check_valid(ds)
        out[fmt] = (root, sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()))
    return out


# --------------------------------------------------------------------------- mutations

def mutation(files: list[str]):
    return st.tuples(st.sampled_from(TEXT_OPS), st.sampled_from(files), st.integers(0, 60), st.integers(0, 60),
                     st.sampled_from(TOKENS), st.binary(min_size=1, max_size=12), st.sampled_from(ENCODINGS),
                     st.sampled_from(JSON_VALUES))


def _fields(line: str) -> list[str]:
    """A line split into fields and separators (fields at even positions)."""
    return re.split(r"([\s,]+)", line)


def apply(root: Path, m) -> None:
    op, target, i, j, token, blob, encoding, value = m
    path = root / target
    if not path.is_file():
        return
    if op == "delete_file":
        path.unlink()
        return
    data = path.read_bytes()
    if path.suffix in IMAGE_SUFFIXES:
        op = IMAGE_OPS[i % len(IMAGE_OPS)]
        if op == "delete_file":
            path.unlink()
        else:
            path.write_bytes({"truncate": data[:j * 16], "random_bytes": blob * 8, "empty": b""}[op])
        return
    text = data.decode("utf-8", "surrogateescape")
    lines = text.splitlines(keepends=True) or [""]
    a, b = i % len(lines), j % len(lines)
    if op == "delete_line":
        del lines[a]
    elif op == "duplicate_line":
        lines.insert(b, lines[a] if lines[a].endswith("\n") else lines[a] + "\n")
    elif op == "swap_lines":
        lines[a], lines[b] = lines[b], lines[a]
    elif op in ("delete_field", "duplicate_field", "replace_field", "insert_field"):
        end = "\n" if lines[a].endswith("\n") else ""
        parts = _fields(lines[a].rstrip("\n"))
        k = 2 * (j % ((len(parts) + 1) // 2))
        sep = "," if "," in lines[a] else " "
        if op == "delete_field":
            parts[k:k + 2] = []
        elif op == "duplicate_field":
            parts[k:k] = [parts[k], sep]
        elif op == "replace_field":
            parts[k] = token
        else:
            parts[k:k] = [token, sep]
        lines[a] = "".join(parts) + end
    elif op == "add_line":
        lines.insert(a, " ".join([token] * (1 + j % 7)) + "\n")
    elif op == "truncate":
        path.write_bytes(data[:(i * 61 + j) % (len(data) + 1)])
        return
    elif op == "insert_bytes":
        at = (i * 61 + j) % (len(data) + 1)
        path.write_bytes(data[:at] + blob + data[at:])
        return
    elif op == "reencode":
        if encoding in ("latin-1", "cp1252"):
            text = text[:a] + "\u00e9" + text[a:]
        path.write_bytes(text.encode(encoding, "replace"))
        return
    elif op == "empty":
        path.write_bytes(b"")
        return
    elif op == "json_value":
        path.write_text(_replace_json_value(text, i, value), "utf-8", "surrogateescape")
        return
    path.write_bytes("".join(lines).encode("utf-8", "surrogateescape"))


def _replace_json_value(text: str, i: int, value) -> str:
    """Replace one value (a key's value or a list item) of a JSON file; non-JSON text gets ``value`` as is."""
    try:
        data = json.loads(text)
    except ValueError:
        return json.dumps(value)
    slots = []

    def walk(node):
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, child in items:
            slots.append((node, key))
            walk(child)
    walk(data)
    if not slots:
        return json.dumps(value)
    node, key = slots[i % len(slots)]
    node[key] = value
    return json.dumps(data, indent=1)


# --------------------------------------------------------------------------- checks

def check_error(err: DataError, root: Path) -> None:
    """A DataError names a file (or folder) of the dataset at the start of its one-line message."""
    assert err.path, f"no path in {err!r}"
    path = Path(err.path)
    assert path == root or root in path.parents, f"{err.path} is outside {root}"
    where = err.path if err.line is None else f"{err.path}:{err.line}"
    assert str(err).startswith((where + ": ", where + ", clip ")), str(err)
    assert len(str(err).splitlines()) == 1, repr(str(err))
    assert err.line is None or err.line >= 1, str(err)


def check_valid(ds: ClipDataset) -> None:
    ids = [c.id for c in ds]
    assert len(ids) == len(set(ids))
    for c in ds:
        c.validate()
        H, W = c.image_size
        assert isinstance(H, int) and isinstance(W, int) and H > 0 and W > 0
        assert c.frame_ids.dtype == np.int64 and c.boxes.dtype == np.float32
        assert np.isfinite(c.boxes).all(), c.id
        real = c.boxes[:, c.mask]  # (T, n, 4)
        assert (real[..., 0] >= 0).all() and (real[..., 1] >= 0).all(), c.id
        assert (real[..., 2] <= W).all() and (real[..., 3] <= H).all(), c.id
        assert (real[..., 2] > real[..., 0]).all() and (real[..., 3] > real[..., 1]).all(), c.id
        assert UNKNOWN <= c.activity < len(ds.activities)
        assert ((c.actions >= UNKNOWN) & (c.actions < len(ds.actions))).all()  # MOT: no actions, all -1


def check_frames(ds: ClipDataset, root: Path, limit: int = 3) -> None:
    """Frames of a few clips decode to ``(T, H, W, 3)`` of the clip's image size, or raise a DataError."""
    for c in [c for c in ds if c.frames is not None][:limit]:
        try:
            arr = read_frames(c.frames)
        except DataError as err:
            check_error(err, root)
            continue
        assert arr.shape == (c.num_frames, *c.image_size, 3) and arr.dtype == np.uint8, (c.id, arr.shape)


def read_both(root: Path, fmt: str) -> None:
    """Strict read (format detected) and skip_bad read agree: same clips, or a counted skip."""
    strict = skipping = None
    try:
        strict = read_dataset(root)
    except DataError as err:
        check_error(err, root)
        if err.path == str(root):  # detection could not tell the format: read it as what it is
            try:
                strict = read_dataset(root, fmt)
            except DataError as err2:
                check_error(err2, root)
    try:
        skipping = read_dataset(root, fmt, skip_bad=True)
    except DataError as err:
        check_error(err, root)
    if strict is not None:
        assert strict.format in (fmt, "caed")  # a mutation may turn a CAD action id into 7 or 8
        check_valid(strict)
        check_frames(strict, root)
    if skipping is not None:
        for err in skipping.skipped:
            check_error(err, root)
        check_valid(skipping)
        if strict is not None and strict.format == fmt:
            assert [c.id for c in skipping] == [c.id for c in strict] and not skipping.skipped
        elif strict is None:
            assert skipping.skipped, "the strict read failed but skip_bad skipped nothing"


def run_example(templates, fmt: str, mutations) -> None:
    template, _ = templates[fmt]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        shutil.copytree(template, root)
        for m in mutations:
            apply(root, m)
        read_both(root, fmt)


# --------------------------------------------------------------------------- the fuzz tests

@pytest.mark.parametrize("fmt", sorted(BUILDERS))
def test_templates_are_valid(templates, fmt):
    root, files = templates[fmt]
    assert "splits.json" in files
    read_both(root, fmt)


@SETTINGS
@given(data=st.data())
def test_fuzz_volleyball(templates, data):
    files = templates["volleyball"][1]
    run_example(templates, "volleyball", data.draw(st.lists(mutation(files), min_size=1, max_size=3)))


@SETTINGS
@given(data=st.data())
def test_fuzz_cad(templates, data):
    files = templates["cad"][1]
    run_example(templates, "cad", data.draw(st.lists(mutation(files), min_size=1, max_size=3)))


@SETTINGS
@given(data=st.data())
def test_fuzz_mot(templates, data):
    files = templates["mot"][1]
    run_example(templates, "mot", data.draw(st.lists(mutation(files), min_size=1, max_size=3)))


JSON = st.recursive(st.none() | st.booleans() | st.integers(-10, 400) | st.floats() | st.sampled_from(
    ["7", "8", "7/100", "7/200", "8/50", "train", "test", "TRAIN", "7/", "/100", "x"]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["train", "test", "val", "Train", "image_size", "window", ""]), children, max_size=3),
    max_leaves=12)


@SETTINGS
@given(splits=JSON, meta=JSON)
def test_fuzz_splits_and_dataset_json(templates, splits, meta):
    """Arbitrary JSON in splits.json and dataset.json (Volleyball, the reader that reads both)."""
    template, _ = templates["volleyball"]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        shutil.copytree(template, root)
        (root / "splits.json").write_text(json.dumps(splits))
        (root / "dataset.json").write_text(json.dumps(meta))
        read_both(root, "volleyball")
