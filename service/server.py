"""Run the gateway on uvicorn from the settings (the `serve` subcommand), and stop it gracefully.

On SIGTERM (or the first SIGINT) uvicorn stops accepting connections, asks every open
connection to close after its current response, waits up to `timeout_graceful_shutdown` for
the requests in flight, then runs our lifespan shutdown (batcher flush, backend close). We add
two things: the gateway turns not-ready the moment the signal arrives (`/readyz` 503 and new
requests on kept-alive connections get 503 `shutting_down`), and the drain shares one budget,
`drain_timeout_s`, from the signal on. A SIGTERM-ed gateway that drained exits 0.
"""

from __future__ import annotations

import logging
import math
import signal
import time
from types import FrameType
from typing import Any

import uvicorn

from contract.errors import ResnetServingError
from service.app import create_app
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

    app = create_app(settings, on_fatal=on_fatal)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        lifespan="on",
        # uvicorn waits this long for requests in flight; the lifespan drain gets what is left.
        timeout_graceful_shutdown=max(1, math.ceil(settings.drain_timeout_s)),
        access_log=False,  # ours (service.access) carries the request id and key id
        # Our own limits apply (service.middleware); keep uvicorn's header limits at their defaults.
    )
    server = GracefulServer(config, state_of(app))
    # uvicorn re-raises the signal it caught once it has shut down; a drained SIGTERM is a
    # clean exit, so let that re-raised SIGTERM end here instead of killing the process.
    previous = signal.signal(signal.SIGTERM, _ignore)
    try:
        server.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
    if fatal:
        raise GatewayStartupError(fatal[0])


def _ignore(sig: int, frame: Any) -> None:
    """The SIGTERM uvicorn re-raises after its graceful shutdown: already handled."""
