"""`loadtest sweep`: try batching settings against a p99 target at a fixed rate, and write
the recommended settings files.

Gateway half: for each (max batch, max wait) the gateway is started as a subprocess with
`RESNET_SERVING_MAX_BATCH_SIZE` / `RESNET_SERVING_MAX_WAIT_MS` (and HOST/PORT from the URL),
we wait for `GET /readyz` == 200, run one open-loop step, stop it. TF Serving half: for each
(max_batch_size, batch_timeout_micros, num_batch_threads) a `batching_parameters.txt` is
written and `--tfs-restart-cmd` (with `{batching_file}` replaced) is run to restart TF
Serving, then we wait for the URL's /readyz and measure. The winner is the setting that
meets the target with the lowest p99; `gateway.env` / `batching_parameters.txt` are written.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import json
import os
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from loadtest.errors import LoadTestError
from loadtest.search import step_passes
from loadtest.targets import parse_url

MAX_POINTS = 24


T = TypeVar("T", int, float)


def _numbers(text: str, name: str, kind: type[T]) -> list[T]:
    """`1,2,4` -> [1, 2, 4] as `kind` (int or float): at least one value, none negative."""
    what = "integers" if kind is int else "numbers"
    try:
        vals = [kind(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise LoadTestError(f"{name} must be comma-separated {what}. Received: {text!r}") from exc
    if not vals or any(v < 0 for v in vals):
        raise LoadTestError(f"{name} needs at least one value, each >= 0. Received: {text!r}")
    return vals


def batching_parameters_text(max_batch_size: int, batch_timeout_micros: int, num_batch_threads: int,
                             max_enqueued_batches: int = 100) -> str:  # fmt: skip
    """TF Serving's `--batching_parameters_file` content (BatchingParameters text proto)."""
    return (
        f"max_batch_size {{ value: {max_batch_size} }}\n"
        f"batch_timeout_micros {{ value: {batch_timeout_micros} }}\n"
        f"num_batch_threads {{ value: {num_batch_threads} }}\n"
        f"max_enqueued_batches {{ value: {max_enqueued_batches} }}\n"
    )


def gateway_env_text(max_batch_size: int, max_wait_ms: float) -> str:
    return f"RESNET_SERVING_MAX_BATCH_SIZE={max_batch_size}\nRESNET_SERVING_MAX_WAIT_MS={max_wait_ms:g}\n"


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


