"""Write a small seed corpus of valid images in every allowed format (and a few odd modes)."""

from __future__ import annotations

import io
import sys
from pathlib import Path

from PIL import Image


def seeds() -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    base = Image.radial_gradient("L").resize((48, 40)).convert("RGB")
    for fmt, mode in [
        ("JPEG", "RGB"),
        ("JPEG", "CMYK"),
        ("PNG", "RGBA"),
        ("PNG", "P"),
        ("PNG", "LA"),
        ("WEBP", "RGB"),
        ("GIF", "P"),
        ("BMP", "RGB"),
    ]:
        buf = io.BytesIO()
        base.convert(mode).save(buf, format=fmt)
        out[f"seed_{fmt.lower()}_{mode.lower()}"] = buf.getvalue()
    return out


def main(dest: str) -> None:
    d = Path(dest)
    d.mkdir(parents=True, exist_ok=True)
    for name, data in seeds().items():
        (d / name).write_bytes(data)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "fuzz/corpus")
