"""The HTTP API of ``stvh serve`` (FastAPI's test client): every endpoint and every error.

Fixture: a tiny synthetic dataset (2 matches x 12 clips), a tiny M-STVH run
(``backbone: none``, 32 bits, 3 depths) that encodes uploads, and an index
of the dataset's clips whose codes are seeded so that focus 1 groups clips by
match (visual) and focus 3 by activity: what a trained model aims at, made
exact so the tests can check what each focus returns.
"""

from __future__ import annotations

import io
import shutil
import zipfile
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest

import fastapi  # noqa: E402,F401  required (fastapi) and dev (httpx) dependencies: missing is a failure
import httpx  # noqa: E402,F401

from fastapi.testclient import TestClient  # noqa: E402

from stvh.serve import ServeSettings, UploadLimits, create_app  # noqa: E402
from stvh.serve.service import Service  # noqa: E402

BITS, DEPTH = 32, 3
BASE = "http://127.0.0.1"  # a Host the service answers to (it refuses names not its own: DNS rebinding)
TINY = ["model.d=32", "model.d_v=8", "model.heads=2", f"model.bits={BITS}", f"model.depth={DEPTH}",
        "train.epochs=1", "train.batch_size=8", "train.lr=1e-3", "data.val_fraction=0.25", "filter.steps=10",
        "train.device=cpu"]


