"""A JPEG's cost, read from its markers before a single pixel is decoded.

A progressive JPEG is decoded scan by scan, and libjpeg must entropy-decode every scan at
full coefficient resolution (DCT scaling does not help) before it can move to the next. A
file of a few hundred KB made of thousands of tiny scans ("EOB runs only") costs seconds to
minutes of CPU per image: the many-scans attack that libjpeg-turbo guards against with
`TJPARAM_SCANLIMIT` / `djpeg -maxscans` (turbojpeg.h; its own fuzzer allows 500 scans on
images of at most 1 MP). Pillow exposes no such limit, so the gateway walks the markers
itself: SOF, DHT, DQT and SOS segments are counted, the entropy-coded data after each SOS is
skipped by searching for the next marker (`FF 00` is a stuffed byte, `FF D0`..`FF D7` a
restart marker, `FF FF` fill), and the walk stops at the first EOI. It reads the bytes once,
allocates nothing per scan, and takes well under a millisecond on a 2 MB photo.

Besides the scan count it refuses what a photo never needs but costs much more to decode:
arithmetic coding, lossless and hierarchical frames, precisions other than 8 bits, and
files with an absurd number of marker segments. Everything else is left to Pillow (a missing
EOI, for instance, is Pillow's to judge).
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from service.errors import ImageTooComplex, UnsupportedFormat

# Start-of-frame markers and what they mean (ITU T.81 Table B.1).
_SOF_NAMES = {
    0xC0: "baseline",
    0xC1: "extended sequential",
    0xC2: "progressive",
    0xC3: "lossless",
    0xC5: "differential sequential",
    0xC6: "differential progressive",
    0xC7: "differential lossless",
    0xC9: "arithmetic extended sequential",
    0xCA: "arithmetic progressive",
    0xCB: "arithmetic lossless",
    0xCD: "arithmetic differential sequential",
    0xCE: "arithmetic differential progressive",
    0xCF: "arithmetic differential lossless",
}
_SOF_ALLOWED = frozenset({0xC0, 0xC1, 0xC2})  # Huffman-coded, 8-bit DCT: every camera/encoder
_SOS, _EOI, _TEM = 0xDA, 0xD9, 0x01
_RST = range(0xD0, 0xD8)

DEFAULT_MAX_SCANS = 64  # libjpeg progressive scripts use 10 (colour) or 6 (grey) scans
DEFAULT_MAX_SEGMENTS = 1024  # markers of all kinds (APPn, DHT, DQT, SOS, COM, ...)


@dataclass(frozen=True)
class JpegShape:
    """What the markers say about a JPEG, as far as the walk got."""

    frame: str  # "baseline", "progressive", ...
    width: int
    height: int
    components: int
    scans: int
    segments: int


def inspect_jpeg(
    data: bytes, *, max_scans: int = DEFAULT_MAX_SCANS, max_segments: int = DEFAULT_MAX_SEGMENTS
) -> JpegShape | None:
    """Walk the markers of `data` (starting with SOI) and refuse a JPEG too costly to decode.

    Raises ImageTooComplex (too many scans or segments) or UnsupportedFormat (a frame type or
    precision a photo does not use), both as soon as the walk sees them. Returns None when
    the markers end before a frame header (Pillow then explains what is wrong).
    """
    n = len(data)
    i = 2  # after SOI
    frame: tuple[str, int, int, int] | None = None
    scans = segments = 0
    while i < n:
        if data[i] != 0xFF:
            break  # not a marker where one must be: Pillow reports the corruption
        while i < n and data[i] == 0xFF:  # fill bytes before a marker
            i += 1
        if i >= n:
            break
        marker = data[i]
        i += 1
        if marker == _EOI:
            break
        if marker in _RST or marker == _TEM:  # stand-alone markers: no length
            continue
        if i + 2 > n:
            break
        (length,) = struct.unpack_from(">H", data, i)
        if length < 2:
            break
        body = i + 2
        i += length
        segments += 1
        if segments > max_segments:
            raise ImageTooComplex(
                f"JPEG has more than {max_segments} marker segments; "
                f"limit is max_jpeg_segments={max_segments}"
            )
        if marker in _SOF_NAMES:
            frame = _frame(marker, data, body)
        elif marker == _SOS:
            scans += 1
            if scans > max_scans:
                kind = frame[0] if frame else "unknown"
                raise ImageTooComplex(
                    f"{kind} JPEG has more than {max_scans} scans (each one is decoded at full "
                    f"resolution); limit is max_jpeg_scans={max_scans}"
                )
            i = _after_entropy_data(data, i)
    if frame is None:
        return None
    name, width, height, components = frame
    return JpegShape(name, width, height, components, scans, segments)


def _frame(marker: int, data: bytes, body: int) -> tuple[str, int, int, int]:
    """SOF: refuse what a photo never uses; return (name, width, height, components)."""
    name = _SOF_NAMES[marker]
    if marker not in _SOF_ALLOWED:
        raise UnsupportedFormat(
            f"{name} JPEG frames are not accepted (only baseline, extended and progressive "
            "Huffman-coded JPEG)"
        )
    try:
        precision, height, width, components = struct.unpack_from(">BHHB", data, body)
    except struct.error:
        return name, 0, 0, 0  # truncated frame header: Pillow refuses it with its own words
    if precision != 8:
        raise UnsupportedFormat(f"{precision}-bit JPEG is not accepted (only 8-bit samples)")
    return name, width, height, components


def _after_entropy_data(data: bytes, i: int) -> int:
    """Index of the marker that ends the entropy-coded data starting at `i` (or len(data)):
    the first 0xFF followed by neither 0x00 (a stuffed 0xFF), a restart marker RST0-7, nor
    another 0xFF (fill). One regular-expression search in C instead of a Python loop over
    every 0xFF of the scan (a 640x480 photo has about a hundred)."""
    m = _MARKER_IN_SCAN.search(data, i)
    return m.start() if m is not None else len(data)


_MARKER_IN_SCAN = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
