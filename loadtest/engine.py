"""The two load shapes, each run as one bounded step against a Target.

Open loop (`rate`): requests are *due* on a fixed schedule (constant gaps or Poisson
arrivals) and each is sent as its own task when due, whatever the others are doing, so the
offered load does not drop when the server slows down. Latency counts from the due time.
Closed loop (`concurrency`): N clients, each sends its next request when the previous one
finished; latency counts from the send. This is what most tools do, and it hides stalls.

With `--workers N` each process runs `measure()` with its `index`: in open loop it walks
the same global schedule and sends every N-th request (so latency still counts from that
request's due time); in closed loop it runs its share of the clients. Everything is
callback-driven (see httpclient): no task or timer per request.
"""

from __future__ import annotations

import asyncio
import gc
import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from time import perf_counter as now  # one system-wide clock (CLOCK_MONOTONIC) for all workers
from typing import Any

from loadtest.plan import StepSpec
from loadtest.recorder import Partial, StepRecorder, StepTotals
from loadtest.results import StepResult
from loadtest.targets import Target


@dataclass
class Live:
    """Counters the progress bar reads while a step runs (per process)."""

    started: int = 0
    done: int = 0
    ok: int = 0
    measuring: bool = False


def schedule(spec: StepSpec, t0: float, window_start: float) -> Iterator[tuple[int, float]]:
    """The global schedule: (index, due time), bounded by --duration and --requests.

    Constant arrivals are computed as t0 + k/rate (no drift from summing gaps); Poisson gaps
    come from one seeded generator, so every worker walks the same sequence.
    """
    assert spec.rate is not None
    end = window_start + spec.duration_s if spec.duration_s is not None else math.inf
    limit = spec.requests if spec.requests is not None else math.inf
    rng = random.Random(spec.seed)
    poisson = spec.arrival == "poisson"
    mean = 1.0 / spec.rate
    measured = 0
    k = 0
    due = t0
    while due < end:
        if due >= window_start:
            if measured >= limit:
                return
            measured += 1
        yield k, due
        k += 1
        due = due + rng.expovariate(spec.rate) if poisson else t0 + k * mean


async def wait_until(due: float) -> None:
    """Return at `due` (perf_counter), never before it.

    On the precise loop (eventloop.PreciseEpollSelector) one sleep wakes within tens of µs.
    Stock loops tick in whole ms and uvloop's timers can fire up to ~1 ms early, which would
    send requests before they are due and report latencies that are too small (even
    negative): so sleep again for whatever is left.
    """
    while True:
        delay = due - now()
        if delay <= 0:
            return
        await asyncio.sleep(delay)


async def _watchdog(target: Target, tick: float) -> None:
    while True:
        await asyncio.sleep(tick)
        target.expire(now())


async def measure(target: Target, spec: StepSpec, t0: float, *, index: int = 0, workers: int = 1,
                  live: Live | None = None) -> Partial:  # fmt: skip
    """Run this process's part of one step starting at `t0`; returns what it recorded."""
    live = live or Live()
    window_start = t0 + spec.warmup_s
    rec = StepRecorder(window_start, open_loop=spec.open_loop)
    loop = asyncio.get_running_loop()
    finished: asyncio.Future[None] = loop.create_future()
    state = {"outstanding": 0, "last": window_start, "issuing": True}
    waits_before = target.waits

    def settle() -> None:
        if not state["issuing"] and state["outstanding"] == 0 and not finished.done():
            finished.set_result(None)

    def done(due: float, sent: float, t: float, status: Any, ok: bool, error: str | None,
             timing: Any, detail: Any) -> None:  # fmt: skip
        rec.record(due, sent, t, status, ok, error, timing, detail)
        live.done += 1
        live.ok += ok
        state["outstanding"] -= 1

    def done_open(*outcome: Any) -> None:
        done(*outcome)
        settle()

    timeout = spec.timeout_s
    watchdog = asyncio.ensure_future(_watchdog(target, min(0.05, timeout / 20)))
    gc.collect()
    cpu0 = time.process_time()
    gc.disable()  # a full collection mid-step is a multi-ms stall that we would measure
    try:
        if spec.open_loop:
            for k, due in schedule(spec, t0, window_start):
                if k % workers != index:
                    continue
                if due > now():
                    await wait_until(due)
                if due >= window_start:
                    live.measuring = True
                    state["last"] = due
                state["outstanding"] += 1
                live.started += 1
                target.start(due, due + timeout, done_open)
            state["issuing"] = False
            settle()
        else:
            clients, limit = spec.share(index, workers)
            end = window_start + spec.duration_s if spec.duration_s is not None else math.inf
            counts = {"measured": 0, "active": clients}

            def issue() -> None:
                start = now()
                if start >= end or (limit is not None and counts["measured"] >= limit):
                    counts["active"] -= 1
                    if counts["active"] == 0:
                        state["issuing"] = False
                        settle()
                    return
                if start >= window_start:
                    counts["measured"] += 1
                    live.measuring = True
                    state["last"] = start
                state["outstanding"] += 1
                live.started += 1
                target.start(start, start + timeout, done_closed)

            def done_closed(*outcome: Any) -> None:
                done(*outcome)
                issue()

            if clients == 0:
                state["issuing"] = False
            await asyncio.sleep(max(0.0, t0 - now()))
            for _ in range(clients):
                issue()
            settle()
        await finished
    finally:
        gc.enable()
        watchdog.cancel()
    rec.conn_waits = target.waits - waits_before
    rec.cpu_s = time.process_time() - cpu0
    rec.issued = live.started
    return rec.partial(last_s=state["last"] - window_start)


def summarise(spec: StepSpec, parts: list[Partial], started_at: float) -> StepResult:
    """One step's result from the partials of every process that ran it."""
    totals = StepTotals()
    for part in parts:
        totals.add(part)
    return totals.result(spec, started_at)


async def run_step(target: Target, spec: StepSpec, live: Live | None = None) -> StepResult:
    """Run one step in this process and return its result."""
    started_at = time.time()
    part = await measure(target, spec, now() + 0.005, live=live)
    return summarise(spec, [part], started_at)
