"""`resnet-serving loadtest {run,compare,sweep}`: latency under load, measured correctly."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from loadtest.errors import LoadTestError


def _positive(kind: type) -> Any:
    def conv(text: str) -> Any:
        try:
            v = kind(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(
                f"must be a {kind.__name__}. Received: {text!r}"
            ) from exc
        if v <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0. Received: {text!r}")
        return v

    return conv


def add_load_options(p: argparse.ArgumentParser) -> None:
    """Options shared by `run` and `sweep`: inputs, bounds, timeouts."""
    g = p.add_argument_group("inputs")
    g.add_argument("--images", metavar="DIR", help="send the images in this folder (cycled)")
    g.add_argument(
        "--gen-size",
        action="append",
        default=None,
        metavar="WxH",
        help="generate images of this size (repeatable or comma list; default 640x480)",
    )
    g.add_argument(
        "--gen-format",
        action="append",
        default=None,
        metavar="FMT",
        help="jpeg|png|webp for generated images (repeatable; default jpeg)",
    )
    g.add_argument("--gen-count", type=int, default=4, help="generated images per size and format")
    g.add_argument("--images-per-request", type=int, default=1, metavar="N")
    g.add_argument(
        "--body",
        choices=["multipart", "raw", "json"],
        default="multipart",
        help="HTTP body: multipart field 'image', raw image bytes, or JSON base64",
    )
    g.add_argument("--top-k", type=int, default=None, help="append ?top_k=N")
    b = p.add_argument_group("bounds")
    b.add_argument(
        "--duration",
        type=_positive(float),
        default=None,
        metavar="S",
        help="measured seconds per step (default 10, or unbounded by time with --requests)",
    )
    b.add_argument(
        "--requests",
        type=_positive(int),
        default=None,
        metavar="N",
        help="measured requests per step",
    )
    b.add_argument(
        "--warmup", type=float, default=1.0, metavar="S", help="seconds before measuring (excluded)"
    )
    b.add_argument(
        "--timeout",
        type=_positive(float),
        default=10.0,
        metavar="S",
        help="per-request budget, counted from its due time",
    )
    b.add_argument("--connect-timeout", type=_positive(float), default=3.0, metavar="S")
    b.add_argument(
        "--hard-timeout",
        type=_positive(float),
        default=None,
        metavar="S",
        help="global bound on the whole command (default: planned time + slack)",
    )
    b.add_argument(
        "--max-connections",
        type=int,
        default=None,
        help="open-loop connection cap (default rate x timeout; requests beyond it wait, counted)",
    )
    b.add_argument("--seed", type=int, default=0, help="seed for Poisson arrivals")
    p.add_argument(
        "--workers",
        default="1",
        metavar="N|auto",
        help="load-generator processes (auto = one per core); each runs its share of the "
        "clients, or every N-th send of the one schedule",
    )
    p.add_argument(
        "--out",
        metavar="DIR",
        help="write result.json, summary.csv, timeseries.csv, PNG plots and report.html",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add `loadtest` and its sub-subcommands to the top-level parser."""
    lt = sub.add_parser("loadtest", help="latency under load (open/closed loop), compare, sweep",
                        description=__doc__)  # fmt: skip
    lsub = lt.add_subparsers(dest="loadtest_command", metavar="SUBCOMMAND", required=True)

    run = lsub.add_parser("run", help="load-test the gateway (HTTP) or TF Serving (gRPC)")
    run.add_argument(
        "url",
        nargs="?",
        default=None,
        metavar="URL",
        help="gateway URL, e.g. http://127.0.0.1:8000 (path defaults to /v1/classify)",
    )
    run.add_argument(
        "--grpc", metavar="HOST:PORT", help="aim at TF Serving's gRPC Predict instead of a URL"
    )
    run.add_argument("--model", default="demo", help="model name for --grpc")
    run.add_argument(
        "--grpc-size", default="224x224", metavar="WxH", help="input size of the model for --grpc"
    )
    load = run.add_argument_group("load (choose one)")
    load.add_argument(
        "--concurrency",
        type=_positive(int),
        default=None,
        metavar="N",
        help="closed loop: N clients",
    )
    load.add_argument(
        "--rate", type=_positive(float), default=None, metavar="R", help="open loop: R requests/s"
    )
    load.add_argument("--rates", metavar="A,B,..", help="open loop, one step per rate")
    load.add_argument(
        "--ramp", metavar="START:STOP:STEP", help="open loop, rates from START to STOP"
    )
    load.add_argument("--arrival", choices=["constant", "poisson"], default="constant")
    load.add_argument(
        "--find-max-rate",
        action="store_true",
        help="double the rate until p99 > --p99-target-ms, then bisect",
    )
    load.add_argument("--p99-target-ms", type=_positive(float), default=None)
    load.add_argument("--start-rate", type=_positive(float), default=50.0)
    load.add_argument("--max-rate", type=_positive(float), default=20_000.0)
    load.add_argument("--bisect-steps", type=int, default=4)
    load.add_argument(
        "--max-error-rate",
        type=float,
        default=0.01,
        help="a step with more errors fails the search",
    )
    add_load_options(run)
    run.set_defaults(func=cmd_run)

    cmp = lsub.add_parser("compare", help="two result.json files side by side, with B/A ratios")
    cmp.add_argument("a", metavar="A.json")
    cmp.add_argument("b", metavar="B.json")
    cmp.add_argument(
        "--json", action="store_true", help="print the rows as JSON instead of a table"
    )
    cmp.add_argument(
        "--html", metavar="OUT.html", help="also write both runs side by side as one HTML file"
    )
    cmp.set_defaults(func=cmd_compare)

    from loadtest.sweep import register_sweep

    register_sweep(lsub, add_load_options)


