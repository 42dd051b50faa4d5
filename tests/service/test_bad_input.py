"""Every kind of bad input, table-driven, against the real gateway (embedded backend).

Each case checks the status AND the JSON error code; afterwards a good request still works,
so one bad client never takes the process down for the others.
"""

from __future__ import annotations

import base64
import io
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from service.app import create_app
from service.state import state_of
from tests.service.conftest import SIDE, LiveServer, gateway_settings, png, random_images
from tests.service.conftest import serving as serve_app
from tests.service.test_api import DoubleBackend

LIMIT_BYTES = 256 * 1024  # gateway_settings(max_upload_bytes=...)
MAX_IMAGES = 8  # gateway_settings(max_images_per_request=...)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _encoded(pixels: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


GOOD = png(random_images(1, seed=11)[0])
NOISE = _encoded(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8), "PNG")
ZERO_SIZED = (
    b"\x89PNG\r\n\x1a\n"
    + _chunk(b"IHDR", struct.pack(">IIBBBBB", 0, 10, 8, 2, 0, 0, 0))
    + _chunk(b"IDAT", zlib.compress(b""))
    + _chunk(b"IEND", b"")
)
TIFF = _encoded(np.zeros((20, 20, 3), np.uint8), "TIFF")
HUGE_PIXELS = _encoded(np.zeros((1000, 1100, 3), np.uint8), "PNG")  # 1.1 MP > 1 MP, ~3 KiB
OVERSIZED = GOOD + b"\0" * (LIMIT_BYTES + 1)  # a valid PNG with junk after it


def raw(data: bytes, content_type: str = "image/png") -> dict[str, Any]:
    return {"content": data, "headers": {"content-type": content_type}}


def files(*blobs: bytes) -> dict[str, Any]:
    return {"files": [("images", (f"{i}.png", b, "image/png")) for i, b in enumerate(blobs)]}


