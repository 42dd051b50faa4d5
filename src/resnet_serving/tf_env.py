"""Quiet TensorFlow start-up for the CLI.

TensorFlow's C++ side prints CPU-feature and CUDA-stub notes to stderr before its log level
applies, so a user error would be the last of several noise lines. The CLI imports TF once
with stderr (fd 2) pointed at /dev/null; a failed import is retried with stderr restored so
its error stays visible.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator


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


def import_tensorflow_quietly() -> None:
    """Import TensorFlow now, hiding its C++ start-up notes (not its Python errors)."""
    if "tensorflow" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with _stderr_silenced(), contextlib.suppress(Exception):
        import tensorflow

        tensorflow.config.list_physical_devices()  # the CUDA probe logs "cuInit" here, not at import
    import tensorflow  # raises here, visibly, if the quiet import failed
