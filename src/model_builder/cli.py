"""Subcommands of the model_builder package."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from model_builder.errors import ModelBuilderError, VerifyError
from model_builder.manifest import DEFAULT_BUCKETS


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add this package's subcommands to the top-level parser."""
    _add_export(sub)
    _add_verify(sub)


# --- export -------------------------------------------------------------------------------


def _buckets(text: str) -> tuple[int, ...]:
    """`1,2,4,8` -> (1, 2, 4, 8): strictly increasing positive integers."""
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        values = ()
    if not values or values[0] < 1 or list(values) != sorted(set(values)):
        raise argparse.ArgumentTypeError(
            f"must be strictly increasing positive integers, comma-separated. Received: {text!r}"
        )
    return values


def _add_export(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser(
        "export",
        help="export a run as a TF Serving SavedModel version (XLA, manifest, warmup, configs)",
        description="Write <model-base>/<name>/<version>/ from a run directory (model.keras + "
        "run.json), plus models.config, batching_parameters.txt and monitoring.config beside "
        "it. An existing version is never overwritten.",
    )
    p.add_argument("--run", type=Path, required=True, help="run directory from build/train")
    p.add_argument("--model-base", type=Path, required=True, help="TF Serving model base dir")
    p.add_argument("--name", required=True, help="model name (the directory under model-base)")
    p.add_argument("--version", type=int, required=True, help="new version number (> 0)")
    p.add_argument("--precision", choices=["float32", "bfloat16", "float16"], default="float32")
    p.add_argument(
        "--buckets",
        type=_buckets,
        default=DEFAULT_BUCKETS,
        help="batch sizes compiled and allowed by TF Serving (default: %(default)s)",
    )
    p.add_argument("--top-k", type=int, default=5, help="top-k ids/scores returned")
    p.add_argument(
        "--fold-batchnorm", action="store_true", help="fold BatchNorm into preceding convs"
    )
    p.add_argument(
        "--serving-base-path",
        default="/models",
        help="where model-base is mounted in the TF Serving container (default: %(default)s)",
    )
    p.set_defaults(func=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from model_builder.errors import ExportError

    version_dir = args.model_base / args.name / str(args.version)
    if version_dir.exists():  # fail before the slow TensorFlow start-up
        raise ExportError(
            f"{version_dir} already exists; versions are never overwritten, pick a new one. "
            f"Received: --version {args.version}"
        )
    from model_builder.artifacts import MODEL_FILE, load_run_info
    from model_builder.export import export_model

    run_info = load_run_info(args.run)
    model = _load_keras_model(args.run / MODEL_FILE)
    out = export_model(
        model,
        model_base=args.model_base,
        name=args.name,
        version=args.version,
        run_info=run_info,
        precision=args.precision,
        buckets=args.buckets,
        top_k=args.top_k,
        fold_batchnorm=args.fold_batchnorm,
        serving_base_path=args.serving_base_path,
    )
    print(f"exported {args.name} v{args.version} -> {out}")
    print(
        f"  precision={args.precision} buckets={list(args.buckets)} top_k={args.top_k} "
        f"folded_batchnorm={args.fold_batchnorm}"
    )
    print(f"  TF Serving configs in {args.model_base} (base path {args.serving_base_path})")
    return 0


def _load_keras_model(path: Path) -> Any:
    if not path.is_file():
        raise ModelBuilderError(f"no Keras model at {path}: pass a run directory from build/train")
    import keras

    try:
        return keras.models.load_model(path, compile=False)
    except (OSError, ValueError) as exc:
        raise ModelBuilderError(f"cannot load {path}: {exc}".splitlines()[0]) from None


# --- verify -------------------------------------------------------------------------------


def _add_verify(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser(
        "verify",
        help="check an exported version: parity, signatures, XLA, warmup, manifest",
        description="Reload VERSION_DIR and run every check; exit 0 when all pass, 2 otherwise.",
    )
    p.add_argument("version_dir", type=Path, metavar="VERSION_DIR")
    p.add_argument("--run", type=Path, default=None, help="run directory for the parity check")
    p.add_argument(
        "--tolerance", type=float, default=None, help="max |probability diff| (per precision)"
    )
    p.set_defaults(func=_run_verify)


def _run_verify(args: argparse.Namespace) -> int:
    from model_builder.verify import check_export

    report = check_export(args.version_dir, args.run, tolerance=args.tolerance)
    for line in report.lines():
        print(line)
    if not report.ok:
        names = ", ".join(c.name for c in report.failed)
        raise VerifyError(f"{args.version_dir}: {len(report.failed)} check(s) failed: {names}")
    print(f"all {len(report.checks)} checks passed")
    return 0
