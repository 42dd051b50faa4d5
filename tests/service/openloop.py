"""An open-loop HTTP client for tests: requests leave on a fixed schedule whatever the answers
do (so a stall shows as late or failed answers, not as fewer requests), each one recorded."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class Sent:
    """One request: when it left (time.monotonic()), which image, and what came back."""

    at: float
    image: int
    status: int = 0  # 0: no answer (transport error or still running when the load stopped)
    body: dict[str, Any] | None = None
    error: str = ""

    @property
    def version(self) -> int | None:
        return self.body["model"]["version"] if self.status == 200 and self.body else None


@dataclass
class OpenLoop:
    """`rate_hz` POSTs of `blobs` (round robin) to `path` until stopped."""

    url: str
    path: str
    blobs: Sequence[bytes]
    rate_hz: float
    timeout_s: float = 30.0
    sent: list[Sent] = field(default_factory=list)

    async def _one(self, client: httpx.AsyncClient, record: Sent) -> None:
        blob = self.blobs[record.image]
        try:
            r = await client.post(self.path, content=blob, headers={"content-type": "image/png"})
        except httpx.HTTPError as exc:
            record.error = f"{type(exc).__name__}: {exc}"
            return
        record.status = r.status_code
        record.body = r.json() if r.headers.get("content-type") == "application/json" else None

    async def _schedule(self, client: httpx.AsyncClient, tasks: set[asyncio.Task[None]]) -> None:
        start = time.monotonic()
        n = 0
        while True:
            due = start + n / self.rate_hz
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            record = Sent(time.monotonic(), n % len(self.blobs))
            self.sent.append(record)
            task = asyncio.create_task(self._one(client, record))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            n += 1

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[OpenLoop]:
        """Send while the block runs; on leaving, stop sending and wait for every answer."""
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
        tasks: set[asyncio.Task[None]] = set()
        async with httpx.AsyncClient(
            base_url=self.url, timeout=self.timeout_s, limits=limits
        ) as client:
            scheduler = asyncio.create_task(self._schedule(client, tasks))
            try:
                yield self
            finally:
                scheduler.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await scheduler
                if tasks:
                    await asyncio.wait(tasks, timeout=self.timeout_s + 5)

    def statuses(self) -> dict[int, int]:
        out: dict[int, int] = {}
        for s in self.sent:
            out[s.status] = out.get(s.status, 0) + 1
        return out
