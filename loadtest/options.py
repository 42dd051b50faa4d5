"""The CLI's option values -> plans (`loadtest.plan`), each checked once, up front.

Every error names its option and echoes the value (`--rates needs 1..50 rates, each > 0.
Received: '5,-1'`), as one LoadTestError line.
"""

from __future__ import annotations

import argparse
import os
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

from loadtest.errors import LoadTestError
from loadtest.plan import (
    DEFAULT_DURATION_S,
    GEN_FORMATS,
    MAX_STEPS,
    MAX_SWEEP_POINTS,
    Bounds,
    ClosedLoop,
    GatewayGrid,
    GrpcTargetPlan,
    HttpTargetPlan,
    Inputs,
    Load,
    MaxRateSearch,
    Outputs,
    RateSteps,
    RunPlan,
    SweepPlan,
    TargetPlan,
    TfsGrid,
)


def parse_size(text: str, option: str = "--gen-size") -> tuple[int, int]:
    """`640x480` -> (640, 480); the rule is WIDTHxHEIGHT with both in 1..8192."""
    w, sep, h = text.lower().partition("x")
    if not (sep and w.isdigit() and h.isdigit() and 0 < int(w) <= 8192 and 0 < int(h) <= 8192):
        raise LoadTestError(f"{option} must be WIDTHxHEIGHT with sides 1..8192. Received: {text!r}")
    return int(w), int(h)


def parse_rates(text: str) -> tuple[float, ...]:
    """`50,100,200` -> (50.0, 100.0, 200.0); every rate > 0."""
    try:
        rates = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError as exc:
        raise LoadTestError(f"--rates must be comma-separated numbers. Received: {text!r}") from exc
    if not rates or any(not r > 0 for r in rates) or len(rates) > MAX_STEPS:
        raise LoadTestError(f"--rates needs 1..{MAX_STEPS} rates, each > 0. Received: {text!r}")
    return rates


def parse_ramp(text: str) -> tuple[float, ...]:
    """`50:500:50` -> 50, 100, ..., 500 (START:STOP:STEP, STOP included)."""
    try:
        start, stop, step = (float(x) for x in text.split(":"))
    except ValueError as exc:
        raise LoadTestError(f"--ramp must be START:STOP:STEP. Received: {text!r}") from exc
    if start <= 0 or step <= 0 or stop < start or (stop - start) / step + 1 > MAX_STEPS:
        raise LoadTestError(
            f"--ramp needs 0 < START <= STOP, STEP > 0, at most {MAX_STEPS} steps. Received: {text!r}"
        )
    n = int((stop - start) / step + 1e-9) + 1
    return tuple(round(start + i * step, 6) for i in range(n))


def parse_workers(text: str) -> int:
    """`--workers`: a count in 1..256, or `auto` (one per CPU core)."""
    if text == "auto":
        return max(1, os.cpu_count() or 1)
    n = int(text) if text.isdigit() else 0
    if not 1 <= n <= 256:
        raise LoadTestError(f"--workers must be 1..256 or auto. Received: {text!r}")
    return n


N = TypeVar("N", int, float)


def parse_numbers(text: str, option: str, kind: type[N]) -> tuple[N, ...]:
    """`1,2,4` -> (1, 2, 4) as `kind` (int or float): at least one value, none negative."""
    what = "integers" if kind is int else "numbers"
    try:
        vals = tuple(kind(x) for x in text.split(",") if x.strip())
    except ValueError as exc:
        raise LoadTestError(f"{option} must be comma-separated {what}. Received: {text!r}") from exc
    if not vals or any(v < 0 for v in vals):
        raise LoadTestError(f"{option} needs at least one value, each >= 0. Received: {text!r}")
    return vals


def _grpc_address(text: str) -> str:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise LoadTestError(f"--grpc must be HOST:PORT. Received: {text!r}")
    return text


def _listed(values: Sequence[str] | None, default: str) -> list[str]:
    """A repeatable option that also takes comma lists: `-o a,b -o c` -> [a, b, c]."""
    return [s.strip() for v in (values or [default]) for s in v.split(",") if s.strip()]


