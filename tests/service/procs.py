"""Real processes for the fault tests: the stand-in model server and the gateway, on loopback.

Every wait is bounded; every process started here is stopped by the test that started it.
Also: distinct test images and their expected score vectors, to check each 200 against its own.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from contract.manifest import latest_version_dir, read_manifest
from service.decode import DecodeLimits, decode_image
from tests.service.conftest import MODEL_NAME, GatewayModel, png, random_images

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def child_env(**settings: Any) -> dict[str, str]:
    """Our sources first on the path, TF quiet, and `RESNET_SERVING_*` settings."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    env["PYTHONUNBUFFERED"] = "1"
    for name, value in settings.items():
        env[f"RESNET_SERVING_{name.upper()}"] = str(value)
    return env


class Proc:
    """A child process whose output lines are collected by a thread (so waits can be bounded)."""

    def __init__(self, args: list[str], env: dict[str, str], *, cwd: Path = ROOT) -> None:
        self.popen = subprocess.Popen(
            args,
            env=env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._new: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.append(line.rstrip("\n"))
            self._new.put(line)

    def wait_for_line(self, needle: str, timeout_s: float) -> None:
        end = time.monotonic() + timeout_s
        while not any(needle in line for line in self.lines):
            if self.popen.poll() is not None and self._new.empty():
                raise RuntimeError(f"process exited ({self.popen.returncode}):\n{self.output}")
            with contextlib.suppress(queue.Empty):
                self._new.get(timeout=max(0.01, min(0.2, end - time.monotonic())))
            if time.monotonic() > end:
                raise TimeoutError(f"no line {needle!r} within {timeout_s} s:\n{self.output}")

    @property
    def output(self) -> str:
        return "\n".join(self.lines[-60:])

    def signal(self, sig: int) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)

    def stop(self, timeout_s: float = 10.0) -> int:
        """SIGTERM, then SIGKILL if it does not exit in time; the exit code."""
        self.signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            return self.popen.wait(5)


def start_standin(model_base: Path, port: int, *, delay_s: float = 0.0) -> Proc:
    """`python -m resnet_serving standin` on 127.0.0.1:port; returns once it printed its ready line."""
    args = [sys.executable, "-m", "resnet_serving", "standin", "--model-base", str(model_base)]
    args += ["--model-name", MODEL_NAME, "--port", str(port), "--delay-s", str(delay_s)]
    proc = Proc(args, child_env())
    try:
        proc.wait_for_line("stand-in ready", 120)
    except BaseException:
        proc.stop()
        raise
    return proc


def start_gateway(port: int, **settings: Any) -> Proc:
    """`python -m resnet_serving serve` as a child process (settings as environment)."""
    args = [sys.executable, "-m", "resnet_serving", "serve", "--port", str(port)]
    return Proc(args, child_env(**settings))


def wait_status(url: str, status: int, timeout_s: float) -> None:
    """Poll `url` until it answers `status` (connection errors count as 'not yet')."""
    end = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < end:
        try:
            last = httpx.get(url, timeout=2).status_code
            if last == status:
                return
        except httpx.TransportError as exc:
            last = exc
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer {status} within {timeout_s} s (last: {last!r})")


class Images:
    """Distinct images (as PNG) and, per image, its full expected score vector."""

    def __init__(self, model: GatewayModel, n: int, seed: int) -> None:
        self.blobs = [png(im) for im in random_images(n, seed=seed)]
        manifest = read_manifest(latest_version_dir(model.model_base, MODEL_NAME))
        limits = DecodeLimits(max_image_pixels=1_000_000, allowed_formats=("PNG",))
        pixels = np.stack(
            [
                decode_image(
                    b,
                    input_spec=manifest.input,
                    preprocessing=manifest.preprocessing,
                    limits=limits,
                )
                for b in self.blobs
            ]
        )
        self.scores = model.reference(pixels)  # [n, classes]
        # The check below is only meaningful if no two images share a score vector.
        rounded = {tuple(np.round(row, 4)) for row in self.scores}
        assert len(rounded) == n, "test images must map to distinct score vectors"

    def check(self, index: int, body: dict[str, Any]) -> None:
        """A 200 body must carry image `index`'s own scores (all classes asked for)."""
        (prediction,) = body["predictions"]
        got = np.zeros_like(self.scores[index])
        for s in prediction["top_k"]:
            got[s["class_id"]] = s["score"]
        np.testing.assert_allclose(got, self.scores[index], atol=1e-4)
