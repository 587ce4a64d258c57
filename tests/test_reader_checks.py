"""Every reader input checked, nothing dropped silently (issue 8, item 5).

Each case shows the error (typed, naming file and line) and the counted skip
under ``skip_bad``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from stvh.cli import app
from stvh.data.cad import read_cad
from stvh.data.clip import Clip, ClipDataset, ImageFrames
from stvh.data.errors import (AmbiguousLabel, DataError, DuplicateKey, EmptyFile, FormatError, MalformedLine,
                              UnknownLabel, UnmatchedSplit, UnreadableFrame, UnreadableVideo, read_text)
from stvh.data.formats import read_dataset
from stvh.data.frames import read_frames
from stvh.data.mot import read_mot
from stvh.data.volleyball import read_volleyball

VB_LINE = "100.jpg r_set 10 20 30 40 standing"


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def vb(root: Path, videos: dict[str, list[str]]) -> Path:
    for video, lines in videos.items():
        write(root / "videos" / video / "annotations.txt", "".join(line + "\n" for line in lines))
    return root


def cad(root: Path, seqs: dict[str, list[str]]) -> Path:
    for seq, lines in seqs.items():
        write(root / seq / "annotations.txt", "".join(line + "\n" for line in lines))
    return root


def mot(root: Path, videos: dict[str, list[str]], frames: int = 10) -> Path:
    for video, rows in videos.items():
        write(root / "tracks" / f"{video}.txt", "".join(r + "\n" for r in rows))
        jpegs(root / "frames" / video, [f"{f:06d}.jpg" for f in range(1, frames + 1)])
    return root


def jpegs(folder: Path, names: list[str], size=(48, 64)) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", (size[1], size[0]), (90, 60, 30))
    for name in names:
        img.save(folder / name)


def track_rows(tid: int = 1, frames=range(1, 11), conf: str = "1") -> list[str]:
    return [f"{f},{tid},5,5,10,10,{conf},-1,-1,-1" for f in frames]


def expect(read, root: Path, error: type, path: Path, line: int | None, text: str, *,
           clips: int, skipped: int = 1) -> ClipDataset:
    """``read(root)`` raises ``error`` naming ``path[:line]`` and ``text``; with skip_bad, ``skipped`` problems
    are counted (each with path set), ``clips`` clips remain. Returns the skip_bad dataset."""
    with pytest.raises(error) as info:
        read(root)
    err = info.value
    where = str(path) if line is None else f"{path}:{line}"
    assert str(err).startswith((where + ": ", where + ", clip ")), str(err)
    assert text in str(err), str(err)
    assert err.path == str(path) and err.line == line
    ds = read(root, skip_bad=True)
    assert len(ds) == clips and len(ds.skipped) == skipped, ds.skipped
    assert isinstance(ds.skipped[0], error) and all(e.path for e in ds.skipped)
    return ds


# --------------------------------------------------------------------------- 1. non-finite numbers

@pytest.mark.parametrize("box", ["nan 20 30 40", "10 inf 30 40", "10 20 -inf 40", "10 20 30 1e999"])
def test_volleyball_non_finite_box(tmp_path, box):
    root = vb(tmp_path, {"7": [VB_LINE, f"200.jpg r_set {box} standing"]})
    expect(read_volleyball, root, MalformedLine, root / "videos/7/annotations.txt", 2, "non-finite", clips=1)


@pytest.mark.parametrize("row", ["3 nan 20 40 60 100 0 1 1 standing", "3 10 20 40 60 inf 0 1 1 standing"])
def test_volleyball_non_finite_track(tmp_path, row):
    root = vb(tmp_path, {"7": [VB_LINE]})
    track = write(root / "tracking/7/100/100.txt", "3 10 20 40 60 99 0 1 1 standing\n" + row + "\n")
    expect(read_volleyball, root, MalformedLine, track, 2, "non-finite", clips=1)


@pytest.mark.parametrize("row", ["11 nan 0 10 10 3 1", "11 0 0 inf 10 3 1", "11 0 0 10 10 3 -inf"])
def test_cad_non_finite(tmp_path, row):
    root = cad(tmp_path, {"seq01": ["1 0 0 10 10 3 1", row]})
    expect(read_cad, root, MalformedLine, root / "seq01/annotations.txt", 2, "non-integer", clips=1)


@pytest.mark.parametrize("row", ["4,2,nan,5,10,10,1", "4,2,5,5,inf,10,1", "4,2,5,5,10,10,nan", "nan,2,5,5,10,10,1"])
def test_mot_track_non_finite(tmp_path, row):
    root = mot(tmp_path, {"a": track_rows() + [row]})
    expect(read_mot, root, MalformedLine, root / "tracks/a.txt", 11, "non-finite", clips=1)


@pytest.mark.parametrize("row", ["a,nan,5,,", "a,1,inf,,"])
def test_clips_csv_non_finite(tmp_path, row):
    root = mot(tmp_path, {"a": track_rows()})
    csv = write(root / "clips.csv", "video,start,end,activity,group\na,1,10,,\n" + row + "\n")
    expect(read_mot, root, MalformedLine, csv, 3, "integers", clips=1)


def test_nan_box_through_the_cli_is_one_line_exit_2(tmp_path):
    root = vb(tmp_path, {"7": [VB_LINE, "200.jpg r_set nan 20 30 40 standing"]})
    result = CliRunner().invoke(app, ["data", "info", str(root)])
    assert result.exit_code == 2 and "annotations.txt:2, clip 7/200: malformed line" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    result = CliRunner().invoke(app, ["data", "info", str(root), "--skip-bad", "--json"])
    assert result.exit_code == 0 and json.loads(result.output)["skipped"] == 1


# --------------------------------------------------------------------------- 2. empty files, all conf=0

def test_volleyball_empty_annotations(tmp_path):
    root = vb(tmp_path, {"7": [VB_LINE], "8": []})
    write(root / "videos/9/annotations.txt", "\n  \n")
    ds = expect(read_volleyball, root, EmptyFile, root / "videos/8/annotations.txt", None, "no annotation lines",
                clips=1, skipped=2)
    assert ds.skipped[1].path == str(root / "videos/9/annotations.txt")


def test_cad_empty_annotations_and_no_key_frame(tmp_path):
    root = cad(tmp_path, {"seq01": ["1 0 0 10 10 3 1"], "seq02": []})
    expect(read_cad, root, EmptyFile, root / "seq02/annotations.txt", None, "no annotation lines", clips=1)
    cad(tmp_path, {"seq02": ["5 0 0 10 10 3 1"]})  # frame 5 is no key frame: the sequence gives no clip
    expect(read_cad, root, EmptyFile, root / "seq02/annotations.txt", None, "no key frame", clips=1)


def test_mot_all_conf_zero_and_empty_tracks(tmp_path):
    root = mot(tmp_path, {"a": track_rows(), "b": track_rows(conf="0")[:3]})
    expect(read_mot, root, EmptyFile, root / "tracks/b.txt", None,
           "all 3 rows have conf=0; nothing is tracked", clips=1)
    write(root / "tracks/b.txt", "")
    expect(read_mot, root, EmptyFile, root / "tracks/b.txt", None, "no rows", clips=1)


def test_mot_clips_csv_without_rows(tmp_path):
    root = mot(tmp_path, {"a": track_rows()})
    csv = write(root / "clips.csv", "video,start,end,activity\n\n")
    expect(read_mot, root, EmptyFile, csv, None, "a header but no clip rows", clips=0)


def test_mot_some_conf_zero_rows_are_still_ignored(tmp_path):
    root = mot(tmp_path, {"a": track_rows() + track_rows(tid=2, conf="0")})
    ds = read_mot(root)
    assert len(ds) == 1 and ds.clips[0].num_persons == 1 and not ds.skipped


# --------------------------------------------------------------------------- 3. splits.json

def test_volleyball_splits_accept_video_names(tmp_path):
    root = vb(tmp_path, {"7": [VB_LINE, "200.jpg l_set 1 1 5 5 waiting"], "8": [VB_LINE]})
    write(root / "splits.json", json.dumps({"train": ["7", "8/100"], "test": ["7/200"]}))
    assert {c.id: c.split for c in read_volleyball(root)} == {"7/100": "train", "7/200": "test", "8/100": "train"}
    # reading a subset of the videos does not flag entries of the others
    assert [c.id for c in read_volleyball(root, videos=["8"])] == ["8/100"]


@pytest.mark.parametrize("reader, layout, entry, message", [
    ("vb", {"7": [VB_LINE]}, "7/999", "no clip of video '7' has id '7/999'"),
    ("vb", {"7": [VB_LINE]}, "77", "'77' matches no clip id (video/clip) and no video name"),
    ("cad", {"seq01": ["1 0 0 10 10 3 1"]}, "seq01/2", "no clip of video 'seq01'"),
    ("cad", {"seq01": ["1 0 0 10 10 3 1"]}, "seq9", "'seq9' matches no clip id"),
    ("mot", {"a": track_rows()}, "a/1", "no clip of video 'a' has id 'a/1'"),
    ("mot", {"a": track_rows()}, "b", "'b' matches no clip id"),
])
def test_unmatched_split_entries(tmp_path, reader, layout, entry, message):
    read, build, good = {"vb": (read_volleyball, vb, "7/100"), "cad": (read_cad, cad, "seq01/1"),
                         "mot": (read_mot, mot, "a/000001")}[reader]
    root = build(tmp_path, layout)
    splits = write(root / "splits.json", '{\n  "train": ["%s"],\n  "test": [\n    "%s"\n  ]\n}\n' % (good, entry))
    ds = expect(read, root, UnmatchedSplit, splits, 4, message, clips=1)
    assert ds.clips[0].split == "train"


def test_split_entries_of_skipped_clips_are_not_counted_twice(tmp_path):
    root = vb(tmp_path, {"7": [VB_LINE, "200.jpg r_set nan 1 5 5 standing"], "8": []})
    write(root / "splits.json", json.dumps({"train": ["7/100", "8/50"], "test": ["7/200"]}))
    ds = read_volleyball(root, skip_bad=True)
    assert [(e.kind, e.clip) for e in ds.skipped] == [("malformed line", "7/200"), ("empty file", None)]


def test_splits_json_structure_errors(tmp_path):
    root = vb(tmp_path, {"7": [VB_LINE]})
    splits = write(root / "splits.json", '{"train": ["7/100"],\n "Train": []}')
    with pytest.raises(FormatError, match=r"splits.json:2: .*'train' and 'Train' differ only in case"):
        read_volleyball(root)
    write(splits, '{"train": ["7/100"],\n "train": []}')
    with pytest.raises(FormatError, match="split 'train' appears twice"):
        read_volleyball(root)
    write(splits, '{"train": [["7/100"]]}')
    with pytest.raises(FormatError, match="is not a clip id or video name"):
        read_volleyball(root)
    write(splits, '{"train": ["7/100"],\n "test": ["7/100"]}')
    with pytest.raises(FormatError, match=r"splits.json:1: .*listed in both"):
        read_volleyball(root)
    write(splits, '{"train":\n ["7/100",]}')
    with pytest.raises(FormatError, match=r"splits.json:2: format error: cannot parse JSON"):
        read_volleyball(root)


# --------------------------------------------------------------------------- 4. duplicate keys

def test_volleyball_duplicate_key_line(tmp_path):
    root = vb(tmp_path, {"7": [VB_LINE, "200.jpg l_set 1 1 5 5 waiting", "100.jpg l_pass 1 1 5 5 waiting"]})
    ds = expect(read_volleyball, root, DuplicateKey, root / "videos/7/annotations.txt", 3,
                "key frame 100 (clip 7/100) is already annotated on line 1", clips=2)
    assert [c.id for c in ds] == ["7/100", "7/200"] and ds.clips[0].activity == 0  # the first line wins


def test_volleyball_unreadable_track_file_leaves_the_clip_untracked(tmp_path):
    root = vb(tmp_path, {"7": [VB_LINE]})
    track = write(root / "tracking/7/100/100.txt", "3 10 20 40 60 100 0 1 1 standing\n".encode("utf-16"))
    ds = expect(read_volleyball, root, FormatError, track, None, "file is UTF-16", clips=1)
    assert not ds.clips[0].tracked


def test_volleyball_duplicate_track_box(tmp_path):
    root = vb(tmp_path, {"7": [VB_LINE]})
    track = write(root / "tracking/7/100/100.txt",
                  "3 10 20 40 60 100 0 1 1 standing\n3 11 20 40 60 100 0 1 1 standing\n")
    expect(read_volleyball, root, DuplicateKey, track, 2, "person 3 has a second box at frame 100 (first on line 1)",
           clips=1)


def test_cad_duplicate_person_line(tmp_path):
    root = cad(tmp_path, {"seq01": ["1 0 0 10 10 3 1", "1 20 0 10 10 3 1", "1 0 0 10 10 4 1"]})
    ds = expect(read_cad, root, DuplicateKey, root / "seq01/annotations.txt", 3,
                "frame 1 box 0,0,10,10 is already on line 1", clips=1)
    assert ds.clips[0].num_persons == 2


def test_mot_duplicates(tmp_path):
    root = mot(tmp_path, {"a": track_rows()})
    csv = write(root / "clips.csv", "video,start,end\na,1,10\na,2,9\na,1,5\n")
    expect(read_mot, root, DuplicateKey, csv, 4, "duplicate clip a/000001 (same video and start as line 2)",
           clips=2)
    (root / "clips.csv").unlink()
    write(root / "tracks/a.txt", "\n".join(track_rows() + ["3,1,9,9,10,10,1"]) + "\n")
    expect(read_mot, root, DuplicateKey, root / "tracks/a.txt", 11, "track 1 has two boxes at frame 3 (first on "
           "line 3)", clips=1)


def test_clip_dataset_refuses_duplicate_ids():
    def clip(key: str) -> Clip:
        return Clip(video="7", clip=key, frame_ids=np.zeros(1, np.int64), boxes=np.zeros((1, 1, 4), np.float32),
                    mask=np.zeros(1, bool), actions=np.full(1, -1), activity=-1, group="7", image_size=(4, 4))
    with pytest.raises(DuplicateKey, match=r"/data: duplicate key: 1 clip id\(s\) occur more than once: 7/1 \(2x\)"):
        ClipDataset("x", Path("/data"), [clip("1"), clip("2"), clip("1")], (), ())


# --------------------------------------------------------------------------- 5. labels differing in case

def test_mot_activity_spellings_differing_in_case(tmp_path):
    root = mot(tmp_path, {"a": track_rows(frames=range(1, 21))})
    csv = write(root / "clips.csv", "video,start,end,activity\na,1,10,Right\na,11,20,right\n")
    ds = expect(read_mot, root, AmbiguousLabel, csv, 3,
                "activity 'right' differs from 'Right' (line 2) only in case; use one spelling", clips=1)
    assert ds.activities == ("Right",)
    write(csv, "video,start,end,activity,group\na,1,10,x,camA\na,11,20,x,CAMA\n")
    expect(read_mot, root, AmbiguousLabel, csv, 3, "group 'CAMA' differs from 'camA' (line 2)", clips=1)


def test_mot_given_vocabulary_and_case(tmp_path):
    root = mot(tmp_path, {"a": track_rows()})
    csv = write(root / "clips.csv", "video,start,end,activity\na,1,10,Walk\n")
    with pytest.raises(UnknownLabel, match=r"clips.csv:2: .*'walk' differs only in case"):
        read_mot(root, activities=("walk",))
    with pytest.raises(ValueError, match="differ only in case"):
        read_mot(root, activities=("walk", "Walk"))
    write(csv, "video,start,end\nA,1,10\n")
    with pytest.raises(MalformedLine, match=r"clips.csv:2: .*tracks/a.txt differs only in case"):
        read_mot(root)


def test_volleyball_labels_fold_case(tmp_path):
    root = vb(tmp_path, {"7": ["100.jpg R_Set 10 20 30 40 Standing", "200.jpg r-set 1 1 5 5 standing"]})
    a, b = read_volleyball(root).clips
    assert a.activity == b.activity == 0 and a.actions[0] == b.actions[0]


# --------------------------------------------------------------------------- 6. corrupt frames

def test_volleyball_corrupt_first_jpeg(tmp_path):
    root = vb(tmp_path, {"7": [VB_LINE], "8": [VB_LINE]})
    jpegs(root / "videos/7/100", [f"{f}.jpg" for f in range(95, 105)])
    bad = write(root / "videos/7/100/95.jpg", b"\xff\xd8 not a jpeg")
    write(root / "videos/7/100/100.jpg", b"")  # the first file by name
    ds = expect(read_volleyball, root, UnreadableFrame, root / "videos/7/100/100.jpg", None,
                "cannot read the image header (UnidentifiedImageError: cannot identify image file)", clips=1)
    assert [c.video for c in ds] == ["8"]
    jpegs(root / "videos/7/100", ["100.jpg"])  # header fine now; the broken frame shows when decoded
    (clip,) = [c for c in read_volleyball(root) if c.video == "7"]
    with pytest.raises(UnreadableFrame, match=f"{bad}: unreadable frame: cannot decode image"):
        read_frames(clip.frames)


def test_cad_corrupt_first_jpeg(tmp_path):
    root = cad(tmp_path, {"seq01": ["1 0 0 10 10 3 1"], "seq02": ["1 0 0 10 10 3 1"]})
    jpegs(root / "seq02", [f"frame{f:04d}.jpg" for f in range(1, 6)])
    bad = write(root / "seq02/frame0001.jpg", b"GIF89a garbage")
    ds = expect(read_cad, root, UnreadableFrame, bad, None, "cannot read the image header", clips=1)
    assert [c.video for c in ds] == ["seq01"]


def test_mot_corrupt_first_jpeg(tmp_path):
    root = mot(tmp_path, {"a": track_rows(), "b": track_rows()})
    bad = write(root / "frames/b/000001.jpg", b"\x89PNG\r\n\x1a\n broken")
    expect(read_mot, root, UnreadableFrame, bad, None, "cannot read the image header", clips=1)


def test_read_frames_truncated_jpeg(tmp_path):
    jpegs(tmp_path, ["1.jpg"], size=(64, 64))
    p = tmp_path / "1.jpg"
    p.write_bytes(p.read_bytes()[:200])
    with pytest.raises(UnreadableFrame) as info:
        read_frames(ImageFrames((p,)))
    assert info.value.path == str(p) and "cannot decode image" in str(info.value)


# --------------------------------------------------------------------------- 7. encodings

def test_read_text_encodings(tmp_path):
    f = tmp_path / "a.txt"
    f.write_bytes(b"\xef\xbb\xbfhello\n")
    assert read_text(f) == "hello\n"
    for encoding, name in (("utf-16", "UTF-16"), ("utf-32", "UTF-32")):
        f.write_bytes("hello\n".encode(encoding))
        with pytest.raises(FormatError, match=rf"a.txt: format error: file is {name}; save it as UTF-8"):
            read_text(f)
    f.write_bytes("one\ntwo\r\ncaf\u00e9\n".encode("latin-1"))
    with pytest.raises(FormatError) as info:
        read_text(f)
    assert "file is not UTF-8 text (invalid byte 0xe9 at line 3)" in str(info.value) and info.value.line == 3
    f.write_bytes("hello\n".encode("utf-16-le"))
    with pytest.raises(FormatError, match="NUL byte at line 1; UTF-16 without a BOM"):
        read_text(f)
    with pytest.raises(FormatError, match="cannot read"):
        read_text(tmp_path / "missing.txt")


def test_utf8_bom_accepted_by_every_reader(tmp_path):
    bom = b"\xef\xbb\xbf"
    root = vb(tmp_path / "vb", {"7": [VB_LINE]})
    for p in (root / "videos/7/annotations.txt",):
        p.write_bytes(bom + p.read_bytes())
    write(root / "tracking/7/100/100.txt", bom + b"3 10 20 40 60 100 0 1 1 standing\n")
    write(root / "splits.json", bom + b'{"test": ["7"]}')
    write(root / "dataset.json", bom + b'{"image_size": [100, 200]}')
    (c,) = read_dataset(root).clips
    assert c.tracked and c.split == "test" and c.image_size == (100, 200)
    root = cad(tmp_path / "cad", {"seq01": []})
    write(root / "seq01/annotations.txt", bom + b"1 0 0 10 10 3 1\n")
    assert len(read_dataset(root)) == 1
    root = mot(tmp_path / "mot", {"a": []})
    write(root / "tracks/a.txt", bom + "\n".join(track_rows()).encode())
    write(root / "clips.csv", bom + b"video,start,end\na,1,10\n")
    assert [c.id for c in read_dataset(root)] == ["a/000001"]


@pytest.mark.parametrize("target", ["videos/7/annotations.txt", "tracking/7/100/100.txt", "splits.json",
                                    "dataset.json"])
def test_volleyball_files_in_utf16(tmp_path, target):
    root = vb(tmp_path, {"7": [VB_LINE]})
    write(root / "tracking/7/100/100.txt", "3 10 20 40 60 100 0 1 1 standing\n")
    write(root / "splits.json", '{"test": ["7"]}')
    write(root / "dataset.json", '{"window": [-1, 1]}')
    path = root / target
    path.write_bytes(path.read_text().encode("utf-16"))
    with pytest.raises(FormatError) as info:
        read_dataset(root)  # detection sniffs leniently; the reader names the file
    message = str(info.value)  # (a tracking file's error also names its clip: "FILE, clip 7/100: ...")
    assert message.startswith(str(path)) and message.endswith("format error: file is UTF-16; save it as UTF-8")


@pytest.mark.parametrize("target", ["tracks/a.txt", "clips.csv"])
def test_mot_files_in_latin1(tmp_path, target):
    root = mot(tmp_path, {"a": track_rows()})
    write(root / "clips.csv", "video,start,end,activity\na,1,10,walk\n")
    path = root / target
    path.write_bytes(path.read_bytes() + "# caf\u00e9\n".encode("latin-1"))
    line = len(path.read_bytes().splitlines())
    expect(read_mot, root, FormatError, path, line, f"invalid byte 0xe9 at line {line}",
           clips=0)  # the whole unreadable file is skipped


def test_cad_latin1_annotations(tmp_path):
    root = cad(tmp_path, {"seq01": ["1 0 0 10 10 3 1"], "seq02": ["1 0 0 10 10 3 1"]})
    write(root / "seq02/annotations.txt", "1 0 0 10 10 3 1 \u00e9\n".encode("latin-1"))
    expect(read_cad, root, FormatError, root / "seq02/annotations.txt", 1, "not UTF-8 text", clips=1)


# --------------------------------------------------------------------------- 8. every error locates itself

def test_skipped_errors_keep_path_and_line(tmp_path):
    root = vb(tmp_path, {"7": [VB_LINE, "200.jpg r_set nan 1 5 5 standing", VB_LINE], "8": []})
    write(root / "splits.json", '{"train": ["7",\n "9"]}')
    ds = read_volleyball(root, skip_bad=True)
    located = {(Path(e.path).name, e.line, e.kind) for e in ds.skipped}
    assert located == {("annotations.txt", 2, "malformed line"), ("annotations.txt", 3, "duplicate key"),
                       ("annotations.txt", None, "empty file"), ("splits.json", 2, "unmatched split entry")}
    assert all(isinstance(e, DataError) for e in ds.skipped)


# --------------------------------------------------------------------------- 9. readers that say what they see (issue 14)

def test_mot_frame_of_another_size_names_that_frame(tmp_path):
    root = mot(tmp_path, {"a": track_rows(frames=range(1, 21))}, frames=20)
    jpegs(root / "frames" / "a", ["000015.jpg"], size=(50, 64))
    ds = expect(read_mot, root, FormatError, root / "frames/a/000015.jpg", None,
                "this frame is 50x64 (HxW) but the video's first frame 000001.jpg is 48x64", clips=1)
    assert ds.skipped[0].clip == "a/000011" and [c.id for c in ds.clips] == ["a/000001"]
    assert ds.clips[0].frames.size == (48, 64)  # read_frames checks every decoded frame against it


def test_mot_track_number_above_1e9_is_malformed(tmp_path):
    root = mot(tmp_path, {"a": track_rows()[:4] + ["5,1,5,5,3e9,10,1"] + track_rows()[5:]})
    ds = expect(read_mot, root, MalformedLine, root / "tracks/a.txt", 5, "3e9 is larger than 1000000000", clips=1)
    assert "above 10^9" in str(ds.skipped[0])


@pytest.mark.parametrize("target", ["tracks/b.txt", "videos/b.mp4"])
def test_mot_broken_links_are_named(tmp_path, target):
    root = mot(tmp_path, {"a": track_rows(), "b": track_rows()})
    link = root / target
    if target.startswith("videos"):
        import shutil
        shutil.rmtree(root / "frames" / "b")
    link.unlink(missing_ok=True)
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(tmp_path / "gone")
    error = FormatError if target.startswith("tracks") else UnreadableVideo
    expect(read_mot, root, error, link, None, f"broken symbolic link (its target {tmp_path / 'gone'} does not exist)",
           clips=1)


def test_mot_only_a_broken_track_link_is_still_mot(tmp_path):
    (tmp_path / "tracks").mkdir()
    (tmp_path / "tracks" / "a.txt").symlink_to(tmp_path / "gone.txt")
    with pytest.raises(FormatError, match=r"tracks/a.txt: format error: broken symbolic link"):
        read_dataset(tmp_path)


def one_line_error(result, text: str) -> None:
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.exit_code == 2 and lines == [f"error: {text}"], result.output


def test_data_window_with_mot_names_the_key(tmp_path):
    root = mot(tmp_path / "data", {"a": track_rows()})
    result = CliRunner().invoke(app, ["train", "--data", str(root), "--out", str(tmp_path / "run"),
                                      "model.backbone=none", "data.window=[1,5]"])
    one_line_error(result, "data.window does not apply to mot data: its clips are the rows of clips.csv, or windows "
                           "of data.reader.frames_per_clip frames; set data.window to null")
    with pytest.raises(ValueError, match=r"^data.reader.bogus is not an option of the mot reader \(its options: "
                                         r"frames_per_clip, n_max, activities\)$"):
        read_dataset(root, bogus=1)


def test_a_file_given_as_the_dataset_folder(tmp_path):
    codes = write(tmp_path / "codes.npz", b"PK")
    result = CliRunner().invoke(app, ["train", "--data", str(codes), "--out", str(tmp_path / "run"),
                                      "model.backbone=none"])
    one_line_error(result, f"format error: --data {codes} is a file; it must be a dataset folder")
    result = CliRunner().invoke(app, ["data", "info", str(codes)])
    one_line_error(result, f"format error: {codes} is a file; it must be a dataset folder")
    with pytest.raises(FormatError, match="is a file"):  # also when the format is given
        read_dataset(codes, "mot")
