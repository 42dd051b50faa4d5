"""Client image bytes -> the model's uint8 RGB `[H, W, 3]` input, per the manifest.

Pipeline (each step refuses with a one-line `GatewayError` subclass, nothing else escapes):

    bytes --sniff header (no pixels)--> format in allow-list? pixels <= limit? size > 0?
          --JPEG: walk the markers (service.jpeg_markers): scans <= limit, Huffman 8-bit DCT?
          --JPEG: DCT-domain draft at 1/2, 1/4 or 1/8 (keeps >= _DRAFT_GAP x the pixels needed)
          --decode--> RGB/L/RGBA/LA --one resize with box (crop + scale in one pass)-->
          --alpha composited on background_rgb--> EXIF orientation --> np.ndarray

Pure functions of their arguments, no shared state: safe to run in a thread pool, and Pillow
releases the GIL while it decodes and resizes. Pillow's own process-wide settings are set by
`configure_pillow`, called where the gateway starts (its lifespan), never at import.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, JpegImagePlugin

from contract.manifest import InputSpec, Preprocessing
from service.errors import (
    EmptyImage,
    GatewayError,
    ImageTooLarge,
    NotAnImage,
    TruncatedImage,
    UnsupportedFormat,
    ZeroSizedImage,
)
from service.jpeg_markers import DEFAULT_MAX_SCANS, inspect_jpeg
from service.settings import Settings

# Draft (DCT scaling) keeps at least this many times the pixels the final resize needs, so the
# real filter still does the last step and the result stays close to a full decode.
_DRAFT_GAP = 1.0
# Pillow first box-reduces by an integer factor while it leaves >= this x the target size.
_REDUCING_GAP = 3.0

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}
# EXIF orientation -> the transpose that makes the image upright (as ImageOps.exif_transpose).
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_EXIF_ORIENTATION = 0x0112
# Segments `declared_size` reads before a JPEG's frame header (encoders write about 5-20:
# APPn, DQT, DHT): a bound on the work done for a file that is only segments.
_MAX_HEADER_SEGMENTS = 64


def configure_pillow() -> None:
    """Set Pillow's process-wide switches the way `decode_image` relies on. Idempotent.

    Called once where the gateway starts (`service.app`'s lifespan), and by tests, fuzzers and
    benchmarks that decode without a gateway; importing this module changes nothing.
    """
    # Our own limit (DecodeLimits.max_image_pixels) is checked on the header before any decode;
    # Pillow's guard would otherwise fire first, or only warn, at its own numbers.
    Image.MAX_IMAGE_PIXELS = None
    # A truncated upload is refused, never silently padded with grey.
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    # Register every format plugin now rather than on the first request.
    Image.init()


@dataclass(frozen=True)
class DecodeLimits:
    """What the gateway accepts: Pillow format names, the most pixels one image may declare,
    and the most scans a (progressive) JPEG may have: together they bound one decode's CPU."""

    max_image_pixels: int
    allowed_formats: tuple[str, ...]
    max_jpeg_scans: int = DEFAULT_MAX_SCANS

    def __post_init__(self) -> None:
        if self.max_image_pixels < 1:
            raise ValueError(
                f"max_image_pixels must be >= 1. Received: max_image_pixels={self.max_image_pixels}"
            )
        object.__setattr__(self, "allowed_formats", tuple(f.upper() for f in self.allowed_formats))

    @classmethod
    def from_settings(cls, s: Settings) -> DecodeLimits:
        return cls(
            max_image_pixels=s.max_image_pixels,
            allowed_formats=tuple(s.allowed_formats),
            max_jpeg_scans=s.max_jpeg_scans,
        )


@dataclass(frozen=True)
class _Plan:
    """Where to sample in the stored (un-rotated) image and at what size, before orienting."""

    box: tuple[float, float, float, float]
    size: tuple[int, int]
    draft_scale: int


def _one_line(exc: BaseException) -> str:
    # Pillow's "cannot identify image file <_io.BytesIO object at 0x...>" names no value.
    text = " ".join(f"{type(exc).__name__}: {exc}".split()).split(" <_io.")[0]
    return text[:200]


def crop_plan(
    stored: tuple[int, int], orientation: int, spec: InputSpec, pre: Preprocessing
) -> _Plan:
    """The crop box and output size in stored coordinates (a centred box is rotation-invariant),
    and the JPEG draft scale; public so a benchmark can give another decoder the same crop."""
    sw, sh = stored
    swap = orientation in (5, 6, 7, 8)
    ow, oh = (sh, sw) if swap else (sw, sh)  # upright size
    out_w, out_h = spec.width, spec.height
    if pre.resize == "stretch":
        bw, bh = float(ow), float(oh)
    else:
        # Scale so the image covers (W, H) / crop_fraction: for a square target this is
        # "shorter side = size / crop_fraction"; then the centre W x H is kept.
        scale = max(out_w / (pre.crop_fraction * ow), out_h / (pre.crop_fraction * oh))
        bw, bh = min(out_w / scale, float(ow)), min(out_h / scale, float(oh))
    if swap:
        bw, bh, out_w, out_h = bh, bw, out_h, out_w
    left, top = (sw - bw) / 2, (sh - bh) / 2
    room = min(bw / (out_w * _DRAFT_GAP), bh / (out_h * _DRAFT_GAP))
    draft = next((a for a in (8, 4, 2) if a <= room), 1)
    return _Plan((left, top, left + bw, top + bh), (out_w, out_h), draft)


def declared_size(data: bytes) -> tuple[str, int, int] | None:
    """Format and size a PNG, GIF, BMP or JPEG header declares, read from a few bytes (no
    Pillow): for headers Pillow refuses to open (e.g. 0 x N), and to size a decode up front."""
    try:
        if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
            w, h = struct.unpack(">II", data[16:24])
            return "PNG", w, h
        if data[:6] in (b"GIF87a", b"GIF89a"):
            w, h = struct.unpack("<HH", data[6:10])
            return "GIF", w, h
        if data[:2] == b"BM":
            if struct.unpack("<I", data[14:18])[0] == 12:
                w, h = struct.unpack("<HH", data[18:22])
            else:
                w, h = struct.unpack("<ii", data[18:26])
            return "BMP", abs(w), abs(h)
        if data[:2] == b"\xff\xd8":
            i, segments = 2, 0
            while i + 9 <= len(data) and data[i] == 0xFF and segments < _MAX_HEADER_SEGMENTS:
                segments += 1
                marker = data[i + 1]
                if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                    h, w = struct.unpack(">HH", data[i + 5 : i + 9])
                    return "JPEG", w, h
                i += 2 + struct.unpack(">H", data[i + 2 : i + 4])[0]
    except struct.error:
        return None
    return None


def _sniff_format(data: bytes) -> str | None:
    """The format Pillow would try for these bytes, from its plugins' prefix checks only."""
    Image.init()
    prefix = data[:16]
    for fmt, (_factory, accept) in Image.OPEN.items():
        try:
            if accept is not None and accept(prefix):
                return fmt
        except Exception:  # a prefix check that cannot read a short prefix: not this format
            continue
    return None


def _open(data: bytes, limits: DecodeLimits) -> ImageFile.ImageFile:
    """Parse the header only and apply every limit that does not need pixels.

    Only the allowed formats' plugins ever see the bytes: Pillow's other parsers (ICO, PSD,
    TIFF, ...) are attack surface we do not need. A format outside the list is named from
    the plugins' prefix checks, which read bytes and allocate nothing.
    """
    Image.init()  # every plugin registered, so the allow-list can name any of them
    # No "MPO" entry is needed: Pillow registers no MPO opener; JPEG's factory opens a
    # multi-picture file and returns an MpoImageFile (PIL/MpoImagePlugin.py, end of file).
    allowed = [fmt for fmt in Image.OPEN if fmt in limits.allowed_formats]
    try:
        im = Image.open(io.BytesIO(data), formats=allowed)
    except Image.DecompressionBombError as exc:  # only if someone re-armed Pillow's guard
        raise ImageTooLarge(f"image too large: {_one_line(exc)}") from None
    except Exception as exc:
        sniffed = _sniff_format(data)
        if sniffed is not None and sniffed not in limits.allowed_formats:
            raise UnsupportedFormat(
                f"image format {sniffed} is not accepted; "
                f"allowed: {', '.join(limits.allowed_formats)}"
            ) from None
        declared = declared_size(data)
        if declared is not None and 0 in declared[1:]:
            fmt, w, h = declared
            raise ZeroSizedImage(f"zero-sized image: {fmt} header declares {w}x{h}") from None
        if declared is not None:
            fmt, w, h = declared
            raise NotAnImage(
                f"corrupt {fmt} header declaring {w}x{h} ({len(data)} bytes): {_one_line(exc)}"
            ) from None
        raise NotAnImage(
            f"not an image: unrecognised format ({len(data)} bytes starting {data[:8].hex()})"
        ) from None
    fmt = im.format or "unknown"
    if fmt == "MPO":  # phone cameras' multi-picture JPEG: frame 0 is a plain JPEG
        fmt = "JPEG"
    if fmt not in limits.allowed_formats:
        raise UnsupportedFormat(
            f"image format {fmt} is not accepted; allowed: {', '.join(limits.allowed_formats)}"
        )
    w, h = im.size
    if w <= 0 or h <= 0:
        raise ZeroSizedImage(f"zero-sized image: {fmt} header declares {w}x{h}")
    if w * h > limits.max_image_pixels:
        raise ImageTooLarge(
            f"image too large: {fmt} declares {w}x{h} = {w * h} pixels, "
            f"limit is max_image_pixels={limits.max_image_pixels}"
        )
    if fmt == "JPEG":  # its decode cost grows with the number of scans: bound it first
        inspect_jpeg(data, max_scans=limits.max_jpeg_scans)
    return im


def _load(im: ImageFile.ImageFile, stored: tuple[int, int], data_len: int) -> None:
    """Decode the (first frame's) pixels; a short or broken stream is the client's fault."""
    try:
        im.load()
    except Exception as exc:
        msg = str(exc).lower()
        what = f"{im.format} {stored[0]}x{stored[1]}, {data_len} bytes"
        if isinstance(exc, EOFError | struct.error) or any(
            s in msg for s in ("truncated", "broken", "end of", "premature", "not enough")
        ):
            raise TruncatedImage(f"truncated image ({what}): {_one_line(exc)}") from None
        raise NotAnImage(f"corrupt pixel data ({what}): {_one_line(exc)}") from None


def _orientation(im: Image.Image) -> int:
    try:
        value = im.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # a broken EXIF block is no reason to refuse the pixels
        return 1
    return value if isinstance(value, int) and value in _TRANSPOSE else 1


def _resizable(im: Image.Image) -> Image.Image:
    """Bring any decoded mode to one of RGB, L, RGBA, LA (the modes we resize in)."""
    mode = im.mode
    if mode in ("RGBA", "LA"):
        return im
    if im.has_transparency_data:  # P + tRNS, PA, colour-keyed RGB/L, RGBa, La
        return im.convert("RGBA")
    if mode in ("RGB", "L"):
        return im
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.asarray(im)
        if mode == "F":
            grey = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        else:  # 16-bit samples: keep the high byte (65535 -> 255), as a 16->8 bit converter does
            grey = (np.clip(arr.astype(np.int64), 0, 65535) >> 8).astype(np.uint8)
        return Image.fromarray(grey, mode="L")
    if mode == "1":
        return im.convert("L")
    return im.convert("RGB")  # P, CMYK, YCbCr, LAB, HSV, RGBX


def _to_rgb(im: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    if im.mode == "RGB":
        return im
    if im.mode == "L":
        return im.convert("RGB")
    out = Image.new("RGB", im.size, background)
    out.paste(im.convert("RGB"), mask=im.getchannel("A"))
    return out


def decode_image(
    data: bytes, *, input_spec: InputSpec, preprocessing: Preprocessing, limits: DecodeLimits
) -> np.ndarray:
    """Decode one upload to uint8 RGB `[height, width, 3]` (C-contiguous, read-only).

    Raises only `GatewayError` subclasses: EmptyImage, NotAnImage, TruncatedImage,
    ZeroSizedImage, UnsupportedFormat, ImageTooLarge.
    """
    if not data:
        raise EmptyImage("empty image: received 0 bytes")
    im = _open(data, limits)
    try:
        with im:
            return _decode_opened(im, len(data), input_spec, preprocessing)
    except GatewayError:
        raise
    except Exception as exc:  # a Pillow path we did not foresee: still the client's image
        raise NotAnImage(
            f"cannot process {im.format} {im.size[0]}x{im.size[1]} {im.mode} image: "
            f"{_one_line(exc)}"
        ) from None


def _decode_opened(
    im: ImageFile.ImageFile, data_len: int, spec: InputSpec, pre: Preprocessing
) -> np.ndarray:
    stored = im.size
    shrink = 1.0
    if isinstance(im, JpegImagePlugin.JpegImageFile):  # JPEG and MPO
        # JPEG EXIF sits in APP1, parsed with the header: orient and draft before decoding.
        orientation = _orientation(im) if pre.apply_exif_orientation else 1
        plan = crop_plan(stored, orientation, spec, pre)
        if plan.draft_scale > 1:
            a = plan.draft_scale
            drafted = im.draft("RGB", (stored[0] // a, stored[1] // a))
            # Pillow reports the stored region the decoded pixels cover: stored / scale.
            shrink = stored[0] / drafted[1][2] if drafted is not None else 1.0
        _load(im, stored, data_len)
    else:
        _load(im, stored, data_len)  # PNG may carry eXIf after the pixels: load first
        orientation = _orientation(im) if pre.apply_exif_orientation else 1
        plan = crop_plan(stored, orientation, spec, pre)
    left, top, right, bottom = (v / shrink for v in plan.box)
    out = _resizable(im).resize(
        plan.size,
        _RESAMPLE[pre.interpolation],
        box=(left, top, right, bottom),
        reducing_gap=_REDUCING_GAP,
    )
    out = _to_rgb(out, pre.background_rgb)
    if orientation in _TRANSPOSE:
        out = out.transpose(_TRANSPOSE[orientation])
    arr = np.asarray(out)
    if arr.shape != (spec.height, spec.width, 3) or arr.dtype != np.uint8:
        raise NotAnImage(f"decoded to unexpected shape {arr.shape} {arr.dtype}")
    return arr


def decode_batch(
    items: Sequence[bytes],
    *,
    input_spec: InputSpec,
    preprocessing: Preprocessing,
    limits: DecodeLimits,
) -> np.ndarray:
    """Decode several uploads into one `[N, H, W, 3]` uint8 array; errors name the index."""
    out = np.empty((len(items), input_spec.height, input_spec.width, 3), np.uint8)
    for i, data in enumerate(items):
        try:
            out[i] = decode_image(
                data, input_spec=input_spec, preprocessing=preprocessing, limits=limits
            )
        except GatewayError as exc:
            raise type(exc)(f"image {i}: {exc.detail}") from None
    return out
