"""The HTTP API of the Serve application in-process (FastAPI's test client over a real tiny model in this process,
the same code the Serve replicas run): answers, formats, every refused input with its status and code, and equality
with ``sgmg predict``. The same app behind real Ray Serve and real HTTP: ``test_serve_e2e.py``."""

from __future__ import annotations

import io
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from serve_fixtures import SHORT_SIDE, TEXT, frames_zip, gif_bytes, square_frames, write_mp4

from pipelines.serve.app import LocalBackend, create_api
from pipelines.serve.client import decode_mask
from pipelines.serve.runner import load_model
from pipelines.serve.settings import AppSettings, Limits
from sgmg.cli import main as sgmg_main

LIMITS = Limits(
    max_upload_bytes=2_000_000,
    max_frames=12,
    max_pixels_per_frame=200 * 200,
    max_expressions=3,
    max_text_chars=40,
    max_zip_entries=16,
    allowed_uri_prefixes=("file:///nonexistent-allowed/",),
)


@pytest.fixture(scope="module")
def loaded(serve_checkpoint: str):
    return load_model(serve_checkpoint)


@pytest.fixture(scope="module")
def client(loaded, serve_checkpoint: str) -> TestClient:
    settings = AppSettings(model_uri=serve_checkpoint, window=4, short_side=SHORT_SIDE, limits=LIMITS)
    return TestClient(create_api(settings, LocalBackend(loaded)))


@pytest.fixture(scope="module")
def mp4(tmp_path_factory) -> Path:
    return write_mp4(tmp_path_factory.mktemp("video") / "square.mp4", square_frames())


def _masks(body: dict, expression: int) -> np.ndarray:
    return np.stack([decode_mask(f["mask"]) for f in body["expressions"][expression]["frames"]])


