"""`resnet-serving loadtest {run,compare,sweep}`: latency under load, measured correctly.

The options are parsed once into a plan (`loadtest.plan`); the commands hand the plan to the
runner or the sweep and print what comes back.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from loadtest.eventloop import run_loop
from loadtest.options import run_plan, sweep_plan
from loadtest.plan import ARRIVALS, BODIES


def _positive(kind: type) -> Any:
    def conv(text: str) -> Any:
        try:
            v = kind(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(
                f"must be a {kind.__name__}. Received: {text!r}"
            ) from exc
        if not v > 0:
            raise argparse.ArgumentTypeError(f"must be > 0. Received: {text!r}")
        return v

    return conv


def add_load_options(p: argparse.ArgumentParser) -> None:
    """Options shared by `run` and `sweep`: inputs, bounds, timeouts, workers, outputs."""
    g = p.add_argument_group("inputs")
    g.add_argument("--images", metavar="DIR", help="send the images in this folder (cycled)")
    g.add_argument("--gen-size", action="append", default=None, metavar="WxH",
                   help="generate images of this size (repeatable or comma list; default 640x480)")  # fmt: skip
    g.add_argument("--gen-format", action="append", default=None, metavar="FMT",
                   help="jpeg|png|webp for generated images (repeatable; default jpeg)")  # fmt: skip
    g.add_argument("--gen-count", type=int, default=4, help="generated images per size and format")
    g.add_argument("--images-per-request", type=int, default=1, metavar="N")
    g.add_argument("--body", choices=BODIES, default="multipart",
                   help="HTTP body: multipart field 'image', raw image bytes, or JSON base64")  # fmt: skip
    g.add_argument("--top-k", type=int, default=None, help="append ?top_k=N")
    b = p.add_argument_group("bounds")
    b.add_argument("--duration", type=_positive(float), default=None, metavar="S",
                   help="measured seconds per step (default 10, or unbounded by time with --requests)")  # fmt: skip
    b.add_argument("--requests", type=_positive(int), default=None, metavar="N",
                   help="measured requests per step")  # fmt: skip
    b.add_argument("--warmup", type=float, default=1.0, metavar="S",
                   help="seconds before measuring (excluded)")  # fmt: skip
    b.add_argument("--timeout", type=_positive(float), default=10.0, metavar="S",
                   help="per-request budget, counted from its due time")  # fmt: skip
    b.add_argument("--connect-timeout", type=_positive(float), default=3.0, metavar="S")
    b.add_argument("--hard-timeout", type=_positive(float), default=None, metavar="S",
                   help="global bound on the whole command (default: planned time + slack)")  # fmt: skip
    b.add_argument("--max-connections", type=int, default=None,
                   help="open-loop connection cap (default rate x timeout; requests beyond it wait, counted)")  # fmt: skip
    b.add_argument("--seed", type=int, default=0, help="seed for Poisson arrivals")
    p.add_argument("--workers", default="1", metavar="N|auto",
                   help="load-generator processes (auto = one per core); each runs its share of the "
                   "clients, or every N-th send of the one schedule")  # fmt: skip
    p.add_argument("--out", metavar="DIR",
                   help="write result.json, summary.csv, timeseries.csv, PNG plots and report.html")  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_run(lsub: argparse._SubParsersAction[Any]) -> None:
    run = lsub.add_parser("run", help="load-test the gateway (HTTP) or TF Serving (gRPC)")
    run.add_argument("url", nargs="?", default=None, metavar="URL",
                     help="gateway URL, e.g. http://127.0.0.1:8000 (path defaults to /v1/classify)")  # fmt: skip
    run.add_argument("--grpc", metavar="HOST:PORT", help="aim at TF Serving's gRPC Predict instead of a URL")  # fmt: skip
    run.add_argument("--model", default="demo", help="model name for --grpc")
    run.add_argument("--grpc-size", default=None, metavar="WxH",
                     help="input size for --grpc, only for a signature that leaves H and W open "
                     "(by default read from the server's signature)")  # fmt: skip
    load = run.add_argument_group("load (choose one)")
    load.add_argument("--concurrency", type=_positive(int), default=None, metavar="N", help="closed loop: N clients")  # fmt: skip
    load.add_argument("--rate", type=_positive(float), default=None, metavar="R", help="open loop: R requests/s")  # fmt: skip
    load.add_argument("--rates", metavar="A,B,..", help="open loop, one step per rate")
    load.add_argument("--ramp", metavar="START:STOP:STEP", help="open loop, rates from START to STOP")  # fmt: skip
    load.add_argument("--arrival", choices=ARRIVALS, default="constant")
    load.add_argument("--find-max-rate", action="store_true",
                      help="double the rate until p99 > --p99-target-ms, then bisect")  # fmt: skip
    load.add_argument("--p99-target-ms", type=_positive(float), default=None)
    load.add_argument("--start-rate", type=_positive(float), default=50.0)
    load.add_argument("--max-rate", type=_positive(float), default=20_000.0)
    load.add_argument("--bisect-steps", type=int, default=4)
    load.add_argument("--max-error-rate", type=float, default=0.01,
                      help="a step with more errors fails the search")  # fmt: skip
    add_load_options(run)
    run.set_defaults(func=cmd_run)


def _add_compare(lsub: argparse._SubParsersAction[Any]) -> None:
    cmp = lsub.add_parser("compare", help="two result.json files side by side, with B/A ratios")
    cmp.add_argument("a", metavar="A.json")
    cmp.add_argument("b", metavar="B.json")
    cmp.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")  # fmt: skip
    cmp.add_argument("--html", metavar="OUT.html", help="also write both runs side by side as one HTML file")  # fmt: skip
    cmp.set_defaults(func=cmd_compare)


def _add_sweep(lsub: argparse._SubParsersAction[Any]) -> None:
    p = lsub.add_parser("sweep", help="try batching settings against a p99 target; write recommended settings")  # fmt: skip
    p.add_argument("url", metavar="URL", help="where the gateway will listen, e.g. http://127.0.0.1:8000")  # fmt: skip
    p.add_argument("--rate", type=_positive(float), required=True, help="open-loop rate for every point")  # fmt: skip
    p.add_argument("--p99-target-ms", type=_positive(float), required=True)
    p.add_argument("--max-error-rate", type=float, default=0.01)
    p.add_argument("--arrival", choices=ARRIVALS, default="constant")
    p.add_argument("--model-dir", metavar="DIR", default=None,
                   help="the exported model (models/demo or models/demo/1) whose manifest has the "
                   "batch buckets; default: the gateway's GET /v1/models")  # fmt: skip
    p.add_argument("--cmd", default="resnet-serving serve", help="command that starts the gateway (reads RESNET_SERVING_*)")  # fmt: skip
    p.add_argument("--max-batch", default="8,32", help="gateway max batch sizes to try")
    p.add_argument("--max-wait-ms", default="1,5", help="gateway max waits to try (ms)")
    p.add_argument("--tfs-restart-cmd", default=None,
                   help="sweep TF Serving instead: shell command restarting it with {batching_file}")  # fmt: skip
    p.add_argument("--tfs-max-batch", default=None, metavar="A,B,..",
                   help="TF Serving max_batch_size values, each a batch bucket holding the gateway's "
                   "largest batch (default: every such bucket)")  # fmt: skip
    p.add_argument("--gateway-max-batch", type=int, default=None, metavar="N",
                   help="the gateway's RESNET_SERVING_MAX_BATCH_SIZE in front of TF Serving "
                   "(default: the largest bucket, the safe assumption)")  # fmt: skip
    p.add_argument("--tfs-timeout-us", default="0,2000")
    p.add_argument("--tfs-threads", default="4")
    p.add_argument("--ready-timeout", type=_positive(float), default=120.0,
                   help="seconds to wait for /readyz per point")  # fmt: skip
    add_load_options(p)
    p.set_defaults(func=cmd_sweep)


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add `loadtest` and its sub-subcommands to the top-level parser."""
    lt = sub.add_parser("loadtest", help="latency under load (open/closed loop), compare, sweep",
                        description=__doc__)  # fmt: skip
    lsub = lt.add_subparsers(dest="loadtest_command", metavar="SUBCOMMAND", required=True)
    _add_run(lsub)
    _add_compare(lsub)
    _add_sweep(lsub)


