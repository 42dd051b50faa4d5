"""The local stand-in for TF Serving, driven through the real tensorflow-serving-api stubs:
replies and errors as TF Serving gives them (texts from its source, see testdoubles/)."""

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

from contract import wire
from testdoubles.standin import ServerOptions, StandIn, StandInError
from tests.testdoubles.standin_support import images, predict_request


@pytest.fixture(scope="module")
def standin(exported_model: Any) -> Iterator[StandIn]:
    with StandIn(exported_model.model_base, exported_model.name) as server:
        yield server


@pytest.fixture(scope="module")
def stub(standin: StandIn) -> Iterator[Any]:
    with grpc.insecure_channel(standin.address) as ch:
        yield prediction_service_pb2_grpc.PredictionServiceStub(ch)


def test_predict_matches_the_keras_model_in_float_val(exported_model: Any, stub: Any) -> None:
    """TF Serving's default reply: typed fields (Tensor::AsProtoField), not tensor_content."""
    pixels = images(4)
    reply = stub.Predict(predict_request(pixels), timeout=10)
    probs = reply.outputs["probabilities"]
    assert not probs.tensor_content and len(probs.float_val) == 4 * 3
    assert [d.size for d in probs.tensor_shape.dim] == [4, 3]
    np.testing.assert_allclose(tf.make_ndarray(probs), exported_model.reference(pixels), atol=1e-5)
    ids = reply.outputs["top_k_ids"]
    assert ids.dtype == tf.int32.as_datatype_enum and len(ids.int_val) == 4 * 2
    assert set(reply.outputs) == {"probabilities", "top_k_ids", "top_k_scores"}
    assert (reply.model_spec.name, reply.model_spec.version.value) == ("tiny", 1)
    assert reply.model_spec.signature_name == "serving_default"  # resolved from ""
    # The gateway's parser (contract.wire) reads it.
    got = wire.tensor_array(probs, dtype="float32", shape=(4, 3))
    np.testing.assert_array_equal(got, tf.make_ndarray(probs))


def test_tensor_content_option(exported_model: Any) -> None:
    """Every output in tensor_content (Tensor::AsProtoTensorContent), strings included, as
    TF's string list: TensorFlow's own parser reads the manifest back."""
    options = ServerOptions(enable_serialization_as_tensor_content=True)
    manifest = predict_pb2.PredictRequest()
    manifest.model_spec.name, manifest.model_spec.signature_name = "tiny", "serving_manifest"
    manifest.inputs["unused"].CopyFrom(tf.make_tensor_proto(np.zeros(1, np.int32)))
    with (
        StandIn(exported_model.model_base, "tiny", options=options) as server,
        grpc.insecure_channel(server.address) as ch,
    ):
        stub = prediction_service_pb2_grpc.PredictionServiceStub(ch)
        reply = stub.Predict(predict_request(images(2)), timeout=10)
        text = stub.Predict(manifest, timeout=10).outputs["manifest"]
    probs = reply.outputs["probabilities"]
    assert len(probs.tensor_content) == 2 * 3 * 4 and not probs.float_val
    assert text.tensor_content and not text.string_val
    [row] = tf.io.parse_tensor(text.SerializeToString(), tf.string).numpy().tolist()
    assert row == (exported_model.model_base / "tiny/1/assets.extra/manifest.json").read_bytes()


def test_output_filter_and_pinned_version(stub: Any) -> None:
    reply = stub.Predict(predict_request(images(2), version=1, outputs=["top_k_ids"]), timeout=10)
    assert list(reply.outputs) == ["top_k_ids"]
    assert tf.make_ndarray(reply.outputs["top_k_ids"]).shape == (2, 2)


def test_serving_bytes_decodes_in_graph(stub: Any) -> None:
    jpeg = tf.io.encode_jpeg(tf.constant(images(1)[0])).numpy()
    request = predict_request(
        np.array([jpeg, jpeg], dtype=object), signature="serving_bytes", key="image_bytes"
    )
    reply = stub.Predict(request, timeout=10)
    assert tf.make_ndarray(reply.outputs["probabilities"]).shape == (2, 3)


def _bad_content() -> Any:
    request = predict_request(images(1))
    request.inputs["images"].tensor_content = b"\x00" * 5  # 1*8*8*3 bytes expected
    return request


def _no_spec() -> Any:
    request = predict_request(images(1))
    request.ClearField("model_spec")
    return request


