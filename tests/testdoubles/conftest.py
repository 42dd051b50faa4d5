"""Fixtures for the stand-in's tests: copies of the session's tiny export, written the way
an export writes them (into a temporary folder, then renamed)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

AddVersion = Callable[..., Path]


@pytest.fixture
def add_version(exported_model: Any) -> AddVersion:
    """`add_version(base, name, version)`: a copy of the tiny export at <base>/<name>/<version>,
    renamed into place so a polling server never sees half of it."""

    def add(base: Path, name: str, version: int) -> Path:
        target = base / name / str(version)
        tmp = base / name / f".tmp-{version}"
        shutil.copytree(exported_model.model_base / "tiny" / "1", tmp)
        tmp.rename(target)
        return target

    return add
