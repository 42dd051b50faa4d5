"""Train a model from `model_builder.resnet` on `builtin:shapes` or an image folder.

Leaves `RUN_DIR/model.keras` (best validation accuracy, logits out), `RUN_DIR/run.json`
(the RunInfo `export` reads) and `RUN_DIR/history.csv`. Prints one line per epoch and, at
the end, per-class accuracy and the most frequent confusions.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import keras
import numpy as np

from contract.manifest import Preprocessing
from model_builder.artifacts import INFO_FILE, MODEL_FILE, RunInfo, save_run_info
from model_builder.datasets import (
    BUILTIN_SHAPES,
    DEFAULT_SHAPES_PER_CLASS,
    Flip,
    PipelineOptions,
    check_val_split,
    make_splits,
    open_source,
)
from model_builder.errors import ModelBuilderError
from model_builder.preprocess import UNIT_SCALE
from model_builder.resnet import build_model, get_spec

MixedPrecision = Literal["none", "float16", "bfloat16"]
Log = Callable[[str], None]


@dataclass(frozen=True)
class Confusion:
    """Per-class accuracy and the largest off-diagonal cells of a confusion matrix."""

    matrix: np.ndarray  # [true, predicted] counts
    labels: tuple[str, ...]

    @property
    def accuracy(self) -> float:
        total = int(self.matrix.sum())
        return float(np.trace(self.matrix)) / total if total else 0.0

    @property
    def per_class(self) -> dict[str, float]:
        support = self.matrix.sum(axis=1)
        return {
            name: float(self.matrix[i, i] / support[i]) if support[i] else float("nan")
            for i, name in enumerate(self.labels)
        }

    def top_confusions(self, k: int = 5) -> list[tuple[str, str, int]]:
        """(true label, predicted label, count) for the `k` largest mistakes, largest first."""
        off = self.matrix.copy()
        np.fill_diagonal(off, 0)
        order = np.argsort(-off, axis=None, kind="stable")[:k]
        cells = [np.unravel_index(i, off.shape) for i in order]
        return [(self.labels[t], self.labels[p], int(off[t, p])) for t, p in cells if off[t, p] > 0]


def confusion(y_true: np.ndarray, y_pred: np.ndarray, labels: tuple[str, ...]) -> Confusion:
    n = len(labels)
    matrix = np.zeros((n, n), np.int64)
    np.add.at(matrix, (np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)), 1)
    return Confusion(matrix, labels)


def format_confusion(conf: Confusion, k: int = 5) -> str:
    """A small text table: accuracy per class (with support), then the top confusions."""
    width = max(len("class"), *(len(name) for name in conf.labels))
    support = conf.matrix.sum(axis=1)
    lines = [f"{'class':<{width}}  {'acc':>6}  {'n':>5}"]
    for (name, acc), n in zip(conf.per_class.items(), support, strict=True):
        lines.append(f"{name:<{width}}  {acc:>6.1%}  {n:>5}")
    mistakes = conf.top_confusions(k)
    lines.append(
        "top confusions (true -> predicted: count): "
        + (", ".join(f"{t} -> {p}: {c}" for t, p, c in mistakes) if mistakes else "none")
    )
    return "\n".join(lines)


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    info: RunInfo
    confusion: Confusion
    epochs_run: int
    seconds: float


def _build_model(
    arch: str, input_size: int, num_classes: int, width: int | None, dropout: float | None
) -> Any:
    """The one call site of `model_builder.resnet.build_model`."""

    return build_model(
        arch, input_size=input_size, num_classes=num_classes, width=width, dropout=dropout
    )


def _float32_logits(model: Any) -> Any:
    """Under mixed precision keep the logits float32 (stable softmax and loss)."""

    if model.outputs[0].dtype == "float32":
        return model
    out = keras.layers.Activation("linear", dtype="float32", name="logits_float32")(
        model.outputs[0]
    )
    return keras.Model(model.inputs, out, name=model.name)


class _EpochLine:
    """Keras callback: one log line per epoch (readable in CI logs, unlike progress bars)."""

    def __new__(cls, log: Log, epochs: int) -> Any:

        class EpochLine(keras.callbacks.Callback):
            def __init__(self) -> None:
                super().__init__()
                self.best = -1.0
                self.start = 0.0

            def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
                self.start = time.perf_counter()

            def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
                logs = logs or {}
                val = float(logs.get("val_accuracy", 0.0))
                mark = " *" if val > self.best else ""
                self.best = max(self.best, val)
                log(
                    f"epoch {epoch + 1:>3}/{epochs}  loss {logs.get('loss', 0):.4f}  "
                    f"acc {logs.get('accuracy', 0):.4f}  val_loss {logs.get('val_loss', 0):.4f}  "
                    f"val_acc {val:.4f}  {time.perf_counter() - self.start:5.1f}s{mark}"
                )

        return EpochLine()


def _check_run_dir(run_dir: Path) -> None:
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise ModelBuilderError(f"run directory is not empty, refusing to overwrite it: {run_dir}")


def train(
    data: str | Path,
    run_dir: Path,
    *,
    arch: str = "resnet_cifar",
    input_size: int = 32,
    epochs: int = 15,
    batch_size: int = 64,
    val_split: float = 0.2,
    seed: int = 0,
    mixed_precision: MixedPrecision = "none",
    samples_per_class: int | None = None,
    width: int | None = None,
    dropout: float | None = None,
    learning_rate: float = 2e-3,
    patience: int = 5,
    flip: Flip = "horizontal",
    jit_compile: bool = False,
    log: Log = print,
) -> TrainResult:
    """Train, keep the best epoch by validation accuracy, write model.keras and run.json."""
    run_dir = Path(run_dir)
    _check_run_dir(run_dir)
    if epochs < 1 or batch_size < 1:
        raise ModelBuilderError(
            f"epochs and batch size must be >= 1. Received: epochs={epochs}, batch_size={batch_size}"
        )
    if mixed_precision not in ("none", "float16", "bfloat16"):
        raise ModelBuilderError(
            f"mixed precision must be none, float16 or bfloat16. Received: {mixed_precision!r}"
        )
    check_val_split(val_split)
    # Dataset problems are reported before TensorFlow or Keras is even imported.
    src = open_source(data, input_size=input_size, seed=seed, samples_per_class=samples_per_class)

    # The serving resize rule is the architecture's (crop fraction), so train with it too.
    preprocessing = Preprocessing(crop_fraction=get_spec(arch).crop_fraction)
    opts = PipelineOptions(
        input_size=input_size,
        batch_size=batch_size,
        val_split=val_split,
        seed=seed,
        flip=flip,
        preprocessing=preprocessing,
        normalization=UNIT_SCALE,
    )
    splits = make_splits(src, opts)
    log(f"data: {data}  classes {len(splits.labels)}  train {splits.n_train}  val {splits.n_val}")

    keras.utils.set_random_seed(seed)
    previous_policy = keras.mixed_precision.global_policy()
    if mixed_precision != "none":
        keras.mixed_precision.set_global_policy(f"mixed_{mixed_precision}")
    try:
        model = _float32_logits(_build_model(arch, input_size, len(splits.labels), width, dropout))
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
    log(
        f"model: {arch}  input {input_size}x{input_size}  params {model.count_params():,}  precision {mixed_precision}"
    )

    steps = epochs * max(1, -(-splits.n_train // batch_size))
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=steps, alpha=0.05)
    model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        jit_compile=jit_compile,
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    callbacks = [
        keras.callbacks.ModelCheckpoint(
            run_dir / MODEL_FILE, monitor="val_accuracy", mode="max", save_best_only=True
        ),
        keras.callbacks.EarlyStopping(
            monitor="val_accuracy", mode="max", patience=patience, restore_best_weights=True
        ),
        keras.callbacks.CSVLogger(str(run_dir / "history.csv")),
        _EpochLine(log, epochs),
    ]
    start = time.perf_counter()
    history = model.fit(
        splits.train,
        validation_data=splits.val,
        epochs=epochs,
        callbacks=callbacks,
        shuffle=False,
        verbose=0,
    )
    seconds = time.perf_counter() - start

    # Early stopping restored the best weights; predict once for the confusion summary.
    logits = model.predict(splits.val, verbose=0)
    conf = confusion(splits.val_labels, np.argmax(logits, axis=-1), splits.labels)
    model.save(run_dir / MODEL_FILE)
    epochs_run = len(history.history.get("loss", []))
    info = RunInfo(
        architecture=arch,
        input_height=input_size,
        input_width=input_size,
        labels=splits.labels,
        normalization=UNIT_SCALE,
        preprocessing=preprocessing,
        outputs_logits=True,
        val_accuracy=round(conf.accuracy, 6),
        notes={
            "data": str(data),
            "samples_per_class": str(samples_per_class or DEFAULT_SHAPES_PER_CLASS)
            if str(data) == BUILTIN_SHAPES
            else "",
            "train_images": str(splits.n_train),
            "val_images": str(splits.n_val),
            "epochs_run": str(epochs_run),
            "seed": str(seed),
            "width": str(width),
            "mixed_precision": mixed_precision,
            "train_seconds": f"{seconds:.1f}",
        },
    )
    save_run_info(run_dir, info)
    log(f"validation accuracy {conf.accuracy:.2%} after {epochs_run} epochs in {seconds:.0f}s")
    log(format_confusion(conf))
    log(f"wrote {run_dir / MODEL_FILE} and {run_dir / INFO_FILE}")
    return TrainResult(run_dir, info, conf, epochs_run, seconds)
