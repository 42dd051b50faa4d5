"""The tfserving backend (grpc.aio) against the local stand-in over real loopback gRPC.

The stand-in runs as the deploy files run TF Serving: batching on, with the export's
`batching_parameters.txt`, replies in `float_val` (TF Serving's default).
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from contract import tfs_grpc, tfs_protos, wire
from contract.manifest import MANIFEST_RELPATH, read_manifest
from contract.signatures import OUTPUT_PROBABILITIES
from service.backends.tfserving import TFServingBackend, probabilities
from service.breaker import CircuitBreaker, State
from service.errors import (
    BackendError,
    BackendStartupError,
    BackendUnavailable,
    DeadlineExceeded,
    NotReady,
    QueueFull,
    VersionGone,
)
from testdoubles.standin import Fault, ServerOptions, StandIn
from testdoubles.tfs_batching import BatchingOptions
from tests.service.scripted_tfserving import ScriptedTFServing, resized, until
from tests.service.versions import (
    export_serving_a_wrong_contract,
    export_version,
    export_without_manifest_signature,
)
from tests.testdoubles.standin_support import write_config


def _batching(exported_model: Any, **changes: Any) -> ServerOptions:
    return ServerOptions(
        enable_batching=True,
        batching_parameters_file=exported_model.model_base / "batching_parameters.txt",
        **changes,
    )


@pytest.fixture(scope="module")
def standin(exported_model: Any) -> Iterator[StandIn]:
    options = _batching(exported_model)
    with StandIn(exported_model.model_base, exported_model.name, options=options) as server:
        yield server


def _client(exported_model: Any, address: str, **kwargs: Any) -> TFServingBackend:
    options: dict[str, Any] = {
        "address": address,
        "model_name": "tiny",
        "model_base": exported_model.model_base if exported_model else Path("unused"),
        "connect_timeout_s": 2.0,
        "startup_timeout_s": 5.0,
        "ready_cache_s": 0.0,
    }
    options.update(kwargs)
    return TFServingBackend(**options)


def _images(n: int, seed: int = 2) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)


async def test_predict_matches_the_keras_model(exported_model: Any, standin: StandIn) -> None:
    backend = _client(exported_model, standin.address)
    assert not await backend.ready()
    await backend.start()
    try:
        assert await backend.ready()
        assert backend.manifest.model_version == 1
        for n in (1, 8):
            images = _images(n)
            probs = await backend.predict(images, timeout_s=10)
            assert probs.dtype == np.float32 and probs.shape == (n, 3)
            np.testing.assert_allclose(probs, exported_model.reference(images), atol=1e-5)
    finally:
        await backend.close()
        await backend.close()  # idempotent
    with pytest.raises(NotReady):
        await backend.predict(_images(1), timeout_s=1)


async def test_reply_in_tensor_content_reads_the_same(
    exported_model: Any, standin: StandIn
) -> None:
    """TF Serving's --enable_serialization_as_tensor_content: same numbers, other encoding."""
    options = _batching(exported_model, enable_serialization_as_tensor_content=True)
    images = _images(4)
    with StandIn(exported_model.model_base, exported_model.name, options=options) as other:
        content = await _predict_once(exported_model, other.address, images)
    fields = await _predict_once(exported_model, standin.address, images)
    np.testing.assert_array_equal(content, fields)


async def _predict_once(exported_model: Any, address: str, images: np.ndarray) -> np.ndarray:
    backend = _client(exported_model, address)
    await backend.start()
    try:
        return await backend.predict(images, timeout_s=10)
    finally:
        await backend.close()


