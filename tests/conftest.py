"""Session fixtures shared across test areas (expensive things, built once)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest


class ExportedModel(NamedTuple):
    """A tiny model exported with `export_model`: <model_base>/<name>/1/ (8x8 RGB, 3 classes)."""

    model_base: Path
    model: Any  # the Keras model that was exported
    name: str = "tiny"
    version: int = 1

    def reference(self, images: np.ndarray) -> np.ndarray:
        """Probabilities straight from the Keras model (normalised as the export does)."""
        import tensorflow as tf

        from contract.manifest import Normalization
        from model_builder.preprocess import normalize

        logits = self.model(normalize(tf.constant(images), Normalization()), training=False)
        return np.asarray(tf.nn.softmax(logits, axis=-1), dtype=np.float32)


@pytest.fixture(scope="session")
def exported_model(tmp_path_factory: pytest.TempPathFactory) -> ExportedModel:
    """Exported once per session with buckets (1, 2, 4, 8) and warmup records."""
    import keras

    from model_builder.artifacts import RunInfo
    from model_builder.export import export_model

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(3)(x))
    run_info = RunInfo(architecture="tiny", input_height=8, input_width=8, labels=("a", "b", "c"))
    base = tmp_path_factory.mktemp("models")
    export_model(
        model,
        model_base=base,
        name="tiny",
        version=1,
        run_info=run_info,
        buckets=(1, 2, 4, 8),
        top_k=2,
    )
    return ExportedModel(base, model)


@pytest.fixture(scope="session")
def version_exports(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """tiny v1 and v2 (other weights) and a second model `other` v1, exported once
    (tests/service/versions.py: copy what a test needs with `base_with`)."""
    from tests.service.versions import export_all

    return export_all(tmp_path_factory.mktemp("versions") / "models")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium per test module (tests/browser.py; skipped without chromium)."""
    from tests.browser import chromium

    with chromium() as driver:
        yield driver
