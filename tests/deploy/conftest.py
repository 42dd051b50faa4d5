"""Fixtures for the deploy checks; helpers live in `deploy_support` (put on sys.path here)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from deploy_support import FakeRest, compose_command


@pytest.fixture
def fake_rest() -> Iterator[FakeRest]:
    server = FakeRest()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def compose_cmd() -> list[str]:
    return compose_command()
