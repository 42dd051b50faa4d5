"""One loaded model version: TF Serving's SavedModelBundle, its session and its warmup.

`Servable` is the SavedModel (real TensorFlow, real signatures); `prepare` makes the checks of
TF Serving's `internal::RunPredict` (servables/tensorflow/predict_util.cc) in its order:
signature key, input count, input names and tensors (TF `cc/saved_model/util.cc`,
GetInputValues), output filter; then the feed dtypes DirectSession checks. `VersionSession`
runs a prepared call straight on the graph or through the batching scheduler
(`tfs_batching`), records which (signature, batch size, outputs) the graph has seen, and
replays `assets.extra/tf_serving_warmup_requests` before the version is AVAILABLE
(servables/tensorflow/saved_model_warmup_util.cc).

Replies use typed fields (`float_val`, `int_val`, ...) as TF Serving does by default
(Tensor::AsProtoField in PostProcessPredictionResult); `tensor_content=True` mirrors
`--enable_serialization_as_tensor_content`.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf.message import DecodeError
from tensorflow.core.framework import tensor_pb2
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

from contract import wire
from contract.manifest import WARMUP_RELPATH
from testdoubles.tfs_batching import Arrays, BatchingOptions, BatchQueue, SharedBatchScheduler
from testdoubles.tfs_status import TFSError, code_of, invalid

DEFAULT_SIGNATURE = "serving_default"  # tensorflow/cc/saved_model/signature_constants.h
MAX_WARMUP_RECORDS = 1000  # servables/tensorflow/saved_model_warmup_util.h, kMaxNumRecords

# DataTypeString names DirectSession puts in "Expects arg[i] to be <x>" (TF types.cc).
_TF_TYPE_NAMES = {"float32": "float", "float64": "double", "float16": "half"}

# Tensor::AsProtoField (TF framework/tensor.cc, PROTO_TRAITS): the typed field per dtype.
_PROTO_FIELDS = {
    "float32": "float_val",
    "float64": "double_val",
    "int8": "int_val",
    "int16": "int_val",
    "int32": "int_val",
    "uint8": "int_val",
    "uint16": "int_val",
    "int64": "int64_val",
    "uint32": "uint32_val",
    "uint64": "uint64_val",
    "bool": "bool_val",
    "string": "string_val",
    "float16": "half_val",
    "bfloat16": "half_val",
}


class RunKey(NamedTuple):
    """What one graph execution was compiled for: signature, batch size, fetched outputs."""

    signature: str
    batch_size: int
    outputs: tuple[str, ...]  # sorted


@dataclass(frozen=True)
class Call:
    """A Predict request after RunPredict's checks: what Session::Run gets."""

    signature: str
    inputs: Arrays  # by alias
    fetches: tuple[str, ...]  # aliases, in reply order


def _type_name(dtype: int) -> str:
    try:
        name = tf.dtypes.as_dtype(dtype).name
    except TypeError:
        return f"DataType({dtype})"
    return _TF_TYPE_NAMES.get(name, name)


def _bytes(value: object) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def serialize(array: np.ndarray, *, tensor_content: bool) -> Any:
    """One output as TF Serving writes it: typed `*_val` fields, or `tensor_content`."""
    if tensor_content:
        # Tensor::AsProtoTensorContent, for every dtype (predict_util.cc,
        # PostProcessPredictionResult): strings too, as TF's string list (tensor_coding.cc,
        # EncodeStringList), which tf.make_tensor_proto never writes.
        if array.dtype.kind not in "SUO":
            return tf.make_tensor_proto(array)
        proto = tensor_pb2.TensorProto(dtype=tf.string.as_datatype_enum)
        proto.tensor_shape.CopyFrom(tf.TensorShape(array.shape).as_proto())
        proto.tensor_content = wire.string_list_bytes([_bytes(v) for v in array.ravel().tolist()])
        return proto
    dtype = tf.dtypes.as_dtype(array.dtype)
    proto = tensor_pb2.TensorProto(dtype=dtype.as_datatype_enum)
    for size in array.shape:
        proto.tensor_shape.dim.add(size=int(size))
    field = _PROTO_FIELDS.get(dtype.name)
    if field is None:
        raise TFSError(grpc.StatusCode.UNIMPLEMENTED, f"stand-in cannot serialize {dtype.name}")
    flat = array.ravel()
    if field == "half_val":
        values: Any = flat.view(np.uint16).tolist()
    elif field == "string_val":
        values = [_bytes(v) for v in flat.tolist()]
    else:
        values = flat.tolist()
    getattr(proto, field).extend(values)
    return proto


