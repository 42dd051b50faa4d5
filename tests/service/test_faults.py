"""The model server dies under load and comes back: 503 + Retry-After meanwhile, never a wrong
answer, never a 500 or a hang, `/readyz` follows, and the gateway reconnects by itself.

The model server is the local stand-in run as a separate process (`python -m resnet_serving standin`),
killed with SIGKILL and restarted on the same port; the gateway is real uvicorn on loopback.
"""

from __future__ import annotations

import signal
import threading
import time
from typing import Any, NamedTuple

import httpx
import pytest

from tests.service.conftest import LABELS, GatewayModel, gateway_settings, serving
from tests.service.procs import Images, free_port, start_standin, wait_status

REQUEST_TIMEOUT_S = 4.0
CLIENTS = 4
UNAVAILABLE_CODES = {"backend_unavailable", "circuit_open", "not_ready"}


class Answer(NamedTuple):
    index: int
    status: int
    body: dict[str, Any]
    retry_after: str | None
    seconds: float
    sent: float


class Load:
    """CLIENTS threads, each posting distinct images back to back until stopped."""

    def __init__(self, url: str, images: Images) -> None:
        self.url, self.images = url, images
        self.answers: list[Answer] = []
        self.transport_errors: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(c,)) for c in range(CLIENTS)]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=REQUEST_TIMEOUT_S + 10)

    def _client(self, c: int) -> None:
        n = len(self.images.blobs)
        with httpx.Client(base_url=self.url, timeout=REQUEST_TIMEOUT_S + 5) as client:
            i = c
            while not self._stop.is_set():
                index = i % n
                i += CLIENTS
                t0 = time.monotonic()
                try:
                    r = client.post(
                        f"/v1/classify?top_k={len(LABELS)}",
                        content=self.images.blobs[index],
                        headers={"content-type": "image/png"},
                    )
                except httpx.TransportError as exc:
                    self.transport_errors.append(repr(exc))
                    continue
                self.answers.append(
                    Answer(
                        index,
                        r.status_code,
                        r.json(),
                        r.headers.get("retry-after"),
                        time.monotonic() - t0,
                        t0,
                    )
                )

    def count_ok_since(self, t: float) -> int:
        return sum(1 for a in self.answers if a.status == 200 and a.sent >= t)

    def wait_ok_since(self, t: float, n: int, timeout_s: float) -> None:
        end = time.monotonic() + timeout_s
        while self.count_ok_since(t) < n:
            if time.monotonic() > end:
                codes = [(a.status, a.body.get("error")) for a in self.answers[-10:]]
                raise TimeoutError(f"fewer than {n} answers 200 within {timeout_s} s: {codes}")
            time.sleep(0.05)


@pytest.mark.slow
def test_model_server_killed_under_load_and_restarted(gateway_model: GatewayModel) -> None:
    from service.app import create_app

    images = Images(gateway_model, 12, seed=404)
    port = free_port()
    standin = start_standin(gateway_model.model_base, port)
    try:
        settings = gateway_settings(
            gateway_model.model_base,
            backend="tfserving",
            tfserving_address=f"127.0.0.1:{port}",
            max_wait_ms=5.0,
            request_timeout_s=REQUEST_TIMEOUT_S,
            breaker_failure_threshold=3,
            breaker_reset_s=0.5,
        )
        with serving(create_app(settings)) as live, Load(live.url, images) as load:
            load.wait_ok_since(0.0, 20, timeout_s=30)

            killed_at = time.monotonic()
            standin.signal(signal.SIGKILL)
            standin.popen.wait(10)
            wait_status(f"{live.url}/readyz", 503, timeout_s=10)
            time.sleep(1.0)  # keep the load on while the server is down
            outage = [a for a in load.answers if a.sent >= killed_at]

            standin = start_standin(gateway_model.model_base, port)  # same port
            wait_status(f"{live.url}/readyz", 200, timeout_s=30)
            back_at = time.monotonic()
            load.wait_ok_since(back_at, 20, timeout_s=30)
    finally:
        standin.stop()

    assert not load.transport_errors, load.transport_errors[:3]
    statuses = {a.status for a in load.answers}
    assert statuses <= {200, 503}, statuses
    for a in load.answers:
        if a.status == 200:
            images.check(a.index, a.body)  # its own result, never another request's
        else:
            assert a.body["error"] in UNAVAILABLE_CODES, a.body
            assert a.retry_after is not None and int(a.retry_after) >= 1
        # Never a hang past the request's budget (generous slack for a busy shared machine).
        assert a.seconds < REQUEST_TIMEOUT_S + 3, a
    codes = {a.body.get("error") for a in outage if a.status == 503}
    assert "circuit_open" in codes, codes  # the breaker opened and failed fast
    # Failing fast: while the circuit is open, answers do not wait for the request budget.
    fast = [a for a in outage if a.body.get("error") == "circuit_open"]
    assert min(a.seconds for a in fast) < REQUEST_TIMEOUT_S / 2
