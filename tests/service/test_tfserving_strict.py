"""The tfserving backend against model servers stricter and less polite than our doubles.

Each test meets a behaviour of real TF Serving (or of gRPC under it) that the stand-ins did not
show, over real loopback gRPC (`ScriptedTFServing`, a grpc.aio server with gRPC's default
options as TF Serving has them, or a bare one), and pins what the gateway must then do:

* keepalive: TF Serving sets no keepalive policy (tensorflow_serving/model_servers/server.cc),
  so gRPC's default applies: a client that pings more often than every 5 minutes with calls
  open (2 hours without) gets strikes, and after two the server sends GOAWAY `too_many_pings`
  and closes the connection; calls still on it fail UNAVAILABLE "Too many pings". The gateway
  pings every 30 s (short here so the tests run in seconds: the client sends at most one ping a
  second, so the third strike comes after about 3 s).
* CANCELLED from the server or a proxy (our own cancellations are asyncio's).
* gRPC's message-size limit: TF Serving takes 2 GiB (server.cc, SetMaxMessageSize), a server
  left at gRPC's default 4 MiB refuses a full 224 x 224 bucket of 32.
* The reply's `model_spec` (servables/tensorflow/util.cc, MakeModelSpec) names the version
  that ran; GetModelStatus states are an open proto3 enum (apis/get_model_status.proto).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from contract import wire
from contract.signatures import OUTPUT_PROBABILITIES, SIGNATURE_PIXELS
from contract.tfs_protos import DataType
from service.backends.tfserving import TFServingBackend
from service.breaker import CircuitBreaker, State
from service.errors import BackendError, BackendStartupError, BackendUnavailable, CircuitOpen
from tests.service.scripted_tfserving import ScriptedTFServing, until
from tests.service.test_tfserving_lifecycle import (
    Export,
    _client,
    _images,
    _probabilities_of,
    _started,
)

PREDICT = f"Predict/{SIGNATURE_PIXELS}"


@pytest.fixture(scope="module")
def export(exported_model: Any) -> Export:
    return Export(exported_model)


def _v1(export: Export) -> dict[int, Any]:
    return {1: export.version(1)}


def _pinging(address: str, tmp_path: Path, **kwargs: Any) -> TFServingBackend:
    """A backend that pings every 0.2 s (gRPC sends at most one a second), idle or not."""
    return _client(address, tmp_path, keepalive_time_s=0.2, keepalive_timeout_s=5.0, **kwargs)


# ------------------------------------------------------------------------------- keepalive


async def test_an_idle_connection_closed_for_too_many_pings_costs_no_request(
    export: Export, tmp_path: Path
) -> None:
    """What a default server does to the gateway's idle pings: after three it closes the
    connection (the channel goes IDLE); the next Predict connects again and succeeds, and the
    breaker never heard of it."""
    async with (
        ScriptedTFServing(export.metadata, _probabilities_of(3), versions=_v1(export)) as server,
        _started(_pinging(server.address, tmp_path)) as backend,
    ):
        assert (await backend.predict(_images(2), timeout_s=5, version=1)).shape == (2, 3)
        channel = backend._channel
        assert channel is not None
        assert channel.get_state() is grpc.ChannelConnectivity.READY
        await until(lambda: channel.get_state() is not grpc.ChannelConnectivity.READY, 15)
        assert (await backend.predict(_images(2), timeout_s=5, version=1)).shape == (2, 3)
        assert backend.breaker._failures == 0


async def test_calls_cut_by_a_too_many_pings_goaway_are_retried_without_opening_the_circuit(
    export: Export, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Four Predicts in flight (the server holds them) when the server closes the connection
    for too many pings: each fails UNAVAILABLE "Too many pings". Counted as outages they would
    open a breaker of threshold 3 and the retries would meet circuit_open; the server is up, so
    each is sent again on a new connection and answered, and the log says how to stop it."""
    caplog.set_level(logging.WARNING, logger="service.backends.tfserving")
    breaker = CircuitBreaker(failure_threshold=3, reset_s=30)
    async with (
        ScriptedTFServing(export.metadata, _probabilities_of(3), versions=_v1(export)) as server,
        _started(_pinging(server.address, tmp_path, breaker=breaker)) as backend,
    ):
        server.hang_next[PREDICT] = 4
        calls = [backend.predict(_images(1), timeout_s=15, version=1) for _ in range(4)]
        answers = await asyncio.wait_for(asyncio.gather(*calls), 20)
        assert [a.shape for a in answers] == [(1, 3)] * 4
        assert len(server.asked("Predict")) - 1 == 8  # (serving_manifest once) 4 cut, 4 again
        assert breaker.state is State.CLOSED
    warnings = [r.getMessage() for r in caplog.records if "keepalive pings" in r.getMessage()]
    assert len(warnings) == 1 and "grpc.keepalive_permit_without_calls=1" in warnings[0]
    assert "(too many pings)" in warnings[0].lower()  # the server's own words, quoted


