"""The ResNet family as Keras 3 functional models that output logits.

Layer names follow keras.applications (`conv1_conv`, `conv2_block1_0_conv`, ..., `avg_pool`,
`predictions`) so ImageNet weights for ResNet-50/101/152 map onto our models by name. Every
model takes float32 `[batch, H, W, 3]` that is already normalised (see `model_builder.preprocess`)
and ends in a Dense layer without activation, so serving can pick softmax or top-k itself.

File order (as in timm): helpers, blocks, model builders, config data, entry points.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import keras
from keras import layers

from model_builder.errors import ArchitectureError

# keras.applications uses this epsilon; keeping it makes ImageNet weights behave identically.
_BN_EPSILON = 1.001e-5
_MAX_INPUT_SIZE = 4096  # the manifest's InputSpec limit
_MAX_WIDTH = 1024

# --------------------------------------------------------------------------------- helpers


def _conv_bn(
    x: Any, filters: int, kernel: int, *, stride: int = 1, name: str, relu: bool = True
) -> Any:
    """Conv (with bias, as keras ResNet v1) + BatchNorm [+ ReLU], named `<name>_conv|_bn|_relu`.

    3x3 convs with stride 2 pad explicitly by 1: TF's "same" pads only bottom/right for even
    inputs, which shifts features by half a pixel compared with the usual symmetric padding.
    """
    if kernel > 1 and stride > 1:
        x = layers.ZeroPadding2D(padding=kernel // 2, name=f"{name}_pad")(x)
        padding = "valid"
    else:
        padding = "same"
    x = layers.Conv2D(filters, kernel, strides=stride, padding=padding, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(axis=-1, epsilon=_BN_EPSILON, name=f"{name}_bn")(x)
    if relu:
        x = layers.Activation("relu", name=f"{name}_relu")(x)
    return x


def _merge(shortcut: Any, x: Any, name: str) -> Any:
    """The residual sum, then ReLU after the add (ResNet v1)."""
    x = layers.Add(name=f"{name}_add")([shortcut, x])
    return layers.Activation("relu", name=f"{name}_out")(x)


def _shortcut(x: Any, filters: int, stride: int, name: str) -> Any:
    """Identity when the shape is unchanged, else the 1x1 strided projection `<name>_0_*`."""
    if stride == 1 and x.shape[-1] == filters:
        return x
    return _conv_bn(x, filters, 1, stride=stride, name=f"{name}_0", relu=False)


# ---------------------------------------------------------------------------------- blocks


def basic_block(x: Any, filters: int, *, stride: int = 1, name: str) -> Any:
    """Two 3x3 convs (ResNet-18/34, CIFAR ResNets); the first carries the stride."""
    shortcut = _shortcut(x, filters, stride, name)
    x = _conv_bn(x, filters, 3, stride=stride, name=f"{name}_1")
    x = _conv_bn(x, filters, 3, name=f"{name}_2", relu=False)
    return _merge(shortcut, x, name)


def bottleneck_block(x: Any, filters: int, *, stride: int = 1, name: str) -> Any:
    """1x1 reduce, 3x3, 1x1 expand x4 (ResNet-50/101/152).

    The stride sits on the first 1x1 conv, as in keras.applications (Caffe ResNet), because
    that is how the ImageNet weights we load were trained.
    """
    shortcut = _shortcut(x, 4 * filters, stride, name)
    x = _conv_bn(x, filters, 1, stride=stride, name=f"{name}_1")
    x = _conv_bn(x, filters, 3, name=f"{name}_2")
    x = _conv_bn(x, 4 * filters, 1, name=f"{name}_3", relu=False)
    return _merge(shortcut, x, name)


Block = Callable[..., Any]


def _stage(x: Any, block: Block, filters: int, blocks: int, *, stride: int, name: str) -> Any:
    """`blocks` residual units; only the first may change the stride or the channel count."""
    x = block(x, filters, stride=stride, name=f"{name}_block1")
    for i in range(2, blocks + 1):
        x = block(x, filters, name=f"{name}_block{i}")
    return x


# ------------------------------------------------------------------------------- builders


def _head(x: Any, num_classes: int, dropout: float) -> Any:
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if dropout > 0:
        x = layers.Dropout(dropout, name="top_dropout")(x)
    return layers.Dense(num_classes, name="predictions")(x)  # logits: no activation


def _resnet(
    stack_fn: Callable[[Any], Any],
    *,
    input_size: int,
    num_classes: int,
    width: int,
    dropout: float,
    name: str,
    imagenet_stem: bool = True,
) -> Any:
    """The one ResNet builder: stem, `stack_fn` (the stages), average pool, logits.

    `imagenet_stem`: 7x7/2 conv + 3x3/2 max pool (224 inputs), else one 3x3/1 conv (CIFAR).
    """
    inputs = keras.Input(shape=(input_size, input_size, 3), dtype="float32", name="input")
    if imagenet_stem:
        x = layers.ZeroPadding2D(padding=3, name="conv1_pad")(inputs)
        x = layers.Conv2D(width, 7, strides=2, name="conv1_conv")(x)
        x = layers.BatchNormalization(axis=-1, epsilon=_BN_EPSILON, name="conv1_bn")(x)
        x = layers.Activation("relu", name="conv1_relu")(x)
        x = layers.ZeroPadding2D(padding=1, name="pool1_pad")(x)
        x = layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)
    else:
        x = _conv_bn(inputs, width, 3, name="conv1")
    x = stack_fn(x)
    return keras.Model(inputs, _head(x, num_classes, dropout), name=name)


def _imagenet_resnet(block: Block, depths: tuple[int, int, int, int], name: str) -> Builder:
    def build(input_size: int, num_classes: int, width: int, dropout: float) -> Any:
        def stack(x: Any) -> Any:
            for i, blocks in enumerate(depths):
                # conv2 follows the max pool, so it keeps the resolution; later stages halve it.
                stride = 1 if i == 0 else 2
                x = _stage(x, block, width * 2**i, blocks, stride=stride, name=f"conv{i + 2}")
            return x

        return _resnet(
            stack, input_size=input_size, num_classes=num_classes, width=width,
            dropout=dropout, name=name,
        )  # fmt: skip

    return build


def _cifar_resnet(input_size: int, num_classes: int, width: int, dropout: float) -> Any:
    """ResNet-20 (He et al. 2015, section 4.2): three stages of 3 basic blocks, w/2w/4w."""

    def stack(x: Any) -> Any:
        for i in range(3):
            x = _stage(
                x, basic_block, width * 2**i, 3, stride=1 if i == 0 else 2, name=f"conv{i + 2}"
            )
        return x

    return _resnet(
        stack, input_size=input_size, num_classes=num_classes, width=width,
        dropout=dropout, name="resnet_cifar", imagenet_stem=False,
    )  # fmt: skip


def _toy_cifar10(input_size: int, num_classes: int, width: int, dropout: float) -> Any:
    """The toy ResNet of the Keras functional-API guide (223,242 parameters with 10 classes)."""
    del width  # fixed design
    inputs = keras.Input(shape=(input_size, input_size, 3), dtype="float32", name="input")
    x = layers.Conv2D(32, 3, activation="relu", name="conv1")(inputs)
    x = layers.Conv2D(64, 3, activation="relu", name="conv2")(x)
    x = layers.MaxPooling2D(3, name="pool1")(x)
    for b in (1, 2):
        y = layers.Conv2D(64, 3, activation="relu", padding="same", name=f"block{b}_conv1")(x)
        y = layers.Conv2D(64, 3, activation="relu", padding="same", name=f"block{b}_conv2")(y)
        x = layers.Add(name=f"block{b}_add")([x, y])
    x = layers.Conv2D(64, 3, activation="relu", name="conv3")(x)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = layers.Dense(256, activation="relu", name="fc1")(x)
    x = layers.Dropout(dropout, name="top_dropout")(x)
    outputs = layers.Dense(num_classes, name="predictions")(x)
    return keras.Model(inputs, outputs, name="toy_cifar10")


# ---------------------------------------------------------------------------- config data

Builder = Callable[[int, int, int, float], Any]  # (input_size, num_classes, width, dropout)


@dataclass(frozen=True)
class ArchSpec:
    """One architecture and the defaults that go with it (preprocessing travels as data)."""

    name: str
    builder: Builder
    default_input_size: int
    min_input_size: int
    default_num_classes: int
    default_width: int | None  # None: fixed design, `width` is refused
    default_dropout: float
    crop_fraction: float  # resize-shorter-then-centre-crop fraction for serving
    description: str


def _spec(name: str, builder: Builder, desc: str, *, imagenet: bool, **kw: Any) -> ArchSpec:
    base: dict[str, Any] = (
        dict(default_input_size=224, min_input_size=32, default_num_classes=1000,
             default_width=64, default_dropout=0.0, crop_fraction=0.875)
        if imagenet
        else dict(default_input_size=32, min_input_size=8, default_num_classes=10,
                  default_width=16, default_dropout=0.0, crop_fraction=1.0)
    )  # fmt: skip
    base.update(kw)
    return ArchSpec(name=name, builder=builder, description=desc, **base)


ARCHITECTURES: dict[str, ArchSpec] = {
    s.name: s
    for s in (
        _spec("resnet18", _imagenet_resnet(basic_block, (2, 2, 2, 2), "resnet18"),
              "basic blocks 2-2-2-2", imagenet=True),
        _spec("resnet34", _imagenet_resnet(basic_block, (3, 4, 6, 3), "resnet34"),
              "basic blocks 3-4-6-3", imagenet=True),
        _spec("resnet50", _imagenet_resnet(bottleneck_block, (3, 4, 6, 3), "resnet50"),
              "bottleneck blocks 3-4-6-3", imagenet=True),
        _spec("resnet101", _imagenet_resnet(bottleneck_block, (3, 4, 23, 3), "resnet101"),
              "bottleneck blocks 3-4-23-3", imagenet=True),
        _spec("resnet152", _imagenet_resnet(bottleneck_block, (3, 8, 36, 3), "resnet152"),
              "bottleneck blocks 3-8-36-3", imagenet=True),
        _spec("resnet_cifar", _cifar_resnet, "ResNet-20: 3x3 stem, basic blocks 3-3-3",
              imagenet=False),
        # Valid convs and a 3x3/3 pool shrink 13 px to 1 before the last conv.
        _spec("toy_cifar10", _toy_cifar10, "Keras guide toy ResNet, 223k params",
              imagenet=False, min_input_size=13, default_width=None, default_dropout=0.5),
    )
}  # fmt: skip


# ---------------------------------------------------------------------------- entry points


def get_spec(arch: str) -> ArchSpec:
    """The spec of `arch`; ArchitectureError lists the known names otherwise."""
    try:
        return ARCHITECTURES[arch]
    except (KeyError, TypeError):
        known = ", ".join(ARCHITECTURES)
        raise ArchitectureError(
            f"unknown architecture; expected one of {known}. Received: arch={arch!r}"
        ) from None


def build_model(
    arch: str,
    *,
    input_size: int | None = None,
    num_classes: int | None = None,
    width: int | None = None,
    dropout: float | None = None,
) -> Any:
    """Build `arch` as a keras.Model: float32 [None, S, S, 3] normalised pixels -> logits.

    `None` picks the architecture's default (ArchSpec). `width` is the base channel count
    (64 for resnet*, 16 for resnet_cifar). Arguments are validated before any layer is built.
    """
    spec = get_spec(arch)
    size = spec.default_input_size if input_size is None else input_size
    classes = spec.default_num_classes if num_classes is None else num_classes
    rate = spec.default_dropout if dropout is None else dropout
    _check_int("input_size", size, spec.min_input_size, _MAX_INPUT_SIZE, arch)
    _check_int("num_classes", classes, 2, None, arch)
    if not isinstance(rate, int | float) or not 0.0 <= rate < 1.0:
        raise ArchitectureError(f"dropout must be in [0, 1). Received: dropout={rate!r}")
    if spec.default_width is None:
        if width is not None:
            raise ArchitectureError(
                f"{arch} has a fixed width; leave width unset. Received: width={width!r}"
            )
        base = 0
    else:
        base = spec.default_width if width is None else width
        _check_int("width", base, 1, _MAX_WIDTH, arch)
    return spec.builder(size, classes, base, float(rate))


def _check_int(what: str, value: object, low: int, high: int | None, arch: str) -> None:
    if (
        isinstance(value, int)
        and not isinstance(value, bool)
        and low <= value
        and (high is None or value <= high)
    ):
        return
    bound = f">= {low}" if high is None else f"between {low} and {high}"
    raise ArchitectureError(f"{what} for {arch} must be an int {bound}. Received: {what}={value!r}")
