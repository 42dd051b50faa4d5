"""service.decode: real Pillow-made images in every accepted format, every refusal, and fuzz."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw, ImageFile, ImageOps, JpegImagePlugin

from contract.manifest import InputSpec, Preprocessing
from service.decode import DecodeLimits, configure_pillow, decode_batch, decode_image
from service.errors import (
    EmptyImage,
    GatewayError,
    ImageTooComplex,
    ImageTooLarge,
    NotAnImage,
    TruncatedImage,
    UnsupportedFormat,
    ZeroSizedImage,
)
from service.settings import Settings

LIMITS = DecodeLimits.from_settings(Settings())
SPEC = InputSpec(height=24, width=32)  # not square: catches swapped axes
STRETCH = Preprocessing(resize="stretch")
CROP = Preprocessing(resize="resize_shorter_center_crop", crop_fraction=0.875)
RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def encode(im: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def photo(w: int, h: int, seed: int = 0) -> Image.Image:
    """Smooth gradients + mild noise + shapes: JPEG-friendly, like a photo."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    px = np.stack([x / w * 255, y / h * 255, (x + y) / (w + h) * 255], -1)
    px += rng.normal(0, 4, (h, w, 3))
    im = Image.fromarray(np.clip(px, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    for _ in range(8):
        x0, y0, r = (
            int(rng.integers(0, w)),
            int(rng.integers(0, h)),
            int(rng.integers(w // 10, w // 3)),
        )
        draw.ellipse([x0, y0, x0 + r, y0 + r], fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
    return im


def decode(
    data: bytes, spec: InputSpec = SPEC, pre: Preprocessing = STRETCH, **kw: object
) -> np.ndarray:
    limits = DecodeLimits(**kw) if kw else LIMITS  # type: ignore[arg-type]
    return decode_image(data, input_spec=spec, preprocessing=pre, limits=limits)


def reference(im: Image.Image, spec: InputSpec, pre: Preprocessing) -> np.ndarray:
    """The contract done the slow, obvious way: full decode, upright, RGB, then one resize of
    the centre region that maps onto the target once scaled (the whole image for stretch)."""
    im = ImageOps.exif_transpose(im).convert("RGB")
    box = (0.0, 0.0, float(im.width), float(im.height))
    if pre.resize == "resize_shorter_center_crop":
        scale = max(spec.width / im.width, spec.height / im.height) / pre.crop_fraction
        cw, ch = spec.width / scale, spec.height / scale
        box = ((im.width - cw) / 2, (im.height - ch) / 2, (im.width + cw) / 2, (im.height + ch) / 2)
    return np.asarray(im.resize((spec.width, spec.height), Image.Resampling.BILINEAR, box=box))


def mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def with_exif_orientation(im: Image.Image, fmt: str, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    jpeg = {"quality": 95, "subsampling": 0} if fmt == "JPEG" else {}  # 4:4:4: crisp colour edges
    return encode(im, fmt, exif=exif.tobytes(), **jpeg)


# ---------------------------------------------------------------- every accepted format


def _animated_gif() -> bytes:
    frames = [Image.new("RGB", (40, 30), c) for c in (RED, BLUE, GREEN)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)


FORMATS: dict[str, Callable[[], bytes]] = {
    "JPEG": lambda: encode(photo(120, 90), "JPEG", quality=90),
    "PNG": lambda: encode(photo(120, 90), "PNG"),
    "WEBP": lambda: encode(photo(120, 90), "WEBP", quality=90),
    "GIF": lambda: encode(photo(120, 90).convert("P"), "GIF"),
    "BMP": lambda: encode(photo(120, 90), "BMP"),
    # Phones write multi-picture JPEGs; Pillow calls them MPO. Accepted as JPEG, frame 0.
    "MPO": lambda: encode(photo(120, 90), "MPO", save_all=True, append_images=[photo(120, 90, 1)]),
}


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@pytest.mark.parametrize("pre", [STRETCH, CROP], ids=["stretch", "crop"])
def test_every_allowed_format_decodes_to_the_input_spec(fmt: str, pre: Preprocessing) -> None:
    assert fmt in (*LIMITS.allowed_formats, "MPO")
    out = decode(FORMATS[fmt](), pre=pre)
    assert out.shape == (24, 32, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
    assert mad(out, reference(Image.open(io.BytesIO(FORMATS[fmt]())), SPEC, pre)) < 3


# ---------------------------------------------------------------- refusals


def _png_with_size(w: int, h: int) -> bytes:
    """A real 4x4 PNG whose IHDR (CRC fixed) declares w x h: no pixel data for that size."""
    data = bytearray(encode(Image.new("RGB", (4, 4)), "PNG"))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


def _jpeg_with_size(w: int, h: int) -> bytes:
    data = bytearray(encode(Image.new("RGB", (16, 16)), "JPEG"))
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", h, w)
    return bytes(data)


def _gif_with_size(w: int, h: int) -> bytes:
    data = bytearray(encode(Image.new("P", (4, 4)), "GIF"))
    data[6:10] = struct.pack("<HH", w, h)  # logical screen
    desc = data.find(b"\x2c")  # image descriptor: x, y, w, h
    data[desc + 5 : desc + 9] = struct.pack("<HH", w, h)
    return bytes(data)


def _bmp_with_width(w: int, *, top_down: bool = False) -> bytes:
    """A 4x4 BMP (40-byte info header) declaring width `w`; height -4 when top-down."""
    data = bytearray(encode(Image.new("RGB", (4, 4)), "BMP"))
    data[18:26] = struct.pack("<ii", w, -4 if top_down else 4)
    return bytes(data)


def _os2_bmp_with_width(w: int) -> bytes:
    """An OS/2 1.x BMP (12-byte core header, 16-bit sizes) declaring `w` x 4, 24-bit pixels."""
    pixels = b"\0" * (((3 * max(w, 1) + 3) // 4) * 4 * 4)
    core = struct.pack("<IHHHH", 12, w, 4, 1, 24)
    head = b"BM" + struct.pack("<IHHI", 14 + len(core) + len(pixels), 0, 0, 14 + len(core))
    return head + core + pixels


def _jpeg_dht_first_with_size(w: int, h: int) -> bytes:
    """A zero-size JPEG whose first segment is a DHT (0xC4, not a frame) before the SOF."""
    data = _jpeg_with_size(w, h)
    dht = data.find(b"\xff\xc4")
    length = struct.unpack(">H", data[dht + 2 : dht + 4])[0]
    return data[:2] + data[dht : dht + 2 + length] + data[2:]


def _scrambled_jpeg() -> bytes:
    """A 64x48 JPEG with 30 bytes in the middle of its scan flipped: libjpeg gives up on it."""
    data = bytearray(encode(photo(64, 48), "JPEG"))
    middle = len(data) // 2
    data[middle : middle + 30] = bytes(b ^ 0xA5 for b in data[middle : middle + 30])
    return bytes(data)


_JPEG = encode(photo(64, 48), "JPEG", quality=90)
_SCRAMBLED = _scrambled_jpeg()
_BIG_JPEG = encode(photo(256, 192), "JPEG")
_NO_SCAN = _BIG_JPEG[: _BIG_JPEG.find(b"\xff\xda")]  # a header large enough to draft, no scan
_PNG = encode(photo(64, 48), "PNG")
_ZERO_JPEG = _jpeg_with_size(16, 0)

REFUSALS = [
    ("empty", b"", EmptyImage, "0 bytes"),
    ("garbage", b"definitely not an image, just text", NotAnImage, "unrecognised format"),
    (  # the message names the size and byte count, and keeps Pillow's reason after its class
        "truncated-jpeg",
        _JPEG[: len(_JPEG) // 2],
        TruncatedImage,
        f"(JPEG 64x48, {len(_JPEG) // 2} bytes): OSError: ",
    ),
    ("truncated-png", _PNG[: len(_PNG) // 2], TruncatedImage, f"PNG 64x48, {len(_PNG) // 2} bytes"),
    (  # bad entropy-coded data, not a short file: corrupt, not truncated
        "corrupt-jpeg-scan",
        _SCRAMBLED,
        NotAnImage,
        f"corrupt pixel data (JPEG 64x48, {len(_SCRAMBLED)} bytes): OSError: cannot load this",
    ),
    (  # Pillow opens it but has no scan to draft or load
        "jpeg-without-scan",
        _NO_SCAN,
        NotAnImage,
        f"corrupt pixel data (JPEG 256x192, {len(_NO_SCAN)} bytes)",
    ),
    (  # Pillow's message names the file object (<_io.BytesIO object at 0x...>): cut off
        "png-bad-ihdr-crc",
        _PNG[:29] + bytes(b ^ 0xFF for b in _PNG[29:33]) + _PNG[33:],
        NotAnImage,
        f"corrupt PNG header declaring 64x48 ({len(_PNG)} bytes): UnidentifiedImageError: ",
    ),
    ("zero-width-png", _png_with_size(0, 4), ZeroSizedImage, "PNG header declares 0x4"),
    ("zero-height-jpeg", _jpeg_with_size(16, 0), ZeroSizedImage, "JPEG header declares 16x0"),
    ("zero-gif", _gif_with_size(0, 0), ZeroSizedImage, "declares 0x0"),
    ("zero-width-bmp", _bmp_with_width(0), ZeroSizedImage, "BMP header declares 0x4"),
    (
        "zero-width-bmp-top-down",
        _bmp_with_width(0, top_down=True),
        ZeroSizedImage,
        "BMP header declares 0x4",
    ),
    ("zero-width-os2-bmp", _os2_bmp_with_width(0), ZeroSizedImage, "BMP header declares 0x4"),
    (
        "zero-jpeg-dht-first",
        _jpeg_dht_first_with_size(16, 0),
        ZeroSizedImage,
        "JPEG header declares 16x0",
    ),
    (  # cut right after the frame's size: the header walk still reads it
        "zero-jpeg-cut-after-sof",
        _ZERO_JPEG[: _ZERO_JPEG.find(b"\xff\xc0") + 9],
        ZeroSizedImage,
        "JPEG header declares 16x0",
    ),
    ("tiff", encode(Image.new("RGB", (8, 8)), "TIFF"), UnsupportedFormat, "TIFF"),
    ("ico", encode(Image.new("RGB", (16, 16)), "ICO"), UnsupportedFormat, "ICO"),
    # Shorter than some plugins' prefix checks (DIB's raises): later plugins still name it.
    ("ppm-3-bytes", b"P6\n", UnsupportedFormat, "image format PPM is not accepted"),
    ("huge-png", _png_with_size(30000, 30000), ImageTooLarge, "30000x30000 = 900000000"),
    ("huge-jpeg", _jpeg_with_size(30000, 30000), ImageTooLarge, "30000x30000"),
    ("huge-gif", _gif_with_size(30000, 30000), ImageTooLarge, "30000x30000"),
]


@pytest.mark.parametrize(
    ("data", "exc", "needle"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS]
)
def test_refusals_raise_their_error_with_a_one_line_message(
    data: bytes, exc: type[GatewayError], needle: str
) -> None:
    with pytest.raises(exc) as info:
        decode(data)
    assert type(info.value) is exc
    assert needle in info.value.detail and "\n" not in info.value.detail
    assert "<_io." not in info.value.detail


def test_pixel_limit_is_checked_on_the_header_before_any_decode() -> None:
    # The file declares 3000x3000 but carries pixel data for 4x4 only. Under the limit the
    # decoder runs and finds the data short; over it we refuse first, so nothing was decoded.
    data = _png_with_size(3000, 3000)
    allowed = LIMITS.allowed_formats
    with pytest.raises(TruncatedImage):
        decode(data, max_image_pixels=9_000_000, allowed_formats=allowed)
    with pytest.raises(ImageTooLarge, match="limit is max_image_pixels=8999999"):
        decode(data, max_image_pixels=8_999_999, allowed_formats=allowed)


def test_configure_pillow_leaves_the_decision_to_us(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 89_478_485)  # Pillow's own defaults, or
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # what a library set
    configure_pillow()
    assert Image.MAX_IMAGE_PIXELS is None  # our limit, not Pillow's bomb guard, refuses
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # truncated files raise, never grey-pad


def test_importing_the_gateway_changes_no_pillow_setting() -> None:
    """Process-wide settings belong to whoever starts the process, not to an import."""
    code = (
        "from PIL import Image, ImageFile\n"
        "before = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)\n"
        "import service.decode, service.app\n"
        "assert (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES) == before, before\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_format_allow_list_is_respected() -> None:
    with pytest.raises(UnsupportedFormat, match="PNG is not accepted; allowed: JPEG"):
        decode(_PNG, max_image_pixels=10**6, allowed_formats=("jpeg",))


# ---------------------------------------------------------------- modes and orientation


def _solid(mode: str, size: tuple[int, int], color: object, **info: object) -> bytes:
    im = Image.new(mode, size, color)  # type: ignore[arg-type]
    return encode(im, "PNG", **info)


def _p_with_transparency() -> bytes:
    im = Image.new("P", (16, 16), 1)
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    return encode(im, "PNG", transparency=1)  # palette entry 1 (red) fully transparent


def _icc_profile() -> bytes:
    from PIL import ImageCms

    return bytes(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())


def _ycck_jpeg(cmyk: tuple[int, int, int, int]) -> bytes:
    """A YCCK JPEG (Adobe APP14 transform=2) that decodes to `cmyk`: Pillow cannot write one,
    so the components are computed as libjpeg's YCCK->CMYK conversion expects them and the
    Adobe marker's transform flag is set by hand."""
    raw = [255 - v for v in cmyk]  # libjpeg's output for an Adobe CMYK file is inverted
    r, g, b = (255 - v for v in raw[:3])  # YCCK stores the YCbCr of (255 - C, 255 - M, 255 - Y)
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = -0.168736 * r - 0.331264 * g + 0.5 * b + 128
    cr = 0.5 * r - 0.418688 * g - 0.081312 * b + 128
    stored = tuple(255 - round(v) for v in (y, cb, cr, raw[3]))  # Pillow inverts on save too
    data = bytearray(encode(Image.new("CMYK", (32, 32), stored), "JPEG", quality=95))
    adobe = data.find(b"Adobe")
    data[adobe + 11] = 2  # transform: YCCK
    return bytes(data)


MODES = [
    # (id, bytes, background, expected RGB of every pixel)
    (
        "cmyk-jpeg-icc",  # the profile is ignored, as docs/decode.md says
        encode(
            Image.new("CMYK", (32, 32), (0, 255, 255, 0)),
            "JPEG",
            quality=95,
            icc_profile=_icc_profile(),
        ),
        WHITE,
        RED,
    ),
    ("ycck-jpeg", _ycck_jpeg((0, 255, 255, 0)), WHITE, RED),
    ("ycck-jpeg-blue", _ycck_jpeg((255, 255, 0, 0)), WHITE, BLUE),
    (
        "cmyk-jpeg",
        encode(Image.new("CMYK", (32, 32), (0, 255, 255, 0)), "JPEG", quality=95),
        WHITE,
        RED,
    ),
    ("L", _solid("L", (16, 16), 200), WHITE, (200, 200, 200)),
    ("I;16", _solid("I;16", (16, 16), 65535), WHITE, WHITE),
    ("I;16-mid", _solid("I;16", (16, 16), 32768), WHITE, (128, 128, 128)),
    ("P+tRNS", _p_with_transparency(), BLUE, BLUE),
    ("LA-half", _solid("LA", (16, 16), (255, 128)), (0, 0, 0), (128, 128, 128)),
    ("RGBA-clear", _solid("RGBA", (16, 16), (255, 0, 0, 0)), BLUE, BLUE),
    ("RGBA-half", _solid("RGBA", (16, 16), (255, 0, 0, 128)), (0, 0, 0), (128, 0, 0)),
    (
        "RGBA-webp",
        encode(Image.new("RGBA", (16, 16), (0, 255, 0, 0)), "WEBP", lossless=True),
        RED,
        RED,
    ),
    ("animated-gif", _animated_gif(), WHITE, RED),
    ("1-bit", encode(Image.new("1", (16, 16), 1), "BMP"), (0, 0, 0), WHITE),
    # Colour-keyed RGB and L (PNG tRNS without a palette): the key colour is transparent.
    ("RGB+tRNS", _solid("RGB", (16, 16), RED, transparency=RED), BLUE, BLUE),
    ("L+tRNS", _solid("L", (16, 16), 7, transparency=7), GREEN, GREEN),
]


# TIFF (allowed by an operator, not by default) brings modes no default format does: 32-bit
# float and signed 32-bit integer samples, brought into 0..255 by rounding and clipping.
HIGH_DEPTH = [
    ("F", -3.7, 0),
    ("F", 127.6, 128),
    ("F", 300.0, 255),
    ("I", -5, 0),
    ("I", 40000, 40000 >> 8),  # the high byte, as for 16-bit samples
    ("I", 70000, 255),
]


@pytest.mark.parametrize(("mode", "value", "grey"), HIGH_DEPTH)
def test_float_and_32_bit_samples_clip_to_8_bits(mode: str, value: float, grey: int) -> None:
    data = encode(Image.new(mode, (8, 8), value), "TIFF")
    out = decode(data, max_image_pixels=10_000, allowed_formats=("TIFF",))
    assert out.shape == (24, 32, 3) and (out == grey).all(), out[0, 0]


@pytest.mark.parametrize(
    ("data", "background", "expected"), [m[1:] for m in MODES], ids=[m[0] for m in MODES]
)
def test_modes_convert_to_rgb_with_alpha_on_background(
    data: bytes, background: tuple[int, int, int], expected: tuple[int, int, int]
) -> None:
    out = decode(data, pre=Preprocessing(background_rgb=background))
    assert out.shape == (24, 32, 3)
    assert np.abs(out.astype(int) - np.array(expected)).max() <= 3, out[12, 16]


def _asymmetric(w: int, h: int) -> Image.Image:
    """Left half red, right half blue, a green block top-left: every orientation differs."""
    im = Image.new("RGB", (w, h), BLUE)
    im.paste(RED, (0, 0, w // 2, h))
    im.paste(GREEN, (0, 0, w // 4, h // 4))
    return im


# Eight distinct colours in a 4 x 2 grid: each of the eight orientations shows a different
# arrangement, so a swapped pair (say 5 and 7) cannot pass.
_GRID = np.array(
    [[(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)],
     [(255, 0, 255), (0, 255, 255), (255, 255, 255), (0, 0, 0)]],
    dtype=np.uint8,
)  # fmt: skip
_BLOCK = 16

# What each EXIF orientation asks for, from the EXIF 2.3 spec (stored -> displayed), written
# with numpy so that it does not share code or tables with decode.py or Pillow.
_UPRIGHT = {
    1: lambda a: a,
    2: np.fliplr,  # mirror horizontal
    3: lambda a: np.rot90(a, 2),  # rotate 180
    4: np.flipud,  # mirror vertical
    5: lambda a: a.transpose(1, 0, 2),  # mirror horizontal and rotate 270 CW: transpose
    6: lambda a: np.rot90(a, -1),  # rotate 90 CW
    7: lambda a: np.rot90(a, 2).transpose(1, 0, 2),  # mirror horizontal, rotate 90 CW
    8: lambda a: np.rot90(a, 1),  # rotate 270 CW
}


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
@pytest.mark.parametrize("orientation", sorted(_UPRIGHT))
def test_every_exif_orientation_is_applied(fmt: str, orientation: int) -> None:
    stored = _GRID.repeat(_BLOCK, axis=0).repeat(_BLOCK, axis=1)  # 32 x 64 pixels
    expected = _UPRIGHT[orientation](_GRID)  # the grid as it must be seen, 2x4 or 4x2 blocks
    data = with_exif_orientation(Image.fromarray(stored), fmt, orientation)
    rows, cols = expected.shape[:2]
    out = decode(data, spec=InputSpec(height=rows * _BLOCK, width=cols * _BLOCK))
    centres = out[_BLOCK // 2 :: _BLOCK, _BLOCK // 2 :: _BLOCK].astype(int)
    assert centres.shape == expected.shape
    assert np.abs(centres - expected).max() < 40, f"orientation {orientation}:\n{centres}"


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])  # JPEG reads EXIF before decoding, PNG after
def test_exif_orientation_can_be_ignored(fmt: str) -> None:
    data = with_exif_orientation(_asymmetric(64, 32), fmt, 6)
    out = decode(
        data,
        spec=InputSpec(height=16, width=32),
        pre=Preprocessing(resize="stretch", apply_exif_orientation=False),
    )
    assert np.abs(out[1, 1].astype(int) - GREEN).max() < 40
    assert np.abs(out[-2, -2].astype(int) - BLUE).max() < 40


def _exif_orientation_as_rational(value: int) -> bytes:
    """EXIF (big-endian TIFF) whose one tag, Orientation, is a RATIONAL value/1, not a SHORT."""
    entry = struct.pack(">HHII", 0x0112, 5, 1, 26)  # tag, type RATIONAL, count, value offset
    return b"Exif\0\0MM\0*" + struct.pack(">IH", 8, 1) + entry + struct.pack(">III", 0, value, 1)


@pytest.mark.parametrize(
    ("fmt", "exif"),
    [
        ("PNG", b"Exif\0\0garbage!"),  # not a TIFF header: Pillow raises reading it
        ("JPEG", _exif_orientation_as_rational(6)),  # EXIF says SHORT: 6/1 is not an orientation
        ("PNG", _exif_orientation_as_rational(6)),
    ],
    ids=["broken-exif", "rational-jpeg", "rational-png"],
)
def test_an_unreadable_orientation_leaves_the_image_as_stored(fmt: str, exif: bytes) -> None:
    data = encode(_asymmetric(64, 32), fmt, exif=exif)
    out = decode(data, spec=InputSpec(height=16, width=32))
    assert np.abs(out[1, 1].astype(int) - GREEN).max() < 40  # not mirrored, not rotated
    assert np.abs(out[-2, -2].astype(int) - BLUE).max() < 40


# ---------------------------------------------------------------- geometry and draft


def _centre_square_with_edge_bars() -> bytes:
    im = Image.new("RGB", (300, 200), WHITE)
    im.paste(RED, (100, 50, 200, 150))  # the centre
    im.paste(GREEN, (0, 0, 20, 200))  # only visible without cropping
    im.paste(GREEN, (280, 0, 300, 200))
    return encode(im, "PNG")


def test_center_crop_keeps_the_centre_and_drops_the_sides() -> None:
    out = decode(
        _centre_square_with_edge_bars(),
        spec=InputSpec(height=32, width=32),
        pre=Preprocessing(crop_fraction=1.0),
    )
    assert tuple(out[16, 16]) == RED and tuple(out[10, 10]) == RED  # square: the middle half
    assert tuple(out[0, 0]) == WHITE and tuple(out[16, 0]) == WHITE  # green bars cropped away


def test_stretch_keeps_everything() -> None:
    out = decode(_centre_square_with_edge_bars(), spec=InputSpec(height=32, width=32), pre=STRETCH)
    assert tuple(out[16, 16]) == RED and tuple(out[16, 0]) == GREEN and tuple(out[16, 31]) == GREEN
    assert tuple(out[2, 16]) == WHITE  # the square covers only the middle half vertically


@pytest.fixture(scope="module")
def big_jpeg() -> bytes:
    return encode(photo(1600, 1200, seed=3), "JPEG", quality=90)


@pytest.mark.parametrize("orientation", [1, 6])
@pytest.mark.parametrize(
    ("spec", "pre"),
    [(InputSpec(height=64, width=64), CROP), (InputSpec(height=48, width=80), STRETCH)],
)
def test_jpeg_draft_path_matches_a_full_decode(
    monkeypatch: pytest.MonkeyPatch, orientation: int, spec: InputSpec, pre: Preprocessing
) -> None:
    data = with_exif_orientation(photo(1600, 1200, seed=3), "JPEG", orientation)
    scales: list[float] = []
    real_draft = JpegImagePlugin.JpegImageFile.draft

    def spy(
        self: JpegImagePlugin.JpegImageFile, mode: str | None, size: tuple[int, int] | None
    ) -> object:
        result = real_draft(self, mode, size)
        scales.append(self.size[0] / 1600)
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    out = decode(data, spec=spec, pre=pre)
    assert scales and scales[0] <= 0.25  # the DCT-domain shortcut really ran
    assert mad(out, reference(Image.open(io.BytesIO(data)), spec, pre)) < 3


def test_decode_batch_stacks_and_names_the_failing_index() -> None:
    items = [FORMATS["JPEG"](), FORMATS["PNG"]()]
    out = decode_batch(items, input_spec=SPEC, preprocessing=CROP, limits=LIMITS)
    assert out.shape == (2, 24, 32, 3) and out.dtype == np.uint8
    assert np.array_equal(out[1], decode(items[1], pre=CROP))
    with pytest.raises(EmptyImage, match=r"^image 1: empty image"):
        decode_batch([items[0], b""], input_spec=SPEC, preprocessing=CROP, limits=LIMITS)


def test_threads_give_the_same_result_as_serial(big_jpeg: bytes) -> None:
    items = [big_jpeg, FORMATS["PNG"](), FORMATS["WEBP"](), big_jpeg] * 2
    serial = [decode(d, pre=CROP) for d in items]
    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(lambda d: decode(d, pre=CROP), items))
    assert all(np.array_equal(a, b) for a, b in zip(serial, threaded, strict=True))


def test_limits_from_settings() -> None:
    s = Settings(max_image_pixels=1234, allowed_formats=("jpeg", "PNG"), max_jpeg_scans=17)
    assert DecodeLimits.from_settings(s) == DecodeLimits(1234, ("JPEG", "PNG"), max_jpeg_scans=17)
    with pytest.raises(ValueError, match="max_image_pixels=0"):
        DecodeLimits(0, ("JPEG",))
    assert DecodeLimits(1, ("PNG",)).max_image_pixels == 1  # the smallest limit is a limit


@pytest.mark.parametrize("size", [(1, 1), (1, 5), (5, 1)])
def test_one_pixel_wide_images_are_images(size: tuple[int, int]) -> None:
    out = decode(encode(Image.new("RGB", size, RED), "PNG"))
    assert np.abs(out.astype(int) - np.array(RED)).max() <= 1


def test_the_jpeg_scan_limit_is_applied_on_decode() -> None:
    from tests.service.jpeg_bombs import many_scans

    data = many_scans(30, size=64)  # 10 + 30 = 40 scans
    allowed = LIMITS.allowed_formats
    assert decode(data, max_image_pixels=10_000, allowed_formats=allowed, max_jpeg_scans=40).shape
    with pytest.raises(ImageTooComplex, match="more than 39 scans"):
        decode(data, max_image_pixels=10_000, allowed_formats=allowed, max_jpeg_scans=39)


def test_nearest_interpolation_adds_no_new_colours() -> None:
    """The manifest's interpolation is the one used: nearest keeps a checkerboard's two colours."""
    board = np.indices((64, 64)).sum(axis=0) % 2 * 255
    data = encode(Image.fromarray(np.stack([board] * 3, -1).astype(np.uint8)), "PNG")
    out = decode(data, spec=InputSpec(height=24, width=24), pre=Preprocessing(
        resize="stretch", interpolation="nearest"))  # fmt: skip
    assert set(np.unique(out)) <= {0, 255}
    blended = decode(data, spec=InputSpec(height=24, width=24), pre=STRETCH)
    assert not set(np.unique(blended)) <= {0, 255}  # the default (bilinear) does blend


@pytest.mark.parametrize(
    ("stored", "draft"),
    [
        ((40, 30), 1),  # 1.25x the 32 x 24 target: no room to draft
        ((64, 48), 2),  # exactly 2x: a 1/2 draft still leaves the target's pixels
        ((96, 72), 2),  # 3x: not 4
        ((128, 96), 4),
        ((256, 192), 8),
        ((4000, 3000), 8),  # 1/8 is libjpeg's largest DCT scaling
        ((64, 960), 2),  # the narrow side decides: width
        ((1280, 48), 2),  # the narrow side decides: height
    ],
)
def test_jpeg_draft_scale_keeps_at_least_the_target_pixels(
    stored: tuple[int, int], draft: int
) -> None:
    from service.decode import crop_plan

    assert crop_plan(stored, 1, SPEC, STRETCH).draft_scale == draft


# ---------------------------------------------------------------- fuzz

SEEDS = [f() for f in FORMATS.values()] + [_animated_gif(), _p_with_transparency()]
FUZZ_LIMITS = DecodeLimits(max_image_pixels=2_000_000, allowed_formats=LIMITS.allowed_formats)


def _only_gateway_errors(data: bytes) -> None:
    try:
        out = decode_image(data, input_spec=SPEC, preprocessing=CROP, limits=FUZZ_LIMITS)
    except GatewayError as exc:
        assert "\n" not in exc.detail
    else:
        assert out.shape == (24, 32, 3) and out.dtype == np.uint8


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=512))
def test_fuzz_random_bytes_raise_only_gateway_errors(data: bytes) -> None:
    _only_gateway_errors(data)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.sampled_from(SEEDS),
    edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), max_size=8),
    cut=st.floats(0.05, 1.0),
)
def test_fuzz_mutated_images_raise_only_gateway_errors(
    seed: bytes, edits: list[tuple[float, int]], cut: float
) -> None:
    data = bytearray(seed)
    for where, value in edits:
        data[int(where * len(data))] = value
    _only_gateway_errors(bytes(data[: max(1, int(len(data) * cut))]))


@pytest.mark.parametrize(
    "fmt, plugin",
    [("TIFF", "TiffImagePlugin.TiffImageFile"), ("ICO", "IcoImagePlugin.IcoImageFile")],
)
def test_other_formats_never_reach_their_parsers(
    fmt: str, plugin: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the allowed formats' plugins parse uploads: the rest is attack surface."""
    import importlib

    module, cls = plugin.split(".")
    image_file = getattr(importlib.import_module(f"PIL.{module}"), cls)
    calls: list[str] = []

    def spy(self: object) -> None:
        calls.append(fmt)
        raise AssertionError(f"{fmt} parser ran")

    data = encode(Image.new("RGB", (16, 16)), fmt)
    monkeypatch.setattr(image_file, "_open", spy)
    with pytest.raises(UnsupportedFormat, match=f"image format {fmt} is not accepted"):
        decode(data)
    assert calls == []


@pytest.mark.parametrize(
    ("stored", "draft"),
    [
        ((40, 30), None),  # no room: the JPEG is not drafted at all
        ((64, 48), 2),  # the smallest draft still runs
        ((256, 400), 8),  # portrait: each side divided by the scale
    ],
)
def test_jpeg_draft_runs_at_the_planned_scale(
    monkeypatch: pytest.MonkeyPatch, stored: tuple[int, int], draft: int | None
) -> None:
    data = encode(photo(*stored), "JPEG", quality=90)
    scales: list[int] = []
    real_draft = JpegImagePlugin.JpegImageFile.draft

    def spy(
        self: JpegImagePlugin.JpegImageFile, mode: str | None, size: tuple[int, int] | None
    ) -> object:
        result = real_draft(self, mode, size)
        scales.append(self.decoderconfig[0])
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    out = decode(data)
    assert scales == ([] if draft is None else [draft]) and out.shape == (24, 32, 3)


# ---------------------------------------------------------------- declared_size


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes((0xFF, marker)) + struct.pack(">H", len(payload) + 2) + payload


def _frame(marker: int, w: int, h: int) -> bytes:
    """A frame header segment (SOFn layout): precision, height, width, one component."""
    return _segment(marker, struct.pack(">BHHB", 8, h, w, 1) + b"\x01\x11\x00")


_DECOY = struct.pack(">BHHB", 8, 999, 999, 1)  # a segment that reads as 999x999 if taken for SOF
_SOI = b"\xff\xd8"
_PNG_SIG = b"\x89PNG\r\n\x1a\n"

DECLARED = [
    ("png", _PNG_SIG + struct.pack(">I", 13) + b"IHDR" + struct.pack(">II", 32, 24), "PNG", 32, 24),
    ("png-first-chunk-not-ihdr", _PNG_SIG + struct.pack(">I", 13) + b"tEXt" + bytes(8), None),
    ("ihdr-without-signature", bytes(8) + struct.pack(">I", 13) + b"IHDR" + bytes(8), None),
    *(  # every frame type, baseline to lossless arithmetic (0xCF)
        (f"sof-{m:x}", _SOI + _frame(m, 32, 24), "JPEG", 32, 24)
        for m in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF)
    ),
    *(  # DHT, JPG and DAC share the 0xCn range but are not frames; RST0 follows it
        (f"skips-{m:x}", _SOI + _segment(m, _DECOY) + _frame(0xC0, 32, 24), "JPEG", 32, 24)
        for m in (0xC4, 0xC8, 0xCC, 0xD0)
    ),
    # At most 64 segments are read: a frame as the 64th is found, as the 65th it is not.
    ("frame-64th", _SOI + _segment(0xFE, b"x") * 63 + _frame(0xC0, 32, 24), "JPEG", 32, 24),
    ("frame-65th", _SOI + _segment(0xFE, b"x") * 64 + _frame(0xC0, 32, 24), None),
    ("no-frame", _SOI + _segment(0xFE, b"x") * 3, None),  # the walk stops at the end of data
    ("cut-in-frame", _SOI + _frame(0xC0, 32, 24)[:7], None),
]


@pytest.mark.parametrize("case", DECLARED, ids=[c[0] for c in DECLARED])
def test_declared_size_reads_only_real_headers(case: tuple[object, ...]) -> None:
    from service.decode import declared_size

    data, expected = case[1], case[2:]
    assert isinstance(data, bytes)
    assert declared_size(data) == (None if expected == (None,) else expected)
