"""The local stand-in for TF Serving, driven through the real tensorflow-serving-api stubs."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from testdoubles.standin import StandIn, StandInError


@pytest.fixture(scope="module")
def standin(exported_model: Any) -> Iterator[StandIn]:
    with StandIn(exported_model.model_base, exported_model.name) as server:
        yield server


@pytest.fixture(scope="module")
def channel(standin: StandIn) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(standin.address) as ch:
        yield ch


def _images(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)


def _request(
    images: Any, *, name: str = "tiny", signature: str = "", key: str = "images", **spec: Any
) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.model_spec.signature_name = signature
    if "version" in spec:
        request.model_spec.version.value = spec["version"]
    request.inputs[key].CopyFrom(tf.make_tensor_proto(images))
    return request


def test_predict_matches_the_keras_model(exported_model: Any, channel: grpc.Channel) -> None:
    images = _images(4)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    reply = stub.Predict(_request(images), timeout=10)
    probs = tf.make_ndarray(reply.outputs["probabilities"])
    np.testing.assert_allclose(probs, exported_model.reference(images), atol=1e-5)
    assert set(reply.outputs) == {"probabilities", "top_k_ids", "top_k_scores"}
    assert (reply.model_spec.name, reply.model_spec.version.value) == ("tiny", 1)
    assert reply.model_spec.signature_name == "serving_default"


def test_output_filter_and_pinned_version(channel: grpc.Channel) -> None:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = _request(_images(2), version=1)
    request.output_filter.append("top_k_ids")
    reply = stub.Predict(request, timeout=10)
    assert list(reply.outputs) == ["top_k_ids"]
    assert tf.make_ndarray(reply.outputs["top_k_ids"]).shape == (2, 2)


@pytest.mark.parametrize(
    ("request_kwargs", "images", "code", "message"),
    [
        ({"name": "nope"}, _images(1), grpc.StatusCode.NOT_FOUND, "Servable not found"),
        ({"version": 7}, _images(1), grpc.StatusCode.NOT_FOUND, "Specific(tiny, 7)"),
        ({"signature": "nope"}, _images(1), grpc.StatusCode.INVALID_ARGUMENT, '"nope" not found'),
        ({"key": "pixels"}, _images(1), grpc.StatusCode.INVALID_ARGUMENT, "does not match"),
        ({}, _images(1).astype(np.float32), grpc.StatusCode.INVALID_ARGUMENT, "to be uint8"),
        ({}, np.zeros((1, 9, 8, 3), np.uint8), grpc.StatusCode.INVALID_ARGUMENT, "shape"),
    ],
)
def test_bad_predict_requests_get_tf_serving_codes(
    channel: grpc.Channel,
    request_kwargs: dict[str, Any],
    images: np.ndarray,
    code: grpc.StatusCode,
    message: str,
) -> None:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(_request(images, **request_kwargs), timeout=10)
    assert info.value.code() == code
    assert message in info.value.details()


def test_unknown_output_filter_is_invalid(channel: grpc.Channel) -> None:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = _request(_images(1))
    request.output_filter.append("logits")
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_metadata_is_a_packed_signature_def_map(channel: grpc.Channel) -> None:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "tiny"
    reply = stub.GetModelMetadata(request, timeout=10)
    sig_map = get_model_metadata_pb2.SignatureDefMap()
    assert reply.metadata["signature_def"].Unpack(sig_map)
    sig = sig_map.signature_def["serving_default"]
    assert sig.inputs["images"].dtype == tf.uint8.as_datatype_enum
    assert [d.size for d in sig.inputs["images"].tensor_shape.dim] == [-1, 8, 8, 3]
    assert [d.size for d in sig.outputs["probabilities"].tensor_shape.dim] == [-1, 3]
    assert "serving_bytes" in sig_map.signature_def
    assert reply.model_spec.version.value == 1


def test_metadata_rejects_other_fields(channel: grpc.Channel) -> None:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["graph"])
    request.model_spec.name = "tiny"
    with pytest.raises(grpc.RpcError) as info:
        stub.GetModelMetadata(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    ("name", "version", "code"),
    [
        ("tiny", None, grpc.StatusCode.OK),
        ("tiny", 1, grpc.StatusCode.OK),
        ("tiny", 2, grpc.StatusCode.NOT_FOUND),
        ("other", None, grpc.StatusCode.NOT_FOUND),
    ],
)
def test_model_status(
    channel: grpc.Channel, name: str, version: int | None, code: grpc.StatusCode
) -> None:
    stub = model_service_pb2_grpc.ModelServiceStub(channel)
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = name
    if version is not None:
        request.model_spec.version.value = version
    if code != grpc.StatusCode.OK:
        with pytest.raises(grpc.RpcError) as info:
            stub.GetModelStatus(request, timeout=10)
        assert info.value.code() == code
        return
    [status] = stub.GetModelStatus(request, timeout=10).model_version_status
    assert status.version == 1
    assert status.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE


def test_busy_port_is_a_clear_error(exported_model: Any, standin: StandIn) -> None:
    other = StandIn(exported_model.model_base, exported_model.name, port=standin.port)
    with pytest.raises(StandInError, match=f"cannot listen on 127.0.0.1:{standin.port}"):
        other.start()


def test_missing_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="no numeric version directories"):
        StandIn(tmp_path, "tiny").start()


def test_runs_as_a_process_and_stops_on_sigterm(exported_model: Any) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "TF_CPP_MIN_LOG_LEVEL": "2"}
    cmd = [sys.executable, "-m", "resnet_serving", "standin", "--model-base", str(exported_model.model_base),
           "--model-name", "tiny", "--port", "0"]  # fmt: skip
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 90)
        assert ready, "the stand-in printed no ready line within 90 s"
        line = proc.stdout.readline()
        assert "stand-in ready (not TF Serving)" in line
        address = line.split(" on ")[-1].strip()
        with grpc.insecure_channel(address) as ch:
            request = get_model_status_pb2.GetModelStatusRequest()
            request.model_spec.name = "tiny"
            reply = model_service_pb2_grpc.ModelServiceStub(ch).GetModelStatus(request, timeout=10)
            assert reply.model_version_status[0].state == 30  # AVAILABLE
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
