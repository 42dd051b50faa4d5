"""TF Serving's config files, written beside the models under `model_base`.

    models.config             ModelServerConfig (--model_config_file)
    batching_parameters.txt   BatchingParameters (--enable_batching --batching_parameters_file)
    monitoring.config         MonitoringConfig (--monitoring_config_file)

Each file is a text-format proto built from the message schema in `contract.tfs_protos` and
rendered with `google.protobuf.text_format`, so it is valid by construction. Every writer
goes through a rename, so a server polling the file never reads half of it.

`models.config` also says which versions of a model are served and what their labels are:
a new model gets TF Serving's default policy (the latest version), while a model already in
the file keeps its `model_version_policy` and `version_labels` when another export rewrites
it, so a rollout's pinned versions (`with_versions`: a `specific` policy with `stable` and
`canary` labels) survive an export of the next candidate.

The batching rule is the contract's: `allowed_batch_sizes` are exactly the export's batch
buckets and `max_batch_size` is the largest of them, so TF Serving pads every batch to a
shape XLA compiled during warmup and never meets a new one. `batching_parameters` refuses
anything else, whoever asks (the export, or a sweep trying settings).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from google.protobuf import text_format

from contract.errors import ConfigError
from contract.manifest import Manifest
from contract.tfs_protos import BatchingParameters, ModelServerConfig, MonitoringConfig

MODELS_CONFIG = "models.config"
BATCHING_CONFIG = "batching_parameters.txt"
MONITORING_CONFIG = "monitoring.config"
PROMETHEUS_PATH = "/monitoring/prometheus/metrics"

# The version labels a rollout writes and the gateway routes by (TF Serving's ModelSpec takes
# any label; these two are ours): `stable` takes the traffic, `canary` the fraction the
# gateway is told to send it.
STABLE_LABEL = "stable"
CANARY_LABEL = "canary"

# Defaults for a single GPU: a short wait so a batch forms under load without adding much
# latency at low load; a few batch threads keep the GPU fed while one batch is copied.
DEFAULT_BATCH_TIMEOUT_MICROS = 2000
DEFAULT_NUM_BATCH_THREADS = 4
DEFAULT_MAX_ENQUEUED_BATCHES = 100


def models_config(
    manifests: Sequence[Manifest], *, serving_base_path: str = "/models", existing: Any = None
) -> Any:
    """ModelServerConfig with one entry per model name (the last manifest of a name wins).

    `serving_base_path` is where `model_base` is mounted inside the TF Serving container. A
    model already in `existing` (the ModelServerConfig on disk) keeps its version policy and
    labels.
    """
    if not manifests:
        raise ConfigError("no exported models to configure")
    kept = {c.name: c for c in existing.model_config_list.config} if existing is not None else {}
    server = ModelServerConfig()
    for name in sorted({m.model_name for m in manifests}):
        cfg = server.model_config_list.config.add()
        if name in kept:
            cfg.model_version_policy.CopyFrom(kept[name].model_version_policy)
            cfg.version_labels.update(kept[name].version_labels)
        cfg.name = name
        cfg.base_path = f"{serving_base_path.rstrip('/')}/{name}"
        cfg.model_platform = "tensorflow"
    return server


def model_entry(config: Any, name: str) -> Any:
    """The ModelConfig of model `name` in a ModelServerConfig; ConfigError if it is not there."""
    for cfg in config.model_config_list.config:
        if cfg.name == name:
            return cfg
    listed = sorted(c.name for c in config.model_config_list.config)
    raise ConfigError(f"models.config has no model {name!r}. Received: models={listed}")


def with_versions(
    config: Any, name: str, versions: Sequence[int], labels: Mapping[str, int]
) -> Any:
    """A copy of `config` in which model `name` serves exactly `versions` (a `specific`
    policy) labelled `labels`. Every label must name one of `versions`: TF Serving refuses a
    config whose label points at a version it has not loaded (server_core.cc,
    UpdateModelVersionLabelMap), and would keep the old config."""
    wanted = sorted(set(versions))
    if not wanted or wanted[0] < 1:
        raise ConfigError(f"versions must be positive integers. Received: versions={wanted}")
    stray = {k: v for k, v in labels.items() if v not in wanted}
    if stray:
        raise ConfigError(
            f"labels must point at served versions {wanted}. Received: labels={dict(stray)}"
        )
    out = ModelServerConfig()
    out.CopyFrom(config)
    cfg = model_entry(out, name)
    cfg.model_version_policy.Clear()
    cfg.model_version_policy.specific.versions.extend(wanted)
    cfg.version_labels.clear()
    for label, version in sorted(labels.items()):
        cfg.version_labels[label] = version
    return out


def pinned_versions(entry: Any) -> list[int] | None:
    """The versions a `specific` policy names, sorted; None for `latest` and `all`."""
    policy = entry.model_version_policy
    if policy.WhichOneof("policy_choice") != "specific":
        return None
    return sorted(policy.specific.versions)


def batching_parameters(
    buckets: Sequence[int],
    *,
    max_batch_size: int | None = None,
    batch_timeout_micros: int = DEFAULT_BATCH_TIMEOUT_MICROS,
    num_batch_threads: int = DEFAULT_NUM_BATCH_THREADS,
    max_enqueued_batches: int = DEFAULT_MAX_ENQUEUED_BATCHES,
) -> Any:
    """BatchingParameters that pad to exactly `buckets`; ConfigError for anything that breaks them.

    `max_batch_size` may be given (a sweep tries several) but must be one of the buckets: the
    allowed sizes are the buckets up to it, and TF Serving requires the last allowed size to
    equal max_batch_size.
    """
    sizes = list(buckets)
    if not sizes or sizes != sorted(set(sizes)) or sizes[0] < 1:
        raise ConfigError(
            f"batch buckets must be strictly increasing positive ints. Received: {sizes}"
        )
    top = sizes[-1] if max_batch_size is None else max_batch_size
    if top not in sizes:
        raise ConfigError(
            f"max_batch_size must be one of the export's batch buckets {sizes}, or TF Serving "
            f"would pad to a shape XLA never compiled. Received: max_batch_size={top}"
        )
    for name, value, low in (
        ("batch_timeout_micros", batch_timeout_micros, 0),
        ("num_batch_threads", num_batch_threads, 1),
        ("max_enqueued_batches", max_enqueued_batches, 1),
    ):
        if value < low:
            raise ConfigError(f"{name} must be >= {low}. Received: {name}={value}")
    params = BatchingParameters()
    params.max_batch_size.value = top
    params.batch_timeout_micros.value = batch_timeout_micros
    params.max_enqueued_batches.value = max_enqueued_batches
    params.num_batch_threads.value = num_batch_threads
    params.allowed_batch_sizes.extend(s for s in sizes if s <= top)
    params.pad_variable_length_inputs = False
    return params


def monitoring_config() -> Any:
    """MonitoringConfig with TF Serving's Prometheus endpoint on at PROMETHEUS_PATH."""
    monitoring = MonitoringConfig()
    monitoring.prometheus_config.enable = True
    monitoring.prometheus_config.path = PROMETHEUS_PATH
    return monitoring


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

    All models must share batch buckets: TF Serving has one batching file for the server.
    An existing models.config is merged, not replaced (see `models_config`); one that cannot
    be parsed is a ConfigError rather than silently overwritten.
    """
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
    model_base = Path(model_base)
    model_base.mkdir(parents=True, exist_ok=True)
    config_path = model_base / MODELS_CONFIG
    existing = read_models_config(config_path) if config_path.exists() else None
    messages = {
        MODELS_CONFIG: models_config(
            manifests, serving_base_path=serving_base_path, existing=existing
        ),
        BATCHING_CONFIG: batching_parameters(
            buckets,
            batch_timeout_micros=batch_timeout_micros,
            num_batch_threads=num_batch_threads,
            max_enqueued_batches=max_enqueued_batches,
        ),
        MONITORING_CONFIG: monitoring_config(),
    }
    return {name: write_text_proto(model_base / name, msg) for name, msg in messages.items()}


def write_text_proto(path: Path, message: Any) -> Path:
    """`message` as a text proto at `path`, written beside and renamed into place."""
    # TF Serving polls models.config; a rename means it never reads half a file.
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text_format.MessageToString(message), encoding="utf-8")
    tmp.replace(path)
    return path


def read_models_config(path: Path) -> Any:
    """Parse `models.config` back into a ModelServerConfig."""
    return _parse(path, ModelServerConfig())


def read_batching_parameters(path: Path) -> Any:
    """Parse `batching_parameters.txt` back into a BatchingParameters message."""
    return _parse(path, BatchingParameters())


def read_monitoring_config(path: Path) -> Any:
    """Parse `monitoring.config` back into a MonitoringConfig message."""
    return _parse(path, MonitoringConfig())


def _parse(path: Path, message: Any) -> Any:
    try:
        return text_format.Parse(Path(path).read_text(encoding="utf-8"), message)
    except (OSError, text_format.ParseError) as exc:
        raise ConfigError(f"cannot parse {path} as {message.DESCRIPTOR.name}: {exc}") from None
