"""The training loop on a tiny builtin:shapes run, and the confusion summary on known numbers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest

from model_builder.artifacts import load_run_info
from model_builder.datasets import BUILTIN_SHAPES, PipelineOptions, load_dataset
from model_builder.errors import ArchitectureError, DatasetError, ModelBuilderError
from model_builder.preprocess import UNIT_SCALE
from model_builder.shapes import SHAPE_CLASSES
from model_builder.train import TrainResult, confusion, format_confusion, train

TINY: dict[str, Any] = {
    "samples_per_class": 5,
    "epochs": 2,
    "width": 4,
    "batch_size": 16,
    "input_size": 16,
    "seed": 3,
}


LOG: list[str] = []  # what the tiny run printed


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> TrainResult:
    LOG.clear()
    return train(BUILTIN_SHAPES, tmp_path_factory.mktemp("run") / "r", log=LOG.append, **TINY)


# ---------------------------------------------------------------- confusion summary


def test_confusion_on_a_hand_made_example() -> None:
    labels = ("cat", "dog", "fox")
    y_true = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    y_pred = np.array([0, 1, 0, 1, 1, 2, 0, 0, 2])
    conf = confusion(y_true, y_pred, labels)
    np.testing.assert_array_equal(conf.matrix, [[2, 1, 0], [0, 2, 0], [2, 0, 2]])
    assert conf.accuracy == pytest.approx(6 / 9)
    assert conf.per_class == pytest.approx({"cat": 2 / 3, "dog": 1.0, "fox": 0.5})
    assert conf.top_confusions(5) == [("fox", "cat", 2), ("cat", "dog", 1)]
    assert conf.top_confusions(1) == [("fox", "cat", 2)]
    table = format_confusion(conf)
    rows = table.splitlines()
    assert [row.split() for row in rows[:4]] == [
        ["class", "acc", "n"],
        ["cat", "66.7%", "3"],
        ["dog", "100.0%", "2"],
        ["fox", "50.0%", "4"],
    ]
    assert len({len(row) for row in rows[:4]}) == 1  # columns line up
    assert table.endswith("top confusions (true -> predicted: count): fox -> cat: 2, cat -> dog: 1")


def test_confusion_without_mistakes_or_samples() -> None:
    conf = confusion(np.array([0, 1]), np.array([0, 1]), ("a", "b", "c"))
    assert conf.top_confusions() == []
    assert np.isnan(conf.per_class["c"])
    assert format_confusion(conf).endswith("none")


# ---------------------------------------------------------------- a tiny real run


def test_tiny_run_writes_model_and_run_info(tiny_run: TrainResult) -> None:
    run_dir = tiny_run.run_dir
    assert {p.name for p in run_dir.iterdir()} == {"model.keras", "run.json", "history.csv"}
    info = load_run_info(run_dir)
    assert info == tiny_run.info
    assert info.architecture == "resnet_cifar"
    assert (info.input_height, info.input_width) == (16, 16)
    assert info.labels == SHAPE_CLASSES
    assert info.normalization == UNIT_SCALE
    assert info.preprocessing.resize == "resize_shorter_center_crop"
    assert info.outputs_logits
    assert info.val_accuracy is not None and 0.0 <= info.val_accuracy <= 1.0
    assert info.notes["train_images"] == "40" and info.notes["val_images"] == "10"
    assert tiny_run.epochs_run == 2


def test_saved_model_reproduces_the_reported_accuracy(tiny_run: TrainResult) -> None:
    """Reload model.keras, rebuild the same val split: the accuracy matches run.json."""
    model = keras.models.load_model(tiny_run.run_dir / "model.keras")
    assert model.output_shape == (None, len(SHAPE_CLASSES))
    opts = PipelineOptions(input_size=16, batch_size=16, seed=TINY["seed"])
    splits = load_dataset(BUILTIN_SHAPES, opts, samples_per_class=TINY["samples_per_class"])
    predicted = np.argmax(model.predict(splits.val, verbose=0), axis=-1)
    accuracy = float(np.mean(predicted == splits.val_labels))
    assert accuracy == pytest.approx(tiny_run.info.val_accuracy, abs=1e-6)


def test_progress_is_one_line_per_epoch(tiny_run: TrainResult) -> None:
    lines = LOG
    epoch_lines = [line for line in lines if line.startswith("epoch ")]
    assert [line.split()[1] for line in epoch_lines] == ["1/2", "2/2"]
    assert any(line.startswith("validation accuracy ") for line in lines)
    assert any("top confusions" in line for line in lines)


def test_mixed_precision_keeps_float32_logits_and_restores_policy(tmp_path: Path) -> None:
    before = keras.mixed_precision.global_policy().name
    result = train(
        BUILTIN_SHAPES, tmp_path / "r", mixed_precision="bfloat16", log=lambda _: None,
        **{**TINY, "epochs": 1, "samples_per_class": 3},
    )  # fmt: skip
    assert keras.mixed_precision.global_policy().name == before
    model = keras.models.load_model(result.run_dir / "model.keras")
    assert model.outputs[0].dtype == "float32"
    assert result.info.notes["mixed_precision"] == "bfloat16"


# ---------------------------------------------------------------- refusals


def test_refuses_a_non_empty_run_dir(tmp_path: Path) -> None:
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "keep.txt").write_text("mine")
    with pytest.raises(ModelBuilderError, match="run directory is not empty"):
        train(BUILTIN_SHAPES, tmp_path / "r", **TINY)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"arch": "resnet51"}, ArchitectureError, "resnet51"),
        ({"val_split": 1.5}, DatasetError, r"val_split must be in \(0, 1\)"),
        ({"mixed_precision": "float8"}, ModelBuilderError, "mixed precision must be"),
        ({"epochs": 0}, ModelBuilderError, "epochs and batch size must be >= 1"),
    ],
)
def test_bad_arguments_fail_before_training(
    tmp_path: Path, kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        train(BUILTIN_SHAPES, tmp_path / "r", log=lambda _: None, **{**TINY, **kwargs})
    assert not (tmp_path / "r" / "model.keras").exists()
