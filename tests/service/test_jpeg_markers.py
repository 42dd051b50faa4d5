"""The JPEG marker walk: normal files pass untouched, costly or unusual ones are refused."""

from __future__ import annotations

import pytest

from service.errors import ImageTooComplex, UnsupportedFormat
from service.jpeg_markers import inspect_jpeg
from tests.service.jpeg_bombs import many_scans, photo, with_comments, with_sof


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
