"""`resnet-serving standin`: run the local stand-in for TF Serving (not TF Serving).

Kept apart from `testdoubles.standin` so building the CLI parser does not import TensorFlow.
"""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path
from typing import Any

DESCRIPTION = (
    "Run a LOCAL STAND-IN that speaks TF Serving's PredictionService/ModelService gRPC APIs "
    "over an exported SavedModel, for tests and Docker-less use. It is not TF Serving: no "
    "batching scheduler, no model version policy or reload, no REST API."
)


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add `standin` to the top-level parser."""
    parser = sub.add_parser(
        "standin",
        help="local stand-in speaking TF Serving's gRPC APIs (tests, no Docker; not TF Serving)",
        description=DESCRIPTION,
    )
    add_arguments(parser)
    parser.set_defaults(func=run)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The stand-in's options."""
    parser.add_argument(
        "--model-base", type=Path, required=True, help="<base> of <base>/<name>/<version>/"
    )
    parser.add_argument(
        "--model-name", required=True, help="model directory name under --model-base"
    )
    parser.add_argument(
        "--model-version", type=int, default=None, help="default: the highest on disk"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=8500, help="gRPC port (default 8500, 0: any free)"
    )
    parser.add_argument(
        "--delay-s", type=float, default=0.0, help="sleep before each Predict (tests)"
    )


def run(args: argparse.Namespace) -> int:
    """Load, listen, print one ready line, serve until SIGTERM/SIGINT, stop cleanly."""
    from testdoubles.standin import StandIn  # TensorFlow: only when the stand-in runs

    standin = StandIn(
        args.model_base,
        args.model_name,
        model_version=args.model_version,
        host=args.host,
        port=args.port,
        delay_s=args.delay_s,
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    standin.start()
    s = standin.servable
    print(
        f"stand-in ready (not TF Serving): model {standin.model_name!r} version {s.version} "
        f"on {standin.address}",
        flush=True,
    )
    while not stop.wait(0.5):
        pass
    standin.stop(grace_s=1.0)
    return 0
