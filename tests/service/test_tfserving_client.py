"""The tfserving backend (grpc.aio) against the local stand-in over real loopback gRPC.

The stand-in runs as the deploy files run TF Serving: batching on, with the export's
`batching_parameters.txt`, replies in `float_val` (TF Serving's default).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from contract import tfs_protos, wire
from contract.manifest import read_manifest
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
            await _until(lambda: server.batch_stats() == (1, 0))  # on the one batch thread
            queued = asyncio.create_task(backend.predict(_images(8), timeout_s=10))
            await _until(lambda: server.batch_stats() == (1, 1))  # the queue's one batch
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


async def _until(condition: Any, timeout_s: float = 10.0) -> None:
    end = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < end, "condition not reached in time"
        await asyncio.sleep(0.01)


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
        (grpc.StatusCode.RESOURCE_EXHAUSTED, BackendUnavailable, "one"),
        (grpc.StatusCode.DEADLINE_EXCEEDED, DeadlineExceeded, "one"),
        (grpc.StatusCode.INVALID_ARGUMENT, BackendError, "one"),
        (grpc.StatusCode.NOT_FOUND, BackendError, "one"),
        (grpc.StatusCode.INTERNAL, BackendError, "one"),
    ],
)
async def test_status_codes_map_and_only_unavailable_retries(
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

    with pytest.raises(QueueFull, match="overloaded"):
        await backend._call("Predict", rpc, timeout_s=0.5)
    assert len(calls) == 1 and backend.breaker.state is State.CLOSED


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

    async def answer(left: float) -> str:
        return "ok"

    assert await backend._call("GetModelStatus", answer, timeout_s=5) == "ok"  # not CircuitOpen
    assert backend.breaker.state.value == "closed"
