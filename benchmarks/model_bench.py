"""Benchmark exported SavedModels on this machine: images/s and latency per batch bucket.

Each variant (precision x XLA x BatchNorm folding) is exported with `export_model` into a temp
model base, loaded back with `tf.saved_model.load` and driven through `serving_default` with
synthetic uint8 images: the model alone, no HTTP, no TF Serving. Variants are timed in
interleaved rounds (A B A B ...) so that drift on a shared CPU hits them alike, and the ratios
(XLA on/off, fold on/off, bf16/fp32) compare variants measured in the same run.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from benchmarks.model_bench_report import make_report
from contract.errors import ResnetServingError
from contract.manifest import Precision, read_manifest
from contract.signatures import OUTPUT_PROBABILITIES, SIGNATURE_PIXELS
from model_builder.artifacts import RunInfo
from model_builder.export import export_model

ServeFn = Callable[[np.ndarray], dict[str, np.ndarray]]
PARITY_IMAGES = 16  # fixed inputs (seed 0) for the folded-vs-unfolded comparison


@dataclass(frozen=True)
class Variant:
    """One way to export the same model."""

    precision: Precision
    xla: bool
    fold: bool

    @property
    def label(self) -> str:
        return f"{self.precision} xla={_onoff(self.xla)} fold={_onoff(self.fold)}"


@dataclass(frozen=True)
class Point:
    """The timing of one variant at one batch size (per-call times over all rounds)."""

    variant: str
    precision: str
    xla: bool
    fold: bool
    batch: int
    calls: int
    images_per_s: float
    median_ms: float
    p99_ms: float
    first_call_s: float  # the first call compiles (XLA) or traces; excluded from the rest
    round_images_per_s: list[float]  # images/s in each round; round i of A pairs with B's
    # Images per second of this process's CPU time (all its threads): time other processes
    # take from a shared CPU does not count, so it is steadier than images/s under load.
    images_per_cpu_s: float


@dataclass
class Timing:
    """What `measure` saw for one (variant, batch): first call, per-call wall, CPU time."""

    first_s: float
    rounds: list[list[float]]  # wall seconds of each timed call, one list per round
    cpu_s: float = 0.0  # process CPU seconds over all timed calls


def _onoff(flag: bool) -> str:
    return "on" if flag else "off"


def parse_onoff(text: str, what: str) -> list[bool]:
    """`"on,off"` -> [True, False]; BenchError on anything else."""
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values or any(v not in ("on", "off") for v in values):
        raise BenchError(f"{what} takes on, off or on,off. Received: {what}={text!r}")
    return [v == "on" for v in dict.fromkeys(values)]


def parse_ints(text: str, what: str) -> list[int]:
    """`"1,8,32"` -> [1, 8, 32] (positive, increasing); BenchError otherwise."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or values != sorted(set(values)) or values[0] < 1:
        raise BenchError(f"{what} must be increasing positive ints. Received: {what}={text!r}")
    return values


class BenchError(ResnetServingError):
    """Benchmark options that cannot work (bad lists, missing export)."""


def variants_for(
    precisions: Sequence[Precision], xla: Sequence[bool], fold: Sequence[bool]
) -> list[Variant]:
    """Every combination, float32 / XLA on / fold off first (the export default)."""
    return [Variant(p, x, f) for p in precisions for x in xla for f in fold]


def random_run_info(arch: str, input_size: int, num_classes: int) -> RunInfo:
    labels = tuple(f"class_{i}" for i in range(num_classes))
    return RunInfo(
        architecture=arch, input_height=input_size, input_width=input_size, labels=labels
    )


def export_variants(
    model: Any, run_info: RunInfo, variants: Sequence[Variant], buckets: Sequence[int], base: Path
) -> dict[Variant, Path]:
    """Export each variant as `<base>/v<i>/1` through the real export path."""

    dirs: dict[Variant, Path] = {}
    for i, v in enumerate(variants):
        dirs[v] = export_model(
            model,
            model_base=base,
            name=f"v{i}",
            version=1,
            run_info=run_info,
            precision=v.precision,
            buckets=buckets,
            fold_batchnorm=v.fold,
            top_k=min(5, len(run_info.labels)),
            jit_compile=v.xla,
        )
    return dirs


