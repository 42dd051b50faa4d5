"""A LOCAL STAND-IN for TF Serving: our SavedModels behind TF Serving's gRPC APIs. Not TF Serving.

It speaks PredictionService (Predict, GetModelMetadata) and ModelService (GetModelStatus,
HandleReloadConfigRequest) with the real tensorflow-serving-api messages and runs the real
SavedModels with TensorFlow, so the gateway's `tfserving` backend, the load tester and the
tests meet a server that behaves like TF Serving where they depend on it. What it copies, each
from the TF Serving source file named in the module that does it:

* errors with TF Serving's codes and texts, truncated as `ToGRPCStatus` does (`tfs_status`);
* Predict's checks and order, replies in `float_val`/`int_val` (or `tensor_content` with
  `enable_serialization_as_tensor_content`), warmup replay before a version is AVAILABLE
  (`tfs_servable`);
* server-side batching from `batching_parameters.txt`: padding to `allowed_batch_sizes`, a
  full queue answered UNAVAILABLE, a task larger than `max_batch_size` refused
  (`tfs_batching`);
* several models from a `models.config` (re-read every `model_config_file_poll_wait_s`),
  version policies and labels, file-system polling for new versions, the
  availability-preserving order of loads and unloads, every version's state (`tfs_lifecycle`).

It is NOT TF Serving: no REST API, no Classify/Regress/MultiInference, no XLA/GPU tuning and
no monitoring endpoint; its timings are never TF Serving's.

    resnet-serving standin --model-base models --model-name demo --port 8500
    resnet-serving standin --model-config-file /abs/models.config --enable-batching \\
        --batching-parameters-file /abs/batching_parameters.txt
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import grpc
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    prediction_service_pb2_grpc,
)

from testdoubles.errors import StandInError
from testdoubles.tfs_batching import BatchingOptions, SharedBatchScheduler
from testdoubles.tfs_lifecycle import (
    AVAILABLE,
    ModelManager,
    VersionEntry,
    read_models_config,
    single_model_config,
)
from testdoubles.tfs_servable import RunKey, Servable, VersionSession
from testdoubles.tfs_status import TFSError, invalid, status_proto

log = logging.getLogger("testdoubles.standin")


@dataclass(frozen=True)
class ServerOptions:
    """TF Serving's flags the stand-in honours, with TF Serving's defaults (server.h)."""

    enable_batching: bool = False
    batching_parameters_file: Path | None = None
    batching: BatchingOptions | None = None  # instead of a file (tests)
    file_system_poll_wait_s: float = 1.0  # <= 0: poll once at start and on config reloads
    model_config_file_poll_wait_s: float = 0.0  # 0: read the config file once
    enable_model_warmup: bool = True
    num_request_iterations_for_warmup: int = 1
    enable_serialization_as_tensor_content: bool = False
    max_num_load_retries: int = 5
    load_retry_interval_s: float = 60.0
    allow_version_labels_for_unavailable_models: bool = False


@dataclass(frozen=True)
class Fault:
    """Test knobs for one version (or model, or all): slow or failing loads and predicts."""

    load_delay_s: float = 0.0
    load_error: TFSError | None = None
    load_gate: threading.Event | None = None  # the load waits until it is set (<= 60 s)
    predict_delay_s: float = 0.0  # per graph execution (per batch when batching)
    predict_error: TFSError | None = None
    predict_gate: threading.Event | None = None  # executions wait until it is set (<= 60 s)


@dataclass
class Faults:
    """Faults by (model, version); None matches any. The most specific entry wins."""

    table: dict[tuple[str | None, int | None], Fault] = field(default_factory=dict)

    def set(self, fault: Fault, *, model: str | None = None, version: int | None = None) -> None:
        self.table[(model, version)] = fault

    def clear(self) -> None:
        self.table.clear()

    def get(self, model: str, version: int) -> Fault:
        for key in ((model, version), (model, None), (None, version), (None, None)):
            if key in self.table:
                return self.table[key]
        return Fault()


class StandIn:
    """The stand-in server. `start()` loads the models (warmup included) and then listens,
    as TF Serving opens its ports only once its models are AVAILABLE; `stop()` stops
    listening (models stay loaded, `start()` listens again); `close()` ends everything.

    One model: `StandIn(model_base, model_name, model_version=None)` (the latest version, or
    the one given). Several: `StandIn(model_config_file=path)` with a models.config whose
    base paths are absolute. `port=0` picks a free port (see `port` after `start`).
    `delay_s` makes every graph execution sleep first; `faults` holds per-version knobs.
    """

    def __init__(
        self,
        model_base: Path | None = None,
        model_name: str | None = None,
        *,
        model_version: int | None = None,
        model_config_file: Path | None = None,
        options: ServerOptions | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        delay_s: float = 0.0,
        max_workers: int = 16,
    ) -> None:
        if (model_config_file is None) == (model_base is None or model_name is None):
            raise StandInError(
                "give the stand-in model_base and model_name, or model_config_file. Received: "
                f"model_base={model_base}, model_name={model_name!r}, "
                f"model_config_file={model_config_file}"
            )
        self.options = options or ServerOptions()
        if self.options.batching_parameters_file and not self.options.enable_batching:
            raise StandInError(  # server.cc, Server::BuildAndStart
                "server_options.batching_parameters_file is set without setting "
                "server_options.enable_batching to true."
            )
        self.model_config_file = Path(model_config_file) if model_config_file else None
        self._initial_config = (
            None
            if model_base is None or model_name is None
            else single_model_config(Path(model_base) / model_name, model_name, model_version)
        )
        self.host, self.port = host, port
        self.delay_s = delay_s
        self.max_workers = max_workers
        self.faults = Faults()
        self.config_errors: list[str] = []  # failed re-reads of model_config_file
        self._scheduler: SharedBatchScheduler | None = None
        self._batching: BatchingOptions | None = None
        self.manager = ModelManager(
            self._load,
            file_system_poll_wait_s=self.options.file_system_poll_wait_s,
            max_num_load_retries=self.options.max_num_load_retries,
            load_retry_interval_s=self.options.load_retry_interval_s,
            allow_version_labels_for_unavailable_models=(
                self.options.allow_version_labels_for_unavailable_models
            ),
        )
        self._loaded = False
        self._server: grpc.Server | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    # -- loading ----------------------------------------------------------------------------

    def _config_from_file(self) -> Any:
        assert self.model_config_file is not None
        try:
            return read_models_config(self.model_config_file)
        except TFSError as exc:
            raise StandInError(exc.message) from None

    def load(self) -> None:
        """Read the config, load and warm every model (once); StandInError if one fails."""
        if self._loaded:
            return
        opts = self.options
        if opts.enable_batching:
            self._batching = opts.batching or (
                BatchingOptions.from_file(opts.batching_parameters_file)
                if opts.batching_parameters_file
                else BatchingOptions()
            )
            self._scheduler = SharedBatchScheduler(self._batching.num_batch_threads)
        config = self._initial_config or self._config_from_file()
        self.manager.start_threads()
        try:
            self.manager.reload_config(config)
        except TFSError as exc:
            self.close()
            raise StandInError(str(exc)) from None
        if self.model_config_file is not None and opts.model_config_file_poll_wait_s > 0:
            self.manager.spawn(
                "config-poll", self._poll_config_file, opts.model_config_file_poll_wait_s
            )
        self._loaded = True

    def _load(self, name: str, version: int, path: Path) -> VersionSession:
        """The loader the manager calls: SavedModel, session (batched or not), warmup."""
        fault = self.faults.get(name, version)
        if fault.load_gate is not None:
            fault.load_gate.wait(60)
        if fault.load_delay_s > 0:
            time.sleep(fault.load_delay_s)
        if fault.load_error is not None:
            raise fault.load_error
        session = VersionSession(
            Servable(name, version, path),
            scheduler=self._scheduler,
            batching=self._batching,
            tensor_content=self.options.enable_serialization_as_tensor_content,
            before_run=lambda: self._before_run(name, version),
        )
        if self.options.enable_model_warmup:
            try:
                session.warmup(iterations=self.options.num_request_iterations_for_warmup)
            except BaseException:
                session.close()
                raise
        return session

    def _before_run(self, model: str, version: int) -> None:
        fault = self.faults.get(model, version)
        if fault.predict_gate is not None:
            fault.predict_gate.wait(60)
        delay = self.delay_s + fault.predict_delay_s
        if delay > 0:
            time.sleep(delay)
        if fault.predict_error is not None:
            raise fault.predict_error

    def _poll_config_file(self) -> None:
        """server.cc, PollFilesystemAndReloadConfig: reload when the file changed; on error
        keep the old config."""
        try:
            config = self._config_from_file()
            if config != self.manager.config:
                self.manager.reload_config(config)
        except (StandInError, TFSError) as exc:
            log.error("PollFilesystemAndReloadConfig failed to ReloadConfig: %s", exc)
            self.config_errors.append(str(exc))

    # -- listening --------------------------------------------------------------------------

    def start(self) -> StandIn:
        """Load (first time only) and listen; StandInError if loading fails or the port is taken."""
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
        """Stop listening (in-flight calls get `grace_s`); models stay loaded for `start()`."""
        server, self._server = self._server, None
        if server is not None:
            server.stop(grace_s).wait()

    def close(self) -> None:
        """Stop listening, stop polling, unload every version, stop the batch threads."""
        self.stop()
        self.manager.close()
        if self._scheduler is not None:
            self._scheduler.close()

    def __enter__(self) -> StandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- what tests look at -----------------------------------------------------------------

    def sessions(self, model: str | None = None) -> list[VersionSession]:
        """The loaded sessions (AVAILABLE or UNLOADING), optionally of one model."""
        return [
            e.session
            for e in self.manager.entries()
            if e.session is not None and model in (None, e.model)
        ]

    def cold_runs(self) -> list[tuple[str, int, RunKey]]:
        """Graph executions after AVAILABLE for a (signature, batch size, outputs) no warmup
        record covered: on TF Serving each of these compiles on the request path."""
        return [
            (e.model, e.version, key)
            for e in self.manager.entries()
            if e.session is not None
            for key in e.session.cold
        ]

    def batch_stats(self) -> tuple[int, int]:
        """(batches being processed, batches enqueued); (0, 0) without batching."""
        return self._scheduler.stats() if self._scheduler is not None else (0, 0)

    def available(self) -> dict[str, list[int]]:
        """Model name -> AVAILABLE versions."""
        out: dict[str, list[int]] = {}
        for e in self.manager.entries():
            if e.state == AVAILABLE:
                out.setdefault(e.model, []).append(e.version)
        return {k: sorted(v) for k, v in sorted(out.items())}

    def wait_for_state(self, model: str, version: int, state: str, timeout_s: float) -> bool:
        """Block until `model` `version` has reached `state` ("AVAILABLE", "END", ...), now
        or earlier (`manager.events` keeps every transition)."""

        def reached() -> bool:
            return any(e[1:] == (model, version, state) for e in list(self.manager.events))

        return self.manager.wait_until(reached, timeout_s)

    def describe(self) -> str:
        """One line naming what is served, for the CLI's ready line."""
        served = self.available()
        if len(served) == 1 and len(next(iter(served.values()))) == 1:
            ((name, (version,)),) = served.items()
            return f"model {name!r} version {version}"
        return "models " + ", ".join(f"{n!r} versions {v}" for n, v in served.items())

    # -- requests ---------------------------------------------------------------------------

    def predict(self, request: Any, *, deadline: float | None = None) -> Any:
        """predict_impl.cc, TensorflowPredictor::Predict: resolve the version, run, reply."""
        if not request.HasField("model_spec"):
            raise invalid("Missing ModelSpec")
        with self.manager.acquire(request.model_spec) as handle:
            return handle.session.predict(request, deadline=deadline)

    def metadata(self, request: Any) -> Any:
        """get_model_metadata_impl.cc: the request is checked before the version lookup."""
        if not request.HasField("model_spec"):
            raise invalid("Missing ModelSpec")
        if not request.metadata_field:
            raise invalid("GetModelMetadataRequest must specify at least one metadata_field")
        for name in request.metadata_field:
            if name != "signature_def":
                raise invalid(f"Metadata field {name} is not supported")
        with self.manager.acquire(request.model_spec) as handle:
            servable = handle.session.servable
            sig_map = get_model_metadata_pb2.SignatureDefMap()
            for key, sig in servable.signature_defs.items():
                sig_map.signature_def[key].CopyFrom(sig)
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = request.model_spec.name
            response.model_spec.version.value = servable.version
            response.metadata["signature_def"].Pack(sig_map)
            return response

    def model_status(self, request: Any) -> Any:
        """get_model_status_impl.cc, GetModelStatusImpl::GetModelStatus."""
        if not request.HasField("model_spec"):
            raise invalid("Missing ModelSpec")
        entries: list[VersionEntry] = self.manager.status(request.model_spec)
        return get_model_status_pb2.GetModelStatusResponse(
            model_version_status=[
                get_model_status_pb2.ModelVersionStatus(
                    version=e.version, state=e.state, status=status_proto(e.error)
                )
                for e in entries
            ]
        )

    def reload_config(self, request: Any) -> Any:
        """model_service_impl.cc, HandleReloadConfigRequest: the status is in the reply."""
        try:
            self.manager.reload_config(request.config)
            error = None
        except TFSError as exc:
            log.error("ReloadConfig failed: %s", exc.message)
            error = exc
        return model_management_pb2.ReloadConfigResponse(status=status_proto(error))


