"""`resnet-serving`: one entry point, one subcommand per stage.

Each package registers its own subcommands (`<package>.cli.register`). Handlers import
TensorFlow lazily so `--help` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from resnet_serving import __version__
from resnet_serving.errors import ResnetServingError
from resnet_serving.tf_env import import_tensorflow_quietly


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every package's subcommands."""
    from loadtest import cli as loadtest_cli
    from model_builder import cli as builder_cli
    from service import cli as service_cli

    parser = argparse.ArgumentParser(
        prog="resnet-serving",
        description="Build, train, export, verify, serve, benchmark and load-test Keras ResNets.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    builder_cli.register(sub)
    service_cli.register(sub)
    loadtest_cli.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, run the chosen subcommand, turn user errors into one line."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "needs_tensorflow", True):
        import_tensorflow_quietly()
    try:
        return int(args.func(args) or 0)
    except ResnetServingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
