"""Request inputs: images from a folder or generated, encoded once into request bytes.

Everything is built before the clock starts, so sending costs one `write` per request.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

from loadtest.errors import LoadTestError
from loadtest.plan import GEN_FORMATS

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"}
MAX_PREBUILT = 64  # distinct request bodies cycled through
BOUNDARY = "resnetservingloadtestboundary"


@dataclass(frozen=True)
class Image:
    name: str
    data: bytes
    content_type: str


def _content_type(name: str) -> str:
    ext = Path(name).suffix.lower().lstrip(".")
    return "image/jpeg" if ext in ("jpg", "jpeg") else f"image/{ext}"


def load_images(folder: Path) -> list[Image]:
    """Every image file directly inside `folder`, sorted by name."""
    if not folder.is_dir():
        raise LoadTestError(f"--images must be a folder of images. Received: {str(folder)!r}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise LoadTestError(
            f"--images folder has no {'/'.join(sorted(IMAGE_SUFFIXES))} files. Received: {str(folder)!r}"
        )
    return [Image(p.name, p.read_bytes(), _content_type(p.name)) for p in files[:MAX_PREBUILT]]


def generate_images(
    sizes: Sequence[tuple[int, int]], formats: Sequence[str], count: int = 4, seed: int = 0
) -> list[Image]:
    """`count` smooth random images per (width, height) and format (one of plan.GEN_FORMATS);
    photo-like, so JPEG sizes are real."""
    rng = np.random.default_rng(seed)
    out: list[Image] = []
    for w, h in sizes:
        for fmt in formats:
            pil_fmt = GEN_FORMATS[fmt.lower()]
            for i in range(count):
                small = rng.integers(
                    0, 256, size=(max(2, h // 32), max(2, w // 32), 3), dtype=np.uint8
                )
                img = PILImage.fromarray(small).resize((w, h), PILImage.Resampling.BILINEAR)
                buf = io.BytesIO()
                img.save(buf, format=pil_fmt)
                ext = "jpg" if pil_fmt == "JPEG" else pil_fmt.lower()
                out.append(
                    Image(f"gen_{w}x{h}_{i}.{ext}", buf.getvalue(), _content_type(f"x.{ext}"))
                )
    return out


def _body(images: list[Image], encoding: str) -> tuple[bytes, str]:
    if encoding == "raw":
        return images[0].data, images[0].content_type
    if encoding == "json":
        doc = {"images": [base64.b64encode(im.data).decode("ascii") for im in images]}
        return json.dumps(doc).encode(), "application/json"
    parts = []
    for im in images:
        parts.append(
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="{im.name}"\r\n'
            f"Content-Type: {im.content_type}\r\n\r\n".encode()
            + im.data
            + b"\r\n"
        )
    return b"".join(
        parts
    ) + f"--{BOUNDARY}--\r\n".encode(), f"multipart/form-data; boundary={BOUNDARY}"


def build_http_requests(
    images: list[Image],
    *,
    host: str,
    path: str,
    per_request: int,
    encoding: str = "multipart",
) -> list[bytes]:
    """Complete HTTP/1.1 requests (head + body), one per starting image, cycled when sending.
    `per_request` >= 1, and 1 for `raw` (plan.inputs_from checks both)."""
    out: list[bytes] = []
    for i in range(min(len(images), MAX_PREBUILT)):
        chosen = [images[(i + j) % len(images)] for j in range(per_request)]
        body, ctype = _body(chosen, encoding)
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: resnet-serving-loadtest\r\n"
            f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
        )
        out.append(head.encode("latin-1") + b"\r\n" + body)
    return out


def pixel_batches(
    images: list[Image], *, per_request: int, height: int, width: int
) -> list[np.ndarray]:
    """uint8 [N, H, W, 3] RGB arrays (stretched to H x W) for TF Serving Predict requests."""
    arrays = []
    for im in images[:MAX_PREBUILT]:
        pil = PILImage.open(io.BytesIO(im.data)).convert("RGB").resize((width, height))
        arrays.append(np.asarray(pil, dtype=np.uint8))
    return [
        np.stack([arrays[(i + j) % len(arrays)] for j in range(per_request)])
        for i in range(len(arrays))
    ]