def _abort(context: grpc.ServicerContext, exc: TFSError) -> NoReturn:
    context.abort(exc.code, exc.grpc_details())
    raise AssertionError("unreachable: context.abort raises")


def _deadline(context: grpc.ServicerContext) -> float | None:
    """The call's deadline on time.monotonic(), as TF Serving turns it into a RunOptions
    timeout (prediction_service_impl.cc, DeadlineToTimeoutMillis)."""
    left = context.time_remaining()
    return None if left is None else time.monotonic() + left


class _PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """PredictionService: Predict and GetModelMetadata; the others answer UNIMPLEMENTED."""

    def __init__(self, standin: StandIn) -> None:
        self._standin = standin

    def Predict(self, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return self._standin.predict(request, deadline=_deadline(context))
        except TFSError as exc:
            _abort(context, exc)

    def GetModelMetadata(self, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return self._standin.metadata(request)
        except TFSError as exc:
            _abort(context, exc)


class _ModelService(model_service_pb2_grpc.ModelServiceServicer):
    """ModelService: every version's state, and config reloads."""

    def __init__(self, standin: StandIn) -> None:
        self._standin = standin

    def GetModelStatus(self, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return self._standin.model_status(request)
        except TFSError as exc:
            _abort(context, exc)

    def HandleReloadConfigRequest(self, request: Any, context: grpc.ServicerContext) -> Any:
        return self._standin.reload_config(request)
