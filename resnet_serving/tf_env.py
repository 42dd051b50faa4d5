"""Quiet TensorFlow start-up for the CLI, for whichever command ends up importing it.

TensorFlow's C++ side prints CPU-feature, oneDNN and CUDA-stub notes straight to stderr (fd
2) before its log level applies, so a user error would be the last of several noise lines.
While a command runs, `quiet_tensorflow_import()` watches for the first `import tensorflow`
and runs that import (and the CUDA probe that logs "cuInit") with fd 2 pointed at /dev/null.
Commands that never import TensorFlow (the gRPC gateway, the load tester) pay nothing, and no
command has to declare whether it needs it. A failed import still raises its Python error
once stderr is back.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import os
import sys
from collections.abc import Iterator, Sequence
from types import ModuleType
from typing import Any


@contextlib.contextmanager
def _stderr_silenced() -> Iterator[None]:
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class _QuietLoader(importlib.abc.Loader):
    """Runs TensorFlow's own loader with fd 2 silenced, then its CUDA probe likewise."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:  # resource readers etc. come from the real loader
        return getattr(self._inner, name)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        module: ModuleType | None = self._inner.create_module(spec)
        return module

    def exec_module(self, module: ModuleType) -> None:
        with _stderr_silenced():
            self._inner.exec_module(module)
            with contextlib.suppress(Exception):  # "cuInit" is logged here, not at import
                module.config.list_physical_devices()


class _QuietFinder(importlib.abc.MetaPathFinder):
    """Finds `tensorflow` once, as the path finder would, and wraps its loader."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "tensorflow":
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


@contextlib.contextmanager
def quiet_tensorflow_import() -> Iterator[None]:
    """Within this block, the first `import tensorflow` runs without its C++ noise."""
    if "tensorflow" in sys.modules:
        yield
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    finder = _QuietFinder()
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(finder)
