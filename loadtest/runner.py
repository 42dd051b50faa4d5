"""One `loadtest run`: prepare the payloads, start the runner (this process or `--workers N`
processes), run the plan's steps with a progress bar, bound everything by the global hard
timeout, and collect the RunResult."""

from __future__ import annotations

import asyncio

from rich.console import Console

from loadtest import progress
from loadtest.plan import ClosedLoop, MaxRateSearch, RunPlan, StepSpec
from loadtest.recipes import build_recipe
from loadtest.results import MaxRate, RunResult, StepResult
from loadtest.search import find_max_rate
from loadtest.workers import Runner, started


async def _steps(plan: RunPlan, runner: Runner, result: RunResult, console: Console) -> None:
    """Every step the plan's load asks for, each appended to `result` as it finishes."""

    async def one(spec: StepSpec) -> StepResult:
        step = await progress.run_step(runner, spec, console, quiet=plan.outputs.quiet)
        result.steps.append(step)
        return step

    load, bounds = plan.load, plan.bounds
    if isinstance(load, ClosedLoop):
        await one(bounds.spec(concurrency=load.concurrency))
    elif isinstance(load, MaxRateSearch):
        best = await find_max_rate(lambda r: one(bounds.spec(arrival=load.arrival, rate=r)), load)
        result.max_rate = MaxRate(best, load.p99_target_ms)
    else:
        for rate in load.rates:
            await one(bounds.spec(arrival=load.arrival, rate=rate))


async def execute(plan: RunPlan, console: Console) -> RunResult:
    """Run every step of `plan`; the result is partial (with a warning) after a hard timeout."""
    recipe = await build_recipe(plan.target, plan.inputs, max_connections=plan.connection_cap(),
                                connect_timeout_s=plan.bounds.connect_timeout_s)  # fmt: skip
    hard = plan.hard_timeout()
    async with started(recipe, plan.worker_count(), open_loop=plan.open_loop) as runner:
        result = RunResult(target=runner.describe(), options=plan.describe())
        try:
            await asyncio.wait_for(_steps(plan, runner, result, console), hard)
        except TimeoutError:
            result.warnings.append(f"hard timeout of {hard:g} s reached; results are partial")
    return result
