"""The JPEG marker walk: normal files pass untouched, costly or unusual ones are refused."""

from __future__ import annotations

import concurrent.futures
import time
from pathlib import Path

import httpx
import pytest

from service.app import create_app
from service.errors import ImageTooComplex, UnsupportedFormat
from service.jpeg_markers import inspect_jpeg
from tests.service.conftest import gateway_settings, serving
from tests.service.jpeg_bombs import many_scans, photo, with_comments, with_sof
from tests.service.test_api import DoubleBackend, pixel


@pytest.mark.parametrize(
    ("data", "frame", "scans"),
    [
        (photo(64, 48), "baseline", 1),
        (photo(64, 48, progressive=True), "progressive", 10),
        (photo(64, 48, progressive=True, subsampling=0), "progressive", 10),
        (photo(96, 64, restart_marker_blocks=1), "baseline", 1),  # an RST after every MCU
        (photo(96, 64, progressive=True, restart_marker_rows=1), "progressive", 10),
        (photo(64, 48, quality=100, optimize=True), "baseline", 1),
    ],
    ids=["baseline", "progressive", "progressive-444", "restarts", "progressive-restarts", "q100"],
)
def test_normal_jpegs_are_read_to_the_end(data: bytes, frame: str, scans: int) -> None:
    shape = inspect_jpeg(data)
    assert shape is not None
    assert (shape.frame, shape.width, shape.height, shape.scans) == (frame, *_size(data), scans)


def _size(data: bytes) -> tuple[int, int]:
    from io import BytesIO

    from PIL import Image

    with Image.open(BytesIO(data)) as im:
        return im.size


def test_a_grey_progressive_jpeg_has_its_own_scan_script() -> None:
    from io import BytesIO

    from PIL import Image

    buf = BytesIO()
    Image.new("L", (40, 30), 128).save(buf, "JPEG", progressive=True)
    shape = inspect_jpeg(buf.getvalue())
    assert shape is not None and shape.components == 1 and shape.scans == 6


def test_a_many_scans_bomb_is_refused() -> None:
    with pytest.raises(ImageTooComplex, match=r"progressive JPEG has more than 64 scans"):
        inspect_jpeg(many_scans(3000, size=256), max_scans=64)


def test_the_scan_limit_is_inclusive() -> None:
    data = many_scans(54, size=64)  # 10 + 54 = 64 scans
    shape = inspect_jpeg(data, max_scans=64)
    assert shape is not None and shape.scans == 64
    with pytest.raises(ImageTooComplex, match="more than 63 scans"):
        inspect_jpeg(data, max_scans=63)


@pytest.mark.parametrize(
    ("sof", "precision", "match"),
    [
        (0xC3, None, "lossless JPEG frames are not accepted"),
        (0xC9, None, "arithmetic extended sequential JPEG frames are not accepted"),
        (0xCA, None, "arithmetic progressive"),
        (0xC5, None, "differential sequential"),
        (0xC0, 12, "12-bit JPEG is not accepted"),
    ],
)
def test_frames_a_photo_never_uses_are_refused(sof: int, precision: int | None, match: str) -> None:
    with pytest.raises(UnsupportedFormat, match=match):
        inspect_jpeg(with_sof(photo(32, 32), sof, precision))


def test_too_many_marker_segments_are_refused() -> None:
    data = with_comments(photo(32, 32), 2000)
    with pytest.raises(ImageTooComplex, match="more than 1024 marker segments"):
        inspect_jpeg(data)


@pytest.mark.parametrize("cut", [2, 5, 40, -200, -2])
def test_a_truncated_file_is_left_to_pillow(cut: int) -> None:
    data = photo(64, 48, progressive=True)
    inspect_jpeg(data[:cut])  # no exception, no hang: Pillow decides what a short file is


# ---------------------------------------------------------------- the attack, over HTTP


def _post_jpegs(url: str, images: list[bytes], timeout_s: float) -> httpx.Response:
    files = [("images", (f"{i}.jpg", data, "image/jpeg")) for i, data in enumerate(images)]
    return httpx.post(f"{url}/v1/classify", files=files, timeout=timeout_s)


@pytest.fixture(scope="module")
def bomb() -> bytes:
    return many_scans(6000, size=2048)  # ~6000 full passes over 4 MP: seconds of CPU each


def test_a_scan_bomb_is_refused_before_decoding(tmp_path: Path, bomb: bytes) -> None:
    """Issue: two 800-scan files held every decode worker for ~35 s. Now: 413 at once."""
    settings = gateway_settings(tmp_path, max_upload_bytes=8 << 20, max_image_pixels=5_000_000)
    with serving(create_app(settings, backend=DoubleBackend())) as live:
        reply = _post_jpegs(live.url, [bomb, bomb], timeout_s=10)
        assert reply.status_code == 413, reply.text
        assert reply.json()["error"] == "image_too_complex"
        assert "images[0]: progressive JPEG has more than 64 scans" in reply.json()["detail"]
        assert reply.elapsed.total_seconds() < 5


def test_one_request_cannot_hold_every_decode_worker(tmp_path: Path) -> None:
    """Costly images (here: 900-scan 16 MP files let through by a high scan limit, seconds of
    CPU each) of one request decode one at a time when there are two workers, so another
    client's small image is decoded at once instead of waiting out its 2 s budget."""
    costly = many_scans(900, size=4096)
    settings = gateway_settings(
        tmp_path, max_upload_bytes=8 << 20, max_image_pixels=20_000_000, decode_workers=2,
        max_jpeg_scans=1000, request_timeout_s=2.0, max_wait_ms=1.0,
    )  # fmt: skip
    with (
        serving(create_app(settings, backend=DoubleBackend())) as live,
        concurrent.futures.ThreadPoolExecutor(1) as pool,
    ):
        heavy = pool.submit(_post_jpegs, live.url, [costly, costly], 30)
        time.sleep(0.5)  # both bombs are in (decoding, or waiting for a slot)
        light = httpx.post(f"{live.url}/v1/classify", timeout=10,
                           files={"image": ("a.png", pixel(3), "image/png")})  # fmt: skip
        assert light.status_code == 200, light.text
        assert heavy.result().status_code == 504  # its own budget, not everyone's


def test_a_decode_that_outlasts_the_budget_is_504_at_the_budget(tmp_path: Path) -> None:
    """A costly image (here: 900 extra scans over 16 MP, seconds of CPU) with a 0.5 s budget:
    the client gets 504 when its budget runs out, naming the decode, not when the decode
    ends; nothing reaches the model, and the next request is served."""
    costly = many_scans(900, size=4096)
    double = DoubleBackend()
    settings = gateway_settings(
        tmp_path, max_upload_bytes=8 << 20, max_image_pixels=20_000_000, decode_workers=2,
        max_jpeg_scans=1000, request_timeout_s=0.5, max_wait_ms=1.0,
    )  # fmt: skip
    with serving(create_app(settings, backend=double)) as live:
        t0 = time.monotonic()
        reply = _post_jpegs(live.url, [costly], timeout_s=30)
        waited_s = time.monotonic() - t0
        body = reply.json()
        assert reply.status_code == 504, reply.text
        assert body["error"] == "deadline_exceeded"
        assert body["detail"].startswith(
            "request budget of 0.5 s ran out while decoding 1 image(s)"
        ), body
        assert waited_s < 2.5, waited_s  # the budget, not the decode (seconds) ended it
        assert double.calls == 0
        after = httpx.post(f"{live.url}/v1/classify", timeout=10,
                           files={"image": ("a.png", pixel(3), "image/png")})  # fmt: skip
        assert after.status_code == 200, after.text
