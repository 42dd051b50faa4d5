"""Subcommands of the model_builder package."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from model_builder.errors import ModelBuilderError

# Kept here (not imported from model_builder.resnet) so `--help` does not import Keras;
# tests/model_builder/test_cli_build.py checks it against resnet.ARCHITECTURES.
ARCH_NAMES = (
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnet_cifar",
    "toy_cifar10",
)


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add this package's subcommands to the top-level parser."""
    _add_build(sub)


# ------------------------------------------------------------------------------------ build


def _add_build(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser(
        "build",
        help="build a ResNet, load weights, save model.keras + run.json",
        description="Build an architecture, load its weights and write a run directory "
        "(model.keras, run.json) that `export` reads.",
    )
    p.add_argument("--arch", required=True, help=f"one of: {', '.join(ARCH_NAMES)}")
    p.add_argument("--input-size", type=int, help="square input side in pixels (default: per arch)")
    p.add_argument(
        "--classes", type=int, help="number of classes (default: labels file, else per arch)"
    )
    p.add_argument("--width", type=int, help="base width (default 64 for resnet*, 16 for cifar)")
    p.add_argument(
        "--weights",
        default="random",
        metavar="random|imagenet|PATH",
        help="initial weights; imagenet: resnet50/101/152 from the Keras cache or download",
    )
    p.add_argument("--labels", type=Path, help="text file, one class label per line")
    p.add_argument("--out", type=Path, required=True, metavar="RUN_DIR", help="new run directory")
    p.set_defaults(func=_run_build)


def _run_build(args: argparse.Namespace) -> int:
    """Handler of `build`: validate, build, load weights, save, print a one-screen summary."""
    out: Path = args.out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ModelBuilderError(
            f"run directory exists and is not empty; choose a new one. Received: --out={out}"
        )
    labels = _read_labels(args.labels) if args.labels else None
    if labels and args.classes is not None and args.classes != len(labels):
        raise ModelBuilderError(
            f"--classes must match the {len(labels)} labels in {args.labels}. "
            f"Received: --classes={args.classes}"
        )

    from model_builder import preprocess
    from model_builder.artifacts import MODEL_FILE, RunInfo, save_run_info
    from model_builder.manifest import Preprocessing
    from model_builder.resnet import build_model, get_spec
    from model_builder.weights import load_weights

    spec = get_spec(args.arch)
    classes = len(labels) if labels else args.classes
    model = build_model(
        args.arch, input_size=args.input_size, num_classes=classes, width=args.width
    )
    loaded = load_weights(model, args.weights, arch=args.arch)
    num_classes = int(model.output_shape[-1])
    size = int(model.input_shape[1])
    norm = preprocess.IMAGENET_CAFFE if loaded.source == "imagenet" else preprocess.UNIT_SCALE
    info = RunInfo(
        architecture=args.arch,
        input_height=size,
        input_width=size,
        labels=tuple(labels or (f"class_{i}" for i in range(num_classes))),
        normalization=norm,
        preprocessing=Preprocessing(crop_fraction=spec.crop_fraction),
        notes={
            "weights": loaded.source,
            "width": "fixed"
            if spec.default_width is None
            else str(args.width or spec.default_width),
            "head": "random (ImageNet body only)" if loaded.head_skipped else "as loaded",
        },
    )
    out.mkdir(parents=True, exist_ok=True)
    model.save(out / MODEL_FILE)
    save_run_info(out, info)
    _print_summary(model, info, loaded, out)
    return 0


def _read_labels(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelBuilderError(
            f"cannot read labels file. Received: --labels={path} ({exc})"
        ) from None
    labels = [line.strip() for line in text.splitlines() if line.strip()]
    if len(labels) < 2:
        raise ModelBuilderError(
            f"labels file needs at least 2 labels, one per line. Received: --labels={path}"
        )
    if len(set(labels)) != len(labels):
        dup = next(x for x in labels if labels.count(x) > 1)
        raise ModelBuilderError(
            f"labels must be unique; {dup!r} repeats. Received: --labels={path}"
        )
    return labels


def _print_summary(model: Any, info: Any, loaded: Any, out: Path) -> None:
    trainable = sum(math.prod(w.shape) for w in model.trainable_weights)
    norm = info.normalization
    first, last = info.labels[0], info.labels[-1]
    weights = loaded.source if loaded.path is None else f"{loaded.source} ({loaded.path})"
    if loaded.head_skipped:
        weights += ", head left random"
    lines = [
        f"built {info.architecture}: {model.count_params():,} params ({trainable:,} trainable)",
        f"  input    float32 [batch, {info.input_height}, {info.input_width}, 3], normalised "
        f"in-graph at export: {norm.model_channel_order}, scale {norm.scale:g}, "
        f"mean {norm.mean}, std {norm.std}",
        f"  output   logits [batch, {len(info.labels)}]  labels {first!r} .. {last!r}",
        f"  weights  {weights}",
        f"  saved    {out / 'model.keras'}, {out / 'run.json'}",
    ]
    print("\n".join(lines))