async def test_full_tf_serving_queue_is_503_and_leaves_the_breaker_closed(
    exported_model: Any,
) -> None:
    """TF Serving answers UNAVAILABLE 'The batch scheduling queue ... is full' when its queue
    is full: overload, not an outage. 503 queue_full + Retry-After, no retry, breaker closed."""
    options = ServerOptions(
        enable_batching=True,
        batching=BatchingOptions(
            max_batch_size=8, max_enqueued_batches=1, num_batch_threads=1,
            allowed_batch_sizes=(1, 2, 4, 8),
        ),
    )  # fmt: skip
    with StandIn(exported_model.model_base, exported_model.name, options=options) as server:
        backend = _client(exported_model, server.address)
        await backend.start()
        server.faults.set(Fault(predict_delay_s=1.5), model="tiny")
        try:
            running = asyncio.create_task(backend.predict(_images(8), timeout_s=10))
            await until(lambda: server.batch_stats() == (1, 0))  # on the one batch thread
            queued = asyncio.create_task(backend.predict(_images(8), timeout_s=10))
            await until(lambda: server.batch_stats() == (1, 1))  # the queue's one batch
            with pytest.raises(QueueFull) as info:
                await backend.predict(_images(8), timeout_s=10)
            assert info.value.status == 503
            assert info.value.headers() == {"Retry-After": "1"}
            assert "is full; currently 1 batches enqueued and max_enqueued_batches is 1" in (
                info.value.detail
            )
            assert backend.breaker.state is State.CLOSED
            server.faults.clear()
            for task in (running, queued):
                assert (await task).shape == (8, 3)  # the accepted ones were served
        finally:
            server.faults.clear()
            await backend.close()


def _float_reply(values: list[float], shape: tuple[int, ...]) -> Any:
    """A reply tensor as TF Serving sends it by default: float_val, row-major."""
    proto = tfs_protos.TensorProto(dtype=tfs_protos.DataType.DT_FLOAT, float_val=values)
    for d in shape:
        proto.tensor_shape.dim.add(size=d)
    return proto


def test_probabilities_read_float_val_in_row_major_order() -> None:
    values = [0.1, 0.2, 0.7, 0.6, 0.3, 0.1]  # no symmetry: a reversed read fails
    probs = probabilities(_float_reply(values, (2, 3)), 2, 3)
    np.testing.assert_array_equal(probs, np.array(values, np.float32).reshape(2, 3))


@pytest.mark.parametrize(
    ("values", "shape", "match"),
    [
        ([0.5] * 6, (3, 2), r"shape"),  # transposed
        ([0.5] * 6, (6,), r"shape"),  # flat
        ([0.5] * 5, (2, 3), r"5 values"),  # truncated
        ([0.5] * 7, (2, 3), r"7 values"),  # too many
    ],
)
def test_probabilities_refuse_a_reply_of_the_wrong_shape(
    values: list[float], shape: tuple[int, ...], match: str
) -> None:
    with pytest.raises(BackendError, match=match):
        probabilities(_float_reply(values, shape), 2, 3)


def test_probabilities_refuse_another_dtype() -> None:
    with pytest.raises(BackendError, match="must be float32"):
        probabilities(wire.images_tensor(_images(2)), 2, 3)


async def test_wrong_model_name_fails_start(exported_model: Any, standin: StandIn) -> None:
    backend = _client(exported_model, standin.address, model_name="other", startup_timeout_s=1)
    with pytest.raises(BackendStartupError, match=r"'other' not AVAILABLE.*any versions"):
        await backend.start()


async def test_served_contract_that_does_not_match_the_signature_fails_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    export_serving_a_wrong_contract(tmp_path, 1, seed=0, monkeypatch=monkeypatch)
    with StandIn(tmp_path, "tiny") as server:
        backend = _client(None, server.address, model_base=tmp_path)
        with pytest.raises(BackendStartupError, match=r"expected uint8\[\?,16,8,3\]"):
            await backend.start()


async def test_the_contract_comes_over_grpc_without_the_model_files(
    exported_model: Any, standin: StandIn, tmp_path: Path
) -> None:
    """No model volume: `model_base` is an empty folder, the manifest comes from
    `serving_manifest` and equals the file the export wrote."""
    backend = _client(exported_model, standin.address, model_base=tmp_path)
    await backend.start()
    try:
        disk = read_manifest(exported_model.model_base / "tiny" / "1")
        assert await backend.contract("tiny", 1) == disk
        assert (await backend.predict(_images(2), timeout_s=10, version=1)).shape == (2, 3)
    finally:
        await backend.close()


async def test_an_export_without_the_manifest_signature_reads_the_disk(tmp_path: Path) -> None:
    """Older exports: the contract from `<model_base>/<name>/<version>`; without the files,
    the error says both where it looked."""
    base = tmp_path / "models"
    export_without_manifest_signature(base, 1, seed=0)
    with StandIn(base, "tiny") as server:
        backend = _client(None, server.address, model_base=base)
        await backend.start()
        try:
            assert (await backend.contract("tiny", 1)).model_version == 1
        finally:
            await backend.close()
        blind = _client(None, server.address, model_base=tmp_path / "nowhere")
        with pytest.raises(BackendStartupError, match=r"no manifest at .*nowhere/tiny/1"):
            await blind.start()


