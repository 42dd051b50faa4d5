"""Run the gateway on uvicorn from the settings (the `serve` subcommand)."""

from __future__ import annotations

import logging

from service.settings import Settings


def run_server(settings: Settings) -> None:
    """Serve until SIGINT/SIGTERM; in-flight requests finish within `drain_timeout_s`."""
    import uvicorn

    from service.app import create_app

    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        lifespan="on",
        timeout_graceful_shutdown=int(settings.drain_timeout_s) or None,
        access_log=settings.log_level == "debug",
        # Our own limits apply (limits.py); keep uvicorn's header limits at their defaults.
    )
    uvicorn.Server(config).run()
