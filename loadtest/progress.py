"""The live progress bar of one step (rich): phase, sent, done and ok, summed over workers."""

from __future__ import annotations

import asyncio

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from loadtest.plan import StepSpec
from loadtest.results import StepResult
from loadtest.workers import Runner

REFRESH_S = 0.25


async def run_step(runner: Runner, spec: StepSpec, console: Console, *, quiet: bool) -> StepResult:
    """Run one step on `runner`, with a transient progress bar unless `quiet`."""
    if quiet:
        return await runner.step(spec)
    label = f"{spec.rate:g} req/s" if spec.rate else f"{spec.concurrency} clients"
    total = spec.warmup_s + (spec.duration_s or 0.0)
    cols = [TextColumn(f"[bold]{label}[/bold]"), BarColumn(), TextColumn("{task.description}"),
            TimeElapsedColumn()]  # fmt: skip
    with Progress(*cols, console=console, transient=True) as progress:
        task = progress.add_task("starting", total=total or None)
        step = asyncio.ensure_future(runner.step(spec))
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        while not step.done():
            await asyncio.wait({step}, timeout=REFRESH_S)
            live = runner.live  # a new Live per step; workers' counters summed by the pool
            phase = "measuring" if live.measuring else "warm-up"
            progress.update(task, completed=min(total, loop.time() - t0) if total else None,
                            description=f"{phase}  sent {live.started}  done {live.done}  ok {live.ok}")  # fmt: skip
        return step.result()
