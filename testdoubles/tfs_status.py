"""TF Serving's status codes and error texts, as the stand-in answers them.

The stand-in raises `TFSError(code, message)` wherever TF Serving returns a non-OK status, and
the gRPC layer answers with it the way TF Serving's `ToGRPCStatus` does. Each message is copied
from the TF Serving (or TensorFlow) source file named beside it; paths are relative to the
tensorflow/serving repository (tag 2.19.1, unchanged in 2.20.0) unless they say TF.
"""

from __future__ import annotations

from typing import Any

import grpc
from tensorflow_serving.apis import status_pb2

# model_servers/grpc_status_util.cc: `kErrorMessageLimit = 1024`, then "...TRUNCATED".
MESSAGE_LIMIT = 1024

_BY_VALUE = {c.value[0]: c for c in grpc.StatusCode}


class TFSError(Exception):
    """A non-OK status: the gRPC code and TF Serving's message for it."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message

    def grpc_details(self) -> str:
        """The message as TF Serving sends it (model_servers/grpc_status_util.cc, ToGRPCStatus)."""
        if len(self.message) > MESSAGE_LIMIT:
            return self.message[:MESSAGE_LIMIT] + "...TRUNCATED"
        return self.message

    def __str__(self) -> str:  # absl::Status::ToString: "INVALID_ARGUMENT: message"
        return f"{self.code.name}: {self.message}"


def code_of(value: int) -> grpc.StatusCode:
    """The gRPC code for a TensorFlow error code (`tf.errors.OpError.error_code`); same numbers."""
    return _BY_VALUE.get(value, grpc.StatusCode.UNKNOWN)


def invalid(message: str) -> TFSError:
    return TFSError(grpc.StatusCode.INVALID_ARGUMENT, message)


def servable_not_found(name: str, version: int | None) -> TFSError:
    """NOT_FOUND for a model/version with nothing AVAILABLE to serve it.

    core/basic_manager.cc, ServingMap::GetUntypedServableHandle, with the request text of
    core/manager.h, ServableRequest::DebugString: `Specific(<name>, <version>)`, `Latest(<name>)`.
    """
    what = f"Specific({name}, {version})" if version is not None else f"Latest({name})"
    return TFSError(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: {what}")


def servable_id(name: str, version: int) -> str:
    """core/servable_id.h, ServableId::DebugString: `{name: <n> version: <v>}`."""
    return f"{{name: {name} version: {version}}}"


def status_proto(error: TFSError | None) -> Any:
    """util/status_util.cc, ToStatusProto: the code always, the message only when not OK."""
    if error is None:
        return status_pb2.StatusProto(error_code=0)
    return status_pb2.StatusProto(error_code=error.code.value[0], error_message=error.message)
