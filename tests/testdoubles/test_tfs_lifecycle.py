"""The stand-in's model lifecycle: models.config, polling, the availability-preserving order,
version labels, states, load failures and warmup replay, as TF Serving runs them."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    prediction_log_pb2,
    prediction_service_pb2_grpc,
)

from contract.manifest import WARMUP_RELPATH
from testdoubles.errors import StandInError
from testdoubles.standin import Fault, ServerOptions, StandIn
from testdoubles.tfs_status import TFSError
from tests.testdoubles.conftest import AddVersion
from tests.testdoubles.standin_support import images, predict_request, write_config

FAST = ServerOptions(
    file_system_poll_wait_s=0.1, model_config_file_poll_wait_s=0.1, max_num_load_retries=0
)
State = get_model_status_pb2.ModelVersionStatus


class Client:
    """Both services of one stand-in over one channel."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.predict_stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        self.model_stub = model_service_pb2_grpc.ModelServiceStub(channel)

    def predict(self, **spec: Any) -> Any:
        return self.predict_stub.Predict(predict_request(images(1), **spec), timeout=10)

    def states(self, name: str = "tiny") -> list[tuple[int, str, str]]:
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = name
        reply = self.model_stub.GetModelStatus(request, timeout=10)
        return [
            (s.version, State.State.Name(s.state), s.status.error_message)
            for s in reply.model_version_status
        ]


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Any]:
    """`serve(config_path, options)` -> (stand-in, client), both closed after the test."""
    opened: list[tuple[StandIn, grpc.Channel]] = []

    def start(config: Path, options: ServerOptions = FAST) -> tuple[StandIn, Client]:
        server = StandIn(model_config_file=config, options=options).start()
        channel = grpc.insecure_channel(server.address)
        opened.append((server, channel))
        return server, Client(channel)

    yield start
    for server, channel in opened:
        channel.close()
        server.close()


def _transitions(server: StandIn) -> list[tuple[str, int, str]]:
    return [(model, version, state) for _, model, version, state in server.manager.events]


def test_a_new_version_is_available_before_the_old_one_unloads(
    tmp_path: Path, add_version: AddVersion, serve: Any
) -> None:
    add_version(tmp_path, "tiny", 1)
    server, client = serve(write_config(tmp_path / "models.config", {"tiny": tmp_path / "tiny"}))
    assert client.predict().model_spec.version.value == 1
    add_version(tmp_path, "tiny", 2)
    assert server.wait_for_state("tiny", 1, "END", 30)
    assert _transitions(server) == [
        ("tiny", 1, "START"), ("tiny", 1, "LOADING"), ("tiny", 1, "AVAILABLE"),
        ("tiny", 2, "START"), ("tiny", 2, "LOADING"), ("tiny", 2, "AVAILABLE"),
        ("tiny", 1, "UNLOADING"), ("tiny", 1, "END"),
    ]  # fmt: skip
    assert client.predict().model_spec.version.value == 2  # Latest
    with pytest.raises(grpc.RpcError) as info:
        client.predict(version=1)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert info.value.details() == "Servable not found for request: Specific(tiny, 1)"
    # Every version stays listed, highest first; a clean unload ends with OK.
    assert client.states() == [(2, "AVAILABLE", ""), (1, "END", "")]


def test_a_request_in_flight_on_the_old_version_completes(
    tmp_path: Path, add_version: AddVersion, serve: Any
) -> None:
    add_version(tmp_path, "tiny", 1)
    server, client = serve(write_config(tmp_path / "models.config", {"tiny": tmp_path / "tiny"}))
    gate = threading.Event()
    server.faults.set(Fault(predict_gate=gate), model="tiny", version=1)
    replies: list[Any] = []
    slow = threading.Thread(target=lambda: replies.append(client.predict(version=1)))
    slow.start()
    try:
        assert server.manager.wait_until(
            lambda: any(e.handles for e in server.manager.entries()), 10
        )
        add_version(tmp_path, "tiny", 2)
        assert server.wait_for_state("tiny", 1, "UNLOADING", 30)
        assert not server.wait_for_state("tiny", 1, "END", 0.5)  # waits for the request
    finally:
        gate.set()
        slow.join(20)
    assert [r.model_spec.version.value for r in replies] == [1]  # served while unloading
    assert server.wait_for_state("tiny", 1, "END", 10)


