"""Glue for one `loadtest run`: build the target recipe, start the runner (this process or
`--workers N` processes), run the steps with a progress bar, bound everything by a global
hard timeout, and collect the result document."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from loadtest import payloads
from loadtest.engine import StepSpec
from loadtest.errors import LoadTestError
from loadtest.eventloop import run_loop
from loadtest.report import new_result
from loadtest.search import find_max_rate, parse_ramp, parse_rates
from loadtest.targets import GrpcRecipe, HttpRecipe, Recipe, parse_url
from loadtest.workers import LocalRunner, WorkerPool

T = TypeVar("T")
Runner = LocalRunner | WorkerPool


def run_async(coro: Coroutine[Any, Any, T], *, open_loop: bool = False) -> T:
    """Run the command's loop: precise timers for open loop, uvloop for closed (eventloop)."""
    return run_loop(coro, precise_timers=open_loop)


def make_runner(recipe: Recipe, workers: int, *, open_loop: bool = False) -> Runner:
    """This process (its loop was picked by run_async) or `workers` processes with the
    event loop that suits the load shape."""
    if workers <= 1:
        return LocalRunner(recipe)
    return WorkerPool(recipe, workers, precise_timers=open_loop)


def images_from_args(args: argparse.Namespace) -> list[payloads.Image]:
    if args.images:
        return payloads.load_images(Path(args.images))
    sizes = [s for v in args.gen_size for s in v.split(",")]
    formats = [f for v in args.gen_format for f in v.split(",")]
    return payloads.generate_images(sizes, formats, count=args.gen_count)


def build_recipe(args: argparse.Namespace, max_connections: int) -> Recipe:
    """Everything a target needs, prepared once (payloads encoded) and picklable."""
    images = images_from_args(args)
    if args.grpc:
        from contract.signatures import INPUT_PIXELS, SIGNATURE_PIXELS

        w, h = payloads.parse_size(args.grpc_size)
        batches = payloads.pixel_batches(
            images, per_request=args.images_per_request, height=h, width=w
        )
        return GrpcRecipe(args.grpc, args.model, batches, SIGNATURE_PIXELS, INPUT_PIXELS)
    host, port, path = parse_url(args.url)
    if args.top_k is not None:
        path += ("&" if "?" in path else "?") + f"top_k={args.top_k}"
    reqs = payloads.build_http_requests(images, host=f"{host}:{port}", path=path,
                                        per_request=args.images_per_request, encoding=args.body)  # fmt: skip
    return HttpRecipe(args.url, reqs, max_connections, args.connect_timeout)


def base_spec(args: argparse.Namespace) -> StepSpec:
    duration = args.duration if args.requests is None or args.duration_given else None
    return StepSpec(
        rate=1.0 if args.concurrency is None else None, concurrency=args.concurrency,
        arrival=args.arrival, warmup_s=args.warmup, duration_s=duration, requests=args.requests,
        timeout_s=args.timeout, seed=args.seed,
    )  # fmt: skip


async def _with_progress(
    runner: Runner, spec: StepSpec, console: Console, quiet: bool
) -> dict[str, Any]:
    if quiet:
        return await runner.step(spec)
    label = f"{spec.rate:g} req/s" if spec.rate else f"{spec.concurrency} clients"
    total = spec.warmup_s + (spec.duration_s or 0.0)
    cols = [
        TextColumn(f"[bold]{label}[/bold]"),
        BarColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
    ]
    with Progress(*cols, console=console, transient=True) as progress:
        task = progress.add_task("starting", total=total or None)
        step = asyncio.ensure_future(runner.step(spec))
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        while not step.done():
            await asyncio.wait({step}, timeout=0.25)
            live = runner.live  # a new Live per step; workers' counters summed by the pool
            phase = "measuring" if live.measuring else "warm-up"
            progress.update(task, completed=min(total, loop.time() - t0) if total else None,
                            description=f"{phase}  sent {live.started}  done {live.done}  ok {live.ok}")  # fmt: skip
        return step.result()


async def execute(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    """Run every step the options ask for; returns the result document."""
    spec = base_spec(args)
    if args.rates:
        rates: list[float] | None = parse_rates(args.rates)
    elif args.ramp:
        rates = parse_ramp(args.ramp)
    elif args.rate is not None:
        rates = [args.rate]
    else:
        rates = None
    if args.concurrency is None and rates is None and not args.find_max_rate:
        raise LoadTestError(
            "choose a load: --rate R, --rates A,B, --ramp A:B:S, --find-max-rate or --concurrency N"
        )
    if args.find_max_rate and args.p99_target_ms is None:
        raise LoadTestError("--find-max-rate needs --p99-target-ms")
    peak = max(rates or [args.max_rate if args.find_max_rate else 1.0])
    max_conn = (
        args.concurrency
        or args.max_connections
        or max(64, min(20_000, int(peak * args.timeout) + 1))
    )
    workers = min(args.workers, args.concurrency or args.workers)  # at least one client each
    runner = make_runner(build_recipe(args, max_conn), workers, open_loop=args.concurrency is None)
    try:
        await runner.start()
    except BaseException:
        await runner.close()
        raise
    result = new_result(runner.describe(), {k: v for k, v in vars(args).items() if k != "func"})

    async def one(s: StepSpec) -> dict[str, Any]:
        step = await _with_progress(runner, s, console, args.quiet)
        result["steps"].append(step)
        return step

    async def all_steps() -> None:
        if args.concurrency is not None:
            await one(spec)
        elif args.find_max_rate:
            best = await find_max_rate(
                lambda r: one(dataclasses.replace(spec, rate=r)), start=args.start_rate,
                max_rate=args.max_rate, p99_target_ms=args.p99_target_ms,
                max_error_rate=args.max_error_rate, bisect_steps=args.bisect_steps,
            )  # fmt: skip
            result["max_rate"] = {"rate": best, "p99_target_ms": args.p99_target_ms}
        else:
            for r in rates or []:
                await one(dataclasses.replace(spec, rate=r))

    hard = args.hard_timeout
    try:
        await asyncio.wait_for(all_steps(), hard)
    except TimeoutError:
        result["warnings"].append(f"hard timeout of {hard:g} s reached; results are partial")
    finally:
        await runner.close()
    return result


def hard_timeout_for(args: argparse.Namespace, n_steps: int) -> float:
    """Default global bound: every step's planned time plus slack."""
    per = (
        base_spec(args).planned_s()
        if args.concurrency
        else dataclasses.replace(base_spec(args), rate=args.start_rate).planned_s()
    )
    return n_steps * (per + 5.0) + 30.0


RunFn = Callable[[argparse.Namespace, Console], Coroutine[Any, Any, dict[str, Any]]]
