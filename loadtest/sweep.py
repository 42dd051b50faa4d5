"""`loadtest sweep`: try batching settings against a p99 target at a fixed rate, and write
the recommended settings files.

Gateway half: for each (max batch, max wait) the gateway is started as a subprocess with
`RESNET_SERVING_MAX_BATCH_SIZE` / `RESNET_SERVING_MAX_WAIT_MS` (and HOST/PORT from the URL),
we wait for `GET /readyz` == 200, run one open-loop step, stop it. TF Serving half: for each
(max_batch_size, batch_timeout_micros, num_batch_threads) a `batching_parameters.txt` is
written and `--tfs-restart-cmd` (with `{batching_file}` replaced) is run to restart TF
Serving, then we wait for the URL's /readyz and measure. The winner is the setting that
meets the target with the lowest p99; `gateway.env` / `batching_parameters.txt` are written.

The batch buckets bound both halves. They come from the model's manifest (`--model-dir`) or
the gateway's `GET /v1/models`. Every TF Serving file is built by the contract's one writer
(`contract.tfs_config.batching_parameters`): `allowed_batch_sizes` are the buckets up to
`max_batch_size`, which must itself be a bucket, so TF Serving only pads to shapes XLA
compiled at export. And `max_batch_size` must hold the gateway's largest call (its max batch
padded to a bucket): TF Serving answers a larger request with INVALID_ARGUMENT "Task size N
is larger than maximum input batch size M" (notes/tfserving_behaviour.md §5, TF's
`shared_batch_scheduler.h`). Settings that break either rule are refused before anything
starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from contract.errors import ConfigError
from contract.manifest import MANIFEST_RELPATH, latest_version_dir, read_manifest
from contract.tfs_config import BATCHING_CONFIG, batching_parameters, write_text_proto
from loadtest import progress
from loadtest.errors import LoadTestError
from loadtest.httpclient import ProtocolError, get_once
from loadtest.plan import GatewayGrid, HttpTargetPlan, SweepPlan, TfsGrid
from loadtest.recipes import http_recipe
from loadtest.results import GatewaySetting, StepResult, SweepPoint, SweepResult, TfsSetting
from loadtest.search import step_passes
from loadtest.workers import started

Measure = Callable[[], Awaitable[StepResult]]
GET_TIMEOUT_S = 5.0
STOP_GRACE_S = 10.0


# -- the batch buckets, and the settings they allow --------------------------------------------


def manifest_buckets(model_dir: Path) -> tuple[int, ...]:
    """The buckets in the manifest of `model_dir`: a version directory (models/demo/1) or a
    model directory (models/demo, whose highest version is read)."""
    version = model_dir
    if not (model_dir / MANIFEST_RELPATH).is_file():
        version = latest_version_dir(model_dir.parent, model_dir.name)
    return read_manifest(version).batch_buckets


async def served_buckets(target: HttpTargetPlan) -> tuple[int, ...]:
    """The buckets the gateway at `target` reports in `GET /v1/models`."""
    where = f"http://{target.host}:{target.port}/v1/models"
    try:
        status, body = await get_once(
            target.host, target.port, "/v1/models", timeout_s=GET_TIMEOUT_S
        )
        buckets = json.loads(body)["models"][0]["batch_buckets"] if status == 200 else None
    except (OSError, TimeoutError, ProtocolError, ValueError, LookupError, TypeError) as exc:
        why = (
            type(exc).__name__ if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
        )
        raise LoadTestError(
            f"cannot read the model's batch buckets from {where} ({why}); start the gateway "
            "first or pass --model-dir"
        ) from None
    if status != 200:
        raise LoadTestError(f"cannot read the model's batch buckets: {where} answered {status}")
    if not (isinstance(buckets, list) and buckets and all(isinstance(b, int) for b in buckets)):
        raise LoadTestError(f"{where} has no batch_buckets list. Received: {buckets!r}")
    return tuple(buckets)


def gateway_largest_call(buckets: tuple[int, ...], gateway_max_batch: int | None) -> int:
    """The largest batch the gateway sends: its max batch (capped at the largest bucket, as
    the gateway does) padded up to a bucket."""
    cap = min(gateway_max_batch or buckets[-1], buckets[-1])
    return next(b for b in buckets if b >= cap)


def tfs_points(grid: TfsGrid, buckets: tuple[int, ...]) -> list[tuple[TfsSetting, Any]]:
    """Every (setting, BatchingParameters) of the grid, or LoadTestError for the first that
    breaks the buckets or cannot hold the gateway's largest call."""
    floor = gateway_largest_call(buckets, grid.gateway_max_batch)
    sizes = grid.max_batch or tuple(b for b in buckets if b >= floor)
    for mb in sizes:
        if mb < floor:
            raise LoadTestError(
                f"--tfs-max-batch must be at least {floor}, the gateway's largest batch (its max "
                f"batch padded to a bucket of {list(buckets)}); TF Serving refuses larger requests "
                f"with INVALID_ARGUMENT. Received: --tfs-max-batch {mb}"
            )
    points = []
    for mb, us, th in itertools.product(sizes, grid.timeout_us, grid.threads):
        try:
            msg = batching_parameters(buckets, max_batch_size=mb, batch_timeout_micros=us,
                                      num_batch_threads=th)  # fmt: skip
        except ConfigError as exc:
            raise LoadTestError(f"--tfs-max-batch/--tfs-timeout-us/--tfs-threads: {exc}") from None
        points.append((TfsSetting(mb, us, th, tuple(msg.allowed_batch_sizes)), msg))
    return points