def test_a_version_that_fails_to_load_leaves_the_old_one_serving(
    tmp_path: Path, add_version: AddVersion, serve: Any
) -> None:
    add_version(tmp_path, "tiny", 1)
    server, client = serve(write_config(tmp_path / "models.config", {"tiny": tmp_path / "tiny"}))
    server.faults.set(
        Fault(load_error=TFSError(grpc.StatusCode.INTERNAL, "disk on fire")), version=2
    )
    add_version(tmp_path, "tiny", 2)
    assert server.wait_for_state("tiny", 2, "END", 30)
    assert client.states() == [(2, "END", "disk on fire"), (1, "AVAILABLE", "")]
    assert client.predict().model_spec.version.value == 1


def test_a_slow_load_is_loading_while_the_old_version_serves(
    tmp_path: Path, add_version: AddVersion, serve: Any
) -> None:
    add_version(tmp_path, "tiny", 1)
    server, client = serve(write_config(tmp_path / "models.config", {"tiny": tmp_path / "tiny"}))
    gate = threading.Event()
    server.faults.set(Fault(load_gate=gate), version=2)
    add_version(tmp_path, "tiny", 2)
    try:
        assert server.wait_for_state("tiny", 2, "LOADING", 10)
        assert client.states() == [(2, "LOADING", ""), (1, "AVAILABLE", "")]
        assert client.predict().model_spec.version.value == 1
    finally:
        gate.set()
    assert server.wait_for_state("tiny", 1, "END", 30)


def test_two_models_labels_and_policies(
    tmp_path: Path, add_version: AddVersion, serve: Any
) -> None:
    for version in (1, 2):
        add_version(tmp_path, "tiny", version)
        add_version(tmp_path, "other", version)
    config = write_config(
        tmp_path / "models.config",
        {"tiny": tmp_path / "tiny", "other": tmp_path / "other"},
        policies={"tiny": "all {}", "other": "specific { versions: 1 }"},
    )
    server, client = serve(config)
    # The start waits for each model's latest version (WaitUntilModelsAvailable); the highest
    # loads first, the others follow.
    assert server.wait_for_state("tiny", 1, "AVAILABLE", 30)
    assert server.available() == {"other": [1], "tiny": [1, 2]}
    with pytest.raises(grpc.RpcError) as info:
        client.predict(label="stable")
    assert info.value.details() == "Unrecognized servable version label: stable"
    # Labels may point at AVAILABLE versions only; added by a later config, as in production.
    write_config(
        config,
        {"tiny": tmp_path / "tiny", "other": tmp_path / "other"},
        labels={"tiny": {"stable": 1, "canary": 2}},
        policies={"tiny": "all {}", "other": "specific { versions: 1 }"},
    )
    assert server.manager.wait_until(lambda: server.manager.config == _read(config), 10)
    assert client.predict(label="stable").model_spec.version.value == 1
    assert client.predict(label="canary").model_spec.version.value == 2
    assert client.predict(name="other").model_spec.version.value == 1


def _read(path: Path) -> Any:
    from testdoubles.tfs_lifecycle import read_models_config

    return read_models_config(path)


def test_a_label_on_an_unavailable_version_fails_the_start(
    tmp_path: Path, add_version: AddVersion
) -> None:
    add_version(tmp_path, "tiny", 1)
    config = write_config(
        tmp_path / "models.config", {"tiny": tmp_path / "tiny"}, labels={"tiny": {"canary": 1}}
    )
    with pytest.raises(StandInError) as info:
        StandIn(model_config_file=config, options=FAST).start()
    assert str(info.value) == (
        "FAILED_PRECONDITION: Request to assign label to version 1 of model tiny, which is not "
        "currently available for inference"
    )
    options = ServerOptions(allow_version_labels_for_unavailable_models=True)
    with StandIn(model_config_file=config, options=options) as server:
        assert server.available() == {"tiny": [1]}


