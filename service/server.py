"""Run the gateway on uvicorn from the settings (the `serve` subcommand): one process, or
`workers` processes behind one port, and stop it gracefully.

On SIGTERM (or the first SIGINT) uvicorn stops accepting connections, asks every open
connection to close after its current response, waits up to `timeout_graceful_shutdown` for
the requests in flight, then runs our lifespan shutdown (batcher flush, backend close). We add
two things: the gateway turns not-ready the moment the signal arrives (`/readyz` 503 and new
requests on kept-alive connections get 503 `shutting_down`), and the drain shares one budget,
`drain_timeout_s`, from the signal on. A SIGTERM-ed gateway that drained exits 0.

**Workers.** With `workers` > 1 the listening socket is shared by that many processes under
uvicorn's own supervisor (`uvicorn.supervisors.Multiprocess`): it spawns them, replaces one
that dies (checked every 0.5 s) while the others keep serving, and on SIGTERM/SIGINT sends
each a SIGTERM and waits for all of them, so every process drains as above. Each worker builds
its own app from the pickled settings (`WorkerConfig.load_app`): its own batcher, decode pool
and gRPC channel; TF Serving's batching merges their calls. A worker waits for its backend
(up to `backend_connect_timeout_s`) before it takes connections, so a replacement joins ready
rather than answering `not_ready` beside healthy siblings. Metrics go to prometheus_client's
multiprocess files in `metrics_dir` (a temporary folder by default), so `/metrics` on any
worker reports the sum over all (`service.metrics`). Run-time state set through one worker
(the canary share of `/admin`, `service.traffic`) is shared through `shared_state_dir`, a
folder in the same temporary place unless set. Both temporary folders are removed at exit. An
embedded model that cannot load stops the whole gateway with its one `error:` line, as with
one process.

The listening socket is bound here, before uvicorn starts, so a busy port is one `error:`
line (exit 2) rather than uvicorn's log and exit 3; and every process runs the gateway's
connection layer (`service.connections`: head limits, head deadline, connection cap) and
believes `X-Forwarded-For` only from `forwarded_allow_ips`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.supervisors import Multiprocess

from contract.errors import ResnetServingError
from service.app import create_app
from service.connections import ConnectionLimits, GatewayServerConfig
from service.settings import Settings
from service.state import GatewayState, state_of

log = logging.getLogger(__name__)

# prometheus_client's switch to multiprocess mode: read by it at import in each worker.
PROMETHEUS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
_FATAL_FILE = "fatal"  # a worker's reason why the model can never load, for the parent
_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class GatewayStartupError(ResnetServingError):
    """The model could not be loaded: the gateway exits instead of staying half alive."""


class GracefulServer(uvicorn.Server):
    """uvicorn.Server that turns the gateway not-ready as soon as an exit signal arrives."""

    def __init__(self, config: uvicorn.Config, state: GatewayState) -> None:
        super().__init__(config)
        self.gateway = state

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.gateway.begin_drain(time.monotonic()):
            log.info("signal %d: not ready; draining requests in flight", sig)
        super().handle_exit(sig, frame)


def run_server(settings: Settings) -> None:
    """Serve until SIGINT/SIGTERM; in-flight requests finish within `drain_timeout_s`.

    Raises GatewayStartupError when the embedded model fails to load (the CLI prints it as
    one `error:` line and exits non-zero).
    """
    logging.basicConfig(level=settings.log_level.upper(), format=_LOG_FORMAT)
    sock = listen(settings)
    workers = settings.worker_count()
    log.info(
        "listening on http://%s:%d with %d process%s (Ctrl-C drains and stops)",
        settings.host, settings.port, workers, "es" if workers > 1 else "",
    )  # fmt: skip
    try:
        if workers > 1:
            _run_workers(settings, sock, workers)
        else:
            _run_one(settings, sock)
    finally:
        sock.close()


def _run_one(settings: Settings, sock: socket.socket) -> None:
    fatal: list[str] = []
    server: uvicorn.Server | None = None

    def on_fatal(reason: str) -> None:
        fatal.append(reason)
        if server is not None:
            server.should_exit = True

    app = create_app(settings, on_fatal=on_fatal)
    server = GracefulServer(server_config(settings, app), state_of(app))
    # uvicorn re-raises the signal it caught once it has shut down; a drained SIGTERM or
    # Ctrl-C is a clean exit (0), so let that re-raised signal end here instead of killing the
    # process (SIGTERM) or surfacing as KeyboardInterrupt (SIGINT).
    previous = {sig: signal.signal(sig, _ignore) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if fatal:
        raise GatewayStartupError(fatal[0])


def _run_workers(settings: Settings, sock: socket.socket, workers: int) -> None:
    with _runtime_dir(settings) as (runtime, metrics_dir):
        if settings.shared_state_dir is None:  # the canary share must be the same in every one
            shared = runtime / "shared"
            shared.mkdir()
            settings = settings.model_copy(update={"shared_state_dir": shared})
        config = WorkerConfig(settings, runtime=runtime, workers=workers)
        with _environ(PROMETHEUS_DIR_ENV, str(metrics_dir)):  # inherited by each spawned worker
            supervisor = Multiprocess(config, sockets=[sock])
            supervisor.run()
        fatal = runtime / _FATAL_FILE
        if fatal.exists():
            raise GatewayStartupError(fatal.read_text(encoding="utf-8").strip())
    if any(p.exitcode == STARTUP_FAILURE for p in supervisor.processes):
        raise GatewayStartupError("a worker process failed to start; the log above says why")


def config_kwargs(settings: Settings) -> dict[str, Any]:
    """uvicorn's settings for the gateway, one process or many."""
    trusted = list(settings.forwarded_allow_ips)
    return {
        "connection_limits": ConnectionLimits(
            max_header_bytes=settings.max_header_bytes,
            max_headers=settings.max_headers,
            header_timeout_s=settings.header_timeout_s,
            max_connections=settings.max_connections,
            max_pipelined_requests=settings.max_pipelined_requests,
            retry_after_s=settings.retry_after_s,
        ),
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        "lifespan": "on",
        # uvicorn waits this long for requests in flight; the lifespan drain gets what is left.
        "timeout_graceful_shutdown": max(1, math.ceil(settings.drain_timeout_s)),
        "access_log": False,  # ours (service.middleware.context) carries the request and key id
        # uvicorn would believe X-Forwarded-For from 127.0.0.1 by default: only configured
        # proxies may name the client (whose address the rate limit is counted under).
        "proxy_headers": bool(trusted),
        "forwarded_allow_ips": trusted or None,
    }


