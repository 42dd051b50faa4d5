"""Hostile and unusual JPEGs made on the fly, for the marker-walk and decode-cost tests."""

from __future__ import annotations

import io
import struct

import numpy as np
from PIL import Image


def photo(width: int, height: int, **save: object) -> bytes:
    """A smooth photo-like JPEG (gradients and a little noise), saved with Pillow's options."""
    rng = np.random.default_rng(width * 7919 + height)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 // max(1, width - 1), y * 255 // max(1, height - 1),
                     (x + y) * 127 // max(1, width + height - 2)], axis=-1)  # fmt: skip
    pixels = np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", **{"quality": 90, **save})
    return buf.getvalue()


def segments(data: bytes) -> list[tuple[int, int, int]]:
    """(marker, start, end) of every marker segment and scan (entropy data included)."""
    out, i = [], 2
    while i < len(data):
        marker = data[i + 1]
        if marker == 0xD9:
            out.append((marker, i, i + 2))
            break
        (length,) = struct.unpack_from(">H", data, i + 2)
        end = i + 2 + length
        if marker == 0xDA:
            while True:
                j = data.find(b"\xff", end)
                if data[j + 1] == 0 or 0xD0 <= data[j + 1] <= 0xD7:
                    end = j + 2
                    continue
                end = j
                break
        out.append((marker, i, end))
        i = end
    return out


def many_scans(extra: int, size: int = 1024) -> bytes:
    """A valid progressive JPEG plus `extra` copies of its last refinement scans.

    The image is flat, so its refinement scans hold almost nothing (EOB runs): the file stays
    small while libjpeg must run one full-resolution pass per scan, the decode-cost attack.
    """
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (120, 130, 140)).save(buf, "JPEG", quality=90, progressive=True)
    data = buf.getvalue()
    parts = segments(data)
    scans = [(s, e) for m, s, e in parts if m == 0xDA]
    eoi = parts[-1][1]
    tail = b"".join(data[s:e] for s, e in scans[-3:])
    copies, rest = divmod(extra, 3)
    tail_scans = [data[s:e] for s, e in scans[-3:]]
    return data[:eoi] + tail * copies + b"".join(tail_scans[:rest]) + data[eoi:]


def with_sof(data: bytes, sof: int, precision: int | None = None) -> bytes:
    """`data` with its frame marker replaced (e.g. 0xC3 lossless) and optionally its precision."""
    for marker, start, _ in segments(data):
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            out = bytearray(data)
            out[start + 1] = sof
            if precision is not None:
                out[start + 4] = precision
            return bytes(out)
    raise ValueError("no SOF marker")


def with_comments(data: bytes, count: int) -> bytes:
    """`data` with `count` tiny COM segments after SOI."""
    com = b"\xff\xfe\x00\x03x"
    return data[:2] + com * count + data[2:]
