"""Subcommands of the model_builder package."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from contract.manifest import DEFAULT_BUCKETS, Preprocessing
from model_builder import cli_train
from model_builder.errors import ExportError, ModelBuilderError, VerifyError

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
    cli_train.register(sub)
    _add_export(sub)
    _add_verify(sub)


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

    # Keras and TensorFlow come with these: only when the command runs, never for --help.
    from model_builder import preprocess
    from model_builder.artifacts import MODEL_FILE, RunInfo, save_run_info
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
        "--fold-batchnorm",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="fold BatchNorm into the preceding convs (default: on; measured in "
        "benchmarks/results/model_cpu.md); --no-fold-batchnorm keeps the BN layers",
    )
    p.add_argument(
        "--serving-base-path",
        default="/models",
        help="where model-base is mounted in the TF Serving container (default: %(default)s)",
    )
    p.set_defaults(func=_run_export)


def _run_export(args: argparse.Namespace) -> int:

    version_dir = args.model_base / args.name / str(args.version)
    if version_dir.exists():  # fail before the slow TensorFlow start-up
        raise ExportError(
            f"{version_dir} already exists; versions are never overwritten, pick a new one. "
            f"Received: --version {args.version}"
        )
    # TensorFlow comes with the export: only now, after the cheap checks above.
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
    import keras  # only when a command loads a model

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
    from model_builder.verify import check_export  # TensorFlow: only when verify runs

    report = check_export(args.version_dir, args.run, tolerance=args.tolerance)
    for line in report.lines():
        print(line)
    if not report.ok:
        raise VerifyError(f"{args.version_dir}: {report.summary()}")
    print(report.summary())
    return 0