class Servable:
    """A SavedModel version loaded as TF Serving loads it: into a TF1 Session, from its
    MetaGraphDef, run by tensor name (servables/tensorflow/saved_model_bundle_factory.cc calls
    TF's LoadSavedModel). Not `tf.saved_model.load`: that object-graph loader forgives exports
    TF Serving cannot run (a Keras 3 model whose variables the Session never restores)."""

    def __init__(self, name: str, version: int, path: Path) -> None:
        self.name, self.version, self.path = name, version, Path(path)
        self._session = tf.compat.v1.Session(graph=tf.Graph())
        try:
            meta = tf.compat.v1.saved_model.loader.load(self._session, ["serve"], str(self.path))
        except tf.errors.OpError as exc:
            self._session.close()
            raise TFSError(code_of(exc.error_code), exc.message) from None
        except (OSError, RuntimeError, ValueError) as exc:
            self._session.close()
            raise TFSError(
                grpc.StatusCode.NOT_FOUND,
                f"Could not load SavedModel at {self.path}: {str(exc).strip()[:300]}",
            ) from None
        self.signature_defs = meta.signature_def

    def prepare(self, request: Any) -> Call:
        """RunPredict's checks before Session::Run, with TF Serving's codes and texts."""
        sig_name = request.model_spec.signature_name or DEFAULT_SIGNATURE
        if sig_name not in self.signature_defs:  # predict_util.cc, internal::RunPredict
            raise TFSError(
                grpc.StatusCode.FAILED_PRECONDITION,
                f'Serving signature key "{sig_name}" not found.',
            )
        sig = self.signature_defs[sig_name]
        _check_input_count(sig, request)
        inputs = _input_values(sig, request.inputs)
        fetches = _fetches(sig, request.output_filter)
        for i, alias in enumerate(sorted(inputs)):
            info, proto = sig.inputs[alias], request.inputs.get(alias)
            if proto is not None and proto.dtype != info.dtype:
                # TF framework/function.cc, FunctionCallFrame::SetArgs (DirectSession::Run).
                raise invalid(
                    f"Expects arg[{i}] to be {_type_name(info.dtype)} but "
                    f"{_type_name(proto.dtype)} is provided"
                )
            want = [d.size for d in info.tensor_shape.dim]
            got = list(inputs[alias].shape)
            if not info.tensor_shape.unknown_rank and (
                len(got) != len(want)
                or any(w not in (-1, g) for g, w in zip(got, want, strict=False))
            ):
                # The stand-in's own text: TF Serving leaves shapes to the graph's ops.
                raise invalid(f"input {alias} has shape {got}, signature expects {want}")
        return Call(sig_name, inputs, fetches)

    def tensor_names(self, signature: str) -> dict[str, str]:
        """Input alias -> graph tensor name (`serving_default_images:0`)."""
        return {a: i.name for a, i in self.signature_defs[signature].inputs.items()}

    def execute(self, signature: str, inputs: Arrays, fetches: tuple[str, ...]) -> Arrays:
        """One Session::Run of the signature's tensors; the fetched outputs by alias."""
        sig = self.signature_defs[signature]
        feeds = {sig.inputs[a].name: v for a, v in inputs.items()}
        try:
            values = self._session.run([sig.outputs[a].name for a in fetches], feeds)
        except tf.errors.OpError as exc:
            raise TFSError(code_of(exc.error_code), exc.message) from None
        except (TypeError, ValueError) as exc:
            raise invalid(str(exc).strip()) from None
        return {alias: np.asarray(v) for alias, v in zip(fetches, values, strict=True)}

    def close(self) -> None:
        self._session.close()


