"""``stvh serve`` exposed on a LAN: hostile uploads, cross-origin writes, Host names, headers, errors.

* an image bomb (a 12000 x 12000 PNG of a few KB in a zip) and a video of
  12000 x 12000 frames get 413 before a pixel is decoded, and the server's
  resident memory (a real ``stvh serve`` process, its peak from
  ``/proc/PID/status``) grows by less than 300 MB;
* writes from another origin are refused (403) unless they carry the token;
  a ``Host`` that is not the service's is refused (DNS rebinding);
* every answer has nosniff, a CSP of ``default-src 'self'`` with
  ``frame-ancestors 'none'`` and a Referrer-Policy;
* JSON nested deeper than 32 levels, non-integer ``k`` / ``focus`` and an
  unexpected exception all get a JSON 4xx; no error names a server path.
"""

from __future__ import annotations

import io
import shutil
import socket
import struct
import subprocess
import sys
import time
import zlib
from fractions import Fraction
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from stvh.serve import ServeSettings, UploadLimits, create_app  # noqa: E402
from stvh.serve.security import allowed_hosts, json_depth, scrub_paths  # noqa: E402
from stvh.serve.service import Service  # noqa: E402
from test_serve_api import BASE, err, upload_parts, zip_of  # noqa: E402

TOKEN = "a-token-for-tests-0123456789"
TRACKS = ("tracks.txt", b"1,1,10,10,20,30,1\n1,2,40,10,20,30,1\n", "text/plain")  # two persons in frame 1
SERVE_FLAGS: list[str] = []  # e.g. ["--max-frame-mp", "1000", "--max-upload-mp", "100000"] to see the bomb land


