"""The ResNet family: exact parameter counts, keras.applications layer names, forward passes,
and argument validation that fails before any layer is built."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import pytest

from model_builder.errors import ArchitectureError
from model_builder.resnet import ARCHITECTURES, build_model, get_spec

# Parameter counts (count_params: includes conv biases and BatchNorm moving statistics, as
# keras counts them). resnet50/101/152 equal keras.applications ResNet50/101/152.
# resnet18/34 differ from torchvision's 11,689,512 / 21,797,672 by design: keras-style convs
# carry biases and keras counts BN moving mean/variance.
EXPECTED_PARAMS = {
    "resnet18": 11_703_912,
    "resnet34": 21_823_208,
    "resnet50": 25_636_712,
    "resnet101": 44_707_176,
    "resnet152": 60_419_944,
    "resnet_cifar": 274_826,  # ResNet-20 with 1x1 projection shortcuts, 10 classes
    "toy_cifar10": 223_242,  # the Keras functional-API guide's toy ResNet
}


@pytest.fixture(scope="module")
def resnet50() -> Any:
    return build_model("resnet50")


def test_every_architecture_has_an_expected_count() -> None:
    assert set(EXPECTED_PARAMS) == set(ARCHITECTURES)


@pytest.mark.parametrize("arch", list(EXPECTED_PARAMS))
def test_builds_with_exact_params_and_runs_forward(arch: str) -> None:
    spec = get_spec(arch)
    model = build_model(arch)
    assert model.count_params() == EXPECTED_PARAMS[arch]
    size = spec.default_input_size
    assert model.input_shape == (None, size, size, 3)
    x = np.random.default_rng(0).normal(size=(1, size, size, 3)).astype("float32")
    y = np.asarray(model(x, training=False))
    assert y.shape == (1, spec.default_num_classes)
    assert np.isfinite(y).all()


def test_resnet50_matches_keras_applications(resnet50: Any) -> None:
    reference = keras.applications.ResNet50(weights=None)
    assert resnet50.count_params() == reference.count_params() == 25_636_712

    def weighted(m: Any) -> list[tuple[str, list[tuple[int, ...]]]]:
        return [(la.name, [tuple(w.shape) for w in la.weights]) for la in m.layers if la.weights]

    assert weighted(resnet50) == weighted(reference)


def test_outputs_are_logits(resnet50: Any) -> None:
    head = resnet50.get_layer("predictions")
    assert head.activation is keras.activations.linear
    assert resnet50.output_shape == (None, 1000)


def test_identity_and_projection_shortcuts() -> None:
    r18 = build_model("resnet18", input_size=64, num_classes=2, width=8)
    names = {layer.name for layer in r18.layers}
    assert "conv2_block1_0_conv" not in names  # same shape: identity shortcut
    assert {"conv3_block1_0_conv", "conv4_block1_0_conv", "conv5_block1_0_conv"} <= names
    assert "conv3_block2_0_conv" not in names
    assert r18.get_layer("conv5_block2_out").output.shape == (None, 2, 2, 64)


@pytest.mark.parametrize(
    ("arch", "width", "layer", "channels"),
    [
        ("resnet18", 16, "conv5_block2_out", 128),
        ("resnet50", 8, "conv5_block3_out", 256),
        ("resnet_cifar", 4, "conv4_block3_out", 16),
    ],
)
def test_width_scales_every_stage(arch: str, width: int, layer: str, channels: int) -> None:
    model = build_model(arch, input_size=32, num_classes=3, width=width)
    assert model.get_layer("conv1_conv").filters == width
    assert model.get_layer(layer).output.shape[-1] == channels


@pytest.mark.parametrize(
    ("arch", "kwargs"),
    [
        ("resnet18", {"input_size": 32, "num_classes": 2, "width": 4}),
        ("resnet_cifar", {"input_size": 8, "num_classes": 2, "width": 2}),
        ("toy_cifar10", {"input_size": 13, "num_classes": 2}),
    ],
)
def test_smallest_input_builds_and_runs(arch: str, kwargs: dict[str, Any]) -> None:
    model = build_model(arch, **kwargs)
    size = kwargs["input_size"]
    assert model(np.zeros((2, size, size, 3), "float32")).shape == (2, 2)


def test_dropout_layer_only_when_asked() -> None:
    plain = build_model("resnet_cifar", width=2)
    dropped = build_model("resnet_cifar", width=2, dropout=0.3)
    assert "top_dropout" not in {layer.name for layer in plain.layers}
    assert dropped.get_layer("top_dropout").rate == pytest.approx(0.3)
    assert build_model("toy_cifar10").get_layer("top_dropout").rate == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("arch", "kwargs", "fragment"),
    [
        ("resnet51", {}, "Received: arch='resnet51'"),
        ("resnet51", {}, "resnet18, resnet34, resnet50"),
        ("resnet18", {"input_size": 31}, "Received: input_size=31"),
        ("resnet18", {"input_size": 5000}, "between 32 and 4096"),
        ("resnet18", {"input_size": 32.0}, "Received: input_size=32.0"),
        ("resnet_cifar", {"input_size": 7}, "Received: input_size=7"),
        ("toy_cifar10", {"input_size": 12}, "Received: input_size=12"),
        ("resnet50", {"num_classes": 1}, "Received: num_classes=1"),
        ("resnet50", {"num_classes": True}, "Received: num_classes=True"),
        ("resnet50", {"width": 0}, "Received: width=0"),
        ("toy_cifar10", {"width": 32}, "fixed width"),
        ("resnet18", {"dropout": 1.0}, "Received: dropout=1.0"),
        ("resnet18", {"dropout": -0.1}, "Received: dropout=-0.1"),
    ],
)
def test_invalid_arguments_are_refused(arch: str, kwargs: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ArchitectureError) as info:
        build_model(arch, **kwargs)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)