def parse_workers(text: str) -> int:
    """`--workers`: a count in 1..256, or `auto` (one per CPU core)."""
    if text == "auto":
        return max(1, os.cpu_count() or 1)
    n = int(text) if text.isdigit() else 0
    if not 1 <= n <= 256:
        raise LoadTestError(f"--workers must be 1..256 or auto. Received: {text!r}")
    return n


def normalise(args: argparse.Namespace) -> argparse.Namespace:
    """Fill defaults that depend on other options; check option combinations."""
    args.gen_size = args.gen_size or ["640x480"]
    args.gen_format = args.gen_format or ["jpeg"]
    args.workers = parse_workers(str(args.workers))
    args.duration_given = args.duration is not None
    if args.duration is None:
        args.duration = 10.0
    if args.warmup < 0:
        raise LoadTestError(f"--warmup must be >= 0. Received: {args.warmup}")
    return args


def cmd_run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from loadtest.report import print_summary, write_outputs
    from loadtest.runner import execute, run_async

    args = normalise(args)
    if (args.url is None) == (args.grpc is None):
        raise LoadTestError(
            f"give exactly one target: a URL or --grpc HOST:PORT. Received: url={args.url!r}, grpc={args.grpc!r}"
        )
    if args.concurrency is not None and (
        args.rate or args.rates or args.ramp or args.find_max_rate
    ):
        raise LoadTestError(
            "--concurrency (closed loop) cannot be combined with --rate/--rates/--ramp/--find-max-rate"
        )
    if (
        sum(
            x is not None and x is not False
            for x in (args.rate, args.rates, args.ramp, args.find_max_rate or None)
        )
        > 1
    ):
        raise LoadTestError("choose one of --rate, --rates, --ramp, --find-max-rate")
    if args.hard_timeout is None:
        n = 1 if args.concurrency or args.rate else 20
        per = args.warmup + args.duration + args.timeout + 5.0
        if args.requests and not args.duration_given and args.concurrency is None:
            per += args.requests / (args.rate or args.start_rate)
        args.hard_timeout = n * per + 30.0
    console = Console(width=max(Console().width, 130))
    result = run_async(execute(args, console), open_loop=args.concurrency is None)
    print_summary(result, console)
    if args.out:
        for path in write_outputs(result, Path(args.out)):
            console.print(f"wrote {path}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from rich.console import Console

    from loadtest.compare import compare_rows, compare_table
    from loadtest.report import load_result

    a, b = load_result(Path(args.a)), load_result(Path(args.b))
    if args.json:
        print(json.dumps(compare_rows(a, b), indent=2))
    else:
        Console().print(compare_table(a, b, args.a, args.b))
    if args.html:
        from loadtest.html_report import write_compare_report

        path = write_compare_report(a, b, Path(args.a), Path(args.b), Path(args.html))
        print(f"wrote {path}", file=sys.stderr if args.json else sys.stdout)
    return 0
