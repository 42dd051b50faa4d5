"""TF Serving config files: valid text protos that parse back to what was asked for."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import text_format

from contract.errors import ConfigError
from contract.manifest import InputSpec, Manifest
from contract.tfs_config import (
    BATCHING_CONFIG,
    MODELS_CONFIG,
    MONITORING_CONFIG,
    PROMETHEUS_PATH,
    batching_parameters,
    read_batching_parameters,
    read_models_config,
    read_monitoring_config,
    write_tfserving_configs,
)


def _manifest(name: str, buckets: tuple[int, ...] = (1, 2, 4, 8)) -> Manifest:
    return Manifest(
        model_name=name,
        model_version=1,
        architecture="resnet_cifar",
        input=InputSpec(height=32, width=32),
        labels=("a", "b", "c", "d", "e"),
        batch_buckets=buckets,
    )


@pytest.mark.parametrize("buckets", [(1,), (1, 2, 4), (1, 2, 4, 8, 16, 32, 64), (3, 5, 12)])
def test_batching_allowed_sizes_are_exactly_the_buckets(
    tmp_path: Path, buckets: tuple[int, ...]
) -> None:
    paths = write_tfserving_configs(
        tmp_path, [_manifest("m", buckets)], batch_timeout_micros=500, num_batch_threads=2,
        max_enqueued_batches=7,
    )  # fmt: skip
    params = read_batching_parameters(paths[BATCHING_CONFIG])
    assert tuple(params.allowed_batch_sizes) == buckets
    assert params.max_batch_size.value == buckets[-1]
    assert params.batch_timeout_micros.value == 500
    assert params.num_batch_threads.value == 2
    assert params.max_enqueued_batches.value == 7
    assert params.pad_variable_length_inputs is False


def test_models_config_lists_each_model_once(tmp_path: Path) -> None:
    manifests = [_manifest("zeta"), _manifest("alpha"), _manifest("zeta")]
    paths = write_tfserving_configs(tmp_path, manifests, serving_base_path="/srv/models/")
    configs = read_models_config(paths[MODELS_CONFIG]).model_config_list.config
    assert [(c.name, c.base_path, c.model_platform) for c in configs] == [
        ("alpha", "/srv/models/alpha", "tensorflow"),
        ("zeta", "/srv/models/zeta", "tensorflow"),
    ]


def test_monitoring_config_enables_prometheus(tmp_path: Path) -> None:
    paths = write_tfserving_configs(tmp_path, [_manifest("m")])
    mon = read_monitoring_config(paths[MONITORING_CONFIG])
    assert mon.prometheus_config.enable is True
    assert mon.prometheus_config.path == PROMETHEUS_PATH == "/monitoring/prometheus/metrics"


def test_text_uses_tf_serving_field_names(tmp_path: Path) -> None:
    """What TF Serving's own parser reads: wrapper messages and repeated scalar fields."""
    paths = write_tfserving_configs(tmp_path, [_manifest("m", (1, 2))])
    text = paths[BATCHING_CONFIG].read_text(encoding="utf-8")
    assert "max_batch_size {\n  value: 2\n}" in text
    assert "allowed_batch_sizes: 1\nallowed_batch_sizes: 2" in text
    assert 'name: "m"' in paths[MODELS_CONFIG].read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("manifests", "match"),
    [
        ([], r"no exported models"),
        (
            [_manifest("a", (1, 2)), _manifest("b", (1, 4))],
            r"share batch buckets.*b buckets=\[1, 4\]",
        ),
    ],
)
def test_invalid_sets_are_refused(tmp_path: Path, manifests: list[Manifest], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        write_tfserving_configs(tmp_path, manifests)
    assert not list(tmp_path.iterdir())


def test_unparsable_file_is_one_line_error(tmp_path: Path) -> None:
    bad = tmp_path / BATCHING_CONFIG
    bad.write_text("max_batch_size: {{ nope", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"cannot parse .* as BatchingParameters"):
        read_batching_parameters(bad)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"buckets": (1, 2, 4), "max_batch_size": 3},
            r"one of the export's batch buckets \[1, 2, 4\]",
        ),
        ({"buckets": (1, 2, 4), "max_batch_size": 8}, r"Received: max_batch_size=8"),
        ({"buckets": (4, 2)}, "strictly increasing"),
        ({"buckets": ()}, "strictly increasing"),
        ({"buckets": (1, 2), "num_batch_threads": 0}, "num_batch_threads must be >= 1"),
        ({"buckets": (1, 2), "batch_timeout_micros": -1}, "batch_timeout_micros must be >= 0"),
    ],
)
def test_batching_parameters_refuse_what_breaks_the_buckets(
    kwargs: dict[str, object], match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        batching_parameters(**kwargs)  # type: ignore[arg-type]


def test_a_smaller_max_batch_size_allows_the_buckets_up_to_it() -> None:
    params = batching_parameters((1, 2, 4, 8, 16), max_batch_size=4)
    assert list(params.allowed_batch_sizes) == [1, 2, 4]
    assert params.max_batch_size.value == 4


def test_files_parse_with_tf_servings_own_schema(tmp_path: Path) -> None:
    from tensorflow_serving.config import model_server_config_pb2

    paths = write_tfserving_configs(tmp_path, [_manifest("m")])
    real = model_server_config_pb2.ModelServerConfig()
    text_format.Parse(paths[MODELS_CONFIG].read_text(), real)
    assert [c.name for c in real.model_config_list.config] == ["m"]