async def test_an_unavailable_server_still_opens_the_circuit(
    export: Export, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The other side of the pings rule: UNAVAILABLE for any other reason (the server down,
    restarting) counts as an outage and opens the breaker; a status that only mentions pings
    in its text is not a GOAWAY cut, and no pings warning is logged for either."""
    caplog.set_level(logging.WARNING, logger="service.backends.tfserving")
    breaker = CircuitBreaker(failure_threshold=2, reset_s=30)
    async with (
        ScriptedTFServing(export.metadata, _probabilities_of(3), versions=_v1(export)) as server,
        _started(_client(server.address, tmp_path, breaker=breaker)) as backend,
    ):
        server.fail_next[PREDICT] = [(grpc.StatusCode.INVALID_ARGUMENT, "too many pings here")]
        with pytest.raises(BackendError, match="too many pings here"):
            await backend.predict(_images(1), timeout_s=5, version=1)
        assert breaker.state is State.CLOSED  # an answer: the server is up
        server.fail_next[PREDICT] = [(grpc.StatusCode.UNAVAILABLE, "Socket closed")] * 100
        with pytest.raises(CircuitOpen):  # two failed attempts, then the breaker refuses
            await backend.predict(_images(1), timeout_s=0.5, version=1)
        assert breaker.state is State.OPEN
    assert not [r for r in caplog.records if "keepalive pings" in r.getMessage()]


# ------------------------------------------------------------------------------- status codes


async def test_a_call_the_server_cancels_is_sent_again(export: Export, tmp_path: Path) -> None:
    """CANCELLED that the gateway did not ask for (a proxy, a server shutting a call down):
    Predict is read-only, so it is sent again within the budget; not an outage either."""
    breaker = CircuitBreaker(failure_threshold=1, reset_s=30)
    async with (
        ScriptedTFServing(export.metadata, _probabilities_of(3), versions=_v1(export)) as server,
        _started(_client(server.address, tmp_path, breaker=breaker)) as backend,
    ):
        server.fail_next[PREDICT] = [(grpc.StatusCode.CANCELLED, "Cancelled")]
        assert (await backend.predict(_images(1), timeout_s=5, version=1)).shape == (1, 3)
        assert len([r for r in server.asked("Predict")
                    if r.model_spec.signature_name == SIGNATURE_PIXELS]) == 2  # fmt: skip
        assert breaker.state is State.CLOSED
        server.fail_next[PREDICT] = [(grpc.StatusCode.CANCELLED, "Cancelled")] * 100
        with pytest.raises(BackendUnavailable, match="CANCELLED"):  # 503: try again later
            await backend.predict(_images(1), timeout_s=0.5, version=1)
        assert breaker.state is State.CLOSED


class _Code42:
    """A status code gRPC does not define (a newer or broken server): grpc-python sends
    whatever `value[0]` says."""

    value = (42, "forty-two")
    name = "FORTY_TWO"


async def test_a_status_code_grpc_does_not_know_is_a_502_with_the_servers_words(
    export: Export, tmp_path: Path
) -> None:
    """The client reads it as UNKNOWN: one attempt, 502 with the server's message, and the
    server counts as up (it answered)."""
    async with (
        ScriptedTFServing(export.metadata, _probabilities_of(3), versions=_v1(export)) as server,
        _started(_client(server.address, tmp_path)) as backend,
    ):
        server.fail_next[PREDICT] = [(_Code42(), "a new kind of trouble")]  # type: ignore[list-item]
        with pytest.raises(BackendError, match="answered UNKNOWN: a new kind of trouble"):
            await backend.predict(_images(1), timeout_s=5, version=1)
        assert backend.breaker.state is State.CLOSED and backend.breaker._failures == 0


@pytest.mark.parametrize(("limit", "refused"), [(4 << 20, True), (None, False)])
async def test_a_request_over_the_servers_message_limit_is_a_502_that_says_so(
    export: Export, tmp_path: Path, limit: int | None, refused: bool
) -> None:
    """A bucket of 32 224 x 224 images is 4.8 MB: TF Serving takes it (2 GiB limit); a server
    left at gRPC's 4 MiB refuses it RESOURCE_EXHAUSTED every time. That is no overload to
    retry later (503) but an error to fix: 502 naming the limit."""
    versions = {1: export.version(1, side=224, batch_buckets=(1, 32))}
    options = {} if limit is None else {"max_message_bytes": limit}
    async with (
        ScriptedTFServing(
            export.metadata, _probabilities_of(3), versions=versions, **options
        ) as server,
        _started(_client(server.address, tmp_path)) as backend,
    ):
        images = np.zeros((32, 224, 224, 3), np.uint8)
        if not refused:
            assert (await backend.predict(images, timeout_s=10, version=1)).shape == (32, 3)
            return
        with pytest.raises(BackendError, match=r"size limit .*larger than max \(4816"):
            await backend.predict(images, timeout_s=10, version=1)
        assert backend.breaker.state is State.CLOSED


# ------------------------------------------------------------------------------- replies


async def test_a_reply_naming_another_version_than_pinned_is_refused(
    export: Export, tmp_path: Path
) -> None:
    """TF Serving names the version that ran; rows of another version than the one pinned
    would be read with the wrong contract (its labels), so the batch fails with 502."""

    def from_v2(request: Any) -> Any:
        reply = _probabilities_of(3)(request)
        reply.model_spec.name, reply.model_spec.version.value = "tiny", 2
        return reply

    async with (
        ScriptedTFServing(export.metadata, from_v2, versions=_v1(export)) as server,
        _started(_client(server.address, tmp_path)) as backend,
    ):
        with pytest.raises(BackendError, match=r"pinned to model 'tiny' v1 was answered by v2"):
            await backend.predict(_images(1), timeout_s=5, version=1)


async def test_a_reply_that_names_no_version_is_read_with_the_pinned_one(
    export: Export, tmp_path: Path
) -> None:
    """A server or proxy that leaves the reply's version out (TF Serving fills it; simpler
    servers and doubles may not) is no reason to refuse: the pinned version's contract reads
    the rows. Only a version that differs is refused (the test above)."""

    def unnamed(request: Any) -> Any:
        reply = _probabilities_of(3)(request)
        reply.model_spec.name = "tiny"  # a model_spec, but no version in it
        return reply

    async with (
        ScriptedTFServing(export.metadata, unnamed, versions=_v1(export)) as server,
        _started(_client(server.address, tmp_path)) as backend,
    ):
        assert (await backend.predict(_images(2), timeout_s=5, version=1)).shape == (2, 3)


async def test_a_version_state_this_gateway_does_not_know_is_reported_not_fatal(
    export: Export, tmp_path: Path
) -> None:
    """ModelVersionStatus.State is an open enum: a newer server's state 25 reads as
    UNKNOWN(25) (never AVAILABLE), not a crash of the version poller."""
    versions = {1: export.version(1), 2: export.version(2)}
    async with (
        ScriptedTFServing(export.metadata, versions=versions) as server,
        _started(_client(server.address, tmp_path)) as backend,
    ):
        versions[2].state = 25  # type: ignore[assignment]
        view = await backend.versions("tiny")
        assert view.states == {1: "AVAILABLE", 2: "UNKNOWN(25)"} and view.available == [1]


async def test_a_served_input_of_unknown_rank_is_refused_in_words(
    export: Export, tmp_path: Path
) -> None:
    """GetModelMetadata may say a tensor's rank is unknown (TensorShapeProto.unknown_rank): the
    gateway cannot check it against the manifest and refuses to start, saying so (not `[]`)."""
    v1 = export.version(1)
    v1.signatures.signature_def[SIGNATURE_PIXELS].inputs["images"].tensor_shape.unknown_rank = True
    del v1.signatures.signature_def[SIGNATURE_PIXELS].inputs["images"].tensor_shape.dim[:]
    async with ScriptedTFServing(export.metadata, versions={1: v1}) as server:
        backend = _client(server.address, tmp_path)
        with pytest.raises(BackendStartupError, match=r"Received: uint8 of unknown rank"):
            await backend.start()


@pytest.mark.parametrize(
    ("dtype", "name"),
    [
        (DataType.DT_HALF, "float16"),
        (DataType.DT_BFLOAT16, "bfloat16"),
        (DataType.DT_DOUBLE, "float64"),
    ],
)
async def test_probabilities_of_another_float_type_are_refused_at_start(
    export: Export, tmp_path: Path, dtype: DataType, name: str
) -> None:
    """A mixed-precision export whose softmax is float16 (TF Serving sends it in half_val) or
    one in float64: the contract says float32, so that version gets no traffic, and the
    reason names the dtype (the wire could widen them; the manifest would then lie)."""
    v1 = export.version(1)
    v1.signatures.signature_def[SIGNATURE_PIXELS].outputs[OUTPUT_PROBABILITIES].dtype = dtype
    async with ScriptedTFServing(export.metadata, versions={1: v1}) as server:
        with pytest.raises(
            BackendStartupError, match=rf"expected float32\[\?,3\]\. Received: {name}"
        ):
            await _client(server.address, tmp_path).start()


async def test_outputs_beyond_the_one_asked_for_are_ignored(export: Export, tmp_path: Path) -> None:
    """A server that ignores `output_filter` and sends every output: the probabilities are
    read, the rest is not in the way."""

    def everything(request: Any) -> Any:
        reply = _probabilities_of(3)(request)
        n = request.inputs["images"].tensor_shape.dim[0].size
        reply.outputs["top_k_ids"].CopyFrom(wire.array_tensor(np.zeros((n, 3), np.int32)))
        reply.outputs["extra"].CopyFrom(wire.array_tensor(np.array([b"x"] * n, dtype=object)))
        return reply

    async with (
        ScriptedTFServing(export.metadata, everything, versions=_v1(export)) as server,
        _started(_client(server.address, tmp_path)) as backend,
    ):
        probs = await backend.predict(_images(2), timeout_s=5, version=1)
        assert probs.shape == (2, 3) and np.allclose(probs, 1 / 3)


async def test_a_server_that_refuses_version_labels_has_no_labels(
    export: Export, tmp_path: Path
) -> None:
    """TF Serving with allow_version_labels off refuses every label lookup INVALID_ARGUMENT
    (model_servers/server_core.cc, ServableRequestFromModelSpec): the versions are still
    read, no label points anywhere, and the answer is no outage."""
    refused = "ModelSpec has 'version_label' set, but it is not currently allowed by the server."
    versions = {1: export.version(1), 2: export.version(2)}
    async with (
        ScriptedTFServing(export.metadata, versions=versions, labels={"stable": 1}) as server,
        _started(_client(server.address, tmp_path)) as backend,
    ):
        server.fail_next["GetModelMetadata/label"] = [(grpc.StatusCode.INVALID_ARGUMENT, refused)]
        view = await backend.versions("tiny", ("stable",))
        assert view.available == [1, 2] and view.labels == {}
        assert backend.breaker.state is State.CLOSED
