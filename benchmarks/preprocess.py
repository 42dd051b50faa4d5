"""Gateway preprocessing speed: `service.decode.decode_image` vs a plain Pillow decode + resize.

Single thread (images/s per core), both measured side by side in the same run, interleaved
round by round so that load from other processes hits both alike. Writes
`benchmarks/results/preprocess.md` and `.json`.

    python -m benchmarks.preprocess [--rounds 4] [--seconds 0.3]

The same files through other JPEG decoders (simplejpeg, PyTurboJPEG, pillow-simd):
`python -m benchmarks.preprocess_decoders` (benchmarks/preprocess_decoders.py).
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import PIL
from PIL import Image, ImageDraw

from benchmarks.machine import machine_info
from contract.manifest import InputSpec, Preprocessing
from service.decode import DecodeLimits, configure_pillow, decode_image

SIZES = [(640, 480), (1920, 1080), (4032, 3024)]
# (target side, crop_fraction): the demo model's input, and ImageNet-style 224 / 0.875.
TARGETS = [(32, 1.0), (224, 0.875)]
RESULTS = Path(__file__).parent / "results"
LIMITS = DecodeLimits(max_image_pixels=40_000_000, allowed_formats=("JPEG",))
BASELINE_DOC = (
    "Image.open(BytesIO(data)).convert('RGB').resize((S, S)): full-resolution decode, a copy "
    "by convert, and Pillow's default resample filter (BICUBIC), stretched without crop"
)
BASELINE_BL_DOC = "the same with resample=BILINEAR, the filter our manifest uses"


def make_photo(w: int, h: int, seed: int = 0, dense: bool = False) -> bytes:
    """A photo-like JPEG (q90): smooth gradients, low-frequency texture, sensor noise, shapes.

    Texture is drawn at 1/4 resolution and upscaled, so large images are as smooth per pixel
    as real high-resolution photos; bits per pixel are reported next to each result.
    `dense`: strong per-pixel noise instead (a grainy, hard-to-compress photo), the worst case
    for us because entropy decoding, which no draft can scale down, dominates.
    """
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([x / w * 255, y / h * 255, (x + y) / (w + h) * 255], -1)
    tex_small = np.clip(128 + rng.normal(0, 40, (max(h // 4, 8), max(w // 4, 8), 3)), 0, 255)
    tex = Image.fromarray(tex_small.astype(np.uint8)).resize((w, h), Image.Resampling.BILINEAR)
    noise = rng.normal(0, 12.0 if dense else 3.0, (h, w, 3))
    pixels = 0.7 * base + 0.3 * np.asarray(tex, np.float32) + noise
    im = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    for _ in range(30):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        r = int(rng.integers(w // 40, w // 6))
        draw.ellipse([x0, y0, x0 + r, y0 + r], fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def per_image_s(fn: Callable[[], object], seconds: float) -> tuple[float, float]:
    """(CPU, wall) seconds per call over >= `seconds` of repeated calls (one round).

    CPU time of this thread is what one core spends per image; on a shared machine it is
    not inflated by waiting for a core, which wall time is.
    """
    fn()  # warm caches
    n, wall0, cpu0 = 0, time.perf_counter(), time.thread_time()
    while True:
        fn()
        n += 1
        wall = time.perf_counter() - wall0
        if wall >= seconds:
            return (time.thread_time() - cpu0) / n, wall / n


def machine() -> dict[str, str]:
    """CPU model, core count and platform (the fields this report and the ceiling show)."""
    info = machine_info()
    return {"cpu": info["cpu"], "cores": str(info["cores"]), "platform": info["platform"]}


def run(rounds: int, seconds: float) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    cases = [(w, h, False, TARGETS) for w, h in SIZES]
    cases += [(w, h, True, TARGETS[1:]) for w, h in SIZES[1:]]  # grainy files, 224 only
    for w, h, dense, targets in cases:
        data = make_photo(w, h, dense=dense)
        for side, crop in targets:
            spec = InputSpec(height=side, width=side)
            pre = Preprocessing(crop_fraction=crop, interpolation="bilinear")

            def ours(
                data: bytes = data, spec: InputSpec = spec, pre: Preprocessing = pre
            ) -> object:
                return decode_image(data, input_spec=spec, preprocessing=pre, limits=LIMITS)

            def naive(data: bytes = data, side: int = side) -> object:
                return Image.open(io.BytesIO(data)).convert("RGB").resize((side, side))

            def naive_bl(data: bytes = data, side: int = side) -> object:
                im = Image.open(io.BytesIO(data)).convert("RGB")
                return im.resize((side, side), Image.Resampling.BILINEAR)

            cpu: dict[str, list[float]] = {"ours": [], "naive": [], "naive_bl": []}
            wall: dict[str, list[float]] = {"ours": [], "naive": [], "naive_bl": []}
            for _ in range(rounds):  # interleaved: a busy spell slows all three alike
                for name, fn in (("ours", ours), ("naive", naive), ("naive_bl", naive_bl)):
                    c, t = per_image_s(fn, seconds)
                    cpu[name].append(c)
                    wall[name].append(t)
            best = {k: min(v) for k, v in cpu.items()}
            med = {k: float(np.median(v)) for k, v in cpu.items()}
            best_wall = {k: min(v) for k, v in wall.items()}
            rows.append(
                {
                    "image": f"{w}x{h}" + (" grainy" if dense else ""),
                    "jpeg_bytes": len(data),
                    "bits_per_pixel": round(len(data) * 8 / (w * h), 2),
                    "target": f"{side}x{side}",
                    "crop_fraction": crop,
                    "ours_img_s": round(1 / best["ours"], 1),
                    "naive_img_s": round(1 / best["naive"], 1),
                    "naive_bilinear_img_s": round(1 / best["naive_bl"], 1),
                    "speedup_vs_naive": round(best["naive"] / best["ours"], 2),
                    "speedup_vs_naive_bilinear": round(best["naive_bl"] / best["ours"], 2),
                    "median_speedup_vs_naive": round(med["naive"] / med["ours"], 2),
                    "wall_speedup_vs_naive": round(best_wall["naive"] / best_wall["ours"], 2),
                }
            )
            print(rows[-1], flush=True)
    return rows


def to_markdown(meta: dict[str, object], rows: list[dict[str, object]]) -> str:
    lines = [
        "# Preprocessing benchmark: `decode_image` vs plain Pillow",
        "",
        f"- Date: {meta['date']}",
        f"- Machine: {meta['machine']['cpu']}, {meta['machine']['cores']} CPUs "  # type: ignore[index]
        f"({meta['machine']['platform']})",  # type: ignore[index]
        f"- Python {meta['python']}, Pillow {meta['pillow']}, NumPy {meta['numpy']}",
        f"- Command: `{meta['command']}`",
        f"- Method: one thread; per case {meta['rounds']} interleaved rounds of "
        f">= {meta['seconds_per_round']} s each for ours and both baselines. images/s per core = "
        "1 / (thread CPU seconds per image) in the best round; `median x`: ratio of the median "
        "rounds; `wall x`: ratio of best wall-clock rounds.",
        f"- Baseline `naive`: {BASELINE_DOC}. `naive bilinear`: {BASELINE_BL_DOC}.",
        "- Ours: header sniff + limits, JPEG DCT-domain draft (1/2, 1/4, 1/8), one bilinear "
        "resize with the crop box (and reducing_gap), RGB uint8 array.",
        "- Inputs: synthetic photo-like JPEGs at quality 90 (gradients, texture, noise, shapes); "
        "bits per pixel shown. `grainy` rows: strong per-pixel noise, a dense file; entropy "
        "decoding cannot be scaled down by the draft, so denser files gain less.",
        "- Note: the machine was shared with other engineers' processes (TensorFlow builds and "
        "tests) during the run; absolute numbers are noisy, ratios more stable.",
        "",
        "| image | bpp | target | ours img/s | naive img/s | naive bilinear img/s "
        "| x naive | x naive bilinear | median x naive | wall x naive |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['image']} | {r['bits_per_pixel']} | {r['target']} (crop {r['crop_fraction']}) "
            f"| {r['ours_img_s']} | {r['naive_img_s']} | {r['naive_bilinear_img_s']} "
            f"| {r['speedup_vs_naive']} | {r['speedup_vs_naive_bilinear']} "
            f"| {r['median_speedup_vs_naive']} | {r['wall_speedup_vs_naive']} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=0.3, help="minimum seconds per round")
    args = parser.parse_args()
    configure_pillow()  # as the gateway does at start
    rows = run(args.rounds, args.seconds)
    meta: dict[str, object] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "python": platform.python_version(),
        "pillow": PIL.__version__,
        "numpy": np.__version__,
        "command": " ".join(["python -m benchmarks.preprocess", *sys.argv[1:]]),
        "rounds": args.rounds,
        "seconds_per_round": args.seconds,
        "baseline": BASELINE_DOC,
        "baseline_bilinear": BASELINE_BL_DOC,
        "shared_machine": True,
    }
    md = to_markdown(meta, rows)
    print(md)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "preprocess.md").write_text(md, encoding="utf-8")
    (RESULTS / "preprocess.json").write_text(
        json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n", encoding="utf-8"
    )


if __name__ == "__main__":
    main()