# -- from the command line ---------------------------------------------------------------------


def inputs_from(ns: argparse.Namespace) -> Inputs:
    formats = tuple(f.lower() for f in _listed(ns.gen_format, "jpeg"))
    for fmt in formats:
        if fmt not in GEN_FORMATS:
            raise LoadTestError(
                f"--gen-format must be one of {sorted(GEN_FORMATS)}. Received: {fmt!r}"
            )
    if ns.images_per_request < 1:
        raise LoadTestError(f"--images-per-request must be >= 1. Received: {ns.images_per_request}")
    if ns.body == "raw" and ns.images_per_request != 1:
        raise LoadTestError(
            f"--body raw sends one image per request. Received: --images-per-request {ns.images_per_request}"
        )
    if ns.gen_count < 1:
        raise LoadTestError(f"--gen-count must be >= 1. Received: {ns.gen_count}")
    if ns.top_k is not None and ns.top_k < 1:
        raise LoadTestError(f"--top-k must be >= 1. Received: {ns.top_k}")
    return Inputs(
        images_dir=Path(ns.images) if ns.images else None,
        gen_sizes=tuple(parse_size(s) for s in _listed(ns.gen_size, "640x480")),
        gen_formats=formats, gen_count=ns.gen_count, per_request=ns.images_per_request,
        body=ns.body, top_k=ns.top_k,
    )  # fmt: skip


def bounds_from(ns: argparse.Namespace) -> Bounds:
    """`--duration` defaults to 10 s unless `--requests` alone bounds each step."""
    if ns.warmup < 0:
        raise LoadTestError(f"--warmup must be >= 0. Received: {ns.warmup}")
    if ns.max_connections is not None and ns.max_connections < 1:
        raise LoadTestError(f"--max-connections must be >= 1. Received: {ns.max_connections}")
    duration = ns.duration
    if duration is None and ns.requests is None:
        duration = DEFAULT_DURATION_S
    return Bounds(warmup_s=ns.warmup, duration_s=duration, requests=ns.requests,
                  timeout_s=ns.timeout, connect_timeout_s=ns.connect_timeout,
                  max_connections=ns.max_connections, seed=ns.seed)  # fmt: skip


def outputs_from(ns: argparse.Namespace) -> Outputs:
    return Outputs(out_dir=Path(ns.out) if ns.out else None, quiet=ns.quiet)


def _target_from(ns: argparse.Namespace) -> TargetPlan:
    if (ns.url is None) == (ns.grpc is None):
        raise LoadTestError(
            f"give exactly one target: a URL or --grpc HOST:PORT. Received: url={ns.url!r}, grpc={ns.grpc!r}"
        )
    if ns.grpc is not None:
        size = parse_size(ns.grpc_size, "--grpc-size") if ns.grpc_size else None
        return GrpcTargetPlan(_grpc_address(ns.grpc), ns.model, size)
    return HttpTargetPlan.parse(ns.url)


def _load_from(ns: argparse.Namespace) -> Load:
    chosen = [name for name, given in (("--rate", ns.rate is not None), ("--rates", ns.rates),
              ("--ramp", ns.ramp), ("--find-max-rate", ns.find_max_rate)) if given]  # fmt: skip
    max_error_rate = _error_rate(ns.max_error_rate)
    if ns.concurrency is not None and chosen:
        raise LoadTestError(
            "--concurrency (closed loop) cannot be combined with --rate/--rates/--ramp/--find-max-rate"
        )
    if len(chosen) > 1:
        raise LoadTestError(
            f"choose one of --rate, --rates, --ramp, --find-max-rate. Received: {' '.join(chosen)}"
        )
    if ns.concurrency is not None:
        return ClosedLoop(ns.concurrency)
    if ns.find_max_rate:
        if ns.p99_target_ms is None:
            raise LoadTestError("--find-max-rate needs --p99-target-ms")
        if ns.max_rate < ns.start_rate or ns.bisect_steps < 0:
            raise LoadTestError(
                f"--find-max-rate needs --start-rate <= --max-rate and --bisect-steps >= 0. "
                f"Received: {ns.start_rate:g}, {ns.max_rate:g}, {ns.bisect_steps}"
            )
        return MaxRateSearch(ns.p99_target_ms, ns.start_rate, ns.max_rate, ns.bisect_steps,
                             max_error_rate, ns.arrival)  # fmt: skip
    if ns.rates:
        return RateSteps(parse_rates(ns.rates), ns.arrival)
    if ns.ramp:
        return RateSteps(parse_ramp(ns.ramp), ns.arrival)
    if ns.rate is not None:
        return RateSteps((ns.rate,), ns.arrival)
    raise LoadTestError(
        "choose a load: --rate R, --rates A,B, --ramp A:B:S, --find-max-rate or --concurrency N"
    )


