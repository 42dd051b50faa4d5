"""The one normalisation both training and the exported graph apply to uint8 RGB pixels."""

from __future__ import annotations

from typing import Any

from contract.manifest import Normalization

# keras.applications ResNet50/101/152 ("caffe" mode): BGR, mean subtracted, no scaling.
IMAGENET_CAFFE = Normalization(
    model_channel_order="BGR", scale=1.0, mean=(103.939, 116.779, 123.68), std=(1.0, 1.0, 1.0)
)
# Our own trained models: pixels scaled to [0, 1].
UNIT_SCALE = Normalization()


def normalize(images: Any, norm: Normalization) -> Any:
    """uint8 (or float) RGB NHWC tensor -> float32 model input, per `norm`. Works in tf graphs."""
    import tensorflow as tf  # not at import: datasets imports this for make-dataset too

    x = tf.cast(images, tf.float32)
    if norm.model_channel_order == "BGR":
        x = x[..., ::-1]
    x = x * norm.scale
    if norm.mean != (0.0, 0.0, 0.0):
        x = x - tf.constant(norm.mean, tf.float32)
    if norm.std != (1.0, 1.0, 1.0):
        x = x / tf.constant(norm.std, tf.float32)
    return x
