"""Every request our clients send TF Serving was warmed up before the model was AVAILABLE.

The stand-in runs as the deploy files run TF Serving (batching on, the export's
`batching_parameters.txt`) and records each graph execution after AVAILABLE whose (signature,
padded batch size, outputs) no warmup record covered (`StandIn.cold_runs`): on TF Serving that
request would build and XLA-compile a new executable on the request path. The clients are the
gateway's tfserving backend and an encoded-image client of `serving_bytes` written as
docs/backends.md shows it, each at every batch size up to the largest bucket.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from contract.manifest import WARMUP_RELPATH, read_manifest
from contract.signatures import CLIENT_CALLS, GATEWAY_CALL, SIGNATURE_BYTES
from model_builder.warmup import write_warmup_requests
from service.backends.tfserving import TFServingBackend
from testdoubles.standin import ServerOptions, StandIn
from testdoubles.tfs_servable import RunKey

MAX_BATCH = 8  # the session export's largest bucket


def _standin(model_base: Path) -> StandIn:
    options = ServerOptions(
        enable_batching=True, batching_parameters_file=model_base / "batching_parameters.txt"
    )
    return StandIn(model_base, "tiny", options=options)


@pytest.fixture(scope="module")
def standin(exported_model: Any) -> Iterator[StandIn]:
    with _standin(exported_model.model_base) as server:
        yield server


async def gateway_sends_every_size(address: str, model_base: Path) -> None:
    backend = TFServingBackend(address=address, model_name="tiny", model_base=model_base)
    await backend.start()
    try:
        rng = np.random.default_rng(0)
        for n in range(1, MAX_BATCH + 1):
            pixels = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
            assert (await backend.predict(pixels, timeout_s=10)).shape == (n, 3)
    finally:
        await backend.close()


def bytes_client_sends_every_size(address: str) -> None:
    """A plain TF Serving client of `serving_bytes`, as docs/backends.md shows it."""
    jpeg = tf.io.encode_jpeg(tf.zeros((20, 30, 3), tf.uint8)).numpy()
    with grpc.insecure_channel(address) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for n in range(1, MAX_BATCH + 1):
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "tiny"
            request.model_spec.signature_name = "serving_bytes"
            request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([jpeg] * n))
            reply = stub.Predict(request, timeout=10)
            assert reply.outputs["probabilities"].tensor_shape.dim[0].size == n


def _runs(server: StandIn) -> set[RunKey]:
    [session] = server.sessions()
    return set(session.runs)


async def test_every_request_the_gateway_sends_was_warmed(
    exported_model: Any, standin: StandIn
) -> None:
    await gateway_sends_every_size(standin.address, exported_model.model_base)
    assert standin.cold_runs() == []
    buckets = read_manifest(exported_model.model_base / "tiny" / "1").batch_buckets
    sent = {k for k in _runs(standin) if k.outputs == GATEWAY_CALL.output_filter}
    assert {k.batch_size for k in sent} == set(buckets)  # it did reach the graph at each


def test_every_request_a_serving_bytes_client_sends_was_warmed(standin: StandIn) -> None:
    bytes_client_sends_every_size(standin.address)
    assert standin.cold_runs() == []
    assert {k.batch_size for k in _runs(standin) if k.signature == SIGNATURE_BYTES} == {1, 2, 4, 8}


@pytest.mark.parametrize("left_out", ["gateway", "serving_bytes"])
async def test_a_warmup_file_missing_a_client_call_is_caught(
    exported_model: Any, tmp_path: Path, left_out: str
) -> None:
    """The check above can fail: the same clients against an export whose warmup file lacks
    one client call reach the graph cold."""
    shutil.copytree(exported_model.model_base, tmp_path, dirs_exist_ok=True)
    version_dir = tmp_path / "tiny" / "1"
    (version_dir / WARMUP_RELPATH).unlink()
    if left_out == "gateway":
        calls = [c for c in CLIENT_CALLS if c != GATEWAY_CALL]
    else:
        calls = [c for c in CLIENT_CALLS if c.signature != SIGNATURE_BYTES]
    write_warmup_requests(
        version_dir, model_name="tiny", height=8, width=8, buckets=(1, 2, 4, 8), calls=calls
    )
    with _standin(tmp_path) as server:
        if left_out == "gateway":
            await gateway_sends_every_size(server.address, tmp_path)
        else:
            bytes_client_sends_every_size(server.address)
        cold = {key for _, _, key in server.cold_runs()}
    signature = GATEWAY_CALL.signature if left_out == "gateway" else SIGNATURE_BYTES
    assert {k.signature for k in cold} == {signature}
    assert {k.batch_size for k in cold} == {1, 2, 4, 8}