def _check_input_count(sig: Any, request: Any) -> None:
    """predict_util.cc, VerifyRequestInputsSize."""
    n_req, n_sig = len(request.inputs), len(sig.inputs)
    if n_req > n_sig or (n_req < n_sig and not sig.defaults):
        req, want = set(request.inputs), set(sig.inputs)
        raise invalid(
            f"input size does not match signature: {n_req}!={n_sig} "
            f"len({{{','.join(sorted(req))}}}) != len({{{','.join(sorted(want))}}}). "
            f"Sent extra: {{{','.join(sorted(req - want))}}}. "
            f"Missing but required: {{{','.join(sorted(want - req))}}}."
        )


def _input_values(sig: Any, request_inputs: Mapping[str, Any]) -> Arrays:
    """TF cc/saved_model/util.cc, GetInputValues: each signature input from the request."""
    inputs: Arrays = {}
    seen: set[str] = set()
    for alias in sorted(sig.inputs):
        if alias in request_inputs:
            proto = request_inputs[alias]
            seen.add(alias)
        elif alias in sig.defaults:
            proto = sig.defaults[alias]
        else:
            raise invalid(
                f"Signature input alias: {alias}(feed name: {sig.inputs[alias].name}) not found "
                "in request and no default value provided. Inputs expected to be in the "
                f"request {{{','.join(sorted(request_inputs))}}}, or default input alias set: "
                f"{','.join(sorted(sig.defaults))}"
            )
        try:
            inputs[alias] = tf.make_ndarray(proto)
        except Exception:  # Tensor::FromProto failed: bad dtype or content length
            raise invalid(f"tensor parsing error: {alias}") from None
    if request_inputs and len(seen) != len(request_inputs):
        raise invalid(
            f"Inputs contains invalid name. Used request inputs: {','.join(sorted(seen))}, "
            f"request input: {','.join(sorted(request_inputs))}"
        )
    return inputs


def _fetches(sig: Any, output_filter: Any) -> tuple[str, ...]:
    """predict_util.cc, PreProcessPrediction: the filter checked, or every output."""
    seen: list[str] = []
    for alias in output_filter:
        if alias not in sig.outputs:
            raise invalid(
                f"output tensor alias not found in signature: {alias} Outputs expected to be "
                f"in the set {{{','.join(sorted(sig.outputs))}}}."
            )
        if alias in seen:
            raise invalid(f"duplicate output tensor alias: {alias}")
        seen.append(alias)
    return tuple(seen) or tuple(sorted(sig.outputs))


BeforeRun = Callable[[], None]


