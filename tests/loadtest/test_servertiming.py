"""Server-Timing parsing, including malformed headers (table-driven)."""

from __future__ import annotations

import pytest

from loadtest.servertiming import parse_server_timing


@pytest.mark.parametrize(
    "header, expected",
    [
        ("decode;dur=1.2, queue;dur=0.4, backend;dur=3.1, total;dur=5.0",
         {"decode": 1.2, "queue": 0.4, "backend": 3.1, "total": 5.0}),
        ("total;dur=5", {"total": 5.0}),
        ('db;desc="a, b; c";dur=2.5, app;dur=1', {"db": 2.5, "app": 1.0}),
        ("total;DUR=7", {"total": 7.0}),
        ('total;dur="3.5"', {"total": 3.5}),
        ("cache;desc=hit, total;dur=1", {"total": 1.0}),  # no dur: left out
        ("total;dur=abc, queue;dur=1", {"queue": 1.0}),
        ("total;dur=-1, queue;dur=nan, x;dur=inf", {}),
        ("total;dur=1, total;dur=2", {"total": 1.0}),  # first wins
        ("bad name;dur=1, ok;dur=2", {"ok": 2.0}),
        (";dur=1, , ,", {}),
        ("total;dur", {}),
        ("", {}),
        (None, {}),
        ("  spaced ; dur = 4.0 ", {"spaced": 4.0}),
    ],
)  # fmt: skip
def test_parse_server_timing(header: str | None, expected: dict[str, float]) -> None:
    assert parse_server_timing(header) == expected