def png_bomb(width: int, height: int, truncated: bool = False) -> bytes:
    """A black 1-bit PNG of ``width`` x ``height``: a few KB on disk, ``3 w h`` bytes once decoded to RGB."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + the row's bits
    idat = b"garbage" if truncated else zlib.compress(row * height, 9)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def video_bomb(width: int, height: int, frames: int = 3) -> bytes:
    """A .mov whose PNG-coded frames are ``width`` x ``height`` (muxed without encoding: tens of KB)."""
    import av

    png = png_bomb(width, height)
    buf = io.BytesIO()
    with av.open(buf, "w", format="mov") as c:
        stream = c.add_stream("png", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "monob"
        for i in range(frames):
            packet = av.Packet(png)
            packet.stream, packet.pts, packet.dts, packet.time_base = stream, i, i, Fraction(1, 25)
            c.mux(packet)
    return buf.getvalue()


def bomb_zip(width: int = 12000, height: int = 12000, truncated: bool = False) -> tuple:
    return ("frames.zip", zip_of({"000001.png": png_bomb(width, height, truncated)}), "application/zip")


@pytest.fixture(scope="module")
def secure(serve_world, tmp_path_factory):
    """A service with writes allowed (on a copy of the index) and a known token."""
    tmp = tmp_path_factory.mktemp("secure")
    shutil.copy(serve_world["index"], tmp / "index.npz")
    settings = ServeSettings(run=serve_world["run"], index=tmp / "index.npz", allow_writes=True, token=TOKEN,
                             uploads=tmp / "uploads")
    service = Service(settings)
    with TestClient(create_app(service), base_url=BASE) as c:
        yield c, service


@pytest.fixture(scope="module")
def client(secure):
    return secure[0]


# --------------------------------------------------------------------------- hostile uploads

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads /proc/PID/status (Linux)")
def test_image_bomb_and_huge_video_keep_the_servers_memory_bounded(serve_world, tmp_path):
    import httpx

    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "stvh.cli", "serve", "--run", str(serve_world["run"]),
                             "--index", str(serve_world["index"]), "--port", str(port), *SERVE_FLAGS],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=120) as http:
            deadline = time.time() + 120
            while True:
                try:
                    if http.get("/api/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert proc.poll() is None and time.time() < deadline, proc.stdout.read().decode()[-2000:]
                time.sleep(0.3)
            # warm up every code path of an upload (imports, the model) with a good clip and an unreadable one
            ok = http.post("/api/search", files=upload_parts(serve_world["clips"][0], "zip"))
            assert ok.status_code == 200, ok.text
            http.post("/api/search", files={"tracks": TRACKS, "video": ("v.mov", b"not a video", "video/mp4")})
            clear = Path(f"/proc/{proc.pid}/clear_refs")
            clear.write_text("5")  # the peak (VmHWM) starts again from the current resident size
            before = _kib(proc.pid, "VmRSS")
            answers = [http.post("/api/search", files={"tracks": TRACKS, "frames": bomb_zip()}),
                       http.post("/api/search", files={"tracks": TRACKS, "video": ("huge.mov", video_bomb(12000, 12000),
                                                                                 "video/quicktime")}),
                       http.post("/api/search", files={"tracks": TRACKS, "frames": bomb_zip()})]
            for r in answers:  # what the page asks next of an accepted upload: its pictures, decoded
                if r.status_code == 200:
                    token = r.json()["query"]["token"]
                    http.get(f"/api/queries/{token}/keyframe.jpg")
                    http.get(f"/api/queries/{token}/preview.webp")
            peak = _kib(proc.pid, "VmHWM")
    finally:
        proc.terminate()
        proc.wait(20)
    growth_mb = (peak - before) / 1024
    print(f"resident growth on hostile uploads: {growth_mb:.0f} MB")
    for r in answers:
        assert r.status_code == 413 and r.json()["error"] == "too_large", r.text[:300]
        assert "12000x12000 = 144,000,000 pixels" in r.json()["detail"] and "--max-frame-mp" in r.json()["detail"]
    assert growth_mb < 300, f"the server grew by {growth_mb:.0f} MB on hostile uploads"


def test_pixel_limits_are_413_from_headers(client, serve_world, secure):
    r = client.post("/api/search", files={"tracks": TRACKS, "frames": bomb_zip()})
    err(r, 413, "frames.zip: frame '000001.png' is 12000x12000 = 144,000,000 pixels",
        "limit of 8,300,000 pixels per frame (--max-frame-mp)")
    # the header alone decides: a bomb whose pixel data is garbage is still 413, not an unreadable image (422)
    err(client.post("/api/search", files={"tracks": TRACKS, "frames": bomb_zip(truncated=True)}), 413, "--max-frame-mp")
    # over twice PIL's own limit, PIL refuses to open it at all: still a JSON 413, never a 500
    err(client.post("/api/search", files={"tracks": TRACKS, "frames": bomb_zip(14000, 14000, truncated=True)}), 413,
        "decompression bomb")
    huge = {"tracks": TRACKS, "video": ("huge.mov", video_bomb(9000, 1000), "video/quicktime")}
    err(client.post("/api/search", files=huge), 413, "huge.mov: a frame of the video stream is 9000x1000 = 9,000,000")


def test_pixel_limits_follow_the_settings(serve_world):
    clip = serve_world["clips"][0]  # 6 frames of 160 x 96 = 15,360 pixels
    for limits, words in ((UploadLimits(max_frame_pixels=15_359), ["160x96 = 15,360 pixels", "15,359"]),
                          (UploadLimits(max_upload_pixels=5 * 15_360 + 1),
                           ["more than the limit of 76,801 pixels in all (--max-upload-mp)"])):
        service = Service(ServeSettings(run=serve_world["run"], index=serve_world["index"], limits=limits))
        with TestClient(create_app(service), base_url=BASE) as c:
            err(c.post("/api/search", files=upload_parts(clip, "zip")), 413, *words)
            err(c.post("/api/search", files=upload_parts(clip, "mp4")), 413, *words[:1])
    ok = UploadLimits(max_frame_pixels=15_360, max_upload_pixels=6 * 15_360)  # exactly at both limits
    service = Service(ServeSettings(run=serve_world["run"], index=serve_world["index"], limits=ok))
    with TestClient(create_app(service), base_url=BASE) as c:
        assert c.post("/api/search", files=upload_parts(clip, "zip")).status_code == 200


# --------------------------------------------------------------------------- writes and hosts

def test_cross_origin_writes_are_refused(secure, serve_world):
    client, service = secure
    clip = serve_world["clips"][1]
    n = len(service.index)
    evil = {"origin": "http://evil.example"}
    body = err(client.post("/api/clips", files=upload_parts(clip, "zip"), data={"name": "evil1"}, headers=evil),
               403, "another origin", "http://evil.example", "Bearer")
    assert body["error"] == "forbidden" and len(service.index) == n
    err(client.delete(f"/api/clips/{clip.id}", headers=evil), 403, "another origin")
    err(client.delete(f"/api/clips/{clip.id}", headers={"origin": "null"}), 403)
    err(client.delete(f"/api/clips/{clip.id}", headers={"origin": "http://127.0.0.1:8001"}), 403)  # another port
    err(client.delete(f"/api/clips/{clip.id}", headers={"sec-fetch-site": "cross-site"}), 403, "cross-site")
    err(client.delete(f"/api/clips/{clip.id}", headers={**evil, "authorization": "Bearer wrong-token-123456"}), 403,
        "token is wrong")
    assert len(service.index) == n and clip.id in service.index
    # a search is no write: any origin may search
    assert client.post("/api/search", json={"clip": clip.id, "k": 2}, headers=evil).status_code == 200
    # the page's own origin writes; so does a client of another origin with the token
    added = client.post("/api/clips", files=upload_parts(clip, "zip"), data={"name": "mine"},
                        headers={"origin": BASE, "sec-fetch-site": "same-origin"})
    assert added.status_code == 201, added.text
    with_token = client.post("/api/clips", files=upload_parts(clip, "zip"), data={"name": "tok"},
                             headers={**evil, "authorization": f"Bearer {TOKEN}"})
    assert with_token.status_code == 201, with_token.text
    assert len(service.index) == n + 2
    assert client.delete(f"/api/clips/{added.json()['id']}", headers={"x-stvh-token": TOKEN}).status_code == 200
    assert client.delete(f"/api/clips/{with_token.json()['id']}", headers={"origin": BASE}).status_code == 200
    assert len(service.index) == n


def test_host_names_are_checked(secure, serve_world):
    client, _ = secure
    err(client.get("/api/health", headers={"host": "evil.example:8000"}), 400, "'evil.example'", "--allowed-host")
    for host in ("localhost:8000", "127.0.0.1", "[::1]:8000", "192.168.1.77:8000", "[fe80::1]"):  # addresses: any
        assert client.get("/api/health", headers={"host": host}).status_code == 200, host
    named = ServeSettings(run=serve_world["run"], index=serve_world["index"], allowed_hosts=("stvh.lan",))
    with TestClient(create_app(Service(named)), base_url="http://stvh.lan:8000") as c:
        assert c.get("/api/health").status_code == 200
        assert c.get("/api/health", headers={"host": "other.lan"}).status_code == 400
    assert allowed_hosts("127.0.0.1", ["*"]) is None
    assert socket.gethostname().lower() in allowed_hosts("0.0.0.0")
    assert socket.gethostname().lower() not in allowed_hosts("127.0.0.1") or socket.gethostname() == "localhost"
    err(client.get("/api/health", headers={"host": "127.0.0.1.evil.example"}), 400)  # a name, not an address


def test_security_headers_on_every_answer(client):
    answers = [client.get("/"), client.get("/api/health"), client.get("/api/clips/0/9999"), client.get("/docs"),
               client.get("/static/app.js"), client.post("/api/search", json={"k": 1}), client.get("/nowhere"),
               client.get("/api/health", headers={"host": "evil.example"})]
    for r in answers:
        h = r.headers
        assert h["x-content-type-options"] == "nosniff" and h["referrer-policy"] == "no-referrer", r.url
        csp = h["content-security-policy"]
        assert csp.startswith("default-src 'self'") and "frame-ancestors 'none'" in csp, (r.url, csp)
        assert "http:" not in csp and "https:" not in csp and "unsafe-eval" not in csp
    assert "unsafe-inline" not in answers[0].headers["content-security-policy"]  # the page has no inline code


def test_the_write_token_is_printed_at_start(serve_world, monkeypatch):
    import uvicorn

    from stvh.serve.run import serve

    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: None)
    lines: list[str] = []
    serve(ServeSettings(run=serve_world["run"], index=serve_world["index"], allow_writes=True, token=TOKEN),
          echo=lines.append)
    assert any(f"Authorization: Bearer {TOKEN}" in line for line in lines), lines
    lines.clear()
    serve(ServeSettings(run=serve_world["run"], index=serve_world["index"], allow_writes=True), echo=lines.append)
    made = [line.split("Bearer ")[1].rstrip("'") for line in lines if "Bearer " in line]
    assert len(made) == 1 and len(made[0]) >= 24  # a new random token each start
    lines.clear()
    serve(ServeSettings(run=serve_world["run"], index=serve_world["index"]), echo=lines.append)
    assert not any("Bearer" in line for line in lines)  # read-only: no token to give


# --------------------------------------------------------------------------- errors

def test_json_depth_counts_outside_strings():
    assert json_depth(b'{"a": "[[[{{", "b": [1, {"c": []}]}') == 4  # { [ { [
    assert json_depth(b'"\\"[[" ') == 0 and json_depth(b"[[[") == 3 and json_depth(b"") == 0
    assert json_depth(b'[["]]]]"]]') == 2


def test_deep_large_and_strictly_typed_json(client):
    err(client.post("/api/search", content=b"[" * 200_000, headers={"content-type": "application/json"}), 422,
        "nested more than 32")
    deep33 = b'{"codes": ' + b"[" * 32 + b"]" * 32 + b"}"
    err(client.post("/api/search", content=deep33, headers={"content-type": "application/json"}), 422, "nested")
    deep32 = b'{"codes": ' + b"[" * 31 + b"]" * 31 + b"}"
    assert "nested" not in err(client.post("/api/search", content=deep32,
                                           headers={"content-type": "application/json"}), 422)["detail"]
    big = b'{"clip": "' + b"x" * (1 << 20) + b'"}'
    err(client.post("/api/search", content=big, headers={"content-type": "application/json"}), 413, "1048576 bytes")
    for body, word in (({"clip": "0/1000", "k": True}, "k"), ({"clip": "0/1000", "k": "5"}, "k"),
                       ({"clip": "0/1000", "k": 5.0}, "k"), ({"clip": "0/1000", "focus": True}, "focus"),
                       ({"clip": "0/1000", "focus": "2"}, "focus"), ({"clip": "0/1000", "k": 10_001}, "10000")):
        err(client.post("/api/search", json=body), 422, word)
    good = client.post("/api/search", json={"clip": "0/1000", "k": 5, "focus": 2}).json()
    assert (good["k"], good["focus"], len(good["results"])) == (5, 2, 5)
    form = client.post("/api/search", data={"clip": "0/1000", "k": "3", "focus": "1"})  # a form's fields are text
    assert form.status_code == 200 and (form.json()["k"], form.json()["focus"]) == (3, 1)
    err(client.post("/api/search", data={"clip": "0/1000", "k": "3.5"}), 422, "k")


def test_unexpected_errors_are_json_4xx_without_details(secure, monkeypatch):
    client, service = secure

    def broken(**_):
        raise RuntimeError("/srv/secret/index.npz exploded")

    monkeypatch.setattr(service, "search", broken)
    body = err(client.post("/api/search", json={"clip": "0/1000"}), 400, "incident", "RuntimeError")
    assert "secret" not in body["detail"] and "exploded" not in body["detail"]

    def hungry(**_):
        raise MemoryError

    monkeypatch.setattr(service, "search", hungry)
    err(client.post("/api/search", json={"clip": "0/1000"}), 413, "memory")


def test_no_server_paths_in_error_bodies(client, tmp_path, monkeypatch):
    assert scrub_paths("cannot decode /tmp/stvh-query-1a/frames/q/000001.png (OSError)") == \
        "cannot decode 000001.png (OSError)"
    assert scrub_paths("C:\\Users\\me\\idx.npz: bad; '/work/data/x/' gone") == "idx.npz: bad; 'x' gone"
    kept = "clip '0/1000' of /api/clips/{id}: VIDEO/CLIP, 1/2 of it"
    assert scrub_paths(kept) == kept
    from stvh.serve.service import ServiceError

    def missing(clip_id):  # a message that names a server file, as a reader's error would
        raise ServiceError(404, f"{tmp_path}/data/videos/0/1000/1001.jpg: frame image not found")

    monkeypatch.setattr(client.app.state.service, "clip_detail", missing)
    body = err(client.get("/api/clips/0/1000"), 404, "1001.jpg: frame image not found")
    assert str(tmp_path) not in body["detail"] and "videos/0" not in body["detail"], body["detail"]


def test_tracks_files_are_bounded_in_bytes_and_rows(serve_world):
    """A tracks file holds at most --max-frames x --max-persons rows: a 58 MB one took the server 900 MB."""
    limits = UploadLimits(max_frames=100, max_persons=100)  # 10,000 rows, 1,280,000 bytes
    service = Service(ServeSettings(run=serve_world["run"], index=serve_world["index"], limits=limits))
    frame = ("frames.zip", zip_of({"000001.png": png_bomb(160, 96)}), "application/zip")
    with TestClient(create_app(service), base_url=BASE) as c:
        big = b"1,1,10.000,10.000,20.000,30.000,1,-1,-1,-1\n" * 30_000  # 1,320,000 bytes
        err(c.post("/api/search", files={"tracks": ("t.txt", big, "text/plain"), "frames": frame}), 413,
            "t.txt is larger than the limit of 1280000 bytes for a tracks file", "--max-frames x --max-persons")
        rows = b"1,1,10,10,20,30\n" * 10_001  # small enough in bytes, one row too many
        err(c.post("/api/search", files={"tracks": ("t.txt", rows, "text/plain"), "frames": frame}), 413,
            "more than 10000 rows")
        fine = b"1,1,10,10,20,30\n" * 10_000  # at the limit: on to the reader (which finds the rows repeated)
        assert "rows" not in c.post("/api/search", files={"tracks": ("t.txt", fine, "text/plain"),
                                                          "frames": frame}).json().get("detail", "")


def test_the_picture_cache_is_bounded_in_bytes():
    from stvh.serve.images import BytesCache

    cache = BytesCache(size=100, max_bytes=1000)
    for i in range(5):
        cache.get(("c", i), lambda: b"x" * 300)
    assert cache.nbytes == 900 and sorted(k[1] for k in cache._items) == [2, 3, 4]  # the oldest went first
    cache.get(("c", 2), lambda: b"never made")  # a hit: 2 is now the newest
    cache.get(("d", 0), lambda: b"y" * 250)
    assert sorted(cache._items) == [("c", 2), ("c", 4), ("d", 0)] and cache.nbytes == 850
    assert cache.get(("big", 0), lambda: b"z" * 1001) == b"z" * 1001 and ("big", 0) not in cache._items
    cache.drop("c")
    assert list(cache._items) == [("d", 0)] and cache.nbytes == 250
