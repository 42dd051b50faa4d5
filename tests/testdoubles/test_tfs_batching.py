"""The stand-in's server-side batching: TF Serving's queue rules, padding and error texts."""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import prediction_service_pb2_grpc

from contract.tfs_config import batching_parameters, write_text_proto
from testdoubles.errors import StandInError
from testdoubles.standin import Fault, ServerOptions, StandIn
from testdoubles.tfs_batching import (
    BatchingOptions,
    SharedBatchScheduler,
    Task,
    merge,
    round_to_allowed,
    split,
    task_size,
)
from testdoubles.tfs_servable import RunKey
from testdoubles.tfs_status import TFSError
from tests.testdoubles.standin_support import images, predict_request

ALL = ("probabilities", "top_k_ids", "top_k_scores")


def _task(*rows: int) -> Task:
    array = np.array(rows, dtype=np.int32).reshape(len(rows), 1)
    return Task({"x": array}, len(rows), None)


# -- the tensor work, on its own ------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "allowed", "padded"),
    [(1, (1, 2, 4), 1), (3, (1, 2, 4), 4), (4, (1, 2, 4), 4), (5, (1, 2, 4), 5), (3, (), 3)],
)
def test_round_to_the_smallest_allowed_size(
    size: int, allowed: tuple[int, ...], padded: int
) -> None:
    assert round_to_allowed(size, allowed) == padded


def test_merge_pads_with_the_last_tasks_first_row_and_split_drops_it() -> None:
    tasks = [_task(1, 2), _task(7)]
    merged = merge(tasks, (1, 2, 4, 8), {"x": "x:0"})
    assert merged["x"].ravel().tolist() == [1, 2, 7, 7]  # batching_session.cc MergeInputTensors
    parts = split({"y": merged["x"] * 10}, tasks)
    assert [p["y"].ravel().tolist() for p in parts] == [[10, 20], [70]]


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({}, "Batching Run() must have at least one input tensor"),
        ({"x": np.int32(3)}, "Batching Run() input tensors must have at least one dimension"),
        (
            {"x": np.zeros(2), "y": np.zeros(3)},
            "Batching Run() input tensors must have equal 0th-dimension size",
        ),
    ],
)
def test_inputs_that_cannot_be_batched(inputs: dict[str, Any], message: str) -> None:
    with pytest.raises(TFSError) as info:
        task_size(inputs)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT and info.value.message == message


def test_different_inner_shapes_without_padding_fail() -> None:
    tasks = [Task({"x": np.zeros((1, 2))}, 1, None), Task({"x": np.zeros((1, 3))}, 1, None)]
    with pytest.raises(TFSError, match="Tensors with name 'in:0' from different tasks"):
        merge(tasks, (), {"x": "in:0"})


def test_a_batch_past_every_deadline_is_resource_exhausted() -> None:
    scheduler = SharedBatchScheduler(1)
    try:
        queue = scheduler.add_queue(BatchingOptions(), lambda merged: merged, {"x": "x:0"})
        with pytest.raises(TFSError) as info:
            queue.run({"x": np.zeros((1, 1))}, deadline=time.monotonic() - 1)
        assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert info.value.message == "Run() timeout exceeded while waiting in batching queue"
    finally:
        scheduler.close()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"max_batch_size": 8, "allowed": (1, 4)},
            "Last entry in allowed_batch_sizes must match max_batch_size; last entry was 4; "
            "expected 8",
        ),
        ({"max_enqueued_batches": 0}, "max_enqueued_batches must be positive; was 0"),
    ],
)
def test_bad_batching_parameters_stop_the_start(
    tmp_path: Path, fields: dict[str, Any], message: str
) -> None:
    params = batching_parameters((1, 2, 4, 8))
    if "allowed" in fields:
        del params.allowed_batch_sizes[:]
        params.allowed_batch_sizes.extend(fields["allowed"])
    if "max_enqueued_batches" in fields:
        params.max_enqueued_batches.value = fields["max_enqueued_batches"]
    path = write_text_proto(tmp_path / "batching_parameters.txt", params)
    with pytest.raises(StandInError) as info:
        BatchingOptions.from_file(path)
    assert message in str(info.value)