def test_config_file_changes_are_applied_and_bad_ones_kept_out(
    tmp_path: Path, add_version: AddVersion, serve: Any
) -> None:
    add_version(tmp_path, "tiny", 1)
    config = write_config(tmp_path / "models.config", {"tiny": tmp_path / "tiny"})
    server, client = serve(config)
    add_version(tmp_path, "other", 3)
    write_config(config, {"tiny": tmp_path / "tiny", "other": tmp_path / "other"})
    assert server.wait_for_state("other", 3, "AVAILABLE", 30)
    assert client.predict(name="other").model_spec.version.value == 3
    # A relative base path is refused as TF Serving refuses it; the old config stays.
    write_config(config, {"tiny": Path("relative/tiny")})
    assert server.manager.wait_until(lambda: bool(server.config_errors), 10)
    assert "Expected model tiny to have an absolute path or URI" in server.config_errors[-1]
    assert server.available() == {"other": [3], "tiny": [1]}
    # A model taken out of the config is unloaded; its history stays.
    write_config(config, {"tiny": tmp_path / "tiny"})
    assert server.wait_for_state("other", 3, "END", 30)
    assert client.states("other") == [(3, "END", "")]


def test_reload_config_request(tmp_path: Path, add_version: AddVersion, serve: Any) -> None:
    add_version(tmp_path, "tiny", 1)
    config = write_config(tmp_path / "models.config", {"tiny": tmp_path / "tiny"})
    _, client = serve(config, ServerOptions(max_num_load_retries=0))
    write_config(config, {"tiny": tmp_path / "tiny"}, labels={"tiny": {"stable": 1}})
    request = model_management_pb2.ReloadConfigRequest(config=_read(config))
    reply = client.model_stub.HandleReloadConfigRequest(request, timeout=30)
    assert reply.status.error_code == 0
    assert client.predict(label="stable").model_spec.version.value == 1
    write_config(config, {"tiny": tmp_path / "tiny", "tiny2": tmp_path / "tiny"})
    request = model_management_pb2.ReloadConfigRequest(config=_read(config))
    duplicate = request.config.model_config_list.config[1]
    duplicate.name = "tiny"
    reply = client.model_stub.HandleReloadConfigRequest(request, timeout=30)
    assert reply.status.error_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert reply.status.error_message == "Illegal to list model tiny multiple times in config list"


# -- warmup replay at load -----------------------------------------------------------------


def _rewrite_warmup(version_dir: Path, records: list[bytes]) -> None:
    path = version_dir / WARMUP_RELPATH
    path.unlink()
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(record)


def _log(**spec: Any) -> bytes:
    log = prediction_log_pb2.PredictionLog()
    log.predict_log.request.CopyFrom(predict_request(images(1), **spec))
    return log.SerializeToString()


@pytest.mark.parametrize(
    ("records", "error"),
    [
        (  # a record TF Serving cannot run: the load fails with its error
            [_log(), _log(signature="nope")],
            'FAILED_PRECONDITION: Serving signature key "nope" not found.',
        ),
        ([b"not a PredictionLog"], "INVALID_ARGUMENT: Failed to parse warmup record: "),
        (
            [_log()] * 1001,
            "INVALID_ARGUMENT: Number of warmup records exceeds the maximum (1000) at ",
        ),
    ],
    ids=["bad-request", "unparsable", "too-many"],
)
def test_a_bad_warmup_file_fails_the_load(
    tmp_path: Path, add_version: AddVersion, records: list[bytes], error: str
) -> None:
    version_dir = add_version(tmp_path, "tiny", 1)
    _rewrite_warmup(version_dir, records)
    with pytest.raises(StandInError) as info:
        StandIn(tmp_path, "tiny", options=FAST).start()
    message = str(info.value)
    assert message.startswith(
        "UNKNOWN: 1 model(s) did not become available: {{{name: tiny version: 1} due to error: "
    )
    assert error in message


def test_a_warmup_file_that_is_not_a_tfrecord_is_data_loss(
    tmp_path: Path, add_version: AddVersion
) -> None:
    version_dir = add_version(tmp_path, "tiny", 1)
    (version_dir / WARMUP_RELPATH).write_bytes(b"\x00" * 64)
    with pytest.raises(StandInError, match=r"DATA_LOSS: .*Please verify your warmup data is in "):
        StandIn(tmp_path, "tiny", options=FAST).start()


def test_warmup_runs_before_available_and_counts_as_warm(exported_model: Any) -> None:
    with StandIn(exported_model.model_base, "tiny") as server:
        [session] = server.sessions()
        assert {k.batch_size for k in session.warmed} == {1, 2, 4, 8}
        assert {k.signature for k in session.warmed} == {
            "serving_default", "serving_bytes", "serving_manifest",
        }  # fmt: skip
        assert len(session.warmed) == 16  # 4 client calls x 4 buckets
