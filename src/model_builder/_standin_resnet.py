"""TEMPORARY stand-in for `model_builder.resnet.build_model` until it lands on main.

A small CIFAR-style ResNet (3 stages, one basic block each) with only built-in Keras layers,
so `model.keras` loads anywhere. Deleted when the real module is merged.
"""

from __future__ import annotations

from typing import Any


def build_model(
    arch: str,
    *,
    input_size: int | None = None,
    num_classes: int = 1000,
    width: int | None = None,
    dropout: float = 0.0,
) -> Any:
    import keras
    from keras import layers

    size = input_size or 32
    w = width or 16
    inputs = keras.Input((size, size, 3), name="input")
    x = layers.Conv2D(w, 3, padding="same", use_bias=False)(inputs)
    x = layers.ReLU()(layers.BatchNormalization()(x))
    for stage, filters in enumerate((w, 2 * w, 4 * w)):
        stride = 1 if stage == 0 else 2
        shortcut = x
        y = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False)(x)
        y = layers.ReLU()(layers.BatchNormalization()(y))
        y = layers.Conv2D(filters, 3, padding="same", use_bias=False)(y)
        y = layers.BatchNormalization()(y)
        if stride != 1 or shortcut.shape[-1] != filters:
            shortcut = layers.Conv2D(filters, 1, strides=stride, use_bias=False)(shortcut)
            shortcut = layers.BatchNormalization()(shortcut)
        x = layers.ReLU()(layers.Add()([shortcut, y]))
    x = layers.GlobalAveragePooling2D()(x)
    if dropout:
        x = layers.Dropout(dropout)(x)
    outputs = layers.Dense(num_classes, dtype="float32", name="logits")(x)
    return keras.Model(inputs, outputs, name=arch)
