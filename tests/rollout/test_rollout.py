"""`rollout run` end to end under open-loop load: the stand-in polling the models.config the
rollout rewrites (as TF Serving does), a real gateway with the admin API, a good candidate
promoted, a slow one and a failing one rolled back on their own, no request lost."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from contract.tfs_config import model_entry, pinned_versions, read_models_config
from rollout.clients import Gateway, ModelServer
from rollout.errors import RolloutError
from rollout.judge import Limits
from rollout.run import Outcome, Plan, Rollout
from testdoubles.standin import Fault, StandIn
from testdoubles.tfs_status import TFSError
from tests.service.openloop import OpenLoop
from tests.service.versions import Exports, Pictures, base_with, standin_and_gateway
from tests.testdoubles.standin_support import write_config

KEY = "rollout-test-key"
# Small windows for a test; limits loose enough for a busy 2-core machine, tight enough that
# a canary 1 s slower per batch, or failing, cannot pass.
LIMITS = Limits(min_requests=8, max_error_rate_increase=0.05, max_p99_ratio=3.0, p99_slack_s=0.25)


def slow(server: StandIn) -> None:
    server.faults.set(Fault(predict_delay_s=1.0), model="tiny", version=2)


def failing(server: StandIn) -> None:
    server.faults.set(
        Fault(predict_error=TFSError(grpc.StatusCode.INTERNAL, "v2 cannot run this")),
        model="tiny", version=2,
    )  # fmt: skip


def good(server: StandIn) -> None: ...


@pytest.mark.parametrize(
    ("candidate", "outcome", "reason"),
    [
        (good, Outcome.PROMOTED, "promoted tiny v2"),
        (slow, Outcome.ROLLED_BACK, "step 25 %: canary"),
        (failing, Outcome.ROLLED_BACK, "canary error rate 100.0 %"),
    ],
    ids=["good", "slow", "failing"],
)
def test_a_rollout_promotes_a_good_candidate_and_rolls_back_a_bad_one(
    version_exports: Exports,
    tmp_path: Path,
    candidate: Callable[[StandIn], None],
    outcome: Outcome,
    reason: str,
) -> None:
    base = base_with(version_exports, tmp_path / "models", tiny=[1, 2])
    # Before the rollout: v1 pinned and labelled stable (what `rollout pin` writes).
    config = write_config(
        tmp_path / "models.config", {"tiny": base / "tiny"}, labels={"tiny": {"stable": 1}},
        policies={"tiny": "specific { versions: 1 }"},
    )  # fmt: skip
    pictures = Pictures(4, seed=9)
    lines: list[str] = []
    gateway = {"admin_keys": (KEY,), "shared_state_dir": tmp_path / "shared"}
    with standin_and_gateway(base, config, tmp_path, **gateway) as (server, live):
        # A fault makes the stand-in's v2 slow or failing once the canary steps begin (the
        # gateway has read its contract by then, as it would a real bad model's).
        # The good one goes by the file alone, as TF Serving's poll of models.config reads
        # it (`--no-reload`); the others also send HandleReloadConfigRequest (the default).
        plan = Plan(
            model="tiny", candidate=2, models_config=config, steps=(0.25, 0.5, 1.0),
            window_s=2.0, limits=LIMITS, load_timeout_s=60, gateway_timeout_s=30,
            reassert_s=1.0, reload_rpc=candidate is not good,
        )  # fmt: skip
        armed: list[bool] = []

        def arm_at_the_first_step(line: str) -> None:
            lines.append(line)
            if line.startswith("step ") and not armed:
                armed.append(True)
                candidate(server)

        modelserver = ModelServer(server.address)
        gateways = [Gateway(live.url, admin_key=KEY)]
        rollout = Rollout(plan, modelserver, gateways, say=arm_at_the_first_step)

        async def scenario() -> tuple[OpenLoop, Outcome]:
            load = OpenLoop(live.url, "/v1/classify", pictures.blobs, rate_hz=40.0)
            async with load.running():
                await asyncio.sleep(0.5)
                result = await asyncio.to_thread(rollout.run)
                await asyncio.sleep(1.0)  # after it: served by what stays
            return load, result

        try:
            load, result = asyncio.run(scenario())
            states = {v: s for v, (s, _) in modelserver.states("tiny").items()}
            assert server.wait_for_state("tiny", 1 if outcome is Outcome.PROMOTED else 2, "END", 30)
        finally:
            modelserver.close()
    text = "\n".join(lines)
    assert result is outcome, text
    assert reason in text, text
    assert load.statuses() == {200: len(load.sent)}, [
        s.error or s.body for s in load.sent if s.status != 200
    ]
    entry = model_entry(read_models_config(config), "tiny")
    kept = 2 if outcome is Outcome.PROMOTED else 1
    assert pinned_versions(entry) == [kept] and dict(entry.version_labels) == {"stable": kept}
    assert states[kept] == "AVAILABLE"
    tail = [s.version for s in load.sent[-10:]]
    assert tail == [kept] * 10, text


def test_pin_serves_the_newest_version_alone_labelled_stable(
    version_exports: Exports, tmp_path: Path
) -> None:
    base = base_with(version_exports, tmp_path / "models", tiny=[1])
    config = write_config(tmp_path / "models.config", {"tiny": base / "tiny"})
    lines: list[str] = []
    with standin_and_gateway(base, config, tmp_path) as (server, _):
        modelserver = ModelServer(server.address)
        try:
            plan = Plan(model="tiny", candidate=1, models_config=config)
            assert Rollout(plan, modelserver, [], say=lines.append).pin() == 1
            # A run with nothing stable to compare with says how to fix it.
            only = Plan(model="tiny", candidate=1, models_config=config)
            with pytest.raises(RolloutError, match=r"serves v1 alone.*rollout pin"):
                Rollout(only, modelserver, [Gateway("http://127.0.0.1:1", admin_key=None)]).run()
        finally:
            modelserver.close()
    entry = model_entry(read_models_config(config), "tiny")
    assert pinned_versions(entry) == [1] and dict(entry.version_labels) == {"stable": 1}
    assert lines == ["models.config: serve v1; stable -> v1: pinned"]


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"steps": (0.5, 0.25)}, "steps must be increasing"),
        ({"steps": (0.0, 1.0)}, "steps must be increasing"),
        ({"steps": (0.5, 1.5)}, "steps must be increasing"),
        ({"window_s": 0.0}, "window_s must be > 0"),
    ],
)
def test_a_plan_that_makes_no_sense_is_refused(changes: dict[str, Any], match: str) -> None:
    with pytest.raises(RolloutError, match=match):
        Plan(model="tiny", candidate=2, models_config=Path("models.config"), **changes)


def test_the_cli_pins_and_refuses_a_bad_plan_in_one_line(
    version_exports: Exports, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from resnet_serving.cli import main

    base = base_with(version_exports, tmp_path / "models", tiny=[1])
    config = write_config(tmp_path / "models.config", {"tiny": base / "tiny"})
    with standin_and_gateway(base, config, tmp_path) as (server, live):
        common = ["--model", "tiny", "--models-config", str(config), "--tfserving", server.address]
        assert main(["rollout", "pin", *common]) == 0
        bad = ["rollout", "run", *common, "--version", "2", "--gateway", live.url]
        assert main([*bad, "--steps", "50,25"]) == 2
        assert main([*bad, "--steps", "five"]) == 2
    out, err = capsys.readouterr()
    assert out == "rollout: models.config: serve v1; stable -> v1: pinned\n"
    assert err.splitlines() == [
        "error: steps must be increasing shares in (0, 1]. Received: steps=[0.5, 0.25]",
        "error: --steps must be percents like 5,25,100. Received: 'five'",
    ]
