"""Subcommands that make data and train: train, make-dataset, demo."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add train, make-dataset and demo to the top-level parser."""
    _add_train(sub)
    _add_make_dataset(sub)
    _add_demo(sub)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _log(line: str) -> None:
    print(line, flush=True)  # flush: `make up` and CI logs show progress as it happens


# ---------------------------------------------------------------- train


def _add_train(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser(
        "train",
        help="train a ResNet on an image folder or builtin:shapes",
        description="Train a model; writes RUN_DIR/model.keras, run.json and history.csv.",
    )
    p.add_argument(
        "--data", required=True, help="image folder (one subfolder per class) or builtin:shapes"
    )
    p.add_argument("--arch", default="resnet_cifar", help="architecture (default: resnet_cifar)")
    p.add_argument(
        "--input-size", type=_positive_int, default=32, help="square input size in px (default: 32)"
    )
    p.add_argument("--epochs", type=_positive_int, default=15)
    p.add_argument("--batch-size", type=_positive_int, default=64)
    p.add_argument(
        "--val-split", type=float, default=0.2, help="validation fraction per class (default: 0.2)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mixed-precision", choices=("none", "float16", "bfloat16"), default="none")
    p.add_argument(
        "--samples-per-class",
        type=_positive_int,
        default=None,
        help="builtin:shapes only (default: 500)",
    )
    p.add_argument(
        "--width",
        type=_positive_int,
        default=None,
        help="base filter count (architecture default if unset)",
    )
    p.add_argument(
        "--learning-rate", type=float, default=2e-3, help="peak Adam learning rate, cosine decay"
    )
    p.add_argument(
        "--patience", type=_positive_int, default=5, help="early-stopping patience in epochs"
    )
    p.add_argument(
        "--flip",
        choices=("none", "horizontal", "both"),
        default="horizontal",
        help="flip augmentation",
    )
    p.add_argument("--out", required=True, type=Path, help="run directory; must be new or empty")
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from model_builder.train import train  # TensorFlow: only when training runs

    train(
        args.data,
        args.out,
        arch=args.arch,
        input_size=args.input_size,
        epochs=args.epochs,
        batch_size=args.batch_size,
        val_split=args.val_split,
        seed=args.seed,
        mixed_precision=args.mixed_precision,
        samples_per_class=args.samples_per_class,
        width=args.width,
        learning_rate=args.learning_rate,
        patience=args.patience,
        flip=args.flip,
        log=_log,
    )
    return 0


# ---------------------------------------------------------------- make-dataset


def _add_make_dataset(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser(
        "make-dataset",
        help="write builtin:shapes as an image folder (or sample images with --examples)",
        description="Write the procedurally generated shapes dataset: OUT/<class>/<i>.png.",
    )
    p.add_argument("--out", required=True, type=Path, help="output folder; must be new or empty")
    p.add_argument("--samples-per-class", type=_positive_int, default=100)
    p.add_argument("--size", type=_positive_int, default=32, help="image size in px (default: 32)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--format", choices=("png", "jpeg"), default="png")
    p.add_argument(
        "--examples",
        action="store_true",
        help="instead write one PNG and one JPEG per class at --size (e.g. 256) for curl demos",
    )
    p.set_defaults(func=_run_make_dataset)


def _run_make_dataset(args: argparse.Namespace) -> int:
    from model_builder.datasets import write_examples, write_image_folder  # Pillow only

    if args.examples:
        paths = write_examples(args.out, size=args.size, seed=args.seed)
        _log(f"wrote {len(paths)} sample images to {args.out}")
        return 0
    counts = write_image_folder(args.out, args.samples_per_class, args.size, args.seed, args.format)
    _log(f"wrote {sum(counts.values())} images in {len(counts)} classes to {args.out}")
    return 0


# ---------------------------------------------------------------- demo


def _add_demo(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser(
        "demo",
        help="train the demo model on builtin:shapes and export it for serving",
        description="Train the demo recipe, export MODEL_BASE/NAME/VERSION, verify it.",
    )
    p.add_argument("--model-base", required=True, type=Path, help="model volume root, e.g. models")
    p.add_argument("--name", default="demo")
    p.add_argument("--version", type=_positive_int, default=1)
    p.add_argument(
        "--run-dir",
        type=Path,
        default=None,
        help="training run folder (default: <model-base>/../runs/<name>-<version>)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from model_builder.demo import run_demo  # TensorFlow: only when the demo runs

    run_demo(
        args.model_base,
        name=args.name,
        version=args.version,
        run_dir=args.run_dir,
        seed=args.seed,
        log=_log,
    )
    return 0
