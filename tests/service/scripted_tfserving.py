"""A scripted TF Serving for the tfserving backend's tests: fast, no TensorFlow session.

It serves TF Serving's three RPCs the backend calls (GetModelStatus, GetModelMetadata,
Predict) over real loopback gRPC, answered from a script of versions, labels and manifests
that a test changes while it runs, with TF Serving's codes and texts (read in
tensorflow/serving at tag 2.19.1, the files named below, under tensorflow_serving/):

* GetModelStatus (model_servers/get_model_status_impl.cc): a pinned version's state only, or
  NOT_FOUND `Could not find version <v> of model <m>`; else every version, highest first;
  `version_label` is ignored; an unknown model is NOT_FOUND `Could not find any versions of
  model <m>`. A failed load is END with the load error in `status`.
* The servable lookup of GetModelMetadata and Predict (core/basic_manager.cc,
  server_core.cc): a version that is not AVAILABLE is NOT_FOUND `Servable not found for
  request: Specific(<m>, <v>)`, an unknown label INVALID_ARGUMENT `Unrecognized servable
  version label: <l>`, no version and no label the latest AVAILABLE.
* GetModelMetadata without `metadata_field`, or with a field other than `signature_def`:
  INVALID_ARGUMENT, before the lookup (servables/tensorflow/get_model_metadata_impl.cc).
* Predict of a signature the export lacks: FAILED_PRECONDITION `Serving signature key "<s>"
  not found.` (predict_util.cc); the reply's `model_spec` names the version that answered.

Every request is recorded (`requests`), so a test can say what the backend asked for.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from contract import tfs_grpc, tfs_protos, wire
from contract.manifest import Manifest
from contract.signatures import OUTPUT_MANIFEST, OUTPUT_PROBABILITIES, SIGNATURE_MANIFEST
from service.backends.tfserving import TFS_NO_SIGNATURE

State = tfs_protos.ModelVersionState
# TF Serving's limit on messages both ways (model_servers/server.cc:
# `builder.SetMaxMessageSize(std::numeric_limits<int32_t>::max())`); gRPC's default is 4 MiB.
TFS_MAX_MESSAGE_BYTES = 2**31 - 1
HANG_S = 60.0  # "never answers": longer than any deadline a test gives the backend


@dataclass
class ScriptedVersion:
    """One version of the scripted model; a test may change any field while serving."""

    state: State = State.AVAILABLE
    load_error: str = ""  # a failed load: END, with this as its status' error message
    # serving_manifest's answer: a Manifest (its JSON, as the export serves it), a TensorProto
    # served as it is (a broken export), or None (an export from before serving_manifest).
    manifest: Manifest | Any | None = None
    signatures: Any = None  # a SignatureDefMap for GetModelMetadata; None: the server's own


def signature_map(version_dir: Path) -> Any:
    """The SignatureDefMap TF Serving's GetModelMetadata reports for an export on disk."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved = saved_model_pb2.SavedModel.FromString((version_dir / "saved_model.pb").read_bytes())
    sig_map = tfs_protos.SignatureDefMap()
    for key, sig in saved.meta_graphs[0].signature_def.items():
        sig_map.signature_def[key].ParseFromString(sig.SerializeToString())  # across pools
    return sig_map


def metadata_reply(sig_map: Any) -> Any:
    """A GetModelMetadataResponse carrying `sig_map` (model_spec is filled per request)."""
    reply = tfs_protos.GetModelMetadataResponse()
    reply.metadata["signature_def"].Pack(sig_map)
    return reply