# Each command imports the runner, the report or the sweep when it runs: rich, hdrh, grpc,
# numpy and Pillow come with them, and building the parser (`--help`, every other
# resnet-serving command) needs none of them.


def cmd_run(args: argparse.Namespace) -> int:
    plan = run_plan(args)
    from rich.console import Console  # only when the command runs (see above)

    from loadtest.report import print_summary, write_outputs
    from loadtest.runner import execute

    console = Console(width=max(Console().width, 130))
    # Open loop needs timers precise to the µs; closed loop runs on uvloop (see eventloop).
    result = run_loop(execute(plan, console), precise_timers=plan.open_loop)
    print_summary(result, console)
    if plan.outputs.out_dir is not None:
        for path in write_outputs(result, plan.outputs.out_dir):
            console.print(f"wrote {path}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from rich.console import Console  # only when the command runs (see above)

    from loadtest.compare import compare_rows, compare_table
    from loadtest.html_report import write_compare_report
    from loadtest.report import load_result

    a, b = load_result(Path(args.a)), load_result(Path(args.b))
    if args.json:
        print(json.dumps(compare_rows(a, b), indent=2))
    else:
        Console().print(compare_table(a, b, args.a, args.b))
    if args.html:
        html = write_compare_report(
            a.to_json(), b.to_json(), Path(args.a), Path(args.b), Path(args.html)
        )
        print(f"wrote {html}", file=sys.stderr if args.json else sys.stdout)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    plan = sweep_plan(args)
    from rich.console import Console  # only when the command runs (see above)

    from loadtest.sweep import execute, print_sweep, write_recommendation

    console = Console(width=max(Console().width, 130))
    result = run_loop(execute(plan, console), precise_timers=True)  # every point is open loop
    print_sweep(plan, result, console)
    for path in write_recommendation(result, plan.out_dir):
        console.print(f"wrote {path}")
    return 0
