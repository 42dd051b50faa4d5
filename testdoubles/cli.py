"""`resnet-serving standin`: run the local stand-in for TF Serving (not TF Serving).

Kept apart from `testdoubles.standin` so building the CLI parser does not import TensorFlow.
The options carry TF Serving's flag names (dashes for underscores) and defaults.
"""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path
from typing import Any

DESCRIPTION = (
    "Run a LOCAL STAND-IN that speaks TF Serving's PredictionService/ModelService gRPC APIs "
    "over exported SavedModels, for tests and Docker-less use. It copies TF Serving's error "
    "codes and texts, float_val replies, warmup replay, server-side batching, models.config "
    "with version policies and labels, and file-system polling for new versions. It is not "
    "TF Serving: no REST API, no Classify/Regress, never its performance."
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
    parser.add_argument("--model-base", type=Path, help="<base> of <base>/<name>/<version>/")
    parser.add_argument("--model-name", help="model directory name under --model-base")
    parser.add_argument(
        "--model-version", type=int, default=None, help="serve only this version (default: latest)"
    )
    parser.add_argument(
        "--model-config-file",
        type=Path,
        help="a models.config (ModelServerConfig text) instead of --model-base/--model-name; "
        "its base paths must be absolute",
    )
    parser.add_argument(
        "--model-config-file-poll-wait-seconds",
        type=float,
        default=0.0,
        help="re-read --model-config-file this often (default 0: once, as TF Serving)",
    )
    parser.add_argument(
        "--file-system-poll-wait-seconds",
        type=float,
        default=1.0,
        help="look for new version directories this often (default 1, as TF Serving)",
    )
    parser.add_argument(
        "--enable-batching", action="store_true", help="server-side batching, as TF Serving"
    )
    parser.add_argument(
        "--batching-parameters-file", type=Path, help="BatchingParameters text proto"
    )
    parser.add_argument(
        "--enable-serialization-as-tensor-content",
        action="store_true",
        help="reply in tensor_content instead of float_val/int_val (TF Serving >= 2.19 flag)",
    )
    parser.add_argument(
        "--max-num-load-retries", type=int, default=5, help="retries of a failed load (5)"
    )
    parser.add_argument(
        "--load-retry-interval-seconds",
        type=float,
        default=60.0,
        help="wait between load retries (60)",
    )
    parser.add_argument(
        "--allow-version-labels-for-unavailable-models",
        action="store_true",
        help="accept labels on versions not loaded yet (a labelled models.config at start-up)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=8500, help="gRPC port (default 8500, 0: any free)"
    )
    parser.add_argument(
        "--delay-s", type=float, default=0.0, help="sleep before each graph execution (tests)"
    )


def run(args: argparse.Namespace) -> int:
    """Load, listen, print one ready line, serve until SIGTERM/SIGINT, stop cleanly."""
    # TensorFlow: only when the stand-in runs.
    from testdoubles.errors import StandInError
    from testdoubles.standin import ServerOptions, StandIn

    if (args.model_config_file is None) == (args.model_base is None or args.model_name is None):
        raise StandInError("give --model-base and --model-name, or --model-config-file")
    options = ServerOptions(
        enable_batching=args.enable_batching,
        batching_parameters_file=args.batching_parameters_file,
        file_system_poll_wait_s=args.file_system_poll_wait_seconds,
        model_config_file_poll_wait_s=args.model_config_file_poll_wait_seconds,
        enable_serialization_as_tensor_content=args.enable_serialization_as_tensor_content,
        max_num_load_retries=args.max_num_load_retries,
        load_retry_interval_s=args.load_retry_interval_seconds,
        allow_version_labels_for_unavailable_models=args.allow_version_labels_for_unavailable_models,
    )
    standin = StandIn(
        args.model_base,
        args.model_name,
        model_version=args.model_version,
        model_config_file=args.model_config_file,
        options=options,
        host=args.host,
        port=args.port,
        delay_s=args.delay_s,
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    standin.start()
    print(f"stand-in ready (not TF Serving): {standin.describe()} on {standin.address}", flush=True)
    while not stop.wait(0.5):
        pass
    standin.close()
    return 0
