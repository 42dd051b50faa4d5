"""The two load shapes, each run as one bounded step against a Target.

Open loop (`rate`): requests are *due* on a fixed schedule (constant gaps or Poisson
arrivals) and each is sent as its own task when due, whatever the others are doing, so the
offered load does not drop when the server slows down. Latency counts from the due time.
Closed loop (`concurrency`): N clients, each sends its next request when the previous one
finished; latency counts from the send. This is what most tools do, and it hides stalls.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from dataclasses import dataclass, field
from time import perf_counter as now  # uvloop's loop.time() ticks in whole ms
from typing import Any

from loadtest.errors import LoadTestError
from loadtest.recorder import StepRecorder
from loadtest.targets import Target


@dataclass(frozen=True)
class StepSpec:
    """One step: open loop at `rate` or closed loop with `concurrency`, always bounded."""

    rate: float | None = None
    concurrency: int | None = None
    arrival: str = "constant"  # constant | poisson
    warmup_s: float = 0.0
    duration_s: float | None = 10.0
    requests: int | None = None  # measured requests (after the warm-up)
    timeout_s: float = 10.0
    seed: int = 0

    def __post_init__(self) -> None:
        if (self.rate is None) == (self.concurrency is None):
            raise LoadTestError(
                "give exactly one of --rate/--rates/--ramp (open loop) or --concurrency (closed loop)"
            )
        if self.rate is not None and not (0 < self.rate <= 1_000_000):
            raise LoadTestError(f"rate must be in (0, 1e6] requests/s. Received: {self.rate}")
        if self.concurrency is not None and not (1 <= self.concurrency <= 100_000):
            raise LoadTestError(f"--concurrency must be in 1..100000. Received: {self.concurrency}")
        if self.arrival not in ("constant", "poisson"):
            raise LoadTestError(
                f"--arrival must be constant or poisson. Received: {self.arrival!r}"
            )
        if self.duration_s is None and self.requests is None:
            raise LoadTestError("a run must be bounded: give --duration or --requests")
        if self.duration_s is not None and self.duration_s <= 0:
            raise LoadTestError(f"--duration must be > 0 seconds. Received: {self.duration_s}")
        if self.requests is not None and self.requests < 1:
            raise LoadTestError(f"--requests must be >= 1. Received: {self.requests}")
        if self.warmup_s < 0 or self.timeout_s <= 0:
            raise LoadTestError(
                f"--warmup must be >= 0 and --timeout > 0. Received: {self.warmup_s}, {self.timeout_s}"
            )

    @property
    def open_loop(self) -> bool:
        return self.rate is not None

    def planned_s(self) -> float:
        """Upper estimate of the step's wall time, for the global hard timeout."""
        if self.duration_s is not None:
            body = self.duration_s
        elif self.rate is not None:
            body = (self.requests or 0) / self.rate
        else:
            body = (self.requests or 0) * self.timeout_s / (self.concurrency or 1)
        return self.warmup_s + body + self.timeout_s


@dataclass
class Live:
    """Counters the progress bar reads while a step runs."""

    started: int = 0
    done: int = 0
    ok: int = 0
    measuring: bool = False
    t_start: float = field(default_factory=time.monotonic)


def _gaps(spec: StepSpec) -> Any:
    assert spec.rate is not None
    rng = random.Random(spec.seed)
    mean = 1.0 / spec.rate
    while True:
        yield rng.expovariate(spec.rate) if spec.arrival == "poisson" else mean


async def _open_loop(
    target: Target, spec: StepSpec, rec: StepRecorder, live: Live, t0: float
) -> float:
    end = rec.window_start + spec.duration_s if spec.duration_s is not None else math.inf
    tasks: set[asyncio.Task[None]] = set()

    async def one(due: float) -> None:
        out = await target.send(due + spec.timeout_s)
        rec.record(due, out, open_loop=True)
        live.done += 1
        live.ok += out.ok

    measured = 0
    due = t0
    last_due = t0
    gaps = _gaps(spec)
    while due < end and (spec.requests is None or measured < spec.requests):
        delay = due - now()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.ensure_future(one(due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        live.started += 1
        if due >= rec.window_start:
            measured += 1
            live.measuring = True
        last_due = due
        due += next(gaps)
    if tasks:
        await asyncio.gather(*tasks)
    return last_due


async def _closed_loop(target: Target, spec: StepSpec, rec: StepRecorder, live: Live) -> float:
    end = rec.window_start + spec.duration_s if spec.duration_s is not None else math.inf
    measured = 0
    last_start = rec.window_start

    async def client() -> None:
        nonlocal measured, last_start
        while True:
            start = now()
            if start >= end or (spec.requests is not None and measured >= spec.requests):
                return
            if start >= rec.window_start:
                measured += 1
                live.measuring = True
                last_start = max(last_start, start)
            live.started += 1
            out = await target.send(start + spec.timeout_s)
            rec.record(start, out, open_loop=False)
            live.done += 1
            live.ok += out.ok

    await asyncio.gather(*(client() for _ in range(spec.concurrency or 1)))
    return last_start


async def run_step(target: Target, spec: StepSpec, live: Live | None = None) -> dict[str, Any]:
    """Run one step and return its summary (see recorder.StepRecorder.summary)."""
    live = live or Live()
    t0 = now() + 0.005
    rec = StepRecorder(window_start=t0 + spec.warmup_s)
    waits_before = getattr(target, "waits", 0)
    started_at = time.time()
    if spec.open_loop:
        last = await _open_loop(target, spec, rec, live, t0)
    else:
        last = await _closed_loop(target, spec, rec, live)
    rec.conn_waits = getattr(target, "waits", 0) - waits_before
    window_s = (
        spec.duration_s if spec.duration_s is not None else max(last - rec.window_start, 1e-3)
    )
    out: dict[str, Any] = {
        "mode": "open" if spec.open_loop else "closed",
        "offered_rate": spec.rate,
        "arrival": spec.arrival if spec.open_loop else None,
        "concurrency": spec.concurrency,
        "warmup_s": spec.warmup_s,
        "started_at": round(started_at, 3),
    }
    out.update(rec.summary(window_s=window_s, open_loop=spec.open_loop))
    return out
