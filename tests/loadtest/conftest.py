"""Shared pieces for loadtest tests: a local gateway look-alike and a ready-made target."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from loadtest.payloads import Image, build_http_requests
from loadtest.targets import HttpTarget

TINY = [Image("a.jpg", b"\xff\xd8" + b"x" * 500, "image/jpeg")]


def http_target(port: int, max_connections: int = 1000) -> HttpTarget:
    reqs = build_http_requests(TINY, host=f"127.0.0.1:{port}", path="/v1/classify", per_request=1)
    return HttpTarget(
        f"http://127.0.0.1:{port}", reqs, max_connections=max_connections, connect_timeout=2.0
    )


@pytest.fixture
def make_target() -> Callable[..., HttpTarget]:
    """`make_target(port)` -> an HttpTarget posting a tiny JPEG to /v1/classify."""
    return http_target
