"""Helpers for the stand-in's tests: models.config files and Predict requests."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from google.protobuf import text_format
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.config import model_server_config_pb2


def write_config(
    path: Path,
    models: Mapping[str, Path],
    *,
    labels: Mapping[str, Mapping[str, int]] | None = None,
    policies: Mapping[str, str] | None = None,
) -> Path:
    """A models.config for `models` (name -> base path); `policies` name -> a
    model_version_policy in text format, e.g. "all {}" or "specific { versions: 2 }"."""
    config = model_server_config_pb2.ModelServerConfig()
    for name, base in models.items():
        cfg = config.model_config_list.config.add(
            name=name, base_path=str(base), model_platform="tensorflow"
        )
        for label, version in (labels or {}).get(name, {}).items():
            cfg.version_labels[label] = version
        policy = (policies or {}).get(name)
        if policy:
            text_format.Parse(policy, cfg.model_version_policy)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text_format.MessageToString(config), encoding="utf-8")
    tmp.replace(path)
    return path


def images(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)


def predict_request(
    pixels: Any,
    *,
    name: str = "tiny",
    signature: str = "",
    key: str = "images",
    version: int | None = None,
    label: str | None = None,
    outputs: Sequence[str] = (),
) -> Any:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    if label is not None:
        request.model_spec.version_label = label
    request.inputs[key].CopyFrom(tf.make_tensor_proto(pixels))
    request.output_filter.extend(outputs)
    return request