def check_gateway_grid(grid: GatewayGrid, buckets: tuple[int, ...]) -> None:
    """A gateway max batch above the largest bucket would be capped there: refuse it, so
    every point is the setting it names."""
    for mb in grid.max_batch:
        if mb > buckets[-1]:
            raise LoadTestError(
                f"--max-batch must be at most {buckets[-1]}, the model's largest batch bucket "
                f"(the gateway caps it there). Received: --max-batch {mb}"
            )


# -- processes -----------------------------------------------------------------------------


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


async def wait_ready(target: HttpTargetPlan, timeout_s: float,
                     proc: subprocess.Popen[bytes] | None = None) -> None:  # fmt: skip
    """Poll `GET /readyz` until 200; fail early if the launched process exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise LoadTestError(
                f"the gateway command exited with status {proc.returncode} before /readyz"
            )
        with contextlib.suppress(OSError, TimeoutError, ProtocolError):
            status, _ = await get_once(target.host, target.port, "/readyz", timeout_s=2.0)
            if status == 200:
                return
        await asyncio.sleep(0.2)
    raise LoadTestError(f"{target.url} did not answer GET /readyz with 200 within {timeout_s:g} s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group (the gateway drains), SIGKILL it if it does not stop."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


# -- the two halves -------------------------------------------------------------------------


async def _tfs_sweep(plan: SweepPlan, grid: TfsGrid, todo: list[tuple[TfsSetting, Any]],
                     measure: Measure, points: list[SweepPoint]) -> None:  # fmt: skip
    plan.out_dir.mkdir(parents=True, exist_ok=True)
    for setting, msg in todo:
        name = f"batching_{setting.max_batch_size}_{setting.batch_timeout_micros}_{setting.num_batch_threads}.txt"
        path = write_text_proto(plan.out_dir.resolve() / name, msg)
        cmd = grid.restart_cmd.replace("{batching_file}", shlex.quote(str(path)))
        try:
            done = await asyncio.to_thread(
                subprocess.run, cmd, shell=True, timeout=plan.ready_timeout_s
            )
        except subprocess.TimeoutExpired:
            raise LoadTestError(
                f"--tfs-restart-cmd ran past --ready-timeout {plan.ready_timeout_s:g} s. Received: {cmd!r}"
            ) from None
        if done.returncode != 0:
            raise LoadTestError(
                f"--tfs-restart-cmd exited with status {done.returncode}. Received: {cmd!r}"
            )
        await wait_ready(plan.target, plan.ready_timeout_s)
        points.append(SweepPoint(setting, await measure()))


async def _gateway_sweep(plan: SweepPlan, grid: GatewayGrid, measure: Measure,
                         points: list[SweepPoint], warnings: list[str]) -> None:  # fmt: skip
    target = plan.target
    buckets = manifest_buckets(plan.model_dir) if plan.model_dir else None
    if buckets is not None:
        check_gateway_grid(grid, buckets)
    if _port_in_use(target.host, target.port):
        raise LoadTestError(
            f"something already listens on {target.host}:{target.port}; stop it or pick another port in the URL"
        )
    for mb, wait in grid.points():
        env = {**os.environ, "RESNET_SERVING_MAX_BATCH_SIZE": str(mb), "RESNET_SERVING_MAX_WAIT_MS": f"{wait:g}",
               "RESNET_SERVING_HOST": target.host, "RESNET_SERVING_PORT": str(target.port)}  # fmt: skip
        try:
            proc = subprocess.Popen(list(grid.cmd), env=env, start_new_session=True,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        except OSError as exc:
            raise LoadTestError(
                f"cannot start the gateway command ({exc.strerror}). Received: --cmd {shlex.join(grid.cmd)!r}"
            ) from exc
        try:
            await wait_ready(target, plan.ready_timeout_s, proc)
            if buckets is None:  # the first gateway up tells the buckets
                try:
                    buckets = await served_buckets(target)
                except LoadTestError as exc:
                    buckets = ()
                    warnings.append(f"--max-batch not checked against the batch buckets: {exc}")
                if buckets:
                    check_gateway_grid(grid, buckets)
            points.append(SweepPoint(GatewaySetting(mb, wait), await measure()))
        finally:
            await asyncio.to_thread(_stop, proc)


# -- the sweep ------------------------------------------------------------------------------


def recommend(plan: SweepPlan, points: list[SweepPoint], warnings: list[str]) -> SweepResult:
    """The passing point with the lowest p99 (or none)."""
    passing = [p for p in points if step_passes(p.step, plan.p99_target_ms, plan.max_error_rate)]
    best = min(passing, key=lambda p: p.step.latency_ms.p99_ms or 0.0, default=None)
    return SweepResult(plan.rate, plan.p99_target_ms, tuple(points), best, tuple(warnings))


async def sweep(plan: SweepPlan, measure: Measure) -> SweepResult:
    """Run every point (within the hard timeout; partial after it, with a warning)."""
    points: list[SweepPoint] = []
    warnings: list[str] = []
    grid = plan.grid
    if isinstance(grid, TfsGrid):
        target = plan.target
        buckets = (
            manifest_buckets(plan.model_dir) if plan.model_dir else await served_buckets(target)
        )
        todo = tfs_points(grid, buckets)  # every setting checked before TF Serving is touched
        run = _tfs_sweep(plan, grid, todo, measure, points)
        n = len(todo)
    else:
        run = _gateway_sweep(plan, grid, measure, points, warnings)
        n = len(grid.points())
    hard = plan.hard_timeout(n)
    try:
        await asyncio.wait_for(run, hard)
    except TimeoutError:
        warnings.append(f"hard timeout of {hard:g} s reached after {len(points)} points")
    return recommend(plan, points, warnings)


async def execute(plan: SweepPlan, console: Console) -> SweepResult:
    """The sweep with the load tester's own runner: one fresh runner per point (the server
    behind the URL restarts in between), payloads encoded once."""
    recipe = http_recipe(plan.target, plan.inputs, max_connections=plan.bounds.connection_cap(plan.rate),
                         connect_timeout_s=plan.bounds.connect_timeout_s)  # fmt: skip

    async def measure() -> StepResult:
        async with started(recipe, plan.workers, open_loop=True) as runner:
            return await progress.run_step(runner, plan.spec(), console, quiet=plan.outputs.quiet)

    return await sweep(plan, measure)


def write_recommendation(result: SweepResult, out_dir: Path) -> list[Path]:
    """`sweep.json`, and the winner's `gateway.env` or `batching_parameters.txt`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "sweep.json"]
    written[0].write_text(json.dumps(result.to_json(), indent=2) + "\n")
    best = result.best.setting if result.best is not None else None
    if isinstance(best, GatewaySetting):
        written.append(out_dir / "gateway.env")
        written[-1].write_text(best.env_text())
    elif isinstance(best, TfsSetting):
        msg = batching_parameters(best.allowed_batch_sizes, batch_timeout_micros=best.batch_timeout_micros,
                                  num_batch_threads=best.num_batch_threads)  # fmt: skip
        written.append(write_text_proto(out_dir / BATCHING_CONFIG, msg))
    return written


def print_sweep(plan: SweepPlan, result: SweepResult, console: Console) -> None:
    """One line per point (PASS/fail, p99, throughput, errors), then the warnings."""
    for pt in result.points:
        s = pt.step
        mark = "PASS" if step_passes(s, plan.p99_target_ms, plan.max_error_rate) else "fail"
        console.print(f"{mark} {pt.setting.label}: p99 {s.latency_ms.p99_ms} ms, "
                      f"{s.throughput_rps} req/s, errors {s.errors}")  # fmt: skip
    for w in result.warnings:
        console.print(f"[bold yellow]WARNING[/bold yellow] {escape(w)}")
    if result.best is None:
        console.print(
            f"[bold yellow]WARNING[/bold yellow] no setting kept p99 <= {plan.p99_target_ms:g} ms at {plan.rate:g} req/s"
        )