def seeded_signs(group: np.ndarray, activity: np.ndarray, seed: int = 0) -> np.ndarray:
    """±1 codes (M, DEPTH, BITS): depth 1 near a per-group prototype, the deepest near a per-activity one,
    the middle depth half of each; 2 random bits flipped per code."""
    rng = np.random.default_rng(seed)
    groups, g = np.unique(group, return_inverse=True)
    acts, a = np.unique(activity, return_inverse=True)
    proto_g = rng.choice([-1, 1], (len(groups), BITS))
    proto_a = rng.choice([-1, 1], (len(acts), BITS))
    m = len(group)
    out = np.empty((m, DEPTH, BITS), np.int8)
    out[:, 0] = proto_g[g]
    out[:, 2] = proto_a[a]
    out[:, 1] = np.concatenate([proto_g[g][:, :BITS // 2], proto_a[a][:, BITS // 2:]], axis=1)
    for i in range(m):
        for d in range(DEPTH):
            flip = rng.choice(BITS, 2, replace=False)
            out[i, d, flip] *= -1
    return out


def make_world(root: Path) -> dict:
    """Synthetic data, a tiny run and a seeded index under ``root``."""
    import torch

    from stvh.data.formats import read_dataset
    from stvh.data.synth import generate
    from stvh.index.codes import CodeSet
    from stvh.index.commands import build_index
    from stvh.train.config import load_config
    from stvh.train.loop import fit

    generate(root / "data", matches=2, clips_per_match=12, frames=6, size=(96, 160), progress=False, seed=1)
    torch.manual_seed(0)
    fit(load_config(None, TINY), root / "data", None, root / "run", progress=False, log=lambda *a: None)
    ds = read_dataset(root / "data")
    ids = np.array([c.id for c in ds.clips])
    group = np.array([c.group for c in ds.clips])
    activity = np.array([c.activity for c in ds.clips])
    cs = CodeSet.from_signs(ids, seeded_signs(group, activity), activity=activity, group=group,
                            split=np.array([c.split for c in ds.clips]), meta={"activities": list(ds.activities)})
    cs.save(root / "codes.npz")
    build_index(root / "codes.npz", root / "index.npz")
    return {"root": root, "run": root / "run", "index": root / "index.npz", "data": root / "data",
            "clips": ds.clips, "activities": list(ds.activities)}


def upload_parts(clip, kind: str = "zip", tracks: str | None = None) -> dict:
    """Multipart files of a dataset clip as a user would upload it: frames (zip or mp4) + MOT tracks."""
    from stvh.data.frames import read_frames

    frames = read_frames(clip.frames)  # (T, H, W, 3)
    if tracks is None:
        lines = []
        for t in range(clip.num_frames):
            for n in np.flatnonzero(clip.mask):
                x1, y1, x2, y2 = clip.boxes[t, n]
                lines.append(f"{t + 1},{n},{x1:.3f},{y1:.3f},{x2 - x1:.3f},{y2 - y1:.3f},1")
        tracks = "\n".join(lines) + "\n"
    files = {"tracks": ("tracks.txt", tracks.encode(), "text/plain")}
    if kind == "zip":
        files["frames"] = ("frames.zip", zip_of({f"clip/{t + 1:06d}.png": png(f) for t, f in enumerate(frames)}),
                           "application/zip")
    else:
        files["video"] = ("clip.mp4", mp4(frames), "video/mp4")
    return files


def png(frame: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG")
    return buf.getvalue()


def mp4(frames: np.ndarray) -> bytes:
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as c:
        s = c.add_stream("mpeg4", rate=25)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for f in frames:
            for p in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return buf.getvalue()


def zip_of(members: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o120777 << 16)  # a symbolic link
            z.writestr(info, target)
    return buf.getvalue()


@pytest.fixture(scope="session")
def world(serve_world) -> dict:
    return serve_world  # tests/conftest.py: one world for every serve test module


@pytest.fixture(scope="module")
def client(world):
    service = Service(ServeSettings(run=world["run"], index=world["index"]))
    with TestClient(create_app(service), base_url=BASE) as c:
        yield c


@pytest.fixture(scope="module")
def small_client(world):
    """A service with tiny upload limits (the 413s)."""
    limits = UploadLimits(max_bytes=400_000, max_unzipped_bytes=100_000, max_frames=4, max_persons=3)
    service = Service(ServeSettings(run=world["run"], index=world["index"], limits=limits))
    with TestClient(create_app(service), base_url=BASE) as c:
        yield c


def err(response, status: int, *words: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status"] == status and body["error"] and "\n" not in body["detail"]
    for w in words:
        assert w in body["detail"], body["detail"]
    return body


# --------------------------------------------------------------------------- reading

def test_health_index_docs_and_page(client, world):
    h = client.get("/api/health").json()
    assert h["status"] == "ok" and h["clips"] == len(world["clips"]) and h["writes"] is False
    info = client.get("/api/index").json()
    assert (info["bits"], info["depth"], info["mode"], info["clips"]) == (BITS, DEPTH, "all", 24)
    assert info["engine"] in ("kernel", "faiss-flat", "short") and info["storage"]["storage_bits"] == 24 * 3 * 32
    assert info["focus_names"] == ["visual", "mixed", "activity"] and info["activities"] == world["activities"]
    assert info["splits"] == ["test", "train"] and info["groups"] == ["0", "1"] and info["clip_frames"] == 6
    schema = client.get("/openapi.json").json()
    for path in ("/api/health", "/api/index", "/api/clips", "/api/clips/{clip_id}", "/api/search",
                 "/api/clips/{clip_id}/keyframe.jpg", "/api/clips/{clip_id}/attention.png",
                 "/api/queries/{token}/keyframe.jpg"):
        assert path in schema["paths"], path
    assert {"application/json", "multipart/form-data"} <= set(
        schema["paths"]["/api/search"]["post"]["requestBody"]["content"])
    assert client.get("/docs").status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and 'id="focus"' in page.text and "/static/app.js" in page.text
    assert "http" not in page.text.replace("http-equiv", "")  # nothing from another host: works offline
    js = client.get("/static/app.js")
    assert js.status_code == 200 and "/api/search" in js.text and "//" + "cdn" not in js.text


def test_clips_paging_and_filters(client, world):
    page = client.get("/api/clips", params={"limit": 5, "offset": 2}).json()
    assert page["total"] == 24 and [c["id"] for c in page["clips"]] == [c.id for c in world["clips"][2:7]]
    assert client.get("/api/clips", params={"offset": 100}).json()["clips"] == []
    test = client.get("/api/clips", params={"split": "test", "limit": 100}).json()
    assert test["total"] == sum(c.split == "test" for c in world["clips"]) > 0
    assert all(c["split"] == "test" for c in test["clips"])
    name = world["activities"][world["clips"][0].activity]
    by_name = client.get("/api/clips", params={"activity": name, "limit": 100}).json()
    by_id = client.get("/api/clips", params={"activity": str(world["clips"][0].activity), "limit": 100}).json()
    assert by_name == by_id and by_name["total"] >= 1 and all(c["activity_name"] == name for c in by_name["clips"])
    both = client.get("/api/clips", params={"group": "1", "split": "train", "limit": 100}).json()
    assert both["total"] == sum(c.group == "1" and c.split == "train" for c in world["clips"])
    err(client.get("/api/clips", params={"activity": "juggling"}), 422, "unknown activity")
    err(client.get("/api/clips", params={"limit": 0}), 422, "limit")
    err(client.get("/api/clips", params={"offset": -1}), 422, "offset")


def test_clip_detail_keyframe_and_attention(client, world):
    clip = world["clips"][3]
    d = client.get(f"/api/clips/{clip.id}").json()
    assert (d["id"], d["split"], d["group"], d["source"]) == (clip.id, clip.split, clip.group, "dataset")
    assert d["activity"] == clip.activity and d["frames"] == 6 and d["image_size"] == [96, 160]
    assert np.array(d["boxes"]).shape == (6, clip.num_persons, 4)
    r = client.get(f"/api/clips/{clip.id}/keyframe.jpg", params={"width": 200})
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg" and "max-age" in r.headers["cache-control"]
    from PIL import Image
    assert Image.open(io.BytesIO(r.content)).size == (200, 120)
    service = client.app.state.service
    assert (clip.id, "key", 200) in service.images._items  # rendered once, then cached
    assert client.get(f"/api/clips/{clip.id}/keyframe.jpg", params={"width": 200}).content == r.content
    err(client.get(f"/api/clips/{clip.id}/keyframe.jpg", params={"width": 5000}), 422, "width")
    a = client.get(f"/api/clips/{clip.id}/attention.png")
    assert a.status_code == 200 and a.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert Image.open(io.BytesIO(a.content)).size[0] > 600


@pytest.mark.parametrize("path", ["/api/clips/0/9999", "/api/clips/0/9999/keyframe.jpg",
                                  "/api/clips/nope/1/attention.png"])
def test_unknown_ids_are_404(client, path):
    err(client.get(path), 404, "not in the index")


@pytest.mark.parametrize("clip_id", ["../../etc/passwd", "0/..", "../0/1000", "0\\..\\1000/x", "0/1000\x00",
                                     "onlyone", "/etc/passwd", "0/./1000"])
def test_traversal_and_malformed_ids_are_422(client, clip_id):
    for suffix in ("", "/keyframe.jpg", "/attention.png"):  # sent encoded, as a crafted link would be
        err(client.get(f"/api/clips/{quote(clip_id, safe='')}{suffix}"), 422, "invalid clip id")
    err(client.post("/api/search", json={"clip": clip_id}), 422, "invalid clip id")


# --------------------------------------------------------------------------- search

def test_search_by_clip_at_every_focus(client, world):
    clips = {c.id: c for c in world["clips"]}
    q = world["clips"][0]
    hits = {}
    for focus in (1, 2, 3):
        r = client.post("/api/search", json={"clip": q.id, "k": 5, "focus": focus}).json()
        assert r["focus"] == focus and r["depth"] == 3 and r["query"]["id"] == q.id and r["search_ms"] >= 0
        res = r["results"]
        assert [h["rank"] for h in res] == [1, 2, 3, 4, 5] and q.id not in [h["id"] for h in res]
        assert [h["distance"] for h in res] == sorted(h["distance"] for h in res)
        for h in res:
            assert (h["activity"], h["group"], h["split"]) == (clips[h["id"]].activity, clips[h["id"]].group,
                                                               clips[h["id"]].split)
        hits[focus] = res
    assert all(h["group"] == q.group for h in hits[1])          # visual focus: the same match
    same_act = sum(c.activity == q.activity for c in world["clips"]) - 1
    assert same_act >= 1 and all(h["activity"] == q.activity for h in hits[3][:same_act])  # activity focus
    assert [h["id"] for h in hits[1]] != [h["id"] for h in hits[3]]
    default = client.post("/api/search", json={"clip": q.id}).json()
    assert default["focus"] == 3 and default["k"] == 10 and len(default["results"]) == 10
    form = client.post("/api/search", data={"clip": q.id, "k": "5", "focus": "1"}).json()
    assert form["results"] == hits[1]


def test_search_by_codes(client, world):
    q = world["clips"][5]
    from stvh.index.base import load_index

    codes = load_index(world["index"]).codes_of([q.id], 1)  # (1, 4) packed at focus 1
    all_depths = [bytes(load_index(world["index"]).codes_of([q.id], f)[0]).hex() for f in (1, 2, 3)]
    r = client.post("/api/search", json={"codes": all_depths, "k": 4, "focus": 1}).json()
    assert r["query"]["kind"] == "codes" and r["results"][0]["distance"] == 0
    assert q.id in [h["id"] for h in r["results"]] and bytes(codes[0]).hex() == all_depths[0]
    err(client.post("/api/search", json={"codes": all_depths[:2]}), 422, "list of 3 hex")
    err(client.post("/api/search", json={"codes": ["zz", "00", "00"]}), 422, "not a hex")
    err(client.post("/api/search", json={"codes": ["00", "00", "00"]}), 422, "needs 4")


@pytest.mark.parametrize("body, words", [
    ({"clip": "0/1000", "k": 0}, ["k must be"]),
    ({"clip": "0/1000", "k": -3}, ["k must be"]),
    ({"clip": "0/1000", "focus": 0}, ["focus"]),
    ({"clip": "0/1000", "focus": 4}, ["focus", "1..3"]),
    ({"clip": "0/1000", "k": "many"}, ["k"]),
    ({}, ["exactly one"]),
    ({"clip": "0/1000", "codes": ["00"]}, ["exactly one"]),
    ({"clip": "0/1000", "colour": "red"}, ["colour"]),
    ({"query": "../../x"}, ["invalid query token"]),
])
def test_search_errors_422(client, body, words):
    err(client.post("/api/search", json=body), 422, *words)


def test_search_other_errors(client):
    err(client.post("/api/search", json={"clip": "0/9999"}), 404, "not in the index")
    err(client.post("/api/search", json={"query": "q" + "0" * 16}), 404, "expired")
    err(client.post("/api/search", content=b"{not json", headers={"content-type": "application/json"}), 422, "JSON")
    err(client.post("/api/search", json=[1, 2]), 422, "JSON object")
    err(client.post("/api/search", content=b"x", headers={"content-type": "text/plain"}), 422, "content type")


# --------------------------------------------------------------------------- uploads

def test_search_by_uploaded_zip_then_token(client, world):
    clip = world["clips"][0]
    r = client.post("/api/search", files=upload_parts(clip, "zip"), data={"k": "5", "focus": "3"})
    assert r.status_code == 200, r.text
    body = r.json()
    q = body["query"]
    assert q["kind"] == "upload" and q["predicted"] and q["persons"] == clip.num_persons and q["frames"] == 6
    assert 0 <= q["activity"] < len(world["activities"]) and q["activity_name"] == world["activities"][q["activity"]]
    assert len(q["codes"]) == 3 and all(len(h) == BITS // 4 for h in q["codes"])
    assert len(body["results"]) == 5 and body["focus"] == 3
    again = client.post("/api/search", json={"query": q["token"], "k": 5, "focus": 1}).json()
    assert again["focus"] == 1 and again["query"]["token"] == q["token"]
    by_codes = client.post("/api/search", json={"codes": q["codes"], "k": 5, "focus": 1}).json()
    assert by_codes["results"] == again["results"]
    key = client.get(f"/api/queries/{q['token']}/keyframe.jpg")
    assert key.status_code == 200 and key.headers["content-type"] == "image/jpeg"
    att = client.get(f"/api/queries/{q['token']}/attention.png")
    assert att.status_code == 200 and att.content[:4] == b"\x89PNG"
    err(client.get("/api/queries/q0123456789abcdef/keyframe.jpg"), 404, "expired")
    err(client.get("/api/queries/%2E%2E/keyframe.jpg"), 422, "invalid query token")


def test_search_by_uploaded_video_matches_the_zip(client, world):
    clip = world["clips"][7]
    a = client.post("/api/search", files=upload_parts(clip, "mp4"), data={"k": "3"})
    assert a.status_code == 200, a.text
    b = client.post("/api/search", files=upload_parts(clip, "zip"), data={"k": "3"})
    # backbone none: the codes depend on the boxes only, which are the same
    assert a.json()["query"]["codes"] == b.json()["query"]["codes"]


def _frames_zip(members: dict, links=None):
    return {"frames": ("frames.zip", zip_of(members, links), "application/zip")}


@pytest.mark.parametrize("members, links, words", [
    ({"../evil.png": b"x"}, None, ["'../evil.png'", "outside the archive"]),
    ({"clip/../../evil.png": b"x"}, None, ["outside the archive"]),
    ({"/abs/000001.png": b"x"}, None, ["outside the archive"]),
    ({"000001.png": b"x"}, {"000002.png": "/etc/passwd"}, ["symbolic link"]),
    ({"notes.txt": b"x"}, None, ["not a frame image"]),
    ({}, None, ["no frame images"]),
])
def test_zip_slip_and_bad_members_are_422(client, world, members, links, words):
    before = set(Path(world["root"]).parent.rglob("evil*"))
    files = {**_frames_zip(members, links), "tracks": ("t.txt", b"1,1,10,10,20,30,1\n", "text/plain")}
    err(client.post("/api/search", files=files), 422, "frames.zip", *words)
    assert set(Path(world["root"]).parent.rglob("evil*")) == before


@pytest.mark.parametrize("tracks, words", [
    ("1,1,10,10,20,30,1\n2,1,10\n", ["tracks.txt:2", "malformed line", "fields"]),
    ("1,1,10,10,abc,30\n", ["tracks.txt:1", "non-numeric"]),
    ("1,1,10,10,-5,30\n", ["tracks.txt:1", "bad box"]),
    ("0,1,10,10,20,30\n", ["tracks.txt:1", "1-based"]),
    ("", ["tracks"]),
])
def test_malformed_tracks_are_422(client, world, tracks, words):
    clip = world["clips"][0]
    files = upload_parts(clip, "zip", tracks=tracks)
    body = err(client.post("/api/search", files=files), 422, *words)
    assert "/tmp" not in body["detail"] and "stvh-query" not in body["detail"]  # names the upload, not server paths


def test_other_upload_errors(client, world):
    clip = world["clips"][0]
    parts = upload_parts(clip, "zip")
    err(client.post("/api/search", files={"frames": parts["frames"]}), 422, "tracks")
    both = {**parts, "video": ("clip.mp4", b"xx", "video/mp4")}
    err(client.post("/api/search", files=both), 422, "exactly one")
    err(client.post("/api/search", files={"tracks": parts["tracks"]}), 422, "exactly one")
    bad_ext = {"tracks": parts["tracks"], "video": ("clip.exe", b"xx", "video/mp4")}
    err(client.post("/api/search", files=bad_ext), 422, "clip.exe", ".mp4")
    broken = {"tracks": parts["tracks"], "video": ("clip.mp4", b"not a video", "video/mp4")}
    err(client.post("/api/search", files=broken), 422, "clip.mp4")
    not_zip = {"tracks": parts["tracks"], "frames": ("f.zip", b"PK nope", "application/zip")}
    err(client.post("/api/search", files=not_zip), 422, "f.zip", "not a zip")
    latin = {**parts, "tracks": ("t.txt", "1,1,10,10,20,30\n\xe9".encode("latin-1"), "text/plain")}
    err(client.post("/api/search", files=latin), 422, "UTF-8")
    mixed = {**parts, "clip": (None, "0/1000")}
    err(client.post("/api/search", files=mixed), 422, "not both")


def test_upload_limits_are_413(small_client, world):
    clip = world["clips"][0]
    big = {"tracks": ("t.txt", b"1,1,10,10,20,30\n" * 30_000, "text/plain")}
    err(small_client.post("/api/search", files=big), 413, "larger than the upload limit of 400000")

    def chunks():  # no Content-Length: the body is cut while it streams in
        yield b"--x\r\nContent-Disposition: form-data; name=\"tracks\"; filename=\"t.txt\"\r\n\r\n"
        for _ in range(100):
            yield b"1,1,10,10,20,30\n" * 1000
    streamed = small_client.post("/api/search", content=chunks(),
                                 headers={"content-type": "multipart/form-data; boundary=x"})
    err(streamed, 413)
    frames = upload_parts(clip, "zip")  # 6 frames > 4
    err(small_client.post("/api/search", files=frames), 413, "6 frames", "limit of 4")
    video = upload_parts(clip, "mp4")
    err(small_client.post("/api/search", files=video), 413, "6 frames")
    tracks = "".join(f"1,{i},10,10,20,30\n" for i in range(5))  # 5 persons > 3
    few = {"tracks": ("t.txt", tracks.encode(), "text/plain"),
           "frames": ("f.zip", zip_of({"000001.png": png(np.zeros((96, 160, 3), np.uint8))}), "application/zip")}
    err(small_client.post("/api/search", files=few), 413, "more than 3 persons")
    bomb = {"tracks": ("t.txt", b"1,1,10,10,20,30\n", "text/plain"),
            "frames": ("f.zip", _deflated({"000001.png": b"\0" * 5_000_000}), "application/zip")}
    err(small_client.post("/api/search", files=bomb), 413, "expand to more than")


def _deflated(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


# --------------------------------------------------------------------------- writes

def test_writes_without_allow_writes_are_403(client, world):
    parts = upload_parts(world["clips"][0], "zip")
    err(client.post("/api/clips", files=parts, data={"name": "mine"}), 403, "--allow-writes")
    err(client.delete(f"/api/clips/{world['clips'][0].id}"), 403, "--allow-writes")
    assert client.get("/api/health").json()["clips"] == 24


def test_add_and_remove_clips_with_allow_writes(world, tmp_path):
    from stvh.index.base import load_index

    index = tmp_path / "index.npz"
    shutil.copy(world["index"], index)
    settings = ServeSettings(run=world["run"], index=index, allow_writes=True)
    data_files = sorted(p for p in Path(world["data"]).rglob("*") if p.is_file())
    clip = world["clips"][2]
    with TestClient(create_app(Service(settings)), base_url=BASE) as c:
        r = c.post("/api/clips", files=upload_parts(clip, "zip"), data={"name": "my-play", "group": "cam A"})
        assert r.status_code == 201, r.text
        new = r.json()
        assert new["id"] == "my-play/000001" and new["source"] == "upload" and new["group"] == "cam A"
        assert new["split"] == "upload" and new["persons"] == clip.num_persons and len(new["codes"]) == 3
        assert "my-play/000001" in load_index(index) and len(load_index(index)) == 25  # saved
        assert (tmp_path / "index.npz.uploads" / "my-play" / "tracks" / "my-play.txt").is_file()
        listed = c.get("/api/clips", params={"split": "upload"}).json()
        assert [x["id"] for x in listed["clips"]] == ["my-play/000001"]
        assert c.get("/api/clips/my-play/000001/keyframe.jpg").status_code == 200
        hits = c.post("/api/search", json={"clip": "my-play/000001", "k": 3}).json()["results"]
        assert len(hits) == 3
        err(c.post("/api/clips", files=upload_parts(clip, "zip"), data={"name": "my-play"}), 409, "taken")
        err(c.post("/api/clips", files=upload_parts(clip, "zip"), data={"name": "0"}), 409, "taken")
        err(c.post("/api/clips", files=upload_parts(clip, "zip"), data={"name": "../up"}), 422, "name")
        err(c.post("/api/clips", files=upload_parts(clip, "zip"), data={"group": "a,b"}), 422, "group")
        auto = c.post("/api/clips", files=upload_parts(clip, "mp4"))
        assert auto.status_code == 201 and auto.json()["id"].startswith("upload-")
        assert len(load_index(index)) == 26
    # a restart finds the uploaded clips again
    with TestClient(create_app(Service(settings)), base_url=BASE) as c:
        assert c.get("/api/clips/my-play/000001").json()["source"] == "upload"
        assert c.delete("/api/clips/my-play/000001").json() == {"removed": "my-play/000001", "clips": 25}
        assert "my-play/000001" not in load_index(index)
        assert not (tmp_path / "index.npz.uploads" / "my-play").exists()
        err(c.delete("/api/clips/my-play/000001"), 404, "not in the index")
        err(c.delete("/api/clips/..%2F..%2Fetc/passwd"), 422, "invalid clip id")
        gone = world["clips"][1].id
        assert c.delete(f"/api/clips/{gone}").status_code == 200  # a dataset clip leaves the index only
        assert gone not in load_index(index) and len(load_index(index)) == 24
    assert sorted(p for p in Path(world["data"]).rglob("*") if p.is_file()) == data_files
    assert not list((tmp_path / "index.npz.uploads").glob(".staging-*"))


# --------------------------------------------------------------------------- the command

def test_serve_command_errors_are_one_line(world, tmp_path):
    from typer.testing import CliRunner

    from stvh.cli import app

    def run(*args):
        r = CliRunner().invoke(app, ["serve", *[str(a) for a in args]])
        assert r.exit_code == 2, r.output
        assert r.output.count("\n") == 1 and r.output.startswith("error:"), r.output
        return r.output

    assert "missing.npz" in run("--run", world["run"], "--index", tmp_path / "missing.npz")
    assert "run.json" in run("--run", tmp_path, "--index", world["index"])
    from stvh.index.base import create_index
    other = create_index("numpy", 16, 3)
    other.save(tmp_path / "other.npz")
    assert "holds 16 bits" in run("--run", world["run"], "--index", tmp_path / "other.npz")
    assert "--port" in run("--run", world["run"], "--index", world["index"], "--port", "70000")
    assert "--max-frame-mp" in run("--run", world["run"], "--index", world["index"], "--max-frame-mp", "0")
    assert "--max-upload-mp" in run("--run", world["run"], "--index", world["index"], "--max-upload-mp", "-1")
    assert "--token" in run("--run", world["run"], "--index", world["index"], "--token", "short")


def test_an_uploaded_clip_gets_the_codes_of_stvh_encode(client, world):
    """The upload path (MOT folder -> reader -> Encoder) reproduces the model's codes of the dataset clip."""
    from stvh.index.codes import pack_codes

    encoder = client.app.state.service.encoder
    for clip in world["clips"][:3]:
        want = pack_codes(encoder.encode_clips([clip])["codes"][0])  # (depth, K/8)
        got = client.post("/api/search", files=upload_parts(clip, "zip"), data={"k": "1"}).json()["query"]["codes"]
        assert got == [bytes(c).hex() for c in want]
