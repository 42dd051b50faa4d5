"""`demo`: train the demo model on `builtin:shapes`, export it for TF Serving, verify it.

`make up` runs this when `<model_base>/demo/1/saved_model.pb` is missing, so it trains into
a temporary folder and renames it into place only when training finished: the run folder is
either complete (and reused on the next call) or absent.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import keras

from model_builder.artifacts import INFO_FILE, MODEL_FILE, load_run_info
from model_builder.datasets import BUILTIN_SHAPES
from model_builder.errors import ModelBuilderError
from model_builder.export import export_model
from model_builder.train import Log, train
from model_builder.verify import verify_export

# Chosen to reach >= 95 % validation accuracy in about two minutes on 2 CPU cores
# (benchmarks/results/demo_training.md).
DEMO_ARCH = "resnet_cifar"
DEMO_INPUT_SIZE = 32
DEMO_WIDTH = 8
DEMO_EPOCHS = 10
DEMO_SAMPLES_PER_CLASS = 300
DEMO_BATCH_SIZE = 32
TARGET_ACCURACY = 0.95


def train_demo(run_dir: Path, *, seed: int = 0, log: Log = print, **overrides: Any) -> None:
    """Train the demo recipe into `run_dir` atomically (temporary sibling, then rename)."""
    run_dir = Path(run_dir)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{run_dir.name}-", dir=run_dir.parent))
    try:
        kwargs: dict[str, Any] = {
            "arch": DEMO_ARCH,
            "input_size": DEMO_INPUT_SIZE,
            "width": DEMO_WIDTH,
            "epochs": DEMO_EPOCHS,
            "samples_per_class": DEMO_SAMPLES_PER_CLASS,
            "batch_size": DEMO_BATCH_SIZE,
            "seed": seed,
            **overrides,
        }
        train(BUILTIN_SHAPES, tmp / "run", log=log, **kwargs)
        (tmp / "run").rename(run_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _export(model: Any, model_base: Path, name: str, version: int, run_dir: Path) -> Path:

    info = load_run_info(run_dir)
    return export_model(model, model_base=model_base, name=name, version=version, run_info=info)


def _verify(version_dir: Path, run_dir: Path, log: Log) -> None:
    """Run `verify`'s checks; a failed check raises VerifyError (one line per check)."""

    report = verify_export(version_dir, run_dir)
    for line in report.lines():
        log(f"verify: {line}")


def run_demo(
    model_base: Path,
    *,
    name: str = "demo",
    version: int = 1,
    run_dir: Path | None = None,
    seed: int = 0,
    log: Log = print,
    **overrides: Any,
) -> Path:
    """Train (or reuse a finished run), export to `<model_base>/<name>/<version>`, verify."""
    model_base = Path(model_base)
    version_dir = model_base / name / str(version)
    if version_dir.exists() and any(version_dir.iterdir()):
        raise ModelBuilderError(
            f"export {version_dir} already exists: remove it or pass another --version"
        )
    run_dir = Path(run_dir) if run_dir else model_base.parent / "runs" / f"{name}-{version}"
    if (run_dir / INFO_FILE).is_file() and (run_dir / MODEL_FILE).is_file():
        log(f"demo: reusing the finished training run in {run_dir}")
    elif run_dir.exists() and any(run_dir.iterdir()):
        raise ModelBuilderError(
            f"run directory {run_dir} exists but holds no finished run: remove it"
        )
    else:
        log(
            f"demo: training {DEMO_ARCH} on {BUILTIN_SHAPES} into {run_dir} (about 2-5 minutes on CPU)"
        )
        train_demo(run_dir, seed=seed, log=log, **overrides)
    accuracy = load_run_info(run_dir).val_accuracy or 0.0
    if accuracy < TARGET_ACCURACY:
        log(f"demo: warning: validation accuracy {accuracy:.2%} is below {TARGET_ACCURACY:.0%}")

    log(f"demo: exporting to {version_dir}")
    start = time.perf_counter()
    model = keras.models.load_model(run_dir / MODEL_FILE)
    version_dir = _export(model, model_base, name, version, run_dir)
    log(f"demo: exported in {time.perf_counter() - start:.0f}s")
    _verify(version_dir, run_dir, log)
    log(
        f"demo: done, serve it with: resnet-serving serve --model-base {model_base} --model-name {name}"
    )
    return version_dir
