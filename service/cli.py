"""Subcommands of the service package."""

from __future__ import annotations

import argparse
from typing import Any

from pydantic import ValidationError

from contract.errors import ResnetServingError


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add this package's subcommands to the top-level parser."""
    _add_serve(sub)


def _add_serve(sub: argparse._SubParsersAction[Any]) -> None:
    """`serve`: the HTTP gateway on uvicorn. Flags override `RESNET_SERVING_*` variables."""
    parser = sub.add_parser(
        "serve",
        help="run the HTTP gateway (FastAPI + micro-batching) on uvicorn",
        description="Run the gateway. Every setting can also be set as RESNET_SERVING_<NAME>; "
        "the flags below override those.",
    )
    parser.add_argument("--backend", choices=["embedded", "tfserving"])
    parser.add_argument("--model-base", dest="model_base_path", help="<base>/<name>/<version>/")
    parser.add_argument("--model-name")
    parser.add_argument("--model-version", type=int)
    parser.add_argument("--tfserving-address", help="host:port of TF Serving's gRPC API")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument(
        "--workers",
        type=int,
        help="gateway processes behind the one port (default: one per core for tfserving, "
        "1 for embedded)",
    )
    parser.add_argument("--max-batch-size", type=int)
    parser.add_argument(
        "--max-wait-ms", type=float, help="linger for company with a backend slot free (0)"
    )
    parser.add_argument("--max-inflight-batches", type=int, help="backend calls in flight")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    parser.set_defaults(func=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    # The [gateway] extra (FastAPI, uvicorn, pydantic-settings) only when `serve` runs: every
    # other command and `--help` work in an install without it.
    from service.server import run_server
    from service.settings import Settings

    overrides = {
        k: v for k, v in vars(args).items() if k not in ("command", "func") and v is not None
    }
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "settings"
        raise ResnetServingError(
            f"invalid setting {where}: {first['msg']}. Received: {first.get('input')!r}"
        ) from None
    run_server(settings)
    return 0