class _Chunks:
    """A body httpx sends chunked (no Content-Length), and can send again for the next case."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __iter__(self) -> Iterator[bytes]:
        for i in range(0, len(self.data), 16 * 1024):
            yield self.data[i : i + 16 * 1024]


def chunked(data: bytes) -> dict[str, Any]:
    return {"content": _Chunks(data), "headers": {"content-type": "image/png"}}


CASES: list[tuple[str, dict[str, Any], str, int, str]] = [
    # id, request kwargs, query, status, error code
    ("empty-body", raw(b""), "", 400, "empty_image"),
    ("not-an-image", raw(b"hello, this is text"), "", 400, "not_an_image"),
    ("truncated", raw(NOISE[: len(NOISE) // 2]), "", 400, "truncated_image"),
    ("zero-sized", raw(ZERO_SIZED), "", 400, "zero_sized_image"),
    ("format-not-allowed", raw(TIFF, "image/tiff"), "", 400, "unsupported_format"),
    ("too-many-multipart", files(*[GOOD] * (MAX_IMAGES + 1)), "", 400, "too_many_images"),
    (
        "too-many-json",
        {"json": {"images": [base64.b64encode(GOOD).decode()] * (MAX_IMAGES + 1)}},
        "",
        400,
        "too_many_images",
    ),
    ("bad-base64", {"json": {"images": ["not base64!!"]}}, "", 400, "bad_base64"),
    ("bad-json", raw(b"{nope", "application/json"), "", 400, "bad_request"),
    ("json-wrong-shape", {"json": {"image": "x"}}, "", 400, "bad_request"),
    (
        "multipart-no-image",
        {"files": [("other", ("a.png", GOOD, "image/png"))]},
        "",
        400,
        "empty_image",
    ),
    ("one-bad-among-good", files(GOOD, b"junk"), "", 400, "not_an_image"),
    ("upload-too-large-declared", raw(OVERSIZED), "", 413, "upload_too_large"),
    ("upload-too-large-chunked", chunked(OVERSIZED), "", 413, "upload_too_large"),
    ("upload-too-large-multipart", files(OVERSIZED), "", 413, "upload_too_large"),
    ("image-too-many-pixels", raw(HUGE_PIXELS), "", 413, "image_too_large"),
    ("text-plain", raw(b"hello", "text/plain"), "", 415, "unsupported_media_type"),
    ("no-content-type", {"content": GOOD}, "", 415, "unsupported_media_type"),
    ("top-k-zero", raw(GOOD), "top_k=0", 422, "invalid_parameter"),
    ("top-k-not-int", raw(GOOD), "top_k=abc", 422, "invalid_parameter"),
    ("top-k-over-classes", raw(GOOD), "top_k=11", 422, "invalid_parameter"),
]


@pytest.fixture(scope="module")
def inline_gateway() -> Iterator[LiveServer]:
    """The same limits, with small images decoded on the event loop instead of the pool."""
    settings = gateway_settings(Path("unused"), inline_decode_max_pixels=2_000_000)
    with serve_app(create_app(settings, backend=DoubleBackend())) as live:
        yield live


@pytest.fixture(params=["embedded_gateway", "inline_gateway"], ids=["pool", "inline"])
def gateway(request: pytest.FixtureRequest) -> LiveServer:
    live: LiveServer = request.getfixturevalue(request.param)
    return live


@pytest.mark.parametrize(
    ("kwargs", "query", "status", "code"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_bad_input_is_refused_with_status_and_code(
    gateway: LiveServer, kwargs: dict[str, Any], query: str, status: int, code: str
) -> None:
    with httpx.Client(base_url=gateway.url, timeout=20) as client:
        r = client.post(f"/v1/classify?{query}", **kwargs)
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"] == code, body
    assert body["detail"] and body["request_id"] == r.headers["x-request-id"]
    if status == 422:
        assert "top_k" in body["detail"]


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("not base64!!", "character '!' at position 10 is not in the base64 alphabet"),
        ("QUJD\u00e9RUY=", "character 'é' at position 4"),
        ("QUJD\x00", "character U+0000 at position 4"),
        ("QUJD=RUY=", "'=' padding in the middle, at position 4"),
        ("QUJDR", "5 characters cannot be base64"),
    ],
    ids=["punctuation", "non-ascii", "control", "padding-inside", "length"],
)
def test_bad_base64_says_what_is_wrong(embedded_gateway: LiveServer, text: str, says: str) -> None:
    with httpx.Client(base_url=embedded_gateway.url, timeout=20) as client:
        r = client.post("/v1/classify", json={"images": [base64.b64encode(GOOD).decode(), text]})
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["error"] == "bad_base64"
    assert body["detail"].startswith("images[1] is not valid base64: ") and says in body["detail"]


def test_a_multipart_body_cut_before_its_closing_boundary_says_so(
    embedded_gateway: LiveServer,
) -> None:
    """python-multipart drops a part the body ends inside of: the answer must not claim the
    client sent no file named `image`, it must point at the missing boundary."""
    body = (b"--xyz\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n"
            b"Content-Type: image/png\r\n\r\n" + GOOD)  # fmt: skip
    with httpx.Client(base_url=embedded_gateway.url, timeout=20) as client:
        r = client.post("/v1/classify", **raw(body, "multipart/form-data; boundary=xyz"))
        named = client.post("/v1/classify", files=[("other", ("a.png", GOOD, "image/png"))])
    assert r.status_code == 400 and r.json()["error"] == "empty_image", r.text
    assert "closing boundary" in r.json()["detail"]
    assert named.json()["detail"] == "no multipart file named 'image' or 'images'"


def test_still_serving_after_bad_input(gateway: LiveServer) -> None:
    with httpx.Client(base_url=gateway.url, timeout=20) as client:
        for _, kwargs, query, *_ in CASES[:4]:
            client.post(f"/v1/classify?{query}", **kwargs)
        r = client.post("/v1/classify", **raw(GOOD))
        assert r.status_code == 200, r.text
        assert len(r.json()["predictions"][0]["top_k"]) == 5
        errors = client.get("/metrics").text
    assert 'gateway_errors_total{code="not_an_image",status="400"}' in errors


def test_input_size_is_the_models(
    embedded_gateway: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large photo is resized by decode, not refused: the model only ever sees SIDE x SIDE.

    The embedded backend's calls are recorded: the photo (red left half, blue right half,
    640 x 480) must arrive as one SIDE x SIDE uint8 row, still red on the left, blue on the right.
    """
    backend = state_of(embedded_gateway.app).backend
    seen: list[np.ndarray] = []
    predict = backend.predict

    async def recording(images: np.ndarray, *, timeout_s: float, **pinned: Any) -> np.ndarray:
        seen.append(images.copy())
        return await predict(images, timeout_s=timeout_s, **pinned)

    monkeypatch.setattr(backend, "predict", recording)
    halves = np.zeros((480, 640, 3), np.uint8)
    halves[:, :320, 0] = 255
    halves[:, 320:, 2] = 255
    with httpx.Client(base_url=embedded_gateway.url, timeout=20) as client:
        r = client.post("/v1/classify", **raw(_encoded(halves, "JPEG"), "image/jpeg"))
    assert r.status_code == 200, r.text
    (batch,) = seen
    assert batch.dtype == np.uint8 and batch.shape == (1, SIDE, SIDE, 3)  # bucket 1, one image
    row = batch[0].astype(int)
    assert (row[:, 0, 0] > 200).all() and (row[:, 0, 2] < 60).all()  # left edge: red
    assert (row[:, -1, 2] > 200).all() and (row[:, -1, 0] < 60).all()  # right edge: blue
