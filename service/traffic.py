"""The share of a model's default traffic that goes to its canary version, changed at run time.

`resnet-serving rollout` moves it (5 % -> 25 % -> 100 %) through the admin API
(`PUT /admin/models/{name}/canary`). It must hold for every worker process behind one port,
whichever of them the admin request reached: with `shared_state_dir` set, a change is written
to `<dir>/canary/<model>.json` (beside and renamed, so no reader sees half a file) and every
process re-reads that file when it changed, checking at most every `READ_INTERVAL_S`. Without
it the value lives in this process only (one process: nothing to share). Until the admin API
sets one, a model's fraction is the `canary_fraction` setting.

TF Serving cannot hold this number: it can say which version a label points to, not how much
traffic that version should get. The rollout re-asserts the fraction while it runs, so a
gateway that restarts mid-rollout (its fraction back to the setting) is corrected within
seconds.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

READ_INTERVAL_S = 0.1  # how stale another process's change may be, at most


@dataclass
class _Cached:
    value: float
    stamp: tuple[int, int, int] | None  # (inode, size, mtime_ns) of the file it came from
    checked_at: float


class TrafficSplit:
    """Canary fraction per model: set here, shared through a directory, or the default."""

    def __init__(self, default: float = 0.0, shared_dir: Path | None = None) -> None:
        if not 0.0 <= default <= 1.0:
            raise ValueError(f"default fraction must be within [0, 1]. Received: {default}")
        self._default = default
        self._dir = Path(shared_dir) / "canary" if shared_dir is not None else None
        self._local: dict[str, float] = {}
        self._cache: dict[str, _Cached] = {}
        self._lock = threading.Lock()  # writers of this process (the admin route)

    @property
    def shared(self) -> bool:
        return self._dir is not None

    def fraction(self, model: str) -> float:
        """The canary's share of `model`'s default traffic now, in [0, 1]."""
        if self._dir is None:
            return self._local.get(model, self._default)
        now = time.monotonic()
        cached = self._cache.get(model)
        if cached is not None and now - cached.checked_at < READ_INTERVAL_S:
            return cached.value
        path = self._path(model)
        try:
            st = path.stat()
        except FileNotFoundError:
            self._cache[model] = _Cached(self._default, None, now)
            return self._default
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        if cached is not None and cached.stamp == stamp:
            cached.checked_at = now
            return cached.value
        value = self._read(path, cached.value if cached else self._default)
        self._cache[model] = _Cached(value, stamp, now)
        return value

    def set(self, model: str, fraction: float) -> None:
        """Send `fraction` of `model`'s default traffic to its canary, in every process."""
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"fraction must be within [0, 1]. Received: {fraction}")
        if self._dir is None:
            self._local[model] = fraction
            return
        with self._lock:
            self._dir.mkdir(parents=True, exist_ok=True)
            path = self._path(model)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"fraction": fraction}), encoding="utf-8")
            tmp.replace(path)
        self._cache.pop(model, None)  # this process sees its own change at once

    def _path(self, model: str) -> Path:
        assert self._dir is not None
        return self._dir / f"{model}.json"  # model names are safe file names (manifest rule)

    @staticmethod
    def _read(path: Path, previous: float) -> float:
        try:
            value = float(json.loads(path.read_text(encoding="utf-8"))["fraction"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring %s (keeping %.3f): %s", path, previous, exc)
            return previous
        return min(max(value, 0.0), 1.0)
