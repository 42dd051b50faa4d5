"""`builtin:shapes`: a procedurally generated, offline image-classification dataset.

Ten visual classes (shapes and patterns) drawn with Pillow from a seed, with random colours,
size, position, rotation, background and pixel noise, so a model has to learn real (if easy)
visual features. The same seed always gives the same images; nothing is downloaded.
Every class is unchanged by a horizontal flip (diagonal stripes come in both directions), so
flip augmentation is safe; stripe classes are orientation-sensitive beyond ~25 degrees.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw

SHAPE_CLASSES: tuple[str, ...] = (
    "checkerboard",
    "circle",
    "cross",
    "diagonal_stripes",
    "horizontal_stripes",
    "ring",
    "square",
    "star",
    "triangle",
    "vertical_stripes",
)
_SUPERSAMPLE = 4  # draw large, then downsample with a box filter: anti-aliased edges
_MAX_NOISE_STD = 12.0  # pixel noise, in uint8 units

Colour = tuple[int, int, int]
_Painter = Callable[[ImageDraw.ImageDraw, int, np.random.Generator, Colour, Colour], None]


def _luma(c: Colour) -> float:
    return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]


def _colour_pair(rng: np.random.Generator) -> tuple[Colour, Colour]:
    """Background and foreground colours that differ clearly in brightness."""
    while True:
        bg = tuple(int(v) for v in rng.integers(0, 256, 3))
        fg = tuple(int(v) for v in rng.integers(0, 256, 3))
        if abs(_luma(bg) - _luma(fg)) >= 60:  # type: ignore[arg-type]
            return bg, fg  # type: ignore[return-value]


def _rotate(
    points: list[tuple[float, float]], angle: float, cx: float, cy: float
) -> list[tuple[float, float]]:
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in points]


def _placement(rng: np.random.Generator, n: int) -> tuple[float, float, float, float]:
    """Centre, radius and rotation of one shape that stays (mostly) inside an n x n canvas."""
    r = n * rng.uniform(0.22, 0.42)
    cx = rng.uniform(r * 0.9, n - r * 0.9)
    cy = rng.uniform(r * 0.9, n - r * 0.9)
    return cx, cy, r, rng.uniform(0.0, 2.0 * math.pi)


def _polygon(
    points: list[tuple[float, float]],
    rng: np.random.Generator,
    n: int,
    d: ImageDraw.ImageDraw,
    fg: Colour,
) -> None:
    cx, cy, r, angle = _placement(rng, n)
    d.polygon(_rotate([(x * r, y * r) for x, y in points], angle, cx, cy), fill=fg)


def _circle(
    d: ImageDraw.ImageDraw, n: int, rng: np.random.Generator, bg: Colour, fg: Colour
) -> None:
    cx, cy, r, _ = _placement(rng, n)
    d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fg)


def _ring(d: ImageDraw.ImageDraw, n: int, rng: np.random.Generator, bg: Colour, fg: Colour) -> None:
    cx, cy, r, _ = _placement(rng, n)
    inner = r * rng.uniform(0.45, 0.65)
    d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fg)
    d.ellipse((cx - inner, cy - inner, cx + inner, cy + inner), fill=bg)


def _square(
    d: ImageDraw.ImageDraw, n: int, rng: np.random.Generator, bg: Colour, fg: Colour
) -> None:
    k = 0.75
    _polygon([(-k, -k), (k, -k), (k, k), (-k, k)], rng, n, d, fg)


def _triangle(
    d: ImageDraw.ImageDraw, n: int, rng: np.random.Generator, bg: Colour, fg: Colour
) -> None:
    pts = [
        (math.cos(a), math.sin(a)) for a in (math.pi / 2 + i * 2 * math.pi / 3 for i in range(3))
    ]
    _polygon(pts, rng, n, d, fg)


def _star(d: ImageDraw.ImageDraw, n: int, rng: np.random.Generator, bg: Colour, fg: Colour) -> None:
    pts = []
    for i in range(10):
        rad = 1.0 if i % 2 == 0 else 0.42
        a = -math.pi / 2 + i * math.pi / 5
        pts.append((rad * math.cos(a), rad * math.sin(a)))
    _polygon(pts, rng, n, d, fg)


def _cross(
    d: ImageDraw.ImageDraw, n: int, rng: np.random.Generator, bg: Colour, fg: Colour
) -> None:
    w = rng.uniform(0.22, 0.32)
    pts = [
        (-w, -1),
        (w, -1),
        (w, -w),
        (1, -w),
        (1, w),
        (w, w),
        (w, 1),
        (-w, 1),
        (-w, w),
        (-1, w),
        (-1, -w),
        (-w, -w),
    ]
    _polygon(pts, rng, n, d, fg)


def _stripes(
    d: ImageDraw.ImageDraw, n: int, rng: np.random.Generator, fg: Colour, angle: float
) -> None:
    """Parallel bands across the whole canvas; `angle` 0 draws horizontal bands."""
    period = n * rng.uniform(0.16, 0.3)
    offset = rng.uniform(0.0, period)
    half = n  # bands span beyond the canvas so rotation leaves no gaps
    y = -half + offset
    while y < half:
        band = [
            (-half * 1.5, y),
            (half * 1.5, y),
            (half * 1.5, y + period / 2),
            (-half * 1.5, y + period / 2),
        ]
        d.polygon(_rotate(band, angle, n / 2, n / 2), fill=fg)
        y += period


def _jitter(rng: np.random.Generator, degrees: float) -> float:
    return math.radians(rng.uniform(-degrees, degrees))


def _horizontal(
    d: ImageDraw.ImageDraw, n: int, rng: np.random.Generator, bg: Colour, fg: Colour
) -> None:
    _stripes(d, n, rng, fg, _jitter(rng, 12))


def _vertical(
    d: ImageDraw.ImageDraw, n: int, rng: np.random.Generator, bg: Colour, fg: Colour
) -> None:
    _stripes(d, n, rng, fg, math.pi / 2 + _jitter(rng, 12))


def _diagonal(
    d: ImageDraw.ImageDraw, n: int, rng: np.random.Generator, bg: Colour, fg: Colour
) -> None:
    direction = math.pi / 4 if rng.random() < 0.5 else -math.pi / 4
    _stripes(d, n, rng, fg, direction + _jitter(rng, 8))


def _checkerboard(
    d: ImageDraw.ImageDraw, n: int, rng: np.random.Generator, bg: Colour, fg: Colour
) -> None:
    cell = n * rng.uniform(0.14, 0.26)
    angle = _jitter(rng, 10)
    ox, oy = rng.uniform(0.0, cell, 2)
    cells = int(2 * n / cell) + 2
    for i in range(-cells, cells):
        for j in range(-cells, cells):
            if (i + j) % 2:
                continue
            x0, y0 = ox + i * cell - n / 2, oy + j * cell - n / 2
            sq = [(x0, y0), (x0 + cell, y0), (x0 + cell, y0 + cell), (x0, y0 + cell)]
            d.polygon(_rotate(sq, angle, n / 2, n / 2), fill=fg)


_PAINTERS: dict[str, _Painter] = {
    "checkerboard": _checkerboard,
    "circle": _circle,
    "cross": _cross,
    "diagonal_stripes": _diagonal,
    "horizontal_stripes": _horizontal,
    "ring": _ring,
    "square": _square,
    "star": _star,
    "triangle": _triangle,
    "vertical_stripes": _vertical,
}


def render_shape(
    label: str, size: int, rng: np.random.Generator, *, noise: bool = True
) -> np.ndarray:
    """One `size x size` RGB uint8 image of class `label`, drawn with randomness from `rng`."""
    n = size * _SUPERSAMPLE
    bg, fg = _colour_pair(rng)
    img = Image.new("RGB", (n, n), bg)
    _PAINTERS[label](ImageDraw.Draw(img), n, rng, bg, fg)
    arr = np.asarray(img.resize((size, size), Image.Resampling.BOX), dtype=np.float64)
    if noise:
        arr = arr + rng.normal(0.0, rng.uniform(0.0, _MAX_NOISE_STD), arr.shape)
    return np.clip(np.rint(arr), 0, 255).astype(np.uint8)


def generate_shapes(
    n_per_class: int, size: int = 32, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """`n_per_class` images of every class: (uint8 [N, size, size, 3], int32 labels [N]).

    Labels index `SHAPE_CLASSES` (sorted names, as an image folder would give). Deterministic
    in `seed`; image i of class c does not depend on `n_per_class`, so larger sets extend
    smaller ones.
    """
    if n_per_class < 1:
        raise ValueError(f"n_per_class must be >= 1. Received: n_per_class={n_per_class}")
    if size < 8:
        raise ValueError(f"size must be >= 8 pixels. Received: size={size}")
    images = np.empty((len(SHAPE_CLASSES) * n_per_class, size, size, 3), np.uint8)
    labels = np.empty(len(SHAPE_CLASSES) * n_per_class, np.int32)
    k = 0
    for c, name in enumerate(SHAPE_CLASSES):
        for i in range(n_per_class):
            # One independent stream per (seed, class, index) keeps images stable across n.
            rng = np.random.default_rng([seed, c, i])
            images[k] = render_shape(name, size, rng)
            labels[k] = c
            k += 1
    return images, labels
