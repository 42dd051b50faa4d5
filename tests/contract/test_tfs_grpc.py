"""Our stubs against a real gRPC server registered with TF Serving's own generated code.

The server side uses only the real `tensorflow_serving.apis` classes (as TF Serving would);
the client side uses only `contract.tfs_protos` and `contract.wire`, over grpc.aio and over a
plain grpc channel. Every call has a deadline and the server stop is bounded.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import numpy as np
import pytest

from contract import tfs_grpc, tfs_protos, wire

DEADLINE_S = 10.0
pytestmark = pytest.mark.timeout(60)


class EchoPrediction:
    """Predict answers `shape` (float32, float_val) = the first input's shape; TF Serving's
    default reply format. Any model but "resnet" is NOT_FOUND, as TF Serving says it."""

    def Predict(self, request: Any, context: Any) -> Any:
        from tensorflow_serving.apis import predict_pb2

        if request.model_spec.name != "resnet":
            context.abort(grpc.StatusCode.NOT_FOUND, f"no model {request.model_spec.name}")
        (tensor,) = request.inputs.values()
        dims = [d.size for d in tensor.tensor_shape.dim]
        response = predict_pb2.PredictResponse()
        response.model_spec.CopyFrom(request.model_spec)
        shape = response.outputs["shape"]
        shape.dtype = 1  # DT_FLOAT
        shape.tensor_shape.dim.add(size=len(dims))
        shape.float_val.extend(float(d) for d in dims)
        return response

    def GetModelMetadata(self, request: Any, context: Any) -> Any:
        from tensorflow_serving.apis import get_model_metadata_pb2

        signatures = get_model_metadata_pb2.SignatureDefMap()
        pixels = signatures.signature_def["serving_default"].inputs["pixels"]
        pixels.name, pixels.dtype = "serving_default_pixels:0", 4  # DT_UINT8
        pixels.tensor_shape.dim.add(size=-1)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.CopyFrom(request.model_spec)
        response.metadata["signature_def"].Pack(signatures)
        return response


class Status:
    def GetModelStatus(self, request: Any, context: Any) -> Any:
        from tensorflow_serving.apis import get_model_status_pb2

        response = get_model_status_pb2.GetModelStatusResponse()
        response.model_version_status.add(version=1, state=30)  # AVAILABLE
        return response

    def HandleReloadConfigRequest(self, request: Any, context: Any) -> Any:
        from tensorflow_serving.apis import model_management_pb2

        names = [c.name for c in request.config.model_config_list.config]
        response = model_management_pb2.ReloadConfigResponse()
        response.status.error_message = ",".join(names)
        return response


@pytest.fixture(scope="module")
def address() -> Iterator[str]:
    from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

    class Prediction(EchoPrediction, prediction_service_pb2_grpc.PredictionServiceServicer):
        pass

    class Model(Status, model_service_pb2_grpc.ModelServiceServicer):
        pass

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Prediction(), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(Model(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    assert port > 0
    server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        assert server.stop(grace=None).wait(timeout=10)


async def test_predict_over_aio(address: str) -> None:
    images = np.zeros((3, 5, 7, 3), dtype=np.uint8)
    request = wire.predict_request(
        "resnet", signature="serving_default", inputs={"pixels": wire.images_tensor(images)},
        version=2,
    )  # fmt: skip
    async with grpc.aio.insecure_channel(address) as channel:
        stub = tfs_grpc.prediction_service(channel)
        response = await stub.Predict(request, timeout=DEADLINE_S)
    assert isinstance(response, tfs_protos.PredictResponse)
    assert response.model_spec.version.value == 2
    shape = wire.tensor_array(response.outputs["shape"], dtype="float32", shape=(4,))
    assert shape.tolist() == [3, 5, 7, 3]


async def test_server_errors_keep_their_status_code(address: str) -> None:
    request = wire.predict_request(
        "nope", signature="serving_default",
        inputs={"pixels": wire.images_tensor(np.zeros((1, 1, 1, 3), np.uint8))},
    )  # fmt: skip
    async with grpc.aio.insecure_channel(address) as channel:
        stub = tfs_grpc.prediction_service(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Predict(request, timeout=DEADLINE_S)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert caught.value.details() == "no model nope"


async def test_metadata_and_status_over_aio(address: str) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        spec = tfs_protos.ModelSpec(name="resnet", signature_name="serving_default")
        prediction = tfs_grpc.prediction_service(channel)
        metadata = await prediction.GetModelMetadata(
            tfs_protos.GetModelMetadataRequest(model_spec=spec, metadata_field=["signature_def"]),
            timeout=DEADLINE_S,
        )
        signatures = tfs_protos.SignatureDefMap()
        assert metadata.metadata["signature_def"].Unpack(signatures)
        info = signatures.signature_def["serving_default"].inputs["pixels"]
        assert wire.tensor_sig(info) == ("uint8", (None,))

        models = tfs_grpc.model_service(channel)
        status = await models.GetModelStatus(
            tfs_protos.GetModelStatusRequest(model_spec=spec), timeout=DEADLINE_S
        )
        assert [(s.version, s.state) for s in status.model_version_status] == [
            (1, tfs_protos.ModelVersionState.AVAILABLE)
        ]
        reload = tfs_protos.ReloadConfigRequest()
        reload.config.model_config_list.config.add(name="a")
        reload.config.model_config_list.config.add(name="b")
        reply = await models.HandleReloadConfigRequest(reload, timeout=DEADLINE_S)
        assert reply.status.error_message == "a,b"


def test_predict_over_a_sync_channel(address: str) -> None:
    with grpc.insecure_channel(address) as channel:
        grpc.channel_ready_future(channel).result(timeout=DEADLINE_S)
        request = wire.predict_request(
            "resnet", signature="serving_default",
            inputs={"pixels": wire.images_tensor(np.zeros((2, 1, 1, 3), np.uint8))},
        )  # fmt: skip
        response = tfs_grpc.prediction_service(channel).Predict(request, timeout=DEADLINE_S)
    assert wire.tensor_array(response.outputs["shape"], dtype="float32").tolist() == [2, 1, 1, 3]
