"""A LOCAL STAND-IN for TF Serving: our SavedModel behind TF Serving's gRPC APIs. Not TF Serving.

It speaks PredictionService (Predict, GetModelMetadata) and ModelService (GetModelStatus)
with the tensorflow-serving-api stubs, so the gateway's `tfserving` backend and the load
tester can run in tests and without Docker. It loads one version of one model (the highest,
or the one asked for), runs its `assets.extra/tf_serving_warmup_requests` before it listens,
and answers errors with the codes TF Serving uses (NOT_FOUND, INVALID_ARGUMENT).

It is NOT TF Serving: no batching scheduler, no version policy or hot reload, no model
config file, no REST API, no Classify/Regress/MultiInference, no monitoring endpoint.

    resnet-serving standin --model-base models --model-name demo --port 8500
    python -m testdoubles.standin --model-base models --model-name demo
"""

from __future__ import annotations

import concurrent.futures
import time
from pathlib import Path
from typing import Any, NoReturn

import grpc
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_log_pb2,
    prediction_service_pb2_grpc,
)

from contract.errors import ManifestError
from contract.manifest import WARMUP_RELPATH, Manifest, read_manifest, version_dir
from contract.signatures import SIGNATURE_PIXELS
from testdoubles.errors import StandInError

_GRPC_CODES = {c.value[0]: c for c in grpc.StatusCode}


def _read(fn: Any, *args: Any) -> Any:
    """`fn(*args)`, with a contract error (no model, bad manifest) as the stand-in's own."""
    try:
        return fn(*args)
    except ManifestError as exc:
        raise StandInError(str(exc)) from None


class _Abort(Exception):
    """A gRPC status to answer with, as TF Serving would."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class _Servable:
    """One loaded version: its callable signatures and its SignatureDef map (for metadata)."""

    def __init__(self, path: Path) -> None:

        self.path = path
        self.version = int(path.name)
        self.manifest: Manifest = _read(read_manifest, path)
        try:
            self.loaded = tf.saved_model.load(str(path))
            saved = saved_model_pb2.SavedModel.FromString((path / "saved_model.pb").read_bytes())
        except Exception as exc:
            raise StandInError(f"cannot load SavedModel {path}: {str(exc).strip()[:300]}") from None
        self.signatures: dict[str, Any] = dict(self.loaded.signatures)
        self.signature_defs = saved.meta_graphs[0].signature_def


class StandIn:
    """The stand-in server; `start()` loads the model (once) and listens, `stop()` stops listening.

    `port=0` picks a free port (see `port` after `start`). `delay_s` makes every Predict sleep
    first, so tests can exceed a client's deadline.
    """

    def __init__(
        self,
        model_base: Path,
        model_name: str,
        *,
        model_version: int | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        delay_s: float = 0.0,
        max_workers: int = 4,
    ) -> None:
        self.model_base = Path(model_base)
        self.model_name = model_name
        self.model_version = model_version
        self.host = host
        self.port = port
        self.delay_s = delay_s
        self.max_workers = max_workers
        self._servable: _Servable | None = None
        self._server: grpc.Server | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def servable(self) -> _Servable:
        if self._servable is None:
            raise StandInError("the stand-in has not loaded its model; call start()")
        return self._servable

    def load(self) -> None:
        """Load the version and run its warmup records (TF Serving's order: warm, then listen)."""
        if self._servable is not None:
            return
        path = _read(version_dir, self.model_base, self.model_name, self.model_version)
        self._servable = _Servable(path)
        self._run_warmup(path)

    def _run_warmup(self, path: Path) -> None:

        records = path / WARMUP_RELPATH
        if not records.is_file():
            return
        for i, raw in enumerate(tf.data.TFRecordDataset(str(records)).as_numpy_iterator()):
            log = prediction_log_pb2.PredictionLog.FromString(raw)
            if not log.HasField("predict_log"):
                raise StandInError(f"warmup record {i} in {records} is not a PredictLog")
            try:
                self.predict(log.predict_log.request, delay=False)
            except _Abort as exc:
                raise StandInError(
                    f"warmup record {i} in {records} failed: {exc.message}"
                ) from None

    def start(self) -> StandIn:
        """Load (first time only) and listen; raises StandInError if the port is taken."""
        self.load()
        if self._server is not None:
            return self
        server = grpc.server(
            concurrent.futures.ThreadPoolExecutor(self.max_workers, thread_name_prefix="standin"),
            options=[
                ("grpc.max_send_message_length", -1),
                ("grpc.max_receive_message_length", -1),
                ("grpc.so_reuseport", 0),  # a busy port is an error, not a shared listener
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 5000),
            ],
        )
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            _PredictionService(self), server
        )
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(_ModelService(self), server)
        try:
            port = server.add_insecure_port(f"{self.host}:{self.port}")
        except RuntimeError as exc:
            port, reason = 0, str(exc)
        else:
            reason = "bind failed"
        if not port:
            raise StandInError(f"cannot listen on {self.host}:{self.port}: {reason}")
        self.port = port
        server.start()
        self._server = server
        return self

    def stop(self, grace_s: float = 0.5) -> None:
        """Stop listening (in-flight calls get `grace_s`); the model stays loaded for `start()`."""
        server, self._server = self._server, None
        if server is not None:
            server.stop(grace_s).wait()

    def __enter__(self) -> StandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- request handling, shared by the gRPC services and the warmup --------------------

    def resolve(self, spec: Any) -> _Servable:
        """The servable a ModelSpec names, or NOT_FOUND/INVALID_ARGUMENT as TF Serving answers."""
        servable = self.servable
        wanted = spec.version.value if spec.HasField("version") else None
        if spec.HasField("version_label"):
            raise _Abort(
                grpc.StatusCode.INVALID_ARGUMENT, "version labels are not supported by the stand-in"
            )
        if spec.name != self.model_name or wanted not in (None, servable.version):
            what = (
                f"Specific({spec.name}, {wanted})" if wanted is not None else f"Latest({spec.name})"
            )
            raise _Abort(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: {what}")
        return servable

    def predict(self, request: Any, *, delay: bool = True) -> Any:
        """Run one PredictRequest; `_Abort` carries the status for a bad request."""

        servable = self.resolve(request.model_spec)
        sig_name = request.model_spec.signature_name or SIGNATURE_PIXELS
        fn = servable.signatures.get(sig_name)
        if fn is None:
            raise _Abort(
                grpc.StatusCode.INVALID_ARGUMENT, f'Serving signature key "{sig_name}" not found.'
            )
        _, in_specs = fn.structured_input_signature
        if set(request.inputs) != set(in_specs):
            raise _Abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"input size does not match signature: {len(request.inputs)}!={len(in_specs)} "
                f"len({sorted(request.inputs)}) != len({sorted(in_specs)}).",
            )
        feeds = {}
        for name, spec in in_specs.items():
            proto = request.inputs[name]
            if proto.dtype != spec.dtype.as_datatype_enum:
                got = tf.dtypes.as_dtype(proto.dtype).name if proto.dtype else "invalid"
                raise _Abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"Expects arg[{name}] to be {spec.dtype.name} but {got} is provided",
                )
            try:
                array = tf.make_ndarray(proto)
            except Exception as exc:
                raise _Abort(
                    grpc.StatusCode.INVALID_ARGUMENT, f"cannot parse tensor {name}: {exc}"
                ) from None
            if not spec.shape.is_compatible_with(array.shape):
                raise _Abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"input {name} has shape {list(array.shape)}, signature expects {spec.shape}",
                )
            feeds[name] = tf.constant(array, dtype=spec.dtype)
        outputs = list(request.output_filter) or list(fn.structured_outputs)
        for alias in outputs:
            if alias not in fn.structured_outputs:
                raise _Abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"output tensor alias not found in signature: {alias} Outputs expected to be "
                    f"in the set {{{','.join(sorted(fn.structured_outputs))}}}.",
                )
        if delay and self.delay_s > 0:
            time.sleep(self.delay_s)
        try:
            result = fn(**feeds)
        except tf.errors.OpError as exc:
            code = _GRPC_CODES.get(exc.error_code, grpc.StatusCode.INTERNAL)
            raise _Abort(code, exc.message) from None
        response = predict_pb2.PredictResponse()
        response.model_spec.name = self.model_name
        response.model_spec.version.value = servable.version
        response.model_spec.signature_name = sig_name
        for alias in outputs:
            response.outputs[alias].CopyFrom(tf.make_tensor_proto(result[alias].numpy()))
        return response


