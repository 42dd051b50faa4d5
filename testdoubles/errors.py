"""Errors of the test doubles: one line each, printed by the CLI as `error: ...`, exit 2."""

from __future__ import annotations

from contract.errors import ResnetServingError


class DoubleError(ResnetServingError):
    """Base of every test-double error."""


class StandInError(DoubleError):
    """The stand-in cannot start: no model, bad warmup records, port in use."""
