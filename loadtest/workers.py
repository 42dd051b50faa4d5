"""Where a step runs: in this process (`LocalRunner`) or in N worker processes (`WorkerPool`).

One Python process tops out at some thousands of requests per second, so `--workers N`
spawns N processes that each build their own target from a picklable recipe (own event
loop, own connections) and run their share of every step (engine.measure with their
index). The parent picks the common start time `t0` on the system-wide monotonic clock,
collects each worker's partial (encoded histograms and counters) and merges them. Workers
publish their live counters into shared memory for the progress bar.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import time
from collections.abc import AsyncIterator
from multiprocessing.connection import Connection
from time import perf_counter as now
from typing import Any

from loadtest.engine import Live, measure, summarise
from loadtest.errors import LoadTestError
from loadtest.eventloop import run_loop
from loadtest.plan import StepSpec
from loadtest.recipes import Recipe
from loadtest.results import StepResult
from loadtest.targets import Target

START_LEAD_S = 0.1  # t0 is this far ahead when the step is sent: every worker is ready by then
READY_TIMEOUT_S = 60.0  # spawning imports numpy, hdrh, uvloop (and grpc) per worker
PUBLISH_S = 0.1


async def _check(target: Target) -> str | None:
    try:
        await target.check()
    except LoadTestError as exc:
        return str(exc)
    return None


class LocalRunner:
    """Steps run in this process, on the running loop."""

    def __init__(self, recipe: Recipe) -> None:
        self.target: Target = recipe.build()
        self.live = Live()

    async def start(self) -> None:
        await self.target.check()

    def describe(self) -> dict[str, Any]:
        return self.target.describe()

    async def step(self, spec: StepSpec) -> StepResult:
        self.live = Live()
        started_at = time.time()
        part = await measure(self.target, spec, now() + 0.005, live=self.live)
        return summarise(spec, [part], started_at)

    async def close(self) -> None:
        await self.target.close()


def _worker(index: int, workers: int, recipe: Recipe, conn: Connection, counters: Any,
            precise_timers: bool) -> None:  # fmt: skip
    """A worker process: build the target, say ready, then run steps until told to stop."""

    async def main() -> None:
        target = recipe.build(workers)
        loop = asyncio.get_running_loop()
        error = await _check(target)
        conn.send(("ready", error, target.describe() if error is None else None))
        while error is None:
            msg = await loop.run_in_executor(None, conn.recv)
            if msg is None:
                break
            spec, t0 = msg
            live = Live()

            async def publish(live: Live = live) -> None:
                while True:
                    counters[3 * index : 3 * index + 3] = [live.started, live.done, live.ok]
                    await asyncio.sleep(PUBLISH_S)

            pub = asyncio.ensure_future(publish())
            try:
                part = await measure(target, spec, t0, index=index, workers=workers, live=live)
            finally:
                pub.cancel()
            counters[3 * index : 3 * index + 3] = [live.started, live.done, live.ok]
            conn.send(("part", part, None))
        await target.close()

    try:
        run_loop(main(), precise_timers=precise_timers)
    except KeyboardInterrupt:
        pass
    finally:
        conn.close()


class WorkerPool:
    """N spawned worker processes that run every step together."""

    def __init__(self, recipe: Recipe, workers: int, *, precise_timers: bool = False) -> None:
        ctx = mp.get_context("spawn")  # no forked event loops, threads or TensorFlow state
        self.workers = workers
        self.counters = ctx.Array("q", 3 * workers, lock=False)
        self.conns: list[Connection] = []
        self.procs: list[Any] = []
        self._describe: dict[str, Any] = {}
        for i in range(workers):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(i, workers, recipe, child, self.counters, precise_timers),
                               name=f"loadtest-worker-{i}", daemon=True)  # fmt: skip
            self.conns.append(parent)
            self.procs.append(proc)
        self.live = Live()

    async def _recv(self, conn: Connection, timeout: float) -> tuple[str, Any, Any]:
        def get() -> Any:
            if not conn.poll(timeout):
                raise LoadTestError(f"a load-generator worker did not answer within {timeout:g} s")
            return conn.recv()

        try:
            return await asyncio.to_thread(get)
        except EOFError as exc:
            raise LoadTestError("a load-generator worker process died") from exc

    async def start(self) -> None:
        for proc in self.procs:
            proc.start()
        answers = await asyncio.gather(*(self._recv(c, READY_TIMEOUT_S) for c in self.conns))
        for _, error, _describe in answers:
            if error is not None:
                raise LoadTestError(error)
        self._describe = {**answers[0][2], "workers": self.workers}

    def describe(self) -> dict[str, Any]:
        return self._describe

    async def step(self, spec: StepSpec) -> StepResult:
        self.counters[:] = [0] * len(self.counters)
        started_at = time.time()
        t0 = now() + START_LEAD_S
        for conn in self.conns:
            conn.send((spec, t0))
        results = asyncio.gather(*(self._recv(c, spec.planned_s() + 60.0) for c in self.conns))
        while not results.done():
            await asyncio.wait({results}, timeout=0.1)
            c = list(self.counters)
            self.live.started, self.live.done, self.live.ok = (
                sum(c[0::3]),
                sum(c[1::3]),
                sum(c[2::3]),
            )
            self.live.measuring = now() >= t0 + spec.warmup_s
        return summarise(spec, [part for _, part, _ in results.result()], started_at)

    async def close(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.send(None)
        deadline = time.monotonic() + 5.0
        for proc in self.procs:
            if proc.pid is None:
                continue
            await asyncio.to_thread(proc.join, max(0.1, deadline - time.monotonic()))
            if proc.is_alive():
                proc.terminate()
                await asyncio.to_thread(proc.join, 2.0)
        for conn in self.conns:
            conn.close()


Runner = LocalRunner | WorkerPool


def make_runner(recipe: Recipe, workers: int, *, open_loop: bool = False) -> Runner:
    """This process (on the loop `eventloop.run_loop` picked) or `workers` processes, each on
    the event loop that suits the load shape (precise timers for open loop)."""
    if workers <= 1:
        return LocalRunner(recipe)
    return WorkerPool(recipe, workers, precise_timers=open_loop)


@contextlib.asynccontextmanager
async def started(recipe: Recipe, workers: int, *, open_loop: bool) -> AsyncIterator[Runner]:
    """A runner whose target(s) answered `check()`; closed (workers stopped) on the way out."""
    runner = make_runner(recipe, workers, open_loop=open_loop)
    try:
        await runner.start()
        yield runner
    finally:
        await runner.close()