def load_serving(version_dir: Path) -> ServeFn:
    """`serving_default` of a SavedModel as a numpy-in, numpy-out function."""

    try:
        fn = tf.saved_model.load(str(version_dir)).signatures[SIGNATURE_PIXELS]
    except (OSError, KeyError) as exc:
        raise BenchError(f"cannot load {SIGNATURE_PIXELS} from {version_dir}: {exc}") from None

    def call(images: np.ndarray) -> dict[str, np.ndarray]:
        # .numpy() waits for the result, so the timer sees the whole call.
        return {k: v.numpy() for k, v in fn(images=tf.constant(images)).items()}

    return call


def synthetic_images(batch: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (batch, height, width, 3), np.uint8)


def measure(
    fns: dict[str, ServeFn],
    buckets: Sequence[int],
    size: tuple[int, int],
    *,
    seconds: float,
    rounds: int = 2,
    warmup_calls: int = 2,
) -> dict[tuple[str, int], Timing]:
    """`{(label, batch): Timing}`, variants interleaved round by round.

    Each (variant, batch) gets `seconds` split over `rounds` slices and at least one timed
    call per slice; warmup calls (the first compiles) are not timed.
    """
    images = {b: synthetic_images(b, *size, seed=b) for b in buckets}
    first: dict[tuple[str, int], float] = {}
    for b in buckets:
        for label, fn in fns.items():
            t0 = time.perf_counter()
            fn(images[b])
            first[label, b] = time.perf_counter() - t0
            for _ in range(warmup_calls - 1):
                fn(images[b])
    out = {key: Timing(first_s, []) for key, first_s in first.items()}
    slice_s = seconds / rounds
    for _ in range(rounds):
        for b in buckets:
            for label, fn in fns.items():
                timing = out[label, b]
                this_round: list[float] = []
                timing.rounds.append(this_round)
                end = time.perf_counter() + slice_s
                cpu0 = time.process_time()
                while True:
                    t0 = time.perf_counter()
                    fn(images[b])
                    t1 = time.perf_counter()
                    this_round.append(t1 - t0)
                    if t1 >= end:
                        break
                timing.cpu_s += time.process_time() - cpu0
    return out


def to_points(variants: dict[str, Variant], raw: dict[tuple[str, int], Timing]) -> list[Point]:
    points = []
    for (label, batch), timing in raw.items():
        per_round = timing.rounds
        arr = np.asarray([t for r in per_round for t in r])
        v = variants[label]
        points.append(
            Point(
                variant=label,
                precision=v.precision,
                xla=v.xla,
                fold=v.fold,
                batch=batch,
                calls=len(arr),
                images_per_s=batch * len(arr) / float(arr.sum()),
                median_ms=1e3 * float(np.median(arr)),
                p99_ms=1e3 * float(np.percentile(arr, 99)),
                first_call_s=timing.first_s,
                round_images_per_s=[round(batch * len(r) / sum(r), 3) for r in per_round],
                images_per_cpu_s=batch * len(arr) / max(timing.cpu_s, 1e-9),
            )
        )
    return sorted(points, key=lambda p: (p.batch, p.variant))


def ratios(points: Sequence[Point]) -> list[dict[str, Any]]:
    """Throughput ratios between variants that differ in one knob, per batch size."""
    by_key = {(p.precision, p.xla, p.fold, p.batch): p for p in points}
    out: list[dict[str, Any]] = []
    for (prec, xla, fold, batch), p in by_key.items():
        pairs = {
            "xla on/off": (prec, not xla, fold) if xla else None,
            "fold on/off": (prec, xla, not fold) if fold else None,
            "bfloat16/float32": (("float32", xla, fold) if prec == "bfloat16" else None),
        }
        for knob, other in pairs.items():
            base = by_key.get((*other, batch)) if other else None
            if base is not None:
                out.append(
                    {
                        "ratio": knob,
                        "held_fixed": _held_fixed(knob, p),
                        "batch": batch,
                        "numerator": p.variant,
                        "denominator": base.variant,
                        "images_per_s": round(p.images_per_s / base.images_per_s, 3),
                        "median_ms": round(p.median_ms / base.median_ms, 3),
                        # The same ratio per round (both variants timed minutes apart at
                        # most): its range shows how much the shared CPU moved the result.
                        "images_per_s_rounds": _round_ratio_range(p, base),
                        "images_per_cpu_s": round(p.images_per_cpu_s / base.images_per_cpu_s, 3),
                    }
                )
    return sorted(out, key=lambda r: (r["ratio"], r["batch"], r["numerator"]))


