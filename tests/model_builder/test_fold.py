"""fold_batchnorm: same predictions, no BatchNormalization left, names and residual adds kept."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from model_builder.artifacts import RunInfo
from model_builder.errors import ExportError
from model_builder.fold import fold_batchnorm, foldable_pairs

FOLD_TOLERANCE = 1e-5  # float32 re-association of (x*w)*s vs x*(w*s)


@pytest.fixture(scope="module")
def folded(tiny_model: Any) -> Any:
    return fold_batchnorm(tiny_model)


def test_folded_model_has_no_batchnorm_and_keeps_names(tiny_model: Any, folded: Any) -> None:
    import keras

    assert not [
        layer for layer in folded.layers if isinstance(layer, keras.layers.BatchNormalization)
    ]
    bn_names = {
        layer.name
        for layer in tiny_model.layers
        if isinstance(layer, keras.layers.BatchNormalization)
    }
    kept = [layer.name for layer in tiny_model.layers if layer.name not in bn_names]
    assert [layer.name for layer in folded.layers] == kept
    assert folded.get_layer("block1_add") is not None  # the residual add survives
    assert all(folded.get_layer(c).use_bias for c in foldable_pairs(tiny_model))


def test_folded_model_predicts_the_same(
    tiny_model: Any, folded: Any, pixels: np.ndarray, reference: Any
) -> None:
    rng = np.random.default_rng(3)
    batch = np.concatenate([pixels, rng.integers(0, 256, (12, 16, 16, 3), dtype=np.uint8)])
    before = reference(tiny_model, batch)
    after = reference(folded, batch)
    np.testing.assert_allclose(after, before, atol=FOLD_TOLERANCE)
    np.testing.assert_array_equal(after.argmax(axis=1), before.argmax(axis=1))


def test_source_model_untouched(tiny_model: Any, fresh_model: Any, folded: Any) -> None:
    for a, b in zip(tiny_model.get_weights(), fresh_model().get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_unfoldable_pairs_are_left_alone() -> None:
    """A conv whose output also feeds a second consumer cannot absorb the BN."""
    import keras

    inp = keras.Input((8, 8, 3))
    c = keras.layers.Conv2D(4, 3, padding="same", name="shared_conv")(inp)
    bn = keras.layers.BatchNormalization(name="bn")(c)
    act = keras.layers.Conv2D(4, 1, activation="relu", name="relu_conv")(inp)
    bn2 = keras.layers.BatchNormalization(name="bn2")(act)
    out = keras.layers.Add()([bn, c, bn2])
    model = keras.Model(inp, out)
    assert foldable_pairs(model) == {}
    folded = fold_batchnorm(model)
    assert {"bn", "bn2"} <= {layer.name for layer in folded.layers}
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(folded(x), model(x), atol=1e-6)


def test_sequential_model_is_refused() -> None:
    import keras

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with pytest.raises(
        ExportError, match=r"functional Keras model .*--no-fold-batchnorm.*Received: Sequential"
    ):
        fold_batchnorm(model)


def test_export_with_folding_records_it(
    tmp_path: Path, tiny_model: Any, run_info: RunInfo, pixels: np.ndarray, reference: Any
) -> None:
    import tensorflow as tf

    from contract.manifest import read_manifest
    from contract.signatures import SIGNATURE_PIXELS
    from model_builder.export import export_model

    version_dir = export_model(
        tiny_model, model_base=tmp_path, name="tiny", version=1, run_info=run_info,
        buckets=(1, 4), top_k=3, fold_batchnorm=True,
    )  # fmt: skip
    assert read_manifest(version_dir).folded_batchnorm is True
    out = tf.saved_model.load(str(version_dir)).signatures[SIGNATURE_PIXELS](
        images=tf.constant(pixels)
    )
    np.testing.assert_allclose(
        out["probabilities"].numpy(), reference(tiny_model, pixels), atol=FOLD_TOLERANCE
    )


@pytest.mark.parametrize(
    ("arch", "input_size", "width"),
    [
        ("resnet_cifar", 32, 4),  # basic blocks, 1x1 projection shortcuts, no imagenet stem
        ("resnet50", 64, 8),  # bottlenecks, 7x7 stem, the architecture `bench` times
    ],
)
def test_every_batchnorm_of_our_resnets_folds_with_the_same_top1(
    arch: str, input_size: int, width: int
) -> None:
    """The real builders: all BNs fold, top-1 agrees, probabilities within FOLD_TOLERANCE."""
    import keras

    from benchmarks.model_bench import synthetic_images
    from model_builder.fold import randomize_batchnorm
    from model_builder.resnet import build_model

    keras.utils.set_random_seed(0)
    model = build_model(arch, input_size=input_size, num_classes=10, width=width)
    randomize_batchnorm(model)
    bns = [lay for lay in model.layers if isinstance(lay, keras.layers.BatchNormalization)]
    assert len(foldable_pairs(model)) == len(bns) > 0
    folded = fold_batchnorm(model)
    x = synthetic_images(16, input_size, input_size, seed=12345).astype("float32") / 255.0
    before = keras.ops.convert_to_numpy(keras.ops.softmax(model(x, training=False)))
    after = keras.ops.convert_to_numpy(keras.ops.softmax(folded(x, training=False)))
    assert before.max() < 0.999  # not saturated: a wrong fold would move the probabilities
    np.testing.assert_array_equal(after.argmax(axis=1), before.argmax(axis=1))
    np.testing.assert_allclose(after, before, atol=FOLD_TOLERANCE)