def _abort(context: grpc.ServicerContext, exc: _Abort) -> NoReturn:
    context.abort(exc.code, exc.message)
    raise AssertionError("unreachable: context.abort raises")


class _PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """PredictionService: Predict and GetModelMetadata (signature_def only, as TF Serving)."""

    def __init__(self, standin: StandIn) -> None:
        self._standin = standin

    def Predict(self, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return self._standin.predict(request)
        except _Abort as exc:
            _abort(context, exc)

    def GetModelMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:

        try:
            servable = self._standin.resolve(request.model_spec)
            if not request.metadata_field:
                raise _Abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "GetModelMetadataRequest must specify at least one metadata_field",
                )
            for field in request.metadata_field:
                if field != "signature_def":
                    raise _Abort(
                        grpc.StatusCode.INVALID_ARGUMENT, f"Metadata field {field} is not supported"
                    )
        except _Abort as exc:
            _abort(context, exc)
        sig_map = get_model_metadata_pb2.SignatureDefMap()
        for key, sig in servable.signature_defs.items():
            sig_map.signature_def[key].CopyFrom(sig)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = self._standin.model_name
        response.model_spec.version.value = servable.version
        response.metadata["signature_def"].Pack(sig_map)
        return response


class _ModelService(model_service_pb2_grpc.ModelServiceServicer):
    """ModelService.GetModelStatus: the loaded version is AVAILABLE (we only listen once it is)."""

    def __init__(self, standin: StandIn) -> None:
        self._standin = standin

    def GetModelStatus(self, request: Any, context: grpc.ServicerContext) -> Any:

        spec = request.model_spec
        servable = self._standin.servable
        wanted = spec.version.value if spec.HasField("version") else None
        if spec.name != self._standin.model_name:
            context.abort(
                grpc.StatusCode.NOT_FOUND, f"Could not find any versions of model {spec.name}"
            )
        if wanted not in (None, servable.version):
            context.abort(
                grpc.StatusCode.NOT_FOUND, f"Could not find version {wanted} of model {spec.name}"
            )
        status = get_model_status_pb2.ModelVersionStatus(
            version=servable.version, state=get_model_status_pb2.ModelVersionStatus.AVAILABLE
        )
        return get_model_status_pb2.GetModelStatusResponse(model_version_status=[status])

    def HandleReloadConfigRequest(self, request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "the stand-in does not reload configs")