def _round_ratio_range(p: Point, base: Point) -> list[float]:
    per_round = [a / b for a, b in zip(p.round_images_per_s, base.round_images_per_s, strict=True)]
    return [round(min(per_round), 3), round(max(per_round), 3)]


def _held_fixed(knob: str, p: Point) -> str:
    """The knobs a ratio keeps equal, e.g. `float32 fold=off` for the XLA ratio."""
    parts = {
        "precision": p.precision,
        "xla": f"xla={'on' if p.xla else 'off'}",
        "fold": f"fold={'on' if p.fold else 'off'}",
    }
    parts.pop({"xla on/off": "xla", "fold on/off": "fold"}.get(knob, "precision"))
    return " ".join(parts.values())


def fold_parity(
    fns: dict[str, ServeFn], variants: dict[str, Variant], size: tuple[int, int]
) -> list[dict[str, Any]]:
    """Folded vs unfolded (same precision and XLA): top-1 agreement and max prob difference."""
    images = synthetic_images(PARITY_IMAGES, *size, seed=12345)
    out = []
    for label, v in variants.items():
        twin = next(
            (k for k, w in variants.items() if w == Variant(v.precision, v.xla, False)), None
        )
        if not v.fold or twin is None:
            continue
        a = fns[label](images)[OUTPUT_PROBABILITIES]
        b = fns[twin](images)[OUTPUT_PROBABILITIES]
        out.append(
            {
                "folded": label,
                "unfolded": twin,
                "images": PARITY_IMAGES,
                "top1_agree": int((a.argmax(-1) == b.argmax(-1)).sum()),
                "max_abs_prob_diff": float(np.abs(a - b).max()),
                # Relative to the unfolded probability: with many classes every probability
                # is small, so the absolute difference alone says little.
                "max_rel_prob_diff": float((np.abs(a - b) / np.maximum(b, 1e-12)).max()),
                "max_prob": float(b.max()),
            }
        )
    return out


# ------------------------------------------------------------------------------ the command


def bench_export(
    version_dir: Path, buckets: Sequence[int], *, seconds: float, rounds: int
) -> dict[str, Any]:
    """Time an existing export as it is (its manifest says precision, XLA and folding)."""

    manifest = read_manifest(version_dir)
    v = Variant(manifest.precision, manifest.xla_compiled, manifest.folded_batchnorm)
    size = (manifest.input.height, manifest.input.width)
    fns = {v.label: load_serving(version_dir)}
    points = to_points({v.label: v}, measure(fns, buckets, size, seconds=seconds, rounds=rounds))
    rows = [asdict(p) for p in points]
    return make_report(str(version_dir), size, buckets, seconds, rounds, rows, [], [])


def bench_model(
    model: Any,
    run_info: RunInfo,
    variants: Sequence[Variant],
    buckets: Sequence[int],
    *,
    seconds: float,
    rounds: int,
    log: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Export every variant of `model`, time them interleaved, add ratios and fold parity."""
    size = (run_info.input_height, run_info.input_width)
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        t0 = time.perf_counter()
        dirs = export_variants(model, run_info, variants, buckets, Path(tmp))
        log(f"exported {len(dirs)} variants in {time.perf_counter() - t0:.0f} s")
        by_label = {v.label: v for v in variants}
        fns = {v.label: load_serving(d) for v, d in dirs.items()}
        t0 = time.perf_counter()
        raw = measure(fns, buckets, size, seconds=seconds, rounds=rounds)
        log(f"timed {len(raw)} points in {time.perf_counter() - t0:.0f} s")
        points = to_points(by_label, raw)
        parity = fold_parity(fns, by_label, size)
    return make_report(
        run_info.architecture,
        size,
        buckets,
        seconds,
        rounds,
        [asdict(p) for p in points],
        ratios(points),
        parity,
    )
