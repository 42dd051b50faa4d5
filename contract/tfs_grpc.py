"""TF Serving's gRPC methods on our messages: paths and stubs for sync and aio channels.

PredictionService (Predict, GetModelMetadata) and ModelService (GetModelStatus,
HandleReloadConfigRequest), as `tensorflow_serving/apis/*_service.proto` declare them, with
the request and response classes of `contract.tfs_protos`. A stub works on a `grpc.Channel`
(calls block) or a `grpc.aio.Channel` (calls are awaitable); grpc itself is not imported here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final, NamedTuple

from contract.tfs_protos import (
    GetModelMetadataRequest,
    GetModelMetadataResponse,
    GetModelStatusRequest,
    GetModelStatusResponse,
    PredictRequest,
    PredictResponse,
    ReloadConfigRequest,
    ReloadConfigResponse,
)

if TYPE_CHECKING:
    import grpc


class Method(NamedTuple):
    """One unary RPC: its path on the wire and its request and response classes."""

    path: str
    request: Any
    response: Any


PREDICT: Final = Method(
    "/tensorflow.serving.PredictionService/Predict", PredictRequest, PredictResponse
)
GET_MODEL_METADATA: Final = Method(
    "/tensorflow.serving.PredictionService/GetModelMetadata",
    GetModelMetadataRequest,
    GetModelMetadataResponse,
)
GET_MODEL_STATUS: Final = Method(
    "/tensorflow.serving.ModelService/GetModelStatus",
    GetModelStatusRequest,
    GetModelStatusResponse,
)
HANDLE_RELOAD_CONFIG_REQUEST: Final = Method(
    "/tensorflow.serving.ModelService/HandleReloadConfigRequest",
    ReloadConfigRequest,
    ReloadConfigResponse,
)
METHODS: Final = (PREDICT, GET_MODEL_METADATA, GET_MODEL_STATUS, HANDLE_RELOAD_CONFIG_REQUEST)


def unary_unary(
    channel: grpc.Channel | grpc.aio.Channel, method: Method, *, serialized: bool = False
) -> Any:
    """A callable for `method` on `channel`; awaitable when the channel is a grpc.aio one.

    `serialized`: the callable takes the request already serialised (`bytes`, e.g. from
    `contract.wire.predict_request_bytes`) instead of a message."""
    return channel.unary_unary(
        method.path,
        request_serializer=None if serialized else method.request.SerializeToString,
        response_deserializer=method.response.FromString,
    )


class PredictionServiceStub:
    """tensorflow.serving.PredictionService: Predict and GetModelMetadata."""

    def __init__(self, channel: grpc.Channel | grpc.aio.Channel) -> None:
        self.Predict = unary_unary(channel, PREDICT)
        self.GetModelMetadata = unary_unary(channel, GET_MODEL_METADATA)


class ModelServiceStub:
    """tensorflow.serving.ModelService: GetModelStatus and HandleReloadConfigRequest."""

    def __init__(self, channel: grpc.Channel | grpc.aio.Channel) -> None:
        self.GetModelStatus = unary_unary(channel, GET_MODEL_STATUS)
        self.HandleReloadConfigRequest = unary_unary(channel, HANDLE_RELOAD_CONFIG_REQUEST)


def prediction_service(channel: grpc.Channel | grpc.aio.Channel) -> PredictionServiceStub:
    """PredictionService stub on `channel` (sync or aio: calls follow the channel's kind)."""
    return PredictionServiceStub(channel)


def model_service(channel: grpc.Channel | grpc.aio.Channel) -> ModelServiceStub:
    """ModelService stub on `channel` (sync or aio: calls follow the channel's kind)."""
    return ModelServiceStub(channel)
