"""`resnet-serving`: one entry point, one subcommand per stage.

Each room registers its own subcommands (`<package>.cli.register`); handlers import their
heavy dependencies lazily so `--help` stays fast. This is the one place that turns a user
error (`contract.errors.ResnetServingError`) into one `error:` line and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from contract import __version__
from contract.errors import ResnetServingError
from resnet_serving.tf_env import quiet_tensorflow_import


class OneLineParser(argparse.ArgumentParser):
    """Bad options end like every other user error: one `error:` line, exit status 2.

    Subparsers inherit the class, so this holds for every subcommand."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {self.prog}: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser with every package's subcommands."""
    # Imported here, not at the top: `python -m resnet_serving --version` needs none of them.
    from benchmarks import cli as bench_cli
    from loadtest import cli as loadtest_cli
    from model_builder import cli as builder_cli
    from rollout import cli as rollout_cli
    from service import cli as service_cli
    from testdoubles import cli as standin_cli

    parser = OneLineParser(
        prog="resnet-serving",
        description="Build, train, export, verify, serve, benchmark and load-test Keras ResNets.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    builder_cli.register(sub)
    bench_cli.register(sub)
    service_cli.register(sub)
    standin_cli.register(sub)
    loadtest_cli.register(sub)
    rollout_cli.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments, run the chosen subcommand, turn user errors into one line."""
    args = build_parser().parse_args(argv)
    try:
        with quiet_tensorflow_import():
            return int(args.func(args) or 0)
    except ResnetServingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
