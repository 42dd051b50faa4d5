"""TF Serving's config files, written beside the models under `model_base`.

    models.config             ModelServerConfig (--model_config_file)
    batching_parameters.txt   BatchingParameters (--enable_batching --batching_parameters_file)
    monitoring.config         MonitoringConfig (--monitoring_config_file)

Each file is a text-format proto built from the real message schema and rendered with
`google.protobuf.text_format`, so it is valid by construction. `ModelServerConfig` comes from
the tensorflow-serving-api wheel; `BatchingParameters` and `MonitoringConfig` are not shipped
in that wheel, so their schemas (field names and numbers copied from tensorflow/serving's
`session_bundle_config.proto` and `monitoring_config.proto`) are declared below in a private
descriptor pool.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    message_factory,
    text_format,
    wrappers_pb2,
)

from contract.errors import ConfigError
from contract.manifest import Manifest

MODELS_CONFIG = "models.config"
BATCHING_CONFIG = "batching_parameters.txt"
MONITORING_CONFIG = "monitoring.config"
PROMETHEUS_PATH = "/monitoring/prometheus/metrics"

# Defaults for a single GPU: a short wait so a batch forms under load without adding much
# latency at low load; one batch thread per GPU stream is enough.
DEFAULT_BATCH_TIMEOUT_MICROS = 2000
DEFAULT_NUM_BATCH_THREADS = 4
DEFAULT_MAX_ENQUEUED_BATCHES = 100

_TYPE = descriptor_pb2.FieldDescriptorProto


@cache
def _messages() -> dict[str, Any]:
    """Message classes for BatchingParameters and MonitoringConfig (tensorflow.serving)."""
    pool = descriptor_pool.DescriptorPool()
    wrappers = descriptor_pb2.FileDescriptorProto()
    wrappers_pb2.DESCRIPTOR.CopyToProto(wrappers)
    pool.Add(wrappers)

    f = descriptor_pb2.FileDescriptorProto(
        name="resnet_serving/tfserving_subset.proto",
        package="tensorflow.serving",
        syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
    )
    bp = f.message_type.add(name="BatchingParameters")
    for name, number, wrapper in [
        ("max_batch_size", 1, ".google.protobuf.Int64Value"),
        ("batch_timeout_micros", 2, ".google.protobuf.Int64Value"),
        ("max_enqueued_batches", 3, ".google.protobuf.Int64Value"),
        ("num_batch_threads", 4, ".google.protobuf.Int64Value"),
        ("thread_pool_name", 5, ".google.protobuf.StringValue"),
    ]:
        bp.field.add(
            name=name,
            number=number,
            type=_TYPE.TYPE_MESSAGE,
            label=_TYPE.LABEL_OPTIONAL,
            type_name=wrapper,
        )
    bp.field.add(
        name="allowed_batch_sizes", number=6, type=_TYPE.TYPE_INT64, label=_TYPE.LABEL_REPEATED
    )
    bp.field.add(
        name="pad_variable_length_inputs",
        number=7,
        type=_TYPE.TYPE_BOOL,
        label=_TYPE.LABEL_OPTIONAL,
    )
    prom = f.message_type.add(name="PrometheusConfig")
    prom.field.add(name="enable", number=1, type=_TYPE.TYPE_BOOL, label=_TYPE.LABEL_OPTIONAL)
    prom.field.add(name="path", number=2, type=_TYPE.TYPE_STRING, label=_TYPE.LABEL_OPTIONAL)
    mon = f.message_type.add(name="MonitoringConfig")
    mon.field.add(
        name="prometheus_config",
        number=1,
        type=_TYPE.TYPE_MESSAGE,
        label=_TYPE.LABEL_OPTIONAL,
        type_name=".tensorflow.serving.PrometheusConfig",
    )
    pool.Add(f)
    return {
        name: message_factory.GetMessageClass(
            pool.FindMessageTypeByName(f"tensorflow.serving.{name}")
        )
        for name in ("BatchingParameters", "MonitoringConfig")
    }


def batching_parameters_class() -> Any:
    """The BatchingParameters message class (tensorflow.serving schema)."""
    return _messages()["BatchingParameters"]


def monitoring_config_class() -> Any:
    """The MonitoringConfig message class (tensorflow.serving schema)."""
    return _messages()["MonitoringConfig"]


def write_tfserving_configs(
    model_base: Path,
    manifests: Sequence[Manifest],
    *,
    serving_base_path: str = "/models",
    batch_timeout_micros: int = DEFAULT_BATCH_TIMEOUT_MICROS,
    num_batch_threads: int = DEFAULT_NUM_BATCH_THREADS,
    max_enqueued_batches: int = DEFAULT_MAX_ENQUEUED_BATCHES,
) -> dict[str, Path]:
    """Write the three config files for `manifests` (one per model) under `model_base`.

    `serving_base_path` is where `model_base` is mounted inside the TF Serving container.
    All models must share batch buckets: TF Serving has one batching file for the server, and
    `allowed_batch_sizes` must be exactly the buckets so XLA never meets a new batch shape.
    """
    from tensorflow_serving.config import model_server_config_pb2

    if not manifests:
        raise ConfigError(f"no exported models to configure under {model_base}")
    buckets = manifests[0].batch_buckets
    for m in manifests:
        if m.batch_buckets != buckets:
            raise ConfigError(
                "all models under one TF Serving must share batch buckets: "
                f"{manifests[0].model_name} has {list(buckets)}. "
                f"Received: {m.model_name} buckets={list(m.batch_buckets)}"
            )
    by_name = {m.model_name: m for m in manifests}  # one entry per model, last one wins

    server = model_server_config_pb2.ModelServerConfig()
    for name in sorted(by_name):
        cfg = server.model_config_list.config.add()
        cfg.name = name
        cfg.base_path = f"{serving_base_path.rstrip('/')}/{name}"
        cfg.model_platform = "tensorflow"

    batching = batching_parameters_class()()
    batching.max_batch_size.value = buckets[-1]
    batching.batch_timeout_micros.value = batch_timeout_micros
    batching.max_enqueued_batches.value = max_enqueued_batches
    batching.num_batch_threads.value = num_batch_threads
    batching.allowed_batch_sizes.extend(buckets)
    batching.pad_variable_length_inputs = False

    monitoring = monitoring_config_class()()
    monitoring.prometheus_config.enable = True
    monitoring.prometheus_config.path = PROMETHEUS_PATH

    model_base = Path(model_base)
    model_base.mkdir(parents=True, exist_ok=True)
    paths = {
        MODELS_CONFIG: model_base / MODELS_CONFIG,
        BATCHING_CONFIG: model_base / BATCHING_CONFIG,
        MONITORING_CONFIG: model_base / MONITORING_CONFIG,
    }
    for key, message in [
        (MODELS_CONFIG, server),
        (BATCHING_CONFIG, batching),
        (MONITORING_CONFIG, monitoring),
    ]:
        _write_atomic(paths[key], text_format.MessageToString(message))
    return paths


def read_models_config(path: Path) -> Any:
    """Parse `models.config` back into a ModelServerConfig."""
    from tensorflow_serving.config import model_server_config_pb2

    return _parse(path, model_server_config_pb2.ModelServerConfig())


def read_batching_parameters(path: Path) -> Any:
    """Parse `batching_parameters.txt` back into a BatchingParameters message."""
    return _parse(path, batching_parameters_class()())


def read_monitoring_config(path: Path) -> Any:
    """Parse `monitoring.config` back into a MonitoringConfig message."""
    return _parse(path, monitoring_config_class()())


def _parse(path: Path, message: Any) -> Any:
    try:
        return text_format.Parse(Path(path).read_text(encoding="utf-8"), message)
    except (OSError, text_format.ParseError) as exc:
        raise ConfigError(f"cannot parse {path} as {message.DESCRIPTOR.name}: {exc}") from None


def _write_atomic(path: Path, text: str) -> None:
    # TF Serving polls models.config; a rename means it never reads half a file.
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