async def wait_ready(
    url: str, timeout_s: float, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Poll `GET /readyz` until 200; fail early if the launched process exits."""
    host, port, _ = parse_url(url)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise LoadTestError(
                f"the gateway command exited with status {proc.returncode} before /readyz"
            )
        with contextlib.suppress(OSError, TimeoutError, ValueError, IndexError):
            r, w = await asyncio.wait_for(asyncio.open_connection(host, port), 1.0)
            w.write(
                f"GET /readyz HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode()
            )
            line = await asyncio.wait_for(r.readline(), 2.0)
            w.close()
            if line.split()[1] == b"200":
                return
        await asyncio.sleep(0.2)
    raise LoadTestError(f"{url} did not answer GET /readyz with 200 within {timeout_s:g} s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


async def sweep(args: argparse.Namespace, measure: Callable[[], Any]) -> dict[str, Any]:
    """Run every point; `measure()` runs one step against args.url and returns its summary."""
    host, port, _ = parse_url(args.url)
    points: list[dict[str, Any]] = []
    if args.tfs_restart_cmd:
        grid = list(itertools.product(_numbers(args.tfs_max_batch, "--tfs-max-batch", int),
                                      _numbers(args.tfs_timeout_us, "--tfs-timeout-us", int),
                                      _numbers(args.tfs_threads, "--tfs-threads", int)))  # fmt: skip
        if len(grid) > MAX_POINTS:
            raise LoadTestError(f"sweep has {len(grid)} points; keep it to {MAX_POINTS} or fewer")
        out_dir = Path(args.out or ".")
        out_dir.mkdir(parents=True, exist_ok=True)
        for mb, us, th in grid:
            bfile = (out_dir / f"batching_{mb}_{us}_{th}.txt").resolve()
            bfile.write_text(batching_parameters_text(mb, us, th))
            cmd = args.tfs_restart_cmd.replace("{batching_file}", shlex.quote(str(bfile)))
            rc = subprocess.run(cmd, shell=True, timeout=args.ready_timeout).returncode
            if rc != 0:
                raise LoadTestError(f"--tfs-restart-cmd exited with status {rc}. Received: {cmd!r}")
            await wait_ready(args.url, args.ready_timeout)
            step = await measure()
            points.append(
                {
                    "tfs": {
                        "max_batch_size": mb,
                        "batch_timeout_micros": us,
                        "num_batch_threads": th,
                    },
                    "step": step,
                }
            )
    else:
        grid2 = list(
            itertools.product(
                _numbers(args.max_batch, "--max-batch", int),
                _numbers(args.max_wait_ms, "--max-wait-ms", float),
            )
        )
        if len(grid2) > MAX_POINTS:
            raise LoadTestError(f"sweep has {len(grid2)} points; keep it to {MAX_POINTS} or fewer")
        if _port_in_use(host, port):
            raise LoadTestError(
                f"something already listens on {host}:{port}; stop it or pick another port in the URL"
            )
        for mb, wait in grid2:
            env = {**os.environ, "RESNET_SERVING_MAX_BATCH_SIZE": str(mb), "RESNET_SERVING_MAX_WAIT_MS": f"{wait:g}",
                   "RESNET_SERVING_HOST": host, "RESNET_SERVING_PORT": str(port)}  # fmt: skip
            try:
                proc = subprocess.Popen(shlex.split(args.cmd), env=env, start_new_session=True,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
            except OSError as exc:
                raise LoadTestError(
                    f"cannot start the gateway command ({exc.strerror}). Received: --cmd {args.cmd!r}"
                ) from exc
            try:
                await wait_ready(args.url, args.ready_timeout, proc)
                step = await measure()
            finally:
                _stop(proc)
            points.append({"gateway": {"max_batch_size": mb, "max_wait_ms": wait}, "step": step})
    return recommend(points, args.p99_target_ms, args.max_error_rate)


def recommend(
    points: list[dict[str, Any]], p99_target_ms: float, max_error_rate: float
) -> dict[str, Any]:
    """The passing point with the lowest p99 (or none)."""
    passing = [p for p in points if step_passes(p["step"], p99_target_ms, max_error_rate)]
    best = min(passing, key=lambda p: p["step"]["latency_ms"]["p99_ms"], default=None)
    return {"p99_target_ms": p99_target_ms, "points": points, "best": best}


def write_recommendation(doc: dict[str, Any], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [out_dir / "sweep.json"]
    written[0].write_text(json.dumps(doc, indent=2) + "\n")
    best = doc["best"]
    if best and "gateway" in best:
        g = best["gateway"]
        written.append(out_dir / "gateway.env")
        written[-1].write_text(gateway_env_text(g["max_batch_size"], g["max_wait_ms"]))
    if best and "tfs" in best:
        t = best["tfs"]
        written.append(out_dir / "batching_parameters.txt")
        written[-1].write_text(
            batching_parameters_text(
                t["max_batch_size"], t["batch_timeout_micros"], t["num_batch_threads"]
            )
        )
    return written


def register_sweep(
    lsub: argparse._SubParsersAction[Any],
    add_load_options: Callable[[argparse.ArgumentParser], None],
) -> None:
    p = lsub.add_parser(
        "sweep", help="try batching settings against a p99 target; write recommended settings"
    )
    p.add_argument(
        "url", metavar="URL", help="where the gateway will listen, e.g. http://127.0.0.1:8000"
    )
    p.add_argument("--rate", type=float, required=True, help="open-loop rate for every point")
    p.add_argument("--p99-target-ms", type=float, required=True)
    p.add_argument("--max-error-rate", type=float, default=0.01)
    p.add_argument("--arrival", choices=["constant", "poisson"], default="constant")
    p.add_argument(
        "--cmd",
        default="resnet-serving serve",
        help="command that starts the gateway (reads RESNET_SERVING_*)",
    )
    p.add_argument("--max-batch", default="8,32", help="gateway max batch sizes to try")
    p.add_argument("--max-wait-ms", default="1,5", help="gateway max waits to try (ms)")
    p.add_argument("--tfs-restart-cmd", default=None,
                   help="sweep TF Serving instead: shell command restarting it with {batching_file}")  # fmt: skip
    p.add_argument("--tfs-max-batch", default="16,64")
    p.add_argument("--tfs-timeout-us", default="0,2000")
    p.add_argument("--tfs-threads", default="4")
    p.add_argument(
        "--ready-timeout", type=float, default=120.0, help="seconds to wait for /readyz per point"
    )
    add_load_options(p)
    p.set_defaults(func=cmd_sweep)


def cmd_sweep(args: argparse.Namespace) -> int:
    from rich.console import Console

    from loadtest.cli import normalise
    from loadtest.engine import StepSpec
    from loadtest.runner import _with_progress, build_recipe, make_runner, run_async

    args = normalise(args)
    if args.rate <= 0 or args.p99_target_ms <= 0:
        raise LoadTestError(
            f"--rate and --p99-target-ms must be > 0. Received: {args.rate}, {args.p99_target_ms}"
        )
    args.grpc = None
    console = Console()
    spec = StepSpec(rate=args.rate, arrival=args.arrival, warmup_s=args.warmup, duration_s=args.duration,
                    requests=args.requests if not args.duration_given else None, timeout_s=args.timeout, seed=args.seed)  # fmt: skip

    async def measure() -> dict[str, Any]:
        recipe = build_recipe(
            args, args.max_connections or max(64, int(args.rate * args.timeout) + 1)
        )
        runner = make_runner(recipe, args.workers, open_loop=True)
        try:
            await runner.start()
            return await _with_progress(runner, dataclasses.replace(spec), console, args.quiet)
        finally:
            await runner.close()

    doc = run_async(sweep(args, measure), open_loop=True)
    for pt in doc["points"]:
        s = pt["step"]
        setting = pt.get("gateway") or pt.get("tfs")
        mark = "PASS" if step_passes(s, args.p99_target_ms, args.max_error_rate) else "fail"
        console.print(
            f"{mark} {setting}: p99 {s['latency_ms']['p99_ms']} ms, {s['throughput_rps']} req/s, errors {s['errors']}"
        )
    if doc["best"] is None:
        console.print(
            f"[bold yellow]WARNING[/bold yellow] no setting kept p99 <= {args.p99_target_ms:g} ms at {args.rate:g} req/s"
        )
    for path in write_recommendation(doc, Path(args.out or ".")):
        console.print(f"wrote {path}")
    return 0