async def test_deadline_shorter_than_the_call(exported_model: Any, standin: StandIn) -> None:
    backend = _client(exported_model, standin.address)
    await backend.start()
    standin.delay_s = 1.0
    try:
        with pytest.raises(DeadlineExceeded):
            await asyncio.wait_for(backend.predict(_images(1), timeout_s=0.2), timeout=5)
    finally:
        standin.delay_s = 0.0
        await backend.close()


async def test_server_stop_and_restart(exported_model: Any, standin: StandIn) -> None:
    backend = _client(exported_model, standin.address)
    await backend.start()
    try:
        standin.stop()
        with pytest.raises(BackendUnavailable) as info:
            await asyncio.wait_for(backend.predict(_images(1), timeout_s=1.0), timeout=5)
        assert info.value.retry_after_s == 1
        assert not await backend.ready()

        standin.start()  # same port, model still loaded
        for _ in range(50):  # the channel reconnects by itself (backoff capped at 1 s)
            if await backend.ready():
                break
            await asyncio.sleep(0.2)
        assert await backend.ready()
        probs = await backend.predict(_images(1), timeout_s=5)
        assert probs.shape == (1, 3)
    finally:
        standin.start()
        await backend.close()


async def test_a_version_gone_is_version_gone(exported_model: Any, standin: StandIn) -> None:
    """A version TF Serving does not serve (any more): NOT_FOUND `Servable not found for
    request: Specific(tiny, 9)` -> VersionGone (503), which the gateway retries elsewhere."""
    backend = _client(exported_model, standin.address)
    await backend.start()
    try:
        with pytest.raises(
            VersionGone, match=r"Servable not found for request: Specific\(tiny, 9\)"
        ):
            await backend.predict(_images(1), timeout_s=5, version=9)
        assert await backend.ready()  # the model itself still serves
    finally:
        await backend.close()


async def test_versions_report_states_and_labels(tmp_path: Path) -> None:
    """GetModelStatus for the states, GetModelMetadata by label for what each label names;
    a label that is not set is simply absent."""
    base = tmp_path / "models"
    export_version(base, 1, seed=0)
    export_version(base, 2, seed=1)
    config = write_config(
        tmp_path / "models.config", {"tiny": base / "tiny"}, labels={"tiny": {"stable": 1}},
        policies={"tiny": "specific { versions: 1 versions: 2 }"},
    )  # fmt: skip
    # Labels at the first load need this flag (server_core.cc, UpdateModelVersionLabelMap).
    options = ServerOptions(allow_version_labels_for_unavailable_models=True)
    with StandIn(model_config_file=config, options=options) as server:
        assert server.wait_for_state("tiny", 1, "AVAILABLE", 30)  # the first model waits for one
        backend = _client(None, server.address, model_base=base)
        await backend.start()
        try:
            view = await backend.versions("tiny", ("stable", "canary"))
            assert view.states == {1: "AVAILABLE", 2: "AVAILABLE"} and view.available == [1, 2]
            assert view.labels == {"stable": 1}
            assert (await backend.versions("nosuch")).states == {}
        finally:
            await backend.close()


def _rpc_error(code: grpc.StatusCode, details: str = "boom") -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


@pytest.mark.parametrize(
    ("code", "error", "attempts"),
    [
        (grpc.StatusCode.UNAVAILABLE, BackendUnavailable, "many"),
        (grpc.StatusCode.CANCELLED, BackendUnavailable, "many"),  # by the server, not by us
        (grpc.StatusCode.RESOURCE_EXHAUSTED, BackendUnavailable, "one"),
        (grpc.StatusCode.DEADLINE_EXCEEDED, DeadlineExceeded, "one"),
        (grpc.StatusCode.INVALID_ARGUMENT, BackendError, "one"),
        (grpc.StatusCode.NOT_FOUND, BackendError, "one"),
        (grpc.StatusCode.INTERNAL, BackendError, "one"),
    ],
)
async def test_status_codes_map_and_only_unavailable_and_cancelled_retry(
    code: grpc.StatusCode, error: type[Exception], attempts: str
) -> None:
    backend = TFServingBackend(address="127.0.0.1:1", model_name="m", model_base=Path("."))
    calls: list[float] = []

    async def rpc(left: float) -> None:
        calls.append(left)
        raise _rpc_error(code)

    with pytest.raises(error):
        await backend._call("Predict", rpc, timeout_s=0.5)
    assert (len(calls) > 1) == (attempts == "many")
    assert all(0 < left <= 0.5 for left in calls)  # each attempt gets what is left