_NOT_FOUND, _INVALID = grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    ("request_", "code", "message"),
    [
        (
            predict_request(images(1), name="nope"),
            _NOT_FOUND,
            "Servable not found for request: Latest(nope)",
        ),
        (
            predict_request(images(1), version=7),
            _NOT_FOUND,
            "Servable not found for request: Specific(tiny, 7)",
        ),
        (  # TF Serving answers FAILED_PRECONDITION here, not INVALID_ARGUMENT
            predict_request(images(1), signature="nope"),
            grpc.StatusCode.FAILED_PRECONDITION,
            'Serving signature key "nope" not found.',
        ),
        (
            predict_request(images(1), key="pixels"),
            _INVALID,
            "Signature input alias: images(feed name: serving_default_images:0) not found in "
            "request and no default value provided. Inputs expected to be in the request "
            "{pixels}, or default input alias set: ",
        ),
        (
            predict_request(images(1).astype(np.float32)),
            _INVALID,
            "Expects arg[0] to be uint8 but float is provided",
        ),
        (predict_request(np.zeros((1, 9, 8, 3), np.uint8)), _INVALID, "shape [1, 9, 8, 3]"),
        (_bad_content(), _INVALID, "tensor parsing error: images"),
        (_no_spec(), _INVALID, "Missing ModelSpec"),
        (predict_request(images(1), name=""), _INVALID, "ModelSpec has no name specified."),
        (
            predict_request(images(1), label="canary"),
            _INVALID,
            "Unrecognized servable version label: canary",
        ),
        (
            predict_request(images(1), outputs=["logits"]),
            _INVALID,
            "output tensor alias not found in signature: logits Outputs expected to be in the "
            "set {probabilities,top_k_ids,top_k_scores}.",
        ),
        (
            predict_request(images(1), outputs=["top_k_ids", "top_k_ids"]),
            _INVALID,
            "duplicate output tensor alias: top_k_ids",
        ),
    ],
    ids=lambda v: "" if isinstance(v, predict_pb2.PredictRequest | grpc.StatusCode) else v[:40],
)
def test_bad_requests_get_tf_serving_codes_and_texts(
    stub: Any, request_: Any, code: grpc.StatusCode, message: str
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(request_, timeout=10)
    assert info.value.code() == code
    assert message in info.value.details()


def test_extra_input_names_the_sets(stub: Any) -> None:
    request = predict_request(images(1))
    request.inputs["foo"].CopyFrom(tf.make_tensor_proto(images(1)))
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(request, timeout=10)
    assert info.value.details() == (
        "input size does not match signature: 2!=1 len({foo,images}) != len({images}). "
        "Sent extra: {foo}. Missing but required: {}."
    )


def test_long_messages_are_truncated_as_tf_serving_does(stub: Any) -> None:
    """grpc_status_util.cc: 1024 characters, then '...TRUNCATED'."""
    with pytest.raises(grpc.RpcError) as info:
        stub.Predict(predict_request(images(1), signature="s" * 2000), timeout=10)
    details = info.value.details()
    assert len(details) == 1024 + len("...TRUNCATED") and details.endswith("s...TRUNCATED")


def test_metadata_is_a_packed_signature_def_map(stub: Any) -> None:
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
    assert (reply.model_spec.name, reply.model_spec.version.value) == ("tiny", 1)
    assert not reply.model_spec.signature_name


@pytest.mark.parametrize(
    ("name", "fields", "message"),
    [
        ("tiny", ["graph"], "Metadata field graph is not supported"),
        ("tiny", [], "GetModelMetadataRequest must specify at least one metadata_field"),
        # the request is checked before the lookup: no NOT_FOUND for an unknown model here
        ("nope", [], "GetModelMetadataRequest must specify at least one metadata_field"),
    ],
)
def test_metadata_rejects_bad_fields(stub: Any, name: str, fields: list[str], message: str) -> None:
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=fields)
    request.model_spec.name = name
    with pytest.raises(grpc.RpcError) as info:
        stub.GetModelMetadata(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == message


@pytest.mark.parametrize(
    ("name", "version", "code", "message"),
    [
        ("tiny", None, grpc.StatusCode.OK, ""),
        ("tiny", 1, grpc.StatusCode.OK, ""),
        ("tiny", 2, grpc.StatusCode.NOT_FOUND, "Could not find version 2 of model tiny"),
        ("other", None, grpc.StatusCode.NOT_FOUND, "Could not find any versions of model other"),
    ],
)
def test_model_status(
    standin: StandIn, name: str, version: int | None, code: grpc.StatusCode, message: str
) -> None:
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = name
    if version is not None:
        request.model_spec.version.value = version
    with grpc.insecure_channel(standin.address) as ch:
        stub = model_service_pb2_grpc.ModelServiceStub(ch)
        if code != grpc.StatusCode.OK:
            with pytest.raises(grpc.RpcError) as info:
                stub.GetModelStatus(request, timeout=10)
            assert (info.value.code(), info.value.details()) == (code, message)
            return
        [status] = stub.GetModelStatus(request, timeout=10).model_version_status
    assert status.version == 1
    assert status.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
    assert (status.status.error_code, status.status.error_message) == (0, "")


def test_busy_port_is_a_clear_error(exported_model: Any, standin: StandIn) -> None:
    other = StandIn(exported_model.model_base, exported_model.name, port=standin.port)
    with pytest.raises(StandInError, match=f"cannot listen on 127.0.0.1:{standin.port}"):
        other.start()
    other.close()


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: None, r"Could not find base path .*/tiny for servable tiny"),
        (
            lambda p: (p / "tiny" / "latest").mkdir(parents=True),
            r"No versions of servable tiny found under base path .*Did you forget to name "
            r"your leaf directory as a number",
        ),
    ],
)
def test_missing_model_is_a_clear_error(tmp_path: Path, make: Any, message: str) -> None:
    make(tmp_path)
    with pytest.raises(StandInError, match=message):
        StandIn(tmp_path, "tiny").start()


def test_runs_as_a_process_and_stops_on_sigterm(exported_model: Any) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "TF_CPP_MIN_LOG_LEVEL": "2"}
    cmd = [sys.executable, "-m", "resnet_serving", "standin", "--model-base", str(exported_model.model_base),
           "--model-name", "tiny", "--port", "0", "--enable-batching", "--batching-parameters-file",
           str(exported_model.model_base / "batching_parameters.txt")]  # fmt: skip
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 90)
        assert ready, "the stand-in printed no ready line within 90 s"
        line = proc.stdout.readline()
        assert "stand-in ready (not TF Serving): model 'tiny' version 1 on " in line
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
