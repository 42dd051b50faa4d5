"""Subcommands of the service package."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add this package's subcommands to the top-level parser."""
    _add_standin(sub)


def _add_standin(sub: argparse._SubParsersAction[Any]) -> None:
    """`standin`: the local stand-in for TF Serving's gRPC APIs (not TF Serving)."""
    from service import standin_cli as standin

    parser = sub.add_parser(
        "standin",
        help="local stand-in speaking TF Serving's gRPC APIs (tests, no Docker; not TF Serving)",
        description=standin.DESCRIPTION,
    )
    standin.add_arguments(parser)
    parser.set_defaults(func=_run_standin)


def _run_standin(args: argparse.Namespace) -> int:
    from service import standin_cli as standin

    return standin.run(args)