async def test_queue_full_is_overload_not_an_outage() -> None:
    """Breaker threshold 1: a queue-full answer counted as a failure would open it."""
    backend = TFServingBackend(
        address="127.0.0.1:1",
        model_name="m",
        model_base=Path("."),
        breaker=CircuitBreaker(failure_threshold=1),
    )
    calls: list[float] = []
    details = (
        "The batch scheduling queue to which this task was submitted is full; currently 10 "
        "batches enqueued and max_enqueued_batches is 10"
    )

    async def rpc(left: float) -> None:
        calls.append(left)
        raise _rpc_error(grpc.StatusCode.UNAVAILABLE, details)

    with pytest.raises(QueueFull, match="overloaded") as info:
        await backend._call("Predict", rpc, timeout_s=0.5)
    assert len(calls) == 1 and backend.breaker.state is State.CLOSED
    assert info.value.retry_after_s == 1  # Retry-After, as for every 503


def _half_open(backend: TFServingBackend) -> None:
    """Open the backend's breaker and let its reset time pass: the next call is the probe."""
    breaker = backend.breaker
    for _ in range(breaker.failure_threshold):
        breaker.record_failure()
    breaker._opened_at -= breaker.reset_s  # as if reset_s had passed (no sleep in the test)


@pytest.mark.parametrize("how", ["cancelled", "deadline"])
async def test_a_probe_that_gets_no_answer_does_not_keep_the_circuit_open(
    exported_model: Any, how: str
) -> None:
    """The half-open probe is cancelled (the client left) or runs out of its deadline: the
    next call must be allowed to probe, or the gateway would fail fast for ever."""
    backend = _client(exported_model, "127.0.0.1:1")
    _half_open(backend)

    async def no_answer(left: float) -> None:
        if how == "cancelled":
            await asyncio.sleep(10)
        raise grpc.aio.AioRpcError(
            grpc.StatusCode.DEADLINE_EXCEEDED, grpc.aio.Metadata(), grpc.aio.Metadata(), "late"
        )

    probe = asyncio.create_task(backend._call("Predict", no_answer, timeout_s=5))
    await asyncio.sleep(0.01)
    if how == "cancelled":
        probe.cancel()
        with pytest.raises(asyncio.CancelledError):
            await probe
    else:
        with pytest.raises(DeadlineExceeded):
            await probe
    assert backend.breaker.state is State.HALF_OPEN  # no verdict: neither closed nor re-opened

    async def answer(left: float) -> str:
        return "ok"

    assert await backend._call("GetModelStatus", answer, timeout_s=5) == "ok"  # not CircuitOpen
    assert backend.breaker.state.value == "closed"


# ---------------------------------------------------------------- settings, channel, readiness


async def test_from_settings_uses_every_setting(exported_model: Any, standin: StandIn) -> None:
    from service.settings import Settings

    settings = Settings(
        backend="tfserving", tfserving_address=standin.address, model_name=exported_model.name,
        model_base_path=exported_model.model_base, model_version=1, retry_after_s=4,
        breaker_failure_threshold=7, breaker_reset_s=3.5, backend_connect_timeout_s=2.0,
        startup_timeout_s=5.0,
    )  # fmt: skip
    backend = TFServingBackend.from_settings(settings)
    assert (backend.breaker.failure_threshold, backend.breaker.reset_s) == (7, 3.5)
    await backend.start()
    try:
        assert backend.manifest.model_name == exported_model.name
        assert backend.manifest.model_version == 1
        assert (await backend.predict(_images(2), timeout_s=5)).shape == (2, 3)
        standin.stop()
        with pytest.raises(BackendUnavailable) as info:
            await asyncio.wait_for(backend.predict(_images(1), timeout_s=0.5), timeout=5)
        assert info.value.retry_after_s == 4
    finally:
        standin.start()
        await backend.close()