def _error_rate(value: float) -> float:
    if not 0 <= value <= 1:
        raise LoadTestError(f"--max-error-rate must be in [0, 1]. Received: {value}")
    return value


def run_plan(ns: argparse.Namespace) -> RunPlan:
    """`loadtest run`'s options -> a RunPlan; LoadTestError for anything wrong or clashing."""
    plan = RunPlan(target=_target_from(ns), load=_load_from(ns), inputs=inputs_from(ns),
                   bounds=bounds_from(ns), workers=parse_workers(str(ns.workers)),
                   hard_timeout_s=ns.hard_timeout, outputs=outputs_from(ns))  # fmt: skip
    plan.first_spec()  # StepSpec checks the combination (e.g. bounded by time or count)
    return plan


def sweep_plan(ns: argparse.Namespace) -> SweepPlan:
    """`loadtest sweep`'s options -> a SweepPlan; LoadTestError for anything wrong."""
    grid: GatewayGrid | TfsGrid
    if ns.tfs_restart_cmd:
        if ns.gateway_max_batch is not None and ns.gateway_max_batch < 1:
            raise LoadTestError(
                f"--gateway-max-batch must be >= 1. Received: {ns.gateway_max_batch}"
            )
        grid = TfsGrid(
            restart_cmd=ns.tfs_restart_cmd,
            max_batch=parse_numbers(ns.tfs_max_batch, "--tfs-max-batch", int) if ns.tfs_max_batch else None,
            timeout_us=parse_numbers(ns.tfs_timeout_us, "--tfs-timeout-us", int),
            threads=parse_numbers(ns.tfs_threads, "--tfs-threads", int),
            gateway_max_batch=ns.gateway_max_batch,
        )  # fmt: skip
        n = len(grid.max_batch or (0,)) * len(grid.timeout_us) * len(grid.threads)
    else:
        try:
            cmd = tuple(shlex.split(ns.cmd))
        except ValueError as exc:
            raise LoadTestError(
                f"--cmd is not a valid command line ({exc}). Received: {ns.cmd!r}"
            ) from exc
        if not cmd:
            raise LoadTestError(f"--cmd needs a command. Received: {ns.cmd!r}")
        grid = GatewayGrid(cmd, parse_numbers(ns.max_batch, "--max-batch", int),
                           parse_numbers(ns.max_wait_ms, "--max-wait-ms", float))  # fmt: skip
        if 0 in grid.max_batch:
            raise LoadTestError(f"--max-batch values must be >= 1. Received: {ns.max_batch!r}")
        n = len(grid.points())
    if n > MAX_SWEEP_POINTS:
        raise LoadTestError(f"sweep has {n} points; keep it to {MAX_SWEEP_POINTS} or fewer")
    plan = SweepPlan(target=HttpTargetPlan.parse(ns.url), rate=ns.rate,
                     p99_target_ms=ns.p99_target_ms, grid=grid,
                     max_error_rate=_error_rate(ns.max_error_rate), arrival=ns.arrival,
                     model_dir=Path(ns.model_dir) if ns.model_dir else None,
                     ready_timeout_s=ns.ready_timeout, hard_timeout_s=ns.hard_timeout,
                     inputs=inputs_from(ns),
                     bounds=bounds_from(ns), workers=parse_workers(str(ns.workers)),
                     outputs=outputs_from(ns))  # fmt: skip
    plan.spec()  # StepSpec checks the rate and bounds
    return plan
