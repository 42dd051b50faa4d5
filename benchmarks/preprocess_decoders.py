"""JPEG decoders against our Pillow draft path, to the model's 224x224 input (issue 16).

`service.decode.decode_image` decodes a JPEG with Pillow, scaled in the DCT domain by 1/2, 1/4
or 1/8 (`draft`), then makes one bilinear resize with the crop box. The candidates decode the
same file into a numpy array and finish with the same crop-and-resize, so only the decoder
differs:

    simplejpeg      libjpeg-turbo (bundled in its wheel), DCT scaling to the smallest of
                    1/2, 1/4, 1/8 that keeps the crop at least the output size
    turbojpeg       PyTurboJPEG over the system's libturbojpeg, with the finest of
                    libjpeg-turbo's 16 scaling factors (k/8) that keeps it so
    pillow-simd     the SIMD fork of Pillow running our own `decode_image` unchanged, in a
                    Python environment of its own (`--pillow-simd-python`)

For each: single-thread CPU per image (best of interleaved rounds), the speed-up over ours,
the mean absolute difference of the 224x224 output from ours (grey levels), and whether it
may be adopted: >= 1.3x faster on 1920x1080, a difference <= 2 grey levels, and wheels on
PyPI that work by themselves for the gateway image's platforms (linux x86_64 and aarch64,
CPython 3.11+). A candidate that is not installed is reported as such.

    python -m benchmarks.preprocess_decoders [--pillow-simd-python /path/to/python]

Writes `benchmarks/results/preprocess_decoders.md` and `.json`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from benchmarks.preprocess import RESULTS, machine, make_photo, per_image_s
from contract.manifest import InputSpec, Preprocessing
from service.decode import DecodeLimits, configure_pillow, crop_plan, decode_image

SPEC = InputSpec(height=224, width=224)
PRE = Preprocessing(crop_fraction=0.875, interpolation="bilinear")
LIMITS = DecodeLimits(max_image_pixels=40_000_000, allowed_formats=("JPEG",))
TARGET_SIZE = "1920x1080"
MIN_SPEEDUP, MAX_MAD = 1.3, 2.0
WHEELS = {
    "pillow (ours)": "yes (bundles libjpeg-turbo)",
    "simplejpeg": "yes: manylinux x86_64 and aarch64, cp311/cp312, bundles libjpeg-turbo",
    "turbojpeg": "no: a pure-Python wheel that needs the system's libturbojpeg (Debian 12 "
    "ships 2.1, PyTurboJPEG 2.x needs 3.x)",
    "pillow-simd": "no: source only (needs a compiler and libjpeg/zlib headers)",
}

Decoder = Callable[[bytes], np.ndarray]


def _finish(pixels: np.ndarray, stored: tuple[int, int]) -> np.ndarray:
    """Our crop-and-resize, from a decoded array of any scale of a `stored`-sized image."""
    plan = crop_plan(stored, 1, SPEC, PRE)
    shrink = stored[0] / pixels.shape[1]
    box = tuple(v / shrink for v in plan.box)
    out = Image.fromarray(pixels).resize(
        plan.size, Image.Resampling.BILINEAR, box=box, reducing_gap=3.0
    )
    return np.asarray(out)


def _needed_fraction(stored: tuple[int, int]) -> float:
    """The smallest scale that keeps the crop box at least the output size."""
    plan = crop_plan(stored, 1, SPEC, PRE)
    left, top, right, bottom = plan.box
    return max(SPEC.width / (right - left), SPEC.height / (bottom - top))


def decoders() -> dict[str, Decoder]:
    """The candidates installed here (ours always)."""
    found: dict[str, Decoder] = {
        "pillow (ours)": lambda data: decode_image(
            data, input_spec=SPEC, preprocessing=PRE, limits=LIMITS
        )
    }
    try:
        import simplejpeg

        def with_simplejpeg(data: bytes) -> np.ndarray:
            h, w, _, _ = simplejpeg.decode_jpeg_header(data)
            f = _needed_fraction((w, h))
            pixels = simplejpeg.decode_jpeg(
                data,
                colorspace="RGB",
                min_height=int(np.ceil(h * f)),
                min_width=int(np.ceil(w * f)),
            )
            return _finish(pixels, (w, h))

        found["simplejpeg"] = with_simplejpeg
    except ImportError:
        pass
    try:
        from turbojpeg import TJPF_RGB, TurboJPEG

        jpeg = TurboJPEG()
        factors = sorted(jpeg.scaling_factors, key=lambda nd: nd[0] / nd[1])

        def with_turbojpeg(data: bytes) -> np.ndarray:
            w, h, _, _ = jpeg.decode_header(data)
            f = _needed_fraction((w, h))
            scale = next(nd for nd in factors if nd[0] / nd[1] >= f)
            pixels = jpeg.decode(data, pixel_format=TJPF_RGB, scaling_factor=scale)
            return _finish(pixels, (w, h))

        found["turbojpeg"] = with_turbojpeg
    except (ImportError, RuntimeError, OSError):  # no package, or no libturbojpeg
        pass
    return found


def time_decoders(
    files: dict[str, bytes], found: dict[str, Decoder], rounds: int, seconds: float
) -> dict[str, dict[str, float]]:
    """Best-round CPU seconds per image, per decoder and file; interleaved round by round."""
    best: dict[str, dict[str, float]] = {name: {} for name in found}
    for size, data in files.items():
        for _ in range(rounds):
            for name, fn in found.items():
                cpu, _ = per_image_s(partial(fn, data), seconds)
                best[name][size] = min(best[name].get(size, float("inf")), cpu)
    return best


def outputs(files: dict[str, bytes], found: dict[str, Decoder]) -> dict[str, dict[str, Any]]:
    return {name: {size: fn(data) for size, data in files.items()} for name, fn in found.items()}


def worker(args: argparse.Namespace) -> None:
    """In another Python (pillow-simd): our decode_image on the files; times and outputs."""
    configure_pillow()
    folder = Path(args.worker)
    files = {p.stem: p.read_bytes() for p in sorted(folder.glob("*.jpg"))}
    ours = {"pillow (ours)": decoders()["pillow (ours)"]}
    times = time_decoders(files, ours, args.rounds, args.seconds)["pillow (ours)"]
    for size, out in outputs(files, ours)["pillow (ours)"].items():
        np.save(folder / f"{size}.npy", out)
    import PIL

    (folder / "times.json").write_text(json.dumps({"times": times, "pillow": PIL.__version__}))


def compare(
    files: dict[str, bytes], rounds: int, seconds: float, simd_python: str | None
) -> list[dict[str, Any]]:
    configure_pillow()
    found = decoders()
    times = time_decoders(files, found, rounds, seconds)
    outs = outputs(files, found)
    versions = _versions()
    if simd_python:
        with tempfile.TemporaryDirectory() as tmp:
            for size, data in files.items():
                (Path(tmp) / f"{size}.jpg").write_bytes(data)
            root = Path(__file__).resolve().parents[1]
            subprocess.run(
                [simd_python, "-m", "benchmarks.preprocess_decoders", "--worker", tmp,
                 "--rounds", str(rounds), "--seconds", str(seconds)],
                check=True, cwd=root, env={"PYTHONPATH": str(root)}, timeout=3600,
            )  # fmt: skip
            doc = json.loads((Path(tmp) / "times.json").read_text())
            times["pillow-simd"] = doc["times"]
            outs["pillow-simd"] = {s: np.load(Path(tmp) / f"{s}.npy") for s in files}
            versions["pillow-simd"] = doc["pillow"]
    rows = []
    base = times["pillow (ours)"]
    for name in [*WHEELS]:
        if name not in times:
            rows.append({"decoder": name, "installed": False, "wheels": WHEELS[name]})
            continue
        row: dict[str, Any] = {"decoder": name, "installed": True, "version": versions.get(name),
                               "wheels": WHEELS[name]}  # fmt: skip
        for size in files:
            mad = float(np.abs(outs[name][size].astype(np.int16)
                               - outs["pillow (ours)"][size].astype(np.int16)).mean())  # fmt: skip
            row[size] = {"ms": times[name][size] * 1000, "speedup": base[size] / times[name][size],
                         "mad": mad}  # fmt: skip
        target = row.get(TARGET_SIZE)
        row["adopt"] = bool(
            name != "pillow (ours)" and target is not None and target["speedup"] >= MIN_SPEEDUP
            and all(row[s]["mad"] <= MAX_MAD for s in files) and WHEELS[name].startswith("yes")
        )  # fmt: skip
        rows.append(row)
    return rows


def _versions() -> dict[str, str]:
    import PIL

    out = {"pillow (ours)": PIL.__version__}
    for name, module in (("simplejpeg", "simplejpeg"), ("turbojpeg", "turbojpeg")):
        with contextlib.suppress(ImportError):
            out[name] = str(getattr(__import__(module), "__version__", "?"))
    return out


def to_markdown(rows: list[dict[str, Any]], sizes: list[str]) -> list[str]:
    lines = [
        "## JPEG decoders to 224x224 (crop 0.875, bilinear), single thread",
        "",
        f"Adopt only if >= {MIN_SPEEDUP}x faster than ours on {TARGET_SIZE}, mean absolute "
        f"difference <= {MAX_MAD:g} grey levels at 224x224, and self-contained wheels on PyPI.",
        "",
        "| decoder | version | " + " | ".join(f"{s}: ms / x ours / MAD" for s in sizes)
        + " | wheels | adopt |",
        "|---|---|" + "---|" * len(sizes) + "---|---|",
    ]  # fmt: skip
    for r in rows:
        if not r["installed"]:
            cells = " | ".join("not installed" for _ in sizes)
            lines.append(f"| {r['decoder']} | - | {cells} | {r['wheels']} | no |")
            continue
        cells = " | ".join(
            f"{r[s]['ms']:.2f} / {r[s]['speedup']:.2f}x / {r[s]['mad']:.2f}" for s in sizes
        )
        adopt = "**yes**" if r["adopt"] else "no"
        lines.append(f"| {r['decoder']} | {r['version']} | {cells} | {r['wheels']} | {adopt} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=0.3, help="minimum seconds per round")
    parser.add_argument("--pillow-simd-python", help="a Python with pillow-simd (and our deps)")
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    files = {
        "640x480": make_photo(640, 480),
        "1920x1080": make_photo(1920, 1080),
        "1920x1080 grainy": make_photo(1920, 1080, dense=True),
        "4032x3024": make_photo(4032, 3024),
    }
    load_before = os.getloadavg()[0]
    rows = compare(files, args.rounds, args.seconds, args.pillow_simd_python)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    info = machine()
    command = " ".join(["python -m benchmarks.preprocess_decoders", *sys.argv[1:]])
    busy = max(load_before, os.getloadavg()[0]) > 1
    lines = [
        "# JPEG decoders: our Pillow draft path against libjpeg-turbo bindings and pillow-simd",
        "",
        f"- Date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}; command: `{command}`",
        f"- Machine: {info['cpu']}, {info['cores']} CPUs ({info['platform']}); Python "
        f"{platform.python_version()}; load average before {load_before:.2f}, after {load}"
        + (" (**busy**: other jobs shared the cores)" if busy else ""),
        f"- Method: {args.rounds} interleaved rounds of >= {args.seconds} s per decoder and "
        "file; CPU seconds of the thread per image in the best round. Same photo-like files as "
        "the preprocessing benchmark (benchmarks.preprocess.make_photo, q90).",
        "",
        *to_markdown(rows, list(files)),
        "",
    ]
    md = "\n".join(lines)
    print(md)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "preprocess_decoders.md").write_text(md, encoding="utf-8")
    (RESULTS / "preprocess_decoders.json").write_text(
        json.dumps({"command": command, "load": load, "busy": busy, "rows": rows}, indent=2) + "\n"
    )


if __name__ == "__main__":
    main()
