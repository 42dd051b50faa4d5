"""`resnet-serving rollout run|pin`: canary steps judged on their own, or pin the stable version.

    resnet-serving rollout run --model demo --version 2 --models-config /models/models.config \\
        --tfserving tfserving:8500 --gateway http://gateway:8000     # admin key: ROLLOUT_ADMIN_KEY
    resnet-serving rollout pin --model demo --models-config /models/models.config \\
        --tfserving tfserving:8500

`run` exits 0 when the candidate was promoted, 1 when it was rolled back (the last lines say
why), 2 on a user error (unreachable gateway, unknown model, ...), 130 when interrupted (after
rolling back). Kept apart from `rollout.run` so `--help` imports no gRPC.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

ADMIN_KEY_ENV = "ROLLOUT_ADMIN_KEY"  # a key on the command line would show in `ps`


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add `rollout` and its subcommands to the top-level parser."""
    parser = sub.add_parser(
        "rollout",
        help="take a new model version through canary steps; promote or roll back on its own",
        description="Canary rollouts against TF Serving (or the stand-in) and the gateway: "
        "see docs/deploy.md, 'Rolling out a new version'.",
    )
    steps = parser.add_subparsers(dest="rollout_command", metavar="COMMAND", required=True)
    run = steps.add_parser("run", help="canary steps for a new version, then promote or roll back")
    _common(run)
    run.add_argument("--version", type=int, required=True, help="the candidate version")
    run.add_argument(
        "--gateway",
        action="append",
        required=True,
        metavar="URL",
        help="a gateway (repeat for each; one per host when worker processes share state)",
    )
    run.add_argument(
        "--steps",
        default="5,25,100",
        help="percent of the default traffic the canary gets, step by step (default 5,25,100)",
    )
    run.add_argument("--window-s", type=float, default=60.0, help="measured per step (60)")
    run.add_argument(
        "--min-requests", type=int, default=100, help="canary requests a step needs (100)"
    )
    run.add_argument(
        "--max-error-rate-increase",
        type=float,
        default=0.01,
        help="canary error rate allowed above stable's, as a fraction (0.01)",
    )
    run.add_argument(
        "--max-p99-ratio", type=float, default=1.5, help="canary p99 <= this x stable p99 (1.5)"
    )
    run.add_argument("--p99-slack-ms", type=float, default=10.0, help="... + this many ms (10)")
    run.add_argument(
        "--load-timeout-s", type=float, default=600.0, help="for TF Serving to load it (600)"
    )
    run.add_argument(
        "--gateway-timeout-s", type=float, default=60.0, help="for the gateways to follow (60)"
    )
    run.set_defaults(func=_run)
    pin = steps.add_parser(
        "pin",
        help="serve only the newest AVAILABLE version, labelled stable (before exporting a "
        "candidate under TF Serving's default latest policy)",
    )
    _common(pin)
    pin.set_defaults(func=_pin)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="the model's name in models.config")
    parser.add_argument(
        "--models-config",
        type=Path,
        required=True,
        help="the models.config TF Serving reads (rewritten in place)",
    )
    parser.add_argument(
        "--tfserving", required=True, metavar="HOST:PORT", help="TF Serving's gRPC address"
    )
    parser.add_argument(
        "--no-reload",
        dest="reload_rpc",
        action="store_false",
        help="only write models.config and wait for TF Serving's next poll of it",
    )


def _percents(text: str) -> tuple[float, ...]:
    from rollout.errors import RolloutError

    try:
        return tuple(float(p) / 100 for p in text.split(",") if p.strip())
    except ValueError:
        raise RolloutError(f"--steps must be percents like 5,25,100. Received: {text!r}") from None


def _run(args: argparse.Namespace) -> int:
    from rollout.clients import Gateway, ModelServer
    from rollout.judge import Limits
    from rollout.run import Outcome, Plan, Rollout

    plan = Plan(
        model=args.model,
        candidate=args.version,
        models_config=args.models_config,
        steps=_percents(args.steps),
        window_s=args.window_s,
        limits=Limits(
            min_requests=args.min_requests,
            max_error_rate_increase=args.max_error_rate_increase,
            max_p99_ratio=args.max_p99_ratio,
            p99_slack_s=args.p99_slack_ms / 1000,
        ),
        load_timeout_s=args.load_timeout_s,
        gateway_timeout_s=args.gateway_timeout_s,
        reload_rpc=args.reload_rpc,
    )
    key = os.environ.get(ADMIN_KEY_ENV)
    gateways = [Gateway(url, admin_key=key) for url in args.gateway]
    server = ModelServer(args.tfserving)
    try:
        outcome = Rollout(plan, server, gateways, say=_say).run()
    finally:
        server.close()
    return 0 if outcome is Outcome.PROMOTED else 1


def _pin(args: argparse.Namespace) -> int:
    from rollout.clients import ModelServer
    from rollout.run import Plan, Rollout

    plan = Plan(model=args.model, candidate=1, models_config=args.models_config,
                reload_rpc=args.reload_rpc)  # fmt: skip
    server = ModelServer(args.tfserving)
    try:
        Rollout(plan, server, [], say=_say).pin()
    finally:
        server.close()
    return 0


def _say(line: str) -> None:
    print(f"rollout: {line}", flush=True)