async def test_the_channel_carries_the_largest_bucket(
    exported_model: Any, standin: StandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gRPC ignores option names it does not know: a misspelt one would leave the 4 MB default
    message limit, which a 64 x 224 x 224 x 3 bucket (9.6 MB) exceeds. Every option is one of
    gRPC's own names, and the limits cover the model's largest request and reply."""
    seen: list[dict[str, Any]] = []
    real = grpc.aio.insecure_channel

    def recording(address: str, options: Any = None, **kw: Any) -> Any:
        seen.append(dict(options or ()))
        return real(address, options=options, **kw)

    monkeypatch.setattr(grpc.aio, "insecure_channel", recording)
    backend = _client(exported_model, standin.address, keepalive_time_s=30.0,
                      keepalive_timeout_s=10.0)  # fmt: skip
    await backend.start()
    m = backend.manifest
    await backend.close()
    options = seen[-1]  # re-opened for this model after start
    known = {
        "grpc.max_send_message_length", "grpc.max_receive_message_length",
        "grpc.keepalive_time_ms", "grpc.keepalive_timeout_ms",
        "grpc.keepalive_permit_without_calls", "grpc.http2.max_pings_without_data",
        "grpc.enable_retries", "grpc.initial_reconnect_backoff_ms",
        "grpc.min_reconnect_backoff_ms", "grpc.max_reconnect_backoff_ms",
    }  # fmt: skip
    assert set(options) == known
    assert options["grpc.max_send_message_length"] >= m.max_batch * 8 * 8 * 3
    assert options["grpc.max_receive_message_length"] >= 4 << 20  # never below gRPC's default
    assert (options["grpc.keepalive_time_ms"], options["grpc.keepalive_timeout_ms"]) == (
        30_000,
        10_000,
    )
    assert options["grpc.enable_retries"] == 0  # we retry, within the request's budget
    # Keepalive pings go on while the channel is idle (0: no limit on pings without data), so
    # a dead connection is found before a request is sent on it.
    assert options["grpc.keepalive_permit_without_calls"] == 1
    assert options["grpc.http2.max_pings_without_data"] == 0
    assert options["grpc.max_reconnect_backoff_ms"] <= 1000


async def test_ready_is_false_while_the_circuit_is_open_and_after_close(
    exported_model: Any, standin: StandIn
) -> None:
    backend = _client(exported_model, standin.address)
    await backend.start()
    try:
        assert await backend.ready()
        for _ in range(backend.breaker.failure_threshold):
            backend.breaker.record_failure()
        assert await backend.ready() is False  # known down: no need to ask
        backend.breaker.record_success()
        assert await backend.ready() is True
    finally:
        await backend.close()
    assert await backend.ready() is False


async def test_ready_answers_from_its_cache_between_checks(
    exported_model: Any, standin: StandIn
) -> None:
    backend = _client(exported_model, standin.address, ready_cache_s=60.0)
    await backend.start()
    try:
        assert await backend.ready()
        standin.stop()
        assert await backend.ready()  # within ready_cache_s: the last answer, no RPC
    finally:
        standin.start()
        await backend.close()


async def _real_metadata(exported_model: Any, standin: StandIn) -> Any:
    async with grpc.aio.insecure_channel(standin.address) as channel:
        request = tfs_protos.GetModelMetadataRequest(metadata_field=["signature_def"])
        request.model_spec.name = exported_model.name
        return await tfs_grpc.prediction_service(channel).GetModelMetadata(request, timeout=10)


async def test_start_is_bounded_when_the_metadata_never_comes(exported_model: Any) -> None:
    """Every RPC has a deadline: a server that never answers GetModelMetadata fails start
    within connect_timeout_s, it does not hang the gateway's start-up."""
    async with ScriptedTFServing(metadata=None) as server:
        backend = _client(exported_model, server.address, connect_timeout_s=0.5)
        t0 = asyncio.get_running_loop().time()
        with pytest.raises(DeadlineExceeded, match="GetModelMetadata"):
            await asyncio.wait_for(backend.start(), 10)
        assert asyncio.get_running_loop().time() - t0 < 5


@pytest.mark.parametrize(
    ("reply_rows", "output", "match"),
    [
        (1, OUTPUT_PROBABILITIES, r"probabilities must have shape \(2, 3\)"),  # 1 row, 2 images
        (2, "logits", r"Predict reply has no 'probabilities'\. Received: \['logits'\]"),
    ],
    ids=["too-few-rows", "no-probabilities"],
)
async def test_a_reply_that_does_not_answer_the_request_is_a_backend_error(
    exported_model: Any, standin: StandIn, reply_rows: int, output: str, match: str
) -> None:
    def predict(request: Any) -> Any:
        reply = tfs_protos.PredictResponse()
        reply.outputs[output].CopyFrom(_float_reply([1 / 3] * (3 * reply_rows), (reply_rows, 3)))
        return reply

    metadata = await _real_metadata(exported_model, standin)
    async with ScriptedTFServing(metadata, predict) as server:
        backend = _client(exported_model, server.address)
        await backend.start()
        try:
            with pytest.raises(BackendError, match=match):
                await backend.predict(_images(2), timeout_s=5)
        finally:
            await backend.close()


async def test_a_backend_can_be_started_again_after_close(
    exported_model: Any, standin: StandIn
) -> None:
    backend = _client(exported_model, standin.address)
    await backend.close()  # closing what never started is a no-op
    with pytest.raises(NotReady):
        _ = backend.manifest
    await backend.start()
    await backend.close()
    await backend.start()  # re-opens the channel it closed
    try:
        assert (await backend.predict(_images(1), timeout_s=5)).shape == (1, 3)
    finally:
        await backend.close()


def _as_big_model(metadata: Any, model_base: Path, exported_model: Any, side: int) -> Any:
    """The stand-in's metadata and the export's manifest, both saying `side` x `side` input
    and buckets up to 64: what a ResNet at 224 looks like to the backend's start()."""
    sig_map = tfs_protos.SignatureDefMap()
    metadata.metadata["signature_def"].Unpack(sig_map)
    metadata.metadata["signature_def"].Pack(resized(sig_map, side=side))
    shutil.copytree(exported_model.model_base, model_base, dirs_exist_ok=True)
    path = model_base / exported_model.name / "1" / MANIFEST_RELPATH
    raw = json.loads(path.read_text())
    raw["input"]["height"] = raw["input"]["width"] = side
    raw["batch_buckets"] = [1, 8, 64]
    path.write_text(json.dumps(raw))
    return metadata


async def test_the_channel_is_sized_for_a_large_model(
    exported_model: Any, standin: StandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """64 x 224 x 224 x 3 uint8 is 9.6 MB, past gRPC's 4 MB default: the channel re-opened
    after start must take it."""
    metadata = _as_big_model(
        await _real_metadata(exported_model, standin), tmp_path, exported_model, 224
    )
    seen: list[dict[str, Any]] = []
    real = grpc.aio.insecure_channel

    def recording(address: str, options: Any = None, **kw: Any) -> Any:
        seen.append(dict(options or ()))
        return real(address, options=options, **kw)

    monkeypatch.setattr(grpc.aio, "insecure_channel", recording)
    async with ScriptedTFServing(metadata) as server:
        backend = _client(exported_model, server.address, model_base=tmp_path)
        await backend.start()
        await backend.close()
    request = 64 * 224 * 224 * 3
    assert seen[-1]["grpc.max_send_message_length"] >= request
    assert seen[-1]["grpc.max_receive_message_length"] >= request
    assert seen[-1]["grpc.max_send_message_length"] < 2 * request  # sized, not unlimited


async def test_start_waits_for_the_model_to_become_available(
    exported_model: Any, standin: StandIn
) -> None:
    """TF Serving answers GetModelStatus before the version is AVAILABLE (it is loading):
    start() polls until it is, within startup_timeout_s."""
    metadata = await _real_metadata(exported_model, standin)
    async with ScriptedTFServing(metadata, loading_polls=2) as server:
        backend = _client(exported_model, server.address, startup_timeout_s=10.0)
        await asyncio.wait_for(backend.start(), 15)
        await backend.close()


async def test_start_is_bounded_when_the_status_never_comes(exported_model: Any) -> None:
    async with ScriptedTFServing(metadata=None, status_hangs=True) as server:
        backend = _client(
            exported_model, server.address, connect_timeout_s=0.3, startup_timeout_s=1.0
        )
        t0 = asyncio.get_running_loop().time()
        with pytest.raises(BackendStartupError, match="not AVAILABLE"):
            await asyncio.wait_for(backend.start(), 10)
        assert asyncio.get_running_loop().time() - t0 < 5
