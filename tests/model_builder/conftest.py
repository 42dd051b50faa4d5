"""Session fixtures for the export tests: one tiny model, built and exported once.

The model is a small functional ResNet-like net (conv+BN+relu, a residual add, GAP, dense)
with non-trivial BatchNorm statistics, so folding and precision changes are really tested.
To test with the project's ResNet instead, swap `_build` for:
    lambda: build_model("resnet_cifar", input_size=SIZE, num_classes=len(LABELS), width=8, dropout=0.0)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from model_builder.artifacts import MODEL_FILE, RunInfo, save_run_info

SIZE = 16
LABELS = tuple(f"class_{i}" for i in range(6))
BUCKETS = (1, 2, 4)


def _build() -> Any:
    import keras

    inp = keras.Input((SIZE, SIZE, 3), name="input")
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv1_conv")(inp)
    x = keras.layers.BatchNormalization(epsilon=1.001e-5, name="conv1_bn")(x)
    x = keras.layers.ReLU(name="conv1_relu")(x)
    y = keras.layers.Conv2D(8, 3, padding="same", name="block1_1_conv")(x)
    y = keras.layers.BatchNormalization(name="block1_1_bn")(y)
    y = keras.layers.ReLU(name="block1_1_relu")(y)
    y = keras.layers.Conv2D(8, 3, padding="same", name="block1_2_conv")(y)
    y = keras.layers.BatchNormalization(name="block1_2_bn")(y)
    x = keras.layers.Add(name="block1_add")([x, y])
    x = keras.layers.ReLU(name="block1_out")(x)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    out = keras.layers.Dense(len(LABELS), name="predictions")(x)
    return keras.Model(inp, out, name="tiny_resnet")


def _randomise_batchnorm(model: Any, seed: int = 0) -> None:
    """Give every BN layer non-trivial statistics (fresh BNs are near identity)."""
    import keras

    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, n).astype("float32"),  # gamma
                    rng.normal(0.0, 0.2, n).astype("float32"),  # beta
                    rng.normal(0.0, 0.3, n).astype("float32"),  # moving mean
                    rng.uniform(0.5, 2.0, n).astype("float32"),  # moving variance
                ]
            )


@dataclass(frozen=True)
class Exported:
    """A float32 export of the tiny model and what it was made from."""

    model: Any
    run_info: RunInfo
    run_dir: Path
    model_base: Path
    version_dir: Path


def make_model() -> Any:
    """A fresh tiny model with randomised BN statistics (deterministic weights)."""
    import keras

    keras.utils.set_random_seed(1)
    model = _build()
    _randomise_batchnorm(model)
    return model


@pytest.fixture(scope="session")
def tiny_model() -> Any:
    return make_model()


@pytest.fixture(scope="session")
def run_info() -> RunInfo:
    return RunInfo(architecture="tiny_resnet", input_height=SIZE, input_width=SIZE, labels=LABELS)


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model: Any, run_info: RunInfo) -> Path:
    """A run directory (`model.keras` + `run.json`) as `train`/`build` leave it."""
    path = tmp_path_factory.mktemp("run")
    tiny_model.save(path / MODEL_FILE)
    save_run_info(path, run_info)
    return path


@pytest.fixture(scope="session")
def exported(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: Any, run_info: RunInfo, run_dir: Path
) -> Exported:
    """The tiny model exported once as `<base>/tiny/1` with buckets (1, 2, 4), top_k 3."""
    from model_builder.export import export_model

    base = tmp_path_factory.mktemp("models")
    version_dir = export_model(
        tiny_model, model_base=base, name="tiny", version=1, run_info=run_info,
        buckets=BUCKETS, top_k=3,
    )  # fmt: skip
    return Exported(tiny_model, run_info, run_dir, base, version_dir)


@pytest.fixture(scope="session")
def loaded(exported: Exported) -> Any:
    """The exported SavedModel, loaded once."""
    import tensorflow as tf

    return tf.saved_model.load(str(exported.version_dir))


def random_pixels(n: int, seed: int = 7) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)


def keras_probabilities(model: Any, pixels: np.ndarray) -> np.ndarray:
    """What the export should compute: normalise (unit scale), run the model, softmax."""
    import tensorflow as tf

    logits = model(pixels.astype("float32") / 255.0, training=False)
    return np.asarray(tf.nn.softmax(tf.cast(logits, tf.float32)))


@pytest.fixture(scope="session")
def pixels() -> np.ndarray:
    """Four fixed random uint8 images at the model's input size."""
    return random_pixels(4)


@pytest.fixture(scope="session")
def reference() -> Any:
    """`reference(model, pixels)` -> the float32 probabilities the export must reproduce."""
    return keras_probabilities


@pytest.fixture(scope="session")
def fresh_model() -> Any:
    """`fresh_model()` -> a new tiny model (same weights as `tiny_model`)."""
    return make_model
