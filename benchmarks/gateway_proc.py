"""Shared by `overload.py` and `soak.py`: a benchmark model, a real gateway subprocess, its RSS,
and our load tester run as a subprocess (`resnet-serving loadtest run ... --out DIR`).

Every wait is bounded and every process started here is stopped by the context that started it.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import platform
import re
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
MODEL_NAME = "bench"


def export_bench_model(base: Path, arch: str, size: int, classes: int = 10) -> Path:
    """`arch` at `size`x`size` with random weights, exported with buckets 1..32 under `base`."""
    # TensorFlow only here: the gateway-only benchmarks (gateway_ceiling.py) run without it.
    import keras

    from model_builder.artifacts import RunInfo
    from model_builder.export import export_model
    from model_builder.resnet import build_model

    if (base / MODEL_NAME / "1" / "saved_model.pb").exists():
        return base
    keras.utils.set_random_seed(0)
    model = build_model(arch, input_size=size, num_classes=classes)
    info = RunInfo(architecture=arch, input_height=size, input_width=size,
                   labels=tuple(f"class_{i}" for i in range(classes)))  # fmt: skip
    export_model(model, model_base=base, name=MODEL_NAME, version=1, run_info=info,
                 buckets=(1, 2, 4, 8, 16, 32))  # fmt: skip
    return base


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def child_env(**settings: Any) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    env.update({f"RESNET_SERVING_{k.upper()}": str(v) for k, v in settings.items()})
    return env


@dataclass
class Gateway:
    url: str
    pid: int
    settings: dict[str, Any]

    def rss_mib(self) -> float:
        return _status_kib(self.pid, "VmRSS") / 1024

    def peak_rss_mib(self) -> float:
        return _status_kib(self.pid, "VmHWM") / 1024


def _status_kib(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return float(line.split()[1])
    raise RuntimeError(f"no {key} in /proc/{pid}/status")


@contextlib.contextmanager
def gateway(model_base: Path, log: Path, **settings: Any) -> Iterator[Gateway]:
    """`resnet-serving serve` (embedded unless `settings` say otherwise) on a free port; yields
    once /readyz is 200."""
    port = free_port()
    values = {"backend": "embedded", "model_base_path": model_base, "model_name": MODEL_NAME,
              "port": port, "log_level": "warning", **settings}  # fmt: skip
    cmd = [sys.executable, "-m", "resnet_serving", "serve"]
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, env=child_env(**values), stdout=out,
                                stderr=subprocess.STDOUT, cwd=ROOT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        end = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"gateway exited: {log.read_text()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > end:
                raise RuntimeError(f"gateway not ready: {log.read_text()[-2000:]}")
            time.sleep(0.5)
        yield Gateway(url, proc.pid, values)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def loadtest(
    url: str, out: Path, *args: str, timeout_s: float, path: str = "/v1/classify"
) -> dict[str, Any]:
    """Run `resnet-serving loadtest run URL+PATH ARGS --out OUT --quiet`; its result.json."""
    cmd = [sys.executable, "-m", "resnet_serving", "loadtest", "run", f"{url}{path}",
           *args, "--out", str(out), "--quiet"]  # fmt: skip
    proc = subprocess.run(cmd, env=child_env(), cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout_s)  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"loadtest failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    result: dict[str, Any] = json.loads((out / "result.json").read_text())
    return result


@dataclass
class Probe:
    """A few requests per second beside the load, keeping what the load tester does not:
    whether each 429/503 carried Retry-After. Runs in a thread until `stop()`."""

    url: str
    body: bytes
    content_type: str
    interval_s: float = 0.2
    statuses: Counter[int] = field(default_factory=Counter)
    shed: int = 0  # 429 + 503 answers
    shed_with_retry_after: int = 0
    details: Counter[str] = field(default_factory=Counter)  # "status error: detail" of failures
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Probe:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        headers = {"Content-Type": self.content_type}
        with httpx.Client(timeout=30) as client:
            while not self._stop.wait(self.interval_s):
                try:
                    r = client.post(f"{self.url}/v1/classify", content=self.body, headers=headers)
                except httpx.HTTPError:
                    self.statuses[0] += 1
                    continue
                self.statuses[r.status_code] += 1
                if r.status_code != 200:
                    with contextlib.suppress(ValueError):
                        body = r.json()
                        detail = re.sub(r"[0-9.]+", "N", str(body.get("detail", "")))
                        self.details[f"{r.status_code} {body.get('error')}: {detail}"] += 1
                if r.status_code in (429, 503):
                    self.shed += 1
                    self.shed_with_retry_after += "retry-after" in r.headers


def png_body(size: int, seed: int = 0) -> bytes:

    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def machine_line() -> str:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()} "
            f"{platform.release()}, Python {platform.python_version()}, CPU-only TensorFlow; "
            f"load average at the end {load} (shared with other engineers' jobs)")  # fmt: skip


def now_utc() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")


def errors_by_status(step: dict[str, Any]) -> str:
    bad = {k: v for k, v in {**step["status_counts"], **step["transport_errors"]}.items()
           if not k.startswith("2")}  # fmt: skip
    return ", ".join(f"{k}: {v}" for k, v in sorted(bad.items())) or "none"
