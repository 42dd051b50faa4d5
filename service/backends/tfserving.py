"""The tfserving backend: TF Serving's PredictionService over grpc.aio.

TensorFlow is never imported here: TF Serving's messages come from `contract.tfs_protos`,
requests are built from the numpy buffer and replies parsed with `contract.wire` (the
`float_val` TF Serving sends by default, or `tensor_content`). Every RPC goes through `_call`, which
gives it what is left of the request's budget as its gRPC deadline, retries only
UNAVAILABLE while time remains, and maps status codes onto `service.errors`. A circuit
breaker sits in that seam: every UNAVAILABLE attempt counts as a failure, any answer from the
server closes it, and while it is open calls fail fast with 503 `circuit_open`. One UNAVAILABLE
is an answer, not an outage: TF Serving's full batching queue becomes 503 `queue_full` at
once, with no retry, and counts as a success for the breaker (the server is up, only busy).

Versions come and go while the gateway runs: `versions` asks ModelService.GetModelStatus for
every version's state and GetModelMetadata (by `version_label`, whose reply names the version)
for each label; `contract` reads a version's manifest from the model server itself, through
the export's `serving_manifest` signature (falling back to `<model_base>/<name>/<version>/`
for exports without it), and checks its `serving_default` against GetModelMetadata. A
Predict pinned to a version TF Serving has unloaded answers NOT_FOUND `Servable not found for
request: Specific(name, v)` (core/basic_manager.cc): that becomes VersionGone, which the
gateway retries on the current version.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
import numpy as np

from contract import wire
from contract.errors import ManifestError, TensorError
from contract.manifest import Manifest, parse_manifest
from contract.signatures import (
    INPUT_MANIFEST,
    INPUT_PIXELS,
    OUTPUT_MANIFEST,
    OUTPUT_PROBABILITIES,
    SIGNATURE_MANIFEST,
    SIGNATURE_PIXELS,
)
from contract.tfs_grpc import PREDICT, model_service, prediction_service, unary_unary
from contract.tfs_protos import (
    GetModelMetadataRequest,
    GetModelStatusRequest,
    ModelSpec,
    ModelVersionState,
    SignatureDefMap,
)
from service.backends.base import ModelVersions
from service.backends.startup import check_contract, check_served_signature, load_manifest
from service.breaker import CircuitBreaker, State
from service.errors import (
    BackendError,
    BackendStartupError,
    BackendUnavailable,
    DeadlineExceeded,
    NotReady,
    QueueFull,
    Unavailable,
    VersionGone,
)

if TYPE_CHECKING:
    from service.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")

# TF Serving's reply when its batching queue is full (TF kernels/batching_util/
# shared_batch_scheduler.h, Queue::ValidateBatchTaskQueueCapacity): overloaded, not down.
TFS_QUEUE_FULL = "The batch scheduling queue to which this task was submitted is full"
# A pinned version it does not serve (any more): core/basic_manager.cc, GetUntypedServableHandle,
# with ServableRequest::DebugString() from core/manager.h.
TFS_VERSION_NOT_FOUND = "Servable not found for request: Specific("
# A signature the export does not have: servables/tensorflow/predict_util.cc, RunPredict.
TFS_NO_SIGNATURE = 'Serving signature key "{}" not found.'
# gRPC's own RESOURCE_EXHAUSTED for a message over a channel's or server's size limit ("SERVER:
# Received message larger than max (5242880 vs. 4194304)", "CLIENT: Sent message ..."): the same
# call fails the same way every time, so it is an error to report, not an overload to wait out.
# TF Serving itself accepts up to 2 GiB (model_servers/server.cc, SetMaxMessageSize(INT32_MAX)).
_TOO_LARGE = re.compile(r"(Received|Sent) message larger than max")
# A server with gRPC's default keepalive policy (TF Serving sets none: model_servers/server.cc)
# closes a connection whose client pings more often than it allows (GOAWAY ENHANCE_YOUR_CALM
# "too_many_pings"); calls still on it fail UNAVAILABLE "Too many pings". The server is up: retry
# on a new connection, and do not count it against the breaker.
_TOO_MANY_PINGS = "too many pings"
_PING_FLAGS = (
    "--grpc_channel_arguments=grpc.keepalive_permit_without_calls=1,"
    "grpc.http2.min_ping_interval_without_data_ms=10000"
)
# Retried within the request's budget: the server could not take the call (down, restarting,
# the connection cut); CANCELLED reaches us only from the server or a proxy (our own
# cancellation is asyncio's CancelledError).
_RETRIED = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
# Neither a success nor a failure for the breaker: the deadline is ours, the cut is not an answer.
_SAYS_NOTHING = (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)
_HEADROOM_BYTES = 1 << 20  # protobuf framing, metadata, other outputs
_DEFAULT_MAX_MESSAGE = 4 << 20  # gRPC's own default; enough for status and metadata


def probabilities(proto: Any, n: int, classes: int) -> np.ndarray:
    """The `probabilities` output as float32 [n, classes]; BackendError if it is anything else."""
    try:
        return wire.tensor_array(
            proto, dtype="float32", shape=(n, classes), name=OUTPUT_PROBABILITIES
        )
    except TensorError as exc:
        raise BackendError(str(exc)) from None


def _state_name(state: int) -> str:
    """ModelVersionStatus.State's name; a value this gateway does not know (proto3 enums are
    open: a newer server may add one) is `UNKNOWN(<n>)`, never served and never a crash."""
    try:
        return ModelVersionState(state).name
    except ValueError:
        return f"UNKNOWN({state})"


class TFServingBackend:
    """Sends buckets to TF Serving (or the local stand-in) over one grpc.aio channel."""

    name = "tfserving"

    def __init__(
        self,
        *,
        address: str,
        model_name: str,
        model_base: Path,
        model_version: int | None = None,
        connect_timeout_s: float = 5.0,
        startup_timeout_s: float = 120.0,
        retry_after_s: int = 1,
        ready_cache_s: float = 1.0,
        retry_backoff_s: float = 0.05,
        keepalive_time_s: float = 30.0,
        keepalive_timeout_s: float = 10.0,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self._address = address
        self._model_name = model_name
        self._model_base = Path(model_base)
        self._model_version = model_version
        self._connect_timeout_s = connect_timeout_s
        self._startup_timeout_s = startup_timeout_s
        self._retry_after_s = retry_after_s
        self._ready_cache_s = ready_cache_s
        self._retry_backoff_s = retry_backoff_s
        self._keepalive = (keepalive_time_s, keepalive_timeout_s)
        self._channel: grpc.aio.Channel | None = None
        self._message_bytes = 0  # the channel's send/receive limit
        self._retired: set[asyncio.Task[None]] = set()  # old channels finishing their calls
        self._predict_stub: Any = None
        self._predict_bytes: Any = None  # Predict taking the serialised request
        self._status_stub: Any = None
        self._contracts: dict[tuple[str, int], Manifest] = {}  # checked, per (model, version)
        self._ready_at = 0.0
        self._ready_value = False
        self._pings_refused = False  # warned once that the server refuses our keepalive pings
        self.breaker = breaker or CircuitBreaker()

    @classmethod
    def from_settings(cls, settings: Settings) -> TFServingBackend:
        return cls(
            address=settings.tfserving_address,
            model_name=settings.model_name,
            model_base=settings.model_base_path,
            model_version=settings.model_version,
            connect_timeout_s=settings.backend_connect_timeout_s,
            startup_timeout_s=settings.startup_timeout_s,
            retry_after_s=settings.retry_after_s,
            breaker=CircuitBreaker(
                failure_threshold=settings.breaker_failure_threshold,
                reset_s=settings.breaker_reset_s,
            ),
        )

    @property
    def manifest(self) -> Manifest:
        """The contract of the newest version of the default model checked so far."""
        mine = [v for (m, v) in self._contracts if m == self._model_name]
        if self._channel is None or not mine:
            raise NotReady("the tfserving backend has not been started")
        return self._contracts[(self._model_name, max(mine))]

    # -- channel --------------------------------------------------------------------------

    def _open(self, max_message_bytes: int) -> None:
        """(Re)open the channel; options say how big a message may be and how we reconnect."""
        ka_time, ka_timeout = self._keepalive
        options = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.keepalive_time_ms", int(ka_time * 1000)),
            ("grpc.keepalive_timeout_ms", int(ka_timeout * 1000)),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.enable_retries", 0),  # `_call` retries, within the request's budget
            # Reconnect quickly after a server restart (gRPC's default backoff grows to 120 s).
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
        ]
        old = self._channel
        self._channel = grpc.aio.insecure_channel(self._address, options=options)
        self._message_bytes = max_message_bytes
        self._predict_stub = prediction_service(self._channel)
        self._predict_bytes = unary_unary(self._channel, PREDICT, serialized=True)
        self._status_stub = model_service(self._channel)
        if old is not None:  # calls already on it finish there
            task = asyncio.create_task(old.close(grace=self._startup_timeout_s))
            self._retired.add(task)
            task.add_done_callback(self._retired.discard)

    def _fit_messages(self, manifest: Manifest) -> None:
        """Make the channel carry the largest bucket of `manifest` (reopened only to grow)."""
        m = manifest
        request = m.max_batch * m.input.height * m.input.width * 3
        reply = m.max_batch * m.num_classes * 4
        needed = max(request, reply, _DEFAULT_MAX_MESSAGE) + _HEADROOM_BYTES
        if needed > self._message_bytes:
            self._open(needed)

    def _spec(self, model: str, version: int | None = None, label: str | None = None) -> Any:
        spec = ModelSpec(name=model)
        if version is not None:
            spec.version.value = version
        elif label is not None:
            spec.version_label = label
        return spec

    async def _call(
        self, what: str, rpc: Callable[[float], Awaitable[T]], *, timeout_s: float
    ) -> T:
        """Run `rpc(deadline_left)`, retrying while time remains what may succeed next time.

        Each attempt asks the breaker first (CircuitOpen while it is open) and reports back:
        UNAVAILABLE is a failure, any answer from the server a success, and neither counts
        when the attempt says nothing about the server (cancelled by us, our deadline, a
        connection the server closed for too many keepalive pings). UNAVAILABLE and CANCELLED
        are retried with backoff (every RPC we send is read-only: safe to send again); TF
        Serving's full batching queue is an answer: QueueFull (503) at once, no retry.
        """
        deadline = time.monotonic() + timeout_s
        backoff = self._retry_backoff_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DeadlineExceeded(f"{what}: no time left for TF Serving at {self._address}")
            self.breaker.before_call()
            try:
                result = await rpc(left)
            except grpc.aio.AioRpcError as exc:
                code, details = exc.code(), exc.details() or ""
                if code == grpc.StatusCode.UNAVAILABLE and details.startswith(TFS_QUEUE_FULL):
                    self.breaker.record_success()  # it answered: up, only busy
                    raise QueueFull(
                        f"{what}: TF Serving at {self._address} is overloaded: {details}",
                        retry_after_s=self._retry_after_s,
                    ) from None
                pings = code == grpc.StatusCode.UNAVAILABLE and _TOO_MANY_PINGS in details.lower()
                if pings:
                    self._warn_too_many_pings(details)
                if code == grpc.StatusCode.UNAVAILABLE and not pings:
                    self.breaker.record_failure()
                elif code in _SAYS_NOTHING or pings:
                    self.breaker.record_neutral()  # slow or cut off is not down
                else:
                    self.breaker.record_success()  # it answered: the server is up
                left = deadline - time.monotonic()
                if code in _RETRIED and left > backoff * 2:
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 0.5)
                    continue
                raise self._map_error(what, code, details) from None
            except BaseException:
                self.breaker.record_neutral()  # cancelled: says nothing about the server
                raise
            self.breaker.record_success()
            return result

    def _warn_too_many_pings(self, details: str) -> None:
        if self._pings_refused:
            return
        self._pings_refused = True
        log.warning(
            "TF Serving at %s closed the connection for too many keepalive pings (%s); calls "
            "on it are retried. Start it with %s to accept the gateway's pings",
            self._address,
            details,
            _PING_FLAGS,
        )

    def _map_error(self, what: str, code: grpc.StatusCode, details: str) -> Exception:
        where = f"TF Serving at {self._address}"
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED and _TOO_LARGE.search(details):
            return BackendError(
                f"{what}: a message to or from {where} is over a gRPC size limit ({details}); "
                "raise the model server's max message size (TF Serving's is 2 GiB)"
            )
        if code in (*_RETRIED, grpc.StatusCode.RESOURCE_EXHAUSTED):
            return BackendUnavailable(
                f"{what}: {where} is unavailable ({code.name}): {details}",
                retry_after_s=self._retry_after_s,
            )
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return DeadlineExceeded(f"{what}: {where} did not answer in time")
        if code == grpc.StatusCode.NOT_FOUND and details.startswith(TFS_VERSION_NOT_FOUND):
            return VersionGone(
                f"{what}: {where} no longer serves that version: {details}",
                retry_after_s=self._retry_after_s,
            )
        return BackendError(f"{what}: {where} answered {code.name}: {details}")

    # -- protocol ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Wait for a version of the default model to be AVAILABLE and check its contract."""
        if self._channel is not None and self._contracts:
            return
        if self._channel is None:
            self._open(_DEFAULT_MAX_MESSAGE)
        try:
            version = await self._wait_available()
            manifest = await self.contract(self._model_name, version)
        except BaseException:
            await self.close()
            raise
        log.info(
            "tfserving backend ready: %s v%d at %s", manifest.model_name, version, self._address
        )

    async def _wait_available(self) -> int:
        """Poll GetModelStatus until a version is AVAILABLE; return it (the highest)."""
        deadline = time.monotonic() + self._startup_timeout_s
        reason = "no answer yet"
        while True:
            try:
                versions = await self._available_versions(
                    self._model_name, self._model_version, self._connect_timeout_s
                )
                if versions:
                    return max(versions)
                reason = "no version is AVAILABLE yet"
            except (Unavailable, DeadlineExceeded, BackendError) as exc:
                reason = exc.detail  # NOT_FOUND while loading; circuit_open while it is down
            if time.monotonic() + 0.5 > deadline:
                raise BackendStartupError(
                    f"model {self._model_name!r} not AVAILABLE at {self._address} within "
                    f"{self._startup_timeout_s:g} s: {reason}"
                )
            await asyncio.sleep(0.5)

    async def _status(self, model: str, version: int | None, timeout_s: float) -> Any:
        request = GetModelStatusRequest(model_spec=self._spec(model, version))
        return await self._call(
            "GetModelStatus",
            lambda left: self._status_stub.GetModelStatus(request, timeout=left),
            timeout_s=timeout_s,
        )

    async def _available_versions(
        self, model: str, version: int | None, timeout_s: float
    ) -> list[int]:
        reply = await self._status(model, version, timeout_s)
        return [
            s.version for s in reply.model_version_status if s.state == ModelVersionState.AVAILABLE
        ]

    async def versions(self, model: str, labels: Sequence[str] = ()) -> ModelVersions:
        """GetModelStatus for the states (TF Serving ignores labels there); GetModelMetadata
        by `version_label` for each label, whose reply names the version it points at."""
        if self._channel is None:
            raise NotReady("the tfserving backend is not started")
        try:
            reply = await self._status(model, None, self._connect_timeout_s)
        except BackendError as exc:
            if "NOT_FOUND" not in exc.detail:  # "Could not find any versions of model <m>"
                raise
            return ModelVersions()
        states: dict[int, str] = {}
        errors: dict[int, str] = {}
        for s in reply.model_version_status:
            states[s.version] = _state_name(s.state)
            if s.status.error_code:
                errors[s.version] = s.status.error_message
        found = await asyncio.gather(*(self._label_version(model, label) for label in labels))
        resolved = {label: v for label, v in zip(labels, found, strict=True) if v is not None}
        return ModelVersions(states, errors, resolved)

    async def _label_version(self, model: str, label: str) -> int | None:
        """The version `label` points at, or None when the label is not set (INVALID_ARGUMENT
        `Unrecognized servable version label`) or its version is not served (NOT_FOUND)."""
        request = GetModelMetadataRequest(
            model_spec=self._spec(model, label=label), metadata_field=["signature_def"]
        )
        try:
            reply = await self._call(
                "GetModelMetadata",
                lambda left: self._predict_stub.GetModelMetadata(request, timeout=left),
                timeout_s=self._connect_timeout_s,
            )
        except (BackendError, VersionGone):
            return None
        return int(reply.model_spec.version.value)

    async def contract(self, model: str, version: int) -> Manifest:
        """The manifest of `model` `version`, read over gRPC (or from disk for older exports),
        with the served `serving_default` checked against it; cached once it passes."""
        cached = self._contracts.get((model, version))
        if cached is not None:
            return cached
        if self._channel is None:
            raise NotReady("the tfserving backend is not started")
        manifest = await self._fetch_manifest(model, version)
        where = f"TF Serving at {self._address}, model {model!r} v{version}"
        check_contract(manifest, model, version, where=where)
        await self._check_metadata(manifest, model, version)
        self._fit_messages(manifest)
        self._contracts[(model, version)] = manifest
        return manifest

    async def _fetch_manifest(self, model: str, version: int) -> Manifest:
        """`serving_manifest` over Predict; an export without it: the manifest on disk."""
        request = wire.predict_request(
            model,
            signature=SIGNATURE_MANIFEST,
            inputs={INPUT_MANIFEST: wire.array_tensor(np.zeros(1, np.int32))},
            output_filter=(OUTPUT_MANIFEST,),
            version=version,
        )
        where = f"TF Serving at {self._address}, model {model!r} v{version}"
        try:
            reply = await self._call(
                "Predict",
                lambda left: self._predict_stub.Predict(request, timeout=left),
                timeout_s=self._connect_timeout_s,
            )
        except BackendError as exc:
            if TFS_NO_SIGNATURE.format(SIGNATURE_MANIFEST) not in exc.detail:
                raise
            path = self._model_base / model / str(version)
            log.info("%s has no %s signature: reading %s", where, SIGNATURE_MANIFEST, path)
            return load_manifest(path)
        try:
            rows = wire.tensor_array(
                reply.outputs[OUTPUT_MANIFEST], dtype="string", shape=(1,), name=OUTPUT_MANIFEST
            )
            return parse_manifest(rows[0], where=f"from {where}")
        except (KeyError, TensorError, ManifestError) as exc:
            raise BackendStartupError(f"{where}: {SIGNATURE_MANIFEST} answered {exc}") from None

    async def _check_metadata(self, manifest: Manifest, model: str, version: int) -> None:
        request = GetModelMetadataRequest(
            model_spec=self._spec(model, version), metadata_field=["signature_def"]
        )
        reply = await self._call(
            "GetModelMetadata",
            lambda left: self._predict_stub.GetModelMetadata(request, timeout=left),
            timeout_s=self._connect_timeout_s,
        )
        where = f"TF Serving at {self._address}, model {model!r} v{version}"
        sig_map = SignatureDefMap()
        if "signature_def" not in reply.metadata or not reply.metadata["signature_def"].Unpack(
            sig_map
        ):
            raise BackendStartupError(f"{where}: metadata has no SignatureDefMap")
        if SIGNATURE_PIXELS not in sig_map.signature_def:
            raise BackendStartupError(
                f"{where}: no signature {SIGNATURE_PIXELS!r}. "
                f"Received: signatures={sorted(sig_map.signature_def)}"
            )
        sig = sig_map.signature_def[SIGNATURE_PIXELS]
        check_served_signature(
            manifest,
            {k: wire.tensor_sig(v) for k, v in sig.inputs.items()},
            {k: wire.tensor_sig(v) for k, v in sig.outputs.items()},
            where=where,
        )

    async def predict(
        self,
        images: np.ndarray,
        *,
        timeout_s: float,
        model: str | None = None,
        version: int | None = None,
    ) -> np.ndarray:
        """uint8 [N,H,W,3] -> float32 [N,C] from `model` `version` (None: TF Serving's latest)."""
        if self._channel is None:
            raise NotReady("the tfserving backend is not started")
        model = model or self._model_name
        if version is not None:
            checked = self._contracts.get((model, version)) or await self.contract(model, version)
        else:
            known = [v for (m, v) in self._contracts if m == model]
            if not known:
                raise NotReady(f"no version of model {model!r} has been checked yet")
            checked = self._contracts[(model, max(known))]
        checked.check_images(images)
        # The pixels are copied once, into the serialised request (not three times).
        request = wire.predict_request_bytes(
            model,
            signature=SIGNATURE_PIXELS,
            inputs={INPUT_PIXELS: images},
            output_filter=(OUTPUT_PROBABILITIES,),
            version=version,
        )
        reply = await self._call(
            "Predict",
            lambda left: self._predict_bytes(request, timeout=left),
            timeout_s=timeout_s,
        )
        if OUTPUT_PROBABILITIES not in reply.outputs:
            raise BackendError(
                f"Predict reply has no {OUTPUT_PROBABILITIES!r}. Received: {sorted(reply.outputs)}"
            )
        named = (
            int(reply.model_spec.version.value) if reply.model_spec.HasField("version") else None
        )
        if version is not None and named not in (None, version):
            # TF Serving names the version it ran (servables/tensorflow/util.cc, MakeModelSpec):
            # another one's rows may have other classes than the contract they would be read by.
            raise BackendError(
                f"Predict pinned to model {model!r} v{version} was answered by v{named} "
                f"(TF Serving at {self._address}): refusing rows read against another contract"
            )
        served = (named or 0) if version is None else version
        answered = self._contracts.get((model, served)) or await self.contract(model, served)
        return probabilities(
            reply.outputs[OUTPUT_PROBABILITIES], images.shape[0], answered.num_classes
        )

    async def ready(self) -> bool:
        """A version of the default model is AVAILABLE (asked at most once per
        `ready_cache_s`)."""
        if self._channel is None or not self._contracts or self.breaker.state is State.OPEN:
            return False
        now = time.monotonic()
        if now - self._ready_at < self._ready_cache_s:
            return self._ready_value
        try:
            versions = await self._available_versions(
                self._model_name, self._model_version, min(1.0, self._connect_timeout_s)
            )
            value = bool(versions)
        except (Unavailable, DeadlineExceeded, BackendError):  # circuit_open included
            value = False
        self._ready_at, self._ready_value = time.monotonic(), value
        return value

    async def close(self) -> None:
        """Close the channel. Idempotent."""
        channel, self._channel = self._channel, None
        self._ready_at, self._ready_value = 0.0, False
        self._contracts.clear()
        self._message_bytes = 0
        for task in list(self._retired):
            task.cancel()
        if channel is not None:
            await channel.close()
