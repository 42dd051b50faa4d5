"""Run the gateway on uvicorn from the settings (the `serve` subcommand), and stop it gracefully.

On SIGTERM (or the first SIGINT) uvicorn stops accepting connections, asks every open
connection to close after its current response, waits up to `timeout_graceful_shutdown` for
the requests in flight, then runs our lifespan shutdown (batcher flush, backend close). We add
two things: the gateway turns not-ready the moment the signal arrives (`/readyz` 503 and new
requests on kept-alive connections get 503 `shutting_down`), and the drain shares one budget,
`drain_timeout_s`, from the signal on. A SIGTERM-ed gateway that drained exits 0.

The listening socket is bound here, before uvicorn starts, so a busy port is one `error:`
line (exit 2) rather than uvicorn's log and exit 3; and the server runs the gateway's
connection layer (`service.connections`: head limits, head deadline, connection cap) and
believes `X-Forwarded-For` only from `forwarded_allow_ips`.
"""

from __future__ import annotations

import logging
import math
import signal
import socket
import time
from types import FrameType
from typing import Any

import uvicorn

from contract.errors import ResnetServingError
from service.app import create_app
from service.connections import ConnectionLimits, GatewayServerConfig
from service.settings import Settings
from service.state import GatewayState, state_of

log = logging.getLogger(__name__)


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
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    fatal: list[str] = []
    server: uvicorn.Server | None = None

    def on_fatal(reason: str) -> None:
        fatal.append(reason)
        if server is not None:
            server.should_exit = True

    sock = listen(settings)
    log.info("listening on http://%s:%d (Ctrl-C drains and stops)", settings.host, settings.port)
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
        sock.close()
    if fatal:
        raise GatewayStartupError(fatal[0])


def server_config(settings: Settings, app: Any) -> GatewayServerConfig:
    """uvicorn's configuration for the gateway `app`, from the settings."""
    trusted = list(settings.forwarded_allow_ips)
    return GatewayServerConfig(
        app,
        connection_limits=ConnectionLimits(
            max_header_bytes=settings.max_header_bytes,
            max_headers=settings.max_headers,
            header_timeout_s=settings.header_timeout_s,
            max_connections=settings.max_connections,
            retry_after_s=settings.retry_after_s,
        ),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        lifespan="on",
        # uvicorn waits this long for requests in flight; the lifespan drain gets what is left.
        timeout_graceful_shutdown=max(1, math.ceil(settings.drain_timeout_s)),
        access_log=False,  # ours (service.middleware.context) carries the request id and key id
        # uvicorn would believe X-Forwarded-For from 127.0.0.1 by default: only configured
        # proxies may name the client (whose address the rate limit is counted under).
        proxy_headers=bool(trusted),
        forwarded_allow_ips=trusted or None,
    )


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
