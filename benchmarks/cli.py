"""`resnet-serving bench`: the exported model timed in-process (`benchmarks.model_bench`).

The benchmark scripts in this folder run as `python -m benchmarks.<name>`; this one is also a
subcommand because users time their own exports with it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add `bench` to the top-level parser."""
    p = sub.add_parser(
        "bench",
        help="time exported SavedModels in-process: images/s, median/p99 ms per batch",
        description="Export a model in each variant (precision x XLA x BatchNorm folding), load "
        "it back and time serving_default on synthetic uint8 images (no HTTP, not TF Serving). "
        "Variants are interleaved per round; ratios compare variants of the same run.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--arch", help="architecture with random weights (e.g. resnet50)")
    src.add_argument("--run", type=Path, metavar="RUN_DIR", help="run directory (model.keras)")
    src.add_argument("--version-dir", type=Path, help="an existing export version, timed as-is")
    p.add_argument("--input-size", type=int, help="with --arch: square input side (default: arch)")
    p.add_argument("--classes", type=int, help="with --arch: number of classes (default: arch)")
    p.add_argument("--buckets", default="1,8,32", help="batch sizes to time (default 1,8,32)")
    p.add_argument("--precision", default="float32", help="float32, bfloat16, or both, comma-sep")
    p.add_argument("--xla", default="on,off", help="XLA jit_compile of the core: on, off, on,off")
    p.add_argument("--fold", default="on,off", help="BatchNorm folding: on, off, on,off")
    p.add_argument("--seconds", type=float, default=3.0, help="timed seconds per point (3)")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds per point (2)")
    p.add_argument("--out", type=Path, help="write the report as JSON here")
    p.add_argument("--markdown", type=Path, help="write the tables as Markdown here")
    p.set_defaults(func=_run_bench)


def _run_bench(args: argparse.Namespace) -> int:
    """Handler of `bench`: build or load the model, time the variants, print and save."""
    # rich, Keras and TensorFlow: only when `bench` runs (the CLI parser is built without them).
    from rich.console import Console

    from benchmarks import model_bench as bench
    from benchmarks import model_bench_report as bench_report

    buckets = bench.parse_ints(args.buckets, "buckets")
    if args.seconds <= 0 or args.rounds < 1:
        raise bench.BenchError(
            f"--seconds must be > 0 and --rounds >= 1. Received: seconds={args.seconds}, "
            f"rounds={args.rounds}"
        )
    console = Console(stderr=True)
    if args.version_dir is not None:
        report = bench.bench_export(
            args.version_dir, buckets, seconds=args.seconds, rounds=args.rounds
        )
    else:
        precisions = [p.strip() for p in args.precision.split(",") if p.strip()]
        if not precisions or any(p not in ("float32", "bfloat16", "float16") for p in precisions):
            raise bench.BenchError(
                f"--precision takes float32, bfloat16, float16 (comma-separated). "
                f"Received: precision={args.precision!r}"
            )
        variants = bench.variants_for(
            precisions,
            bench.parse_onoff(args.xla, "xla"),
            bench.parse_onoff(args.fold, "fold"),
        )
        model, run_info = _bench_model(args)
        report = bench.bench_model(
            model,
            run_info,
            variants,
            buckets,
            seconds=args.seconds,
            rounds=args.rounds,
            log=lambda msg: console.print(f"[dim]{msg}[/dim]"),
        )
    Console(width=max(Console().width, 120)).print(bench_report.render(report))
    for path, text in (
        (args.out, json.dumps(report, indent=2) + "\n"),
        (args.markdown, bench_report.to_markdown(report)),
    ):
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            console.print(f"wrote {path}")
    return 0


def _bench_model(args: argparse.Namespace) -> tuple[Any, Any]:
    """The model to time: a run directory's, or `--arch` with random weights (and BN stats)."""
    import keras  # only when `bench` builds a model

    from benchmarks import model_bench as bench
    from model_builder import fold
    from model_builder.artifacts import MODEL_FILE, load_run_info
    from model_builder.resnet import build_model, get_spec

    if args.run is not None:
        return keras.models.load_model(args.run / MODEL_FILE), load_run_info(args.run)
    keras.utils.set_random_seed(0)
    model = build_model(args.arch, input_size=args.input_size, num_classes=args.classes)
    fold.randomize_batchnorm(model)
    spec = get_spec(args.arch)
    size = args.input_size or spec.default_input_size
    classes = args.classes or spec.default_num_classes
    return model, bench.random_run_info(args.arch, size, classes)
