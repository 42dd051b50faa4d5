"""Fold inference-mode BatchNormalization into the convolution before it (export-time).

For a Conv2D whose only consumer is a BatchNormalization, with s = gamma / sqrt(var + eps):
    w' = w * s          b' = (b - mean) * s + beta
so `bn(conv(x)) == conv'(x)` and one kernel disappears per pair on the serving path. Only
valid at inference (moving statistics), which is all an export runs.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from model_builder.errors import ExportError


def foldable_pairs(model: Any) -> dict[str, str]:
    """`{conv name: bn name}` for every Conv2D -> BatchNormalization pair that can be folded.

    A pair folds when the conv is linear (no activation), channels-last or -first with the BN
    on the channel axis, both are called once, and the BN is the conv's only consumer.
    """

    pairs: dict[str, str] = {}
    for bn in model.layers:
        if not isinstance(bn, keras.layers.BatchNormalization) or len(bn._inbound_nodes) != 1:
            continue
        parents = bn._inbound_nodes[0].parent_nodes
        if len(parents) != 1:
            continue
        conv = parents[0].operation
        if type(conv) is not keras.layers.Conv2D or len(conv._inbound_nodes) != 1:
            continue
        if len(conv._outbound_nodes) != 1 or conv.activation is not keras.activations.linear:
            continue
        channel_axis = 3 if conv.data_format == "channels_last" else 1
        if bn.axis not in (channel_axis, channel_axis - 4):
            continue
        pairs[conv.name] = bn.name
    return pairs


def fold_batchnorm(model: Any) -> Any:
    """A copy of the functional `model` with every foldable BatchNormalization folded away.

    Layer names, other layers and the graph (residual adds included) are kept; weights are
    copied, so the original model is left untouched.
    """

    if not isinstance(model, keras.Model) or not hasattr(model, "_run_through_graph"):
        raise ExportError(
            "BatchNorm folding needs a functional Keras model (export with "
            f"--no-fold-batchnorm otherwise). Received: {type(model).__name__}"
        )
    pairs = foldable_pairs(model)
    folded_bns = set(pairs.values())

    def clone(layer: Any) -> Any:
        config = layer.get_config()
        if layer.name in pairs:
            config["use_bias"] = True
        return layer.__class__.from_config(config)

    def call(layer: Any, *args: Any, **kwargs: Any) -> Any:
        if layer.name in folded_bns:
            return args[0]  # the BN's work now lives in the conv's kernel and bias
        return layer(*args, **kwargs)

    clone_model: Any = keras.models.clone_model
    folded = clone_model(model, clone_function=clone, call_function=call)
    old = {layer.name: layer for layer in model.layers}
    for layer in folded.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue  # no weights; clone_model renames unnamed inputs
        source = old[layer.name]
        if layer.name in pairs:
            layer.set_weights(_folded_weights(source, old[pairs[layer.name]]))
        elif source.weights:
            layer.set_weights(source.get_weights())
    return folded


def _folded_weights(conv: Any, bn: Any) -> list[np.ndarray]:
    """Kernel and bias of `conv` with `bn`'s inference-mode affine transform folded in."""
    kernel = np.asarray(conv.kernel.numpy(), dtype=np.float64)
    out_channels = kernel.shape[-1]
    bias = np.asarray(conv.bias.numpy(), np.float64) if conv.use_bias else np.zeros(out_channels)
    gamma = np.asarray(bn.gamma.numpy(), np.float64) if bn.scale else np.ones(out_channels)
    beta = np.asarray(bn.beta.numpy(), np.float64) if bn.center else np.zeros(out_channels)
    mean = np.asarray(bn.moving_mean.numpy(), np.float64)
    var = np.asarray(bn.moving_variance.numpy(), np.float64)
    scale = gamma / np.sqrt(var + bn.epsilon)
    dtype = conv.kernel.dtype
    return [
        (kernel * scale).astype(dtype),  # broadcasts over the output-channel (last) axis
        ((bias - mean) * scale + beta).astype(dtype),
    ]


def randomize_batchnorm(model: Any, seed: int = 0) -> None:
    """Give every BatchNorm non-trivial statistics, so folding random weights is a real test.

    Fresh layers have gamma=1, beta=0, mean=0, var=1: folding them changes nothing.
    """

    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape[-1]
            layer.gamma.assign(rng.uniform(0.5, 1.5, n).astype("float32"))
            layer.beta.assign(rng.uniform(-0.2, 0.2, n).astype("float32"))
            layer.moving_mean.assign(rng.uniform(-0.2, 0.2, n).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, n).astype("float32"))