class VersionSession:
    """The session of one loaded version: direct or batched runs, run records, warmup."""

    def __init__(
        self,
        servable: Servable,
        *,
        scheduler: SharedBatchScheduler | None = None,
        batching: BatchingOptions | None = None,
        tensor_content: bool = False,
        before_run: BeforeRun | None = None,
    ) -> None:
        self.servable = servable
        self._scheduler = scheduler if batching is not None else None
        self._batching = batching
        self._tensor_content = tensor_content
        self._before_run = before_run
        self._queues: dict[tuple[str, tuple[str, ...], tuple[str, ...]], BatchQueue] = {}
        self._lock = threading.Lock()
        self._warming = False
        self.warmed: set[RunKey] = set()
        self.runs: Counter[RunKey] = Counter()
        self.cold: Counter[RunKey] = Counter()
        self.warmup_seconds: list[tuple[RunKey, float]] = []

    @property
    def version(self) -> int:
        return self.servable.version

    def predict(self, request: Any, *, deadline: float | None = None) -> Any:
        """A PredictResponse for `request` (model_spec already resolved to this version)."""
        call = self.servable.prepare(request)
        outputs = self.run(call, deadline=deadline)
        response = predict_pb2.PredictResponse()
        # servables/tensorflow/util.cc MakeModelSpec: name, resolved signature, served version.
        response.model_spec.name = request.model_spec.name
        response.model_spec.signature_name = call.signature
        response.model_spec.version.value = self.version
        for alias in call.fetches:
            response.outputs[alias].CopyFrom(
                serialize(outputs[alias], tensor_content=self._tensor_content)
            )
        return response

    def run(self, call: Call, *, deadline: float | None = None) -> Arrays:
        """Session::Run: through this version's batching queue when batching is on."""
        if self._scheduler is None or self._batching is None:
            return self._execute(call.signature, call.fetches, call.inputs)
        names = (call.signature, tuple(sorted(call.inputs)), tuple(sorted(call.fetches)))
        with self._lock:
            queue = self._queues.get(names)
            if queue is None:
                signature, fetches = call.signature, call.fetches

                def process(merged: Arrays) -> Arrays:
                    return self._execute(signature, fetches, merged)

                queue = self._scheduler.add_queue(
                    self._batching, process, self.servable.tensor_names(signature)
                )
                self._queues[names] = queue
        return queue.run(call.inputs, deadline=deadline)

    def _execute(self, signature: str, fetches: tuple[str, ...], inputs: Arrays) -> Arrays:
        batch = int(next(iter(inputs.values())).shape[0]) if inputs else 0
        key = RunKey(signature, batch, tuple(sorted(fetches)))
        if not self._warming and self._before_run is not None:
            self._before_run()  # test knobs: slow or failing predict
        start = time.perf_counter()
        outputs = self.servable.execute(signature, inputs, fetches)
        with self._lock:
            self.runs[key] += 1
            if self._warming:
                if key not in self.warmed:
                    self.warmup_seconds.append((key, time.perf_counter() - start))
                self.warmed.add(key)
            elif key not in self.warmed:
                self.cold[key] += 1
        return outputs

    def warmup(self, *, iterations: int = 1) -> int:
        """Replay every warmup record; the number read. TFSError fails the load."""
        path = self.servable.path / WARMUP_RELPATH
        if not path.is_file():
            return 0  # "No warmup data file found at <path>": fine
        self._warming = True
        count = 0
        try:
            for raw in _records(path):
                try:
                    log = prediction_log_pb2.PredictionLog.FromString(raw)
                except DecodeError:
                    raise invalid(f"Failed to parse warmup record: {raw!r} from {path}") from None
                kind = log.WhichOneof("log_type")
                if kind in ("predict_streamed_log", "session_run_log"):  # saved_model_warmup.cc
                    raise TFSError(
                        grpc.StatusCode.UNIMPLEMENTED, f"Unsupported log_type for warmup: {kind}"
                    )
                if kind not in (None, "predict_log"):
                    raise TFSError(
                        grpc.StatusCode.UNIMPLEMENTED,
                        f"the stand-in replays predict_log warmup records only, not {kind}",
                    )
                for _ in range(max(iterations, 1) if kind else 0):
                    self.predict(log.predict_log.request)
                count += 1
                if count > MAX_WARMUP_RECORDS:
                    raise invalid(
                        f"Number of warmup records exceeds the maximum ({MAX_WARMUP_RECORDS}) "
                        f"at {path}"
                    )
        finally:
            self._warming = False
        return count

    def close(self) -> None:
        """Drop this version's batching queues (called once no request holds it)."""
        with self._lock:
            queues, self._queues = list(self._queues.values()), {}
        if self._scheduler is not None:
            for queue in queues:
                self._scheduler.remove_queue(queue)
        self.servable.close()


def _records(path: Path) -> Any:
    """The TFRecord file's records; DATA_LOSS as TF Serving words it for a corrupt file."""
    try:
        yield from tf.data.TFRecordDataset(str(path)).as_numpy_iterator()
    except tf.errors.DataLossError as exc:
        raise TFSError(
            grpc.StatusCode.DATA_LOSS,
            f"{exc.message}. Please verify your warmup data is in TFRecord format.",
        ) from None