def server_config(settings: Settings, app: Any) -> GatewayServerConfig:
    """uvicorn's configuration for the gateway `app` in this process, from the settings."""
    return GatewayServerConfig(app, **config_kwargs(settings))


class WorkerConfig(GatewayServerConfig):
    """uvicorn's configuration for the worker processes; pickled into each of them.

    It carries the settings (built once, at the edge) instead of an import string, and builds
    the app in the worker when uvicorn loads it (`load_app`). There, inside uvicorn's signal
    capture, it chains the exit signals so the worker turns not-ready at once, and hands the
    embedded model's fatal start-up error to the parent.
    """

    def __init__(self, settings: Settings, *, runtime: Path, workers: int) -> None:
        self.settings = settings  # before uvicorn's __init__, which configures logging
        self.runtime = runtime
        super().__init__(None, workers=workers, **config_kwargs(settings))

    def configure_logging(self) -> None:
        super().configure_logging()
        # A spawned worker starts with no logging set up: the same format as the parent.
        logging.basicConfig(level=self.settings.log_level.upper(), format=_LOG_FORMAT)

    def load_app(self) -> Any:
        app = create_app(self.settings, on_fatal=self._fatal, listen_after_ready=True)
        _drain_on_exit_signals(state_of(app))
        return app

    def _fatal(self, reason: str) -> None:
        """The embedded model can never load: tell the parent why and ask it to stop all."""
        (self.runtime / _FATAL_FILE).write_text(reason + "\n", encoding="utf-8")
        os.kill(os.getppid(), signal.SIGTERM)


def _drain_on_exit_signals(state: GatewayState) -> None:
    """Chain SIGTERM/SIGINT so the gateway turns not-ready first, then uvicorn shuts down.

    Called while uvicorn's `Server.capture_signals` holds them (its handler is the one
    chained); uvicorn restores the process's own handlers when it is done.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(sig)

        def handler(signum: int, frame: FrameType | None, previous: Any = previous) -> None:
            if state.begin_drain(time.monotonic()):
                log.info("signal %d: not ready; draining requests in flight", signum)
            if callable(previous):
                previous(signum, frame)

        signal.signal(sig, handler)


@contextlib.contextmanager
def _runtime_dir(settings: Settings) -> Iterator[tuple[Path, Path]]:
    """A private folder for this run (removed at exit) and the metrics folder (wiped now)."""
    runtime = Path(tempfile.mkdtemp(prefix="resnet-serving-"))
    try:
        metrics = settings.metrics_dir or runtime / "metrics"
        metrics.mkdir(parents=True, exist_ok=True)
        for stale in metrics.glob("*.db"):  # a previous run's values must not be summed in
            stale.unlink()
        yield runtime, metrics
    finally:
        shutil.rmtree(runtime, ignore_errors=True)


@contextlib.contextmanager
def _environ(name: str, value: str) -> Iterator[None]:
    previous = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


def listen(settings: Settings) -> socket.socket:
    """The listening socket on `host:port`, or one line saying why it cannot be had."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((settings.host, settings.port))
    except OSError as exc:
        sock.close()
        raise GatewayStartupError(
            f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}; "
            "stop what uses it or pick another port (--port, RESNET_SERVING_PORT)"
        ) from None
    sock.set_inheritable(True)
    return sock


def _ignore(sig: int, frame: Any) -> None:
    """The signal uvicorn re-raises after its graceful shutdown: already handled."""