def test_answer_has_every_frame_of_every_expression(client: TestClient, mp4: Path) -> None:
    r = client.post(
        "/v1/segment", files={"video": ("square.mp4", mp4.read_bytes())}, data={"text": [TEXT, "the dark background"]}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["video"] == {"num_frames": 6, "height": 72, "width": 96, "fps": 10.0}
    assert [e["text"] for e in body["expressions"]] == [TEXT, "the dark background"]
    for expr in body["expressions"]:
        assert [f["index"] for f in expr["frames"]] == list(range(6))
        for f in expr["frames"]:
            assert f["mask"]["size"] == [72, 96] and 0.0 < f["score"] < 1.0
            mask = decode_mask(f["mask"])
            if mask.any():
                ys, xs = np.nonzero(mask)
                assert f["box"] == [xs.min(), ys.min(), xs.max(), ys.max()]
            else:
                assert f["box"] is None
    assert set(body["timing_ms"]) == {"decode", "preprocess", "model", "encode", "total"}
    assert body["model"]["uri"] and "name" in body["model"]


def test_trained_model_finds_the_square(client: TestClient, mp4: Path) -> None:
    body = client.post("/v1/segment", files={"video": ("square.mp4", mp4.read_bytes())}, data={"text": TEXT}).json()
    gt = square_frames()[..., 0] > 200
    pred = _masks(body, 0)
    iou = (pred & gt).sum() / max((pred | gt).sum(), 1)
    assert iou > 0.5, iou


def test_masks_equal_sgmg_predict(client: TestClient, mp4: Path, serve_checkpoint: str, tmp_path: Path) -> None:
    """The same checkpoint, file, sentences and threshold give the same masks, bit for bit (one and two sentences)."""
    texts = [TEXT, "the dark background"]
    for n in (1, 2):
        out = tmp_path / f"predict{n}"
        args = ["predict", str(mp4), *texts[:n], "--checkpoint", serve_checkpoint, "--out", str(out)]
        assert sgmg_main([*args, "--short-side", str(SHORT_SIDE), "--window", "4", "--threshold", "0.4"]) == 0
        data = {"text": texts[:n], "threshold": "0.4"}
        body = client.post("/v1/segment", files={"video": ("square.mp4", mp4.read_bytes())}, data=data).json()
        for e in range(n):
            folder = out if n == 1 else out / str(e)
            pngs = sorted((folder / "masks").glob("*.png"))
            expected = np.stack([np.asarray(Image.open(p)) > 127 for p in pngs])
            np.testing.assert_array_equal(_masks(body, e), expected)


def test_png_zip_holds_the_same_masks(client: TestClient, mp4: Path) -> None:
    data = {"text": [TEXT, "the dark background"]}
    files = {"video": ("square.mp4", mp4.read_bytes())}
    body = client.post("/v1/segment", files=files, data=data).json()
    r = client.post("/v1/segment", files=files, data={**data, "return": "png_zip"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
        assert sorted(zf.namelist()) == sorted(f"{e}/{i}.png" for e in range(2) for i in range(6))
        for e in range(2):
            pngs = [np.asarray(Image.open(io.BytesIO(zf.read(f"{e}/{i}.png")))) for i in range(6)]
            assert all(set(np.unique(p)) <= {0, 255} for p in pngs)
            np.testing.assert_array_equal(np.stack(pngs) > 127, _masks(body, e))


@pytest.mark.parametrize("kind", ["zip_png", "zip_jpeg", "gif", "webm"])
def test_other_video_formats(client: TestClient, tmp_path: Path, kind: str) -> None:
    frames = square_frames()
    if kind == "zip_png":
        payload, name = frames_zip(frames), "frames.zip"
    elif kind == "zip_jpeg":
        payload, name = frames_zip(frames, "JPEG"), "frames.zip"
    elif kind == "gif":
        payload, name = gif_bytes(frames), "clip.gif"
    else:
        payload, name = write_mp4(tmp_path / "clip.webm", frames, codec="libvpx-vp9").read_bytes(), "clip.webm"
    r = client.post("/v1/segment", files={"video": (name, payload)}, data={"text": TEXT})
    assert r.status_code == 200, r.text
    assert r.json()["video"]["num_frames"] == 6 and len(r.json()["expressions"][0]["frames"]) == 6


def test_zip_frames_are_taken_in_name_order(client: TestClient) -> None:
    frames = square_frames()
    names = [f"f{i:02d}.png" for i in range(6)]
    shuffled = [5, 2, 0, 4, 1, 3]
    payload = frames_zip(frames[shuffled], names=[names[i] for i in shuffled])
    a = client.post("/v1/segment", files={"video": ("a.zip", payload)}, data={"text": TEXT}).json()
    b = client.post("/v1/segment", files={"video": ("b.zip", frames_zip(frames))}, data={"text": TEXT}).json()
    np.testing.assert_array_equal(_masks(a, 0), _masks(b, 0))


def test_health_model_page_and_openapi(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    info = client.get("/v1/model").json()
    assert info["variant"] == "sgmg_tiny" and info["parameters"] > 0 and info["loaded_at"]
    page = client.get("/")
    assert page.status_code == 200 and "v1/segment" in page.text and "<canvas" in page.text
    spec = client.get("/openapi.json").json()
    assert "multipart/form-data" in spec["paths"]["/v1/segment"]["post"]["requestBody"]["content"]
    assert client.get("/docs").status_code == 200


def test_health_is_503_before_the_model_is_loaded(serve_checkpoint: str) -> None:
    app = create_api(AppSettings(model_uri=serve_checkpoint))
    c = TestClient(app)
    assert c.get("/healthz").status_code == 503
    r = c.get("/v1/model")
    assert r.status_code == 503 and r.json()["error"]["code"] == "model_loading"


# ------------------------------------------------------------------------------------------------ bad inputs


def _zip(entries: list[tuple[str, bytes]], link: str | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries:
            zf.writestr(name, data)
        if link:
            info = zipfile.ZipInfo(link)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
    return buf.getvalue()


def _png(h: int = 32, w: int = 32) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _video(mp4: Path) -> dict:
    return {"video": ("square.mp4", mp4.read_bytes())}


# (case id, files(mp4) -> files, data, expected status, expected code)
BAD = [
    ("no video", lambda m: None, {"text": TEXT}, 400, "missing_video"),
    ("video and uri", _video, {"text": TEXT, "video_uri": "file:///nonexistent-allowed/a.mp4"}, 400, "ambiguous_video"),
    ("video as text field", lambda m: None, {"text": TEXT, "video": "abc"}, 400, "invalid_video"),
    ("empty file", lambda m: {"video": ("v.mp4", b"")}, {"text": TEXT}, 400, "empty_video"),
    (
        "not a video",
        lambda m: {"video": ("v.mp4", b"hello, this is not a video" * 10)},
        {"text": TEXT},
        400,
        "unreadable_video",
    ),
    ("corrupt zip", lambda m: {"video": ("v.zip", b"PK\x03\x04garbage")}, {"text": TEXT}, 400, "unreadable_video"),
    ("zip without frames", lambda m: {"video": ("v.zip", _zip([("dir/", b"")]))}, {"text": TEXT}, 400, "empty_video"),
    (
        "too many frames",
        lambda m: {"video": ("v.zip", frames_zip(square_frames(t=13)))},
        {"text": TEXT},
        413,
        "too_many_frames",
    ),
    (
        "frame too large",
        lambda m: {"video": ("v.zip", _zip([("a.png", _png(201, 201))]))},
        {"text": TEXT},
        413,
        "frame_too_large",
    ),
    ("no text", _video, {}, 400, "missing_text"),
    ("blank text", _video, {"text": "   "}, 400, "empty_text"),
    ("text too long", _video, {"text": "x" * 41}, 400, "text_too_long"),
    ("too many expressions", _video, {"text": ["a", "b", "c", "d"]}, 400, "too_many_expressions"),
    ("threshold above 1", _video, {"text": TEXT, "threshold": "1.5"}, 400, "invalid_threshold"),
    ("threshold not a number", _video, {"text": TEXT, "threshold": "high"}, 400, "invalid_threshold"),
    ("threshold nan", _video, {"text": TEXT, "threshold": "nan"}, 400, "invalid_threshold"),
    ("two thresholds", _video, {"text": TEXT, "threshold": ["0.2", "0.3"]}, 400, "duplicate_threshold"),
    ("unknown return", _video, {"text": TEXT, "return": "xml"}, 400, "invalid_return"),
    ("unknown field", _video, {"text": TEXT, "txt": "typo"}, 400, "unknown_field"),
    (
        "zip with ..",
        lambda m: {"video": ("v.zip", _zip([("../evil.png", _png())]))},
        {"text": TEXT},
        400,
        "zip_unsafe_path",
    ),
    (
        "zip absolute path",
        lambda m: {"video": ("v.zip", _zip([("/abs.png", _png())]))},
        {"text": TEXT},
        400,
        "zip_unsafe_path",
    ),
    (
        "zip link",
        lambda m: {"video": ("v.zip", _zip([("a.png", _png())], link="b.png"))},
        {"text": TEXT},
        400,
        "zip_link",
    ),
    (
        "zip too many entries",
        lambda m: {"video": ("v.zip", _zip([(f"{i}.png", _png()) for i in range(17)]))},
        {"text": TEXT},
        413,
        "zip_too_many_entries",
    ),
    (
        "zip non-image",
        lambda m: {"video": ("v.zip", _zip([("a.png", _png()), ("notes.txt", b"x")]))},
        {"text": TEXT},
        400,
        "zip_not_image",
    ),
    (
        "zip mixed sizes",
        lambda m: {"video": ("v.zip", _zip([("a.png", _png()), ("b.png", _png(16, 16))]))},
        {"text": TEXT},
        400,
        "frame_size_mismatch",
    ),
    ("uri outside prefixes", lambda m: None, {"text": TEXT, "video_uri": "file:///etc/passwd"}, 403, "uri_not_allowed"),
    (
        "uri with .. escape",
        lambda m: None,
        {"text": TEXT, "video_uri": "file:///nonexistent-allowed/../etc/passwd"},
        403,
        "uri_not_allowed",
    ),
    (
        "uri other scheme",
        lambda m: None,
        {"text": TEXT, "video_uri": "http://127.0.0.1/a.mp4"},
        400,
        "invalid_uri_scheme",
    ),
    (
        "uri names nothing",
        lambda m: None,
        {"text": TEXT, "video_uri": "file:///nonexistent-allowed/a.mp4"},
        404,
        "video_not_found",
    ),
    (
        "two video files",
        lambda m: [("video", ("a.mp4", b"1")), ("video", ("b.mp4", b"2"))],
        {"text": TEXT},
        400,
        "bad_multipart",
    ),
]


@pytest.mark.parametrize(("files", "data", "status", "code"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_gets_a_4xx_that_names_the_problem(client: TestClient, mp4: Path, files, data, status, code) -> None:
    parts = files(mp4)
    r = _post_multipart_fields(client, data) if parts is None else client.post("/v1/segment", files=parts, data=data)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["message"], err


def _post_multipart_fields(client: TestClient, data: dict):
    """A multipart/form-data body with plain fields only (the test client sends url-encoded forms otherwise)."""
    boundary = "sgmgtestboundary"
    chunks = []
    for key, values in data.items():
        for value in values if isinstance(values, list) else [values]:
            chunks.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n')
    body = ("".join(chunks) + f"--{boundary}--\r\n").encode()
    return client.post(
        "/v1/segment", content=body, headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}
    )


def test_wrong_content_type_is_415(client: TestClient) -> None:
    r = client.post("/v1/segment", json={"text": TEXT})
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"


def test_announced_body_over_the_limit_is_413_before_reading(client: TestClient) -> None:
    headers = {"Content-Type": "multipart/form-data; boundary=x", "Content-Length": str(LIMITS.max_upload_bytes + 1)}
    r = client.post("/v1/segment", content=b"--x--\r\n", headers=headers)
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"


def test_chunked_body_over_the_limit_is_413(client: TestClient) -> None:
    def chunks():
        yield b'--x\r\nContent-Disposition: form-data; name="video"; filename="a.mp4"\r\n\r\n'
        for _ in range(LIMITS.max_upload_bytes // 65536 + 2):
            yield b"\0" * 65536

    r = client.post("/v1/segment", content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=x"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"


def test_unknown_route_and_wrong_method(client: TestClient) -> None:
    r = client.get("/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = client.get("/v1/segment")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


def test_an_internal_error_is_a_500_with_a_request_id(loaded, serve_checkpoint: str, mp4: Path, caplog) -> None:
    class Broken(LocalBackend):
        async def segment(self, job):
            raise RuntimeError("the replica died")

    c = TestClient(create_api(AppSettings(model_uri=serve_checkpoint, short_side=SHORT_SIDE), Broken(loaded)))
    r = c.post("/v1/segment", files=_video(mp4), data={"text": TEXT})
    assert r.status_code == 500
    err = r.json()["error"]
    assert err["code"] == "internal_error" and err["request_id"] in err["message"]
    assert any(err["request_id"] in rec.getMessage() for rec in caplog.records)


class _SlowBackend(LocalBackend):
    """A model that takes ``delay`` seconds per window on its first ``slow`` windows."""

    def __init__(self, loaded, delay: float, slow: int) -> None:
        super().__init__(loaded)
        self.delay, self.slow = delay, slow

    async def segment(self, job):
        import asyncio

        if self.slow > 0:
            self.slow -= 1
            await asyncio.sleep(self.delay)
        return await super().segment(job)


def test_a_request_over_the_timeout_is_a_504_and_the_next_one_is_answered(loaded, serve_checkpoint, mp4) -> None:
    limits = Limits(request_timeout_s=0.5)
    settings = AppSettings(model_uri=serve_checkpoint, window=4, short_side=SHORT_SIDE, limits=limits)
    slow = TestClient(create_api(settings, _SlowBackend(loaded, delay=3.0, slow=1)))
    files = {"video": ("square.mp4", mp4.read_bytes())}
    r = slow.post("/v1/segment", files=files, data={"text": TEXT})
    assert r.status_code == 504 and r.json()["error"]["code"] == "timeout", r.text
    assert "0.5 s" in r.json()["error"]["message"]
    r = slow.post("/v1/segment", files=files, data={"text": TEXT})
    assert r.status_code == 200, r.text