class ScriptedTFServing:
    """A gRPC server speaking TF Serving's API for one model, `name`, from a script.

        `metadata` is the GetModelMetadataResponse every version answers with (None: the server
        never answers GetModelMetadata); `predict` builds the replies of `serving_default`;
        `versions` defaults to version 1 AVAILABLE without a `serving_manifest` signature (an older
        export, so the backend reads the manifest on disk). `hang` names the calls that never
        get an answer: "GetModelStatus", "GetModelMetadata", "GetModelMetadata/label" (by
        label only), "Predict/<signature>"; `hang_next` and `fail_next` script the next few calls
    of one of those keys (no answer; an error). The first `loading_polls` status answers say
    LOADING. Its gRPC server has gRPC's default options but the message size (2 GiB both ways,
    or `max_message_bytes`), as TF Serving's (model_servers/server.cc): it closes connections
    whose client pings too often.
    """

    def __init__(
        self,
        metadata: Any,
        predict: Callable[[Any], Any] | None = None,
        *,
        name: str = "tiny",
        versions: dict[int, ScriptedVersion] | None = None,
        labels: dict[str, int] | None = None,
        hang: Collection[str] = (),
        loading_polls: int = 0,
        status_hangs: bool = False,
        max_message_bytes: int = TFS_MAX_MESSAGE_BYTES,
    ) -> None:
        self.metadata, self.predict, self.name = metadata, predict, name
        self.versions = versions if versions is not None else {1: ScriptedVersion()}
        self.labels = labels if labels is not None else {}
        self.hang = set(hang) | ({"GetModelStatus"} if status_hangs else set())
        if metadata is None:
            self.hang.add("GetModelMetadata")
        self.loading_polls = loading_polls
        self.predict_delay_s = 0.0  # serving_default answers after this long
        # Per call key (as in `hang`): how many of the next such calls never get an answer,
        # and the errors (code, details) the next such calls get, one per call.
        self.hang_next: dict[str, int] = {}
        self.fail_next: dict[str, list[tuple[grpc.StatusCode, str]]] = {}
        self.requests: list[tuple[str, Any]] = []  # (rpc, request), in arrival order
        limit = [("grpc.max_receive_message_length", max_message_bytes),
                 ("grpc.max_send_message_length", max_message_bytes)]  # fmt: skip
        self.server = grpc.aio.server(options=limit)

    def asked(self, rpc: str) -> list[Any]:
        """The requests of `rpc` received so far."""
        return [request for name, request in self.requests if name == rpc]

    async def _arrive(self, rpc: str, request: Any, context: Any, key: str = "") -> None:
        self.requests.append((rpc, request))
        keyed = f"{rpc}/{key}"
        if rpc in self.hang or keyed in self.hang:
            await asyncio.sleep(HANG_S)
        if self.hang_next.get(keyed, 0) > 0:
            self.hang_next[keyed] -= 1
            await asyncio.sleep(HANG_S)
        if self.fail_next.get(keyed):
            await context.abort(*self.fail_next[keyed].pop(0))

    async def _status(self, request: Any, context: Any) -> Any:
        await self._arrive("GetModelStatus", request, context)
        spec = request.model_spec
        if spec.name != self.name or not self.versions:
            await context.abort(
                grpc.StatusCode.NOT_FOUND, f"Could not find any versions of model {spec.name}"
            )
        loading, self.loading_polls = self.loading_polls > 0, self.loading_polls - 1
        wanted = sorted(self.versions, reverse=True)  # highest first, as TF Serving lists them
        if spec.HasField("version"):
            v = spec.version.value
            if v not in self.versions:
                await context.abort(
                    grpc.StatusCode.NOT_FOUND, f"Could not find version {v} of model {spec.name}"
                )
            wanted = [v]
        reply = tfs_protos.GetModelStatusResponse()
        for v in wanted:
            entry = self.versions[v]
            status = reply.model_version_status.add(
                version=v, state=State.LOADING if loading else entry.state
            )
            if entry.load_error:
                status.status.error_code = tfs_protos.ErrorCode.UNKNOWN
                status.status.error_message = entry.load_error
        return reply

    async def _servable(self, spec: Any, context: Any) -> int:
        """The version a Predict or GetModelMetadata `spec` reaches, or TF Serving's error."""
        wanted: int | None = None  # ModelSpec's version_choice is a oneof: a label or a version
        if spec.version_label:
            if spec.version_label not in self.labels:
                message = f"Unrecognized servable version label: {spec.version_label}"
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)
            wanted = self.labels[spec.version_label]
        elif spec.HasField("version"):
            wanted = spec.version.value
        available = [v for v, e in self.versions.items() if e.state == State.AVAILABLE]
        if spec.name == self.name and available and wanted in (None, *available):
            return max(available) if wanted is None else wanted
        request = f"Latest({spec.name})" if wanted is None else f"Specific({spec.name}, {wanted})"
        await context.abort(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: {request}")
        raise AssertionError("unreachable: abort raises")

    async def _metadata(self, request: Any, context: Any) -> Any:
        by_label = "label" if request.model_spec.version_label else ""
        await self._arrive("GetModelMetadata", request, context, by_label)
        # Checked before the servable lookup (get_model_metadata_impl.cc,
        # ValidateGetModelMetadataRequest): only "signature_def" exists.
        if not request.metadata_field:
            message = "GetModelMetadataRequest must specify at least one metadata_field"
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)
        for field in request.metadata_field:
            if field != "signature_def":
                message = f"Metadata field {field} is not supported"
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)
        version = await self._servable(request.model_spec, context)
        reply = tfs_protos.GetModelMetadataResponse()
        reply.CopyFrom(self.metadata)
        signatures = self.versions[version].signatures
        if signatures is not None:
            reply.metadata["signature_def"].Pack(signatures)
        reply.model_spec.name, reply.model_spec.version.value = self.name, version
        return reply

    async def _predict(self, request: Any, context: Any) -> Any:
        signature = request.model_spec.signature_name
        await self._arrive("Predict", request, context, signature)
        version = await self._servable(request.model_spec, context)
        if signature == SIGNATURE_MANIFEST:
            manifest = self.versions[version].manifest
            if manifest is None:  # an export from before serving_manifest
                message = TFS_NO_SIGNATURE.format(SIGNATURE_MANIFEST)
                await context.abort(grpc.StatusCode.FAILED_PRECONDITION, message)
            reply = tfs_protos.PredictResponse()
            tensor = (
                wire.array_tensor(np.array([manifest.to_json()], dtype=object))
                if isinstance(manifest, Manifest)
                else manifest
            )
            reply.outputs[OUTPUT_MANIFEST].CopyFrom(tensor)
        else:
            assert self.predict is not None
            await asyncio.sleep(self.predict_delay_s)
            reply = self.predict(request)
        if not reply.HasField("model_spec"):  # TF Serving names the version that answered
            reply.model_spec.name = request.model_spec.name
            reply.model_spec.version.value = version
        return reply

    async def __aenter__(self) -> ScriptedTFServing:
        def handler(method: tfs_grpc.Method, fn: Any) -> Any:
            return grpc.unary_unary_rpc_method_handler(
                fn,
                request_deserializer=method.request.FromString,
                response_serializer=method.response.SerializeToString,
            )

        by_service: dict[str, dict[str, Any]] = {}
        for method, fn in ((tfs_grpc.GET_MODEL_STATUS, self._status),
                           (tfs_grpc.GET_MODEL_METADATA, self._metadata),
                           (tfs_grpc.PREDICT, self._predict)):  # fmt: skip
            service, name = method.path.strip("/").split("/")
            by_service.setdefault(service, {})[name] = handler(method, fn)
        self.server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler(s, h) for s, h in by_service.items()]
        )
        port = self.server.add_insecure_port("127.0.0.1:0")
        await self.server.start()
        self.address = f"127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.server.stop(grace=None)


def resized(sig_map: Any, *, side: int | None = None, classes: int | None = None) -> Any:
    """A copy of `sig_map` whose image inputs are `side` x `side` and whose `probabilities`
    output has `classes` columns: what a bigger export looks like in GetModelMetadata."""
    out = tfs_protos.SignatureDefMap()
    out.CopyFrom(sig_map)
    for sig in out.signature_def.values():
        for info in sig.inputs.values():
            if side is not None and len(info.tensor_shape.dim) == 4:
                info.tensor_shape.dim[1].size = info.tensor_shape.dim[2].size = side
        for key, info in sig.outputs.items():
            if classes is not None and key == OUTPUT_PROBABILITIES:
                info.tensor_shape.dim[1].size = classes
    return out


async def until(condition: Callable[[], Any], timeout_s: float = 10.0) -> None:
    """Poll `condition` every 10 ms; fail the test if it is not true within `timeout_s`."""
    end = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < end, "condition not reached in time"
        await asyncio.sleep(0.01)