def test_a_batching_file_without_batching_is_refused(exported_model: Any) -> None:
    options = ServerOptions(batching_parameters_file=Path("/x/batching_parameters.txt"))
    with pytest.raises(StandInError, match="batching_parameters_file is set without setting"):
        StandIn(exported_model.model_base, "tiny", options=options)


# -- through the server --------------------------------------------------------------------


def _server(exported_model: Any, **batching: Any) -> StandIn:
    opts = {"max_batch_size": 8, "allowed_batch_sizes": (1, 2, 4, 8), **batching}
    options = ServerOptions(enable_batching=True, batching=BatchingOptions(**opts))
    return StandIn(exported_model.model_base, "tiny", options=options)


@pytest.fixture
def batched(exported_model: Any) -> Iterator[tuple[StandIn, Any]]:
    with (
        _server(exported_model, batch_timeout_s=1.0, num_batch_threads=1) as server,
        grpc.insecure_channel(server.address) as ch,
    ):
        yield server, prediction_service_pb2_grpc.PredictionServiceStub(ch)


def test_requests_are_padded_to_an_allowed_size(
    exported_model: Any, batched: tuple[StandIn, Any]
) -> None:
    server, stub = batched
    [session] = server.sessions()
    before = dict(session.runs)
    pixels = images(3)
    reply = stub.Predict(predict_request(pixels), timeout=10)
    probs = np.asarray(reply.outputs["probabilities"].float_val).reshape(-1, 3)
    np.testing.assert_allclose(probs, exported_model.reference(pixels), atol=1e-5)  # 3 rows back
    ran = {k: n - before.get(k, 0) for k, n in session.runs.items() if n != before.get(k, 0)}
    assert ran == {RunKey("serving_default", 4, ALL): 1}
    assert server.cold_runs() == []  # 4 was warmed


def test_concurrent_requests_share_one_batch(batched: tuple[StandIn, Any]) -> None:
    server, stub = batched
    [session] = server.sessions()
    before = dict(session.runs)
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        sizes = [1, 2, 1]
        replies = list(
            pool.map(lambda n: stub.Predict(predict_request(images(n)), timeout=10), sizes)
        )
    assert [r.outputs["probabilities"].tensor_shape.dim[0].size for r in replies] == sizes
    ran = {k: n - before.get(k, 0) for k, n in session.runs.items() if n != before.get(k, 0)}
    assert ran == {RunKey("serving_default", 4, ALL): 1}  # 1 + 2 + 1 in one run


def test_a_task_larger_than_max_batch_size_is_refused(batched: tuple[StandIn, Any]) -> None:
    _, stub = batched
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(predict_request(images(9)), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "Task size 9 is larger than maximum input batch size 8"


def test_a_full_queue_is_unavailable_with_tf_servings_text(exported_model: Any) -> None:
    with (
        _server(exported_model, max_enqueued_batches=1, num_batch_threads=1) as server,
        grpc.insecure_channel(server.address) as ch,
    ):
        stub = prediction_service_pb2_grpc.PredictionServiceStub(ch)
        server.faults.set(Fault(predict_delay_s=1.0), model="tiny", version=1)
        results: list[Any] = []

        def call() -> None:
            results.append(stub.Predict(predict_request(images(8)), timeout=10))

        threads = [threading.Thread(target=call) for _ in range(2)]
        threads[0].start()
        _until(lambda: server.batch_stats() == (1, 0))  # running on the only thread
        threads[1].start()
        _until(lambda: server.batch_stats() == (1, 1))  # the one batch the queue may hold
        with pytest.raises(grpc.RpcError) as info:
            stub.Predict(predict_request(images(1)), timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert info.value.details() == (
            "The batch scheduling queue to which this task was submitted is full; currently 1 "
            "batches enqueued and max_enqueued_batches is 1"
        )
        server.faults.clear()
        for thread in threads:
            thread.join(timeout=20)
        assert len(results) == 2


def _until(condition: Any, timeout_s: float = 10.0) -> None:
    end = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < end, "condition not reached in time"
        time.sleep(0.01)
