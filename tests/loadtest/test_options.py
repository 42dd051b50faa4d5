"""`loadtest run|sweep` options -> plans: parsed once, defaults resolved, clashes refused."""

from __future__ import annotations

import pytest

from loadtest.errors import LoadTestError
from loadtest.options import run_plan, sweep_plan
from loadtest.plan import ClosedLoop, GrpcTargetPlan, MaxRateSearch, RateSteps, RunPlan, SweepPlan
from resnet_serving.cli import build_parser

URL = "http://127.0.0.1:8000"


def _run(*argv: str) -> RunPlan:
    return run_plan(build_parser().parse_args(["loadtest", "run", *argv]))


def _sweep(*argv: str) -> SweepPlan:
    return sweep_plan(build_parser().parse_args(["loadtest", "sweep", URL, *argv]))


def test_a_run_plan_holds_every_option_resolved() -> None:
    plan = _run(URL, "--ramp", "10:30:10", "--arrival", "poisson", "--requests", "50",
                "--gen-size", "64x48,32x32", "--gen-format", "png", "--top-k", "3")  # fmt: skip
    assert plan.load == RateSteps((10.0, 20.0, 30.0), "poisson")
    assert plan.bounds.duration_s is None and plan.bounds.requests == 50  # --requests alone bounds
    assert plan.inputs.gen_sizes == ((64, 48), (32, 32)) and plan.inputs.gen_formats == ("png",)
    assert plan.target.path == "/v1/classify" and plan.inputs.top_k == 3  # type: ignore[union-attr]
    # Each step: warm-up 1 + 50 requests at its rate + 10 s timeout + 5 s; plus 30 s.
    assert plan.hard_timeout() == pytest.approx(sum(1 + 50 / r + 10 + 5 for r in (10, 20, 30)) + 30)
    assert plan.connection_cap() == 301  # 30 req/s x 10 s timeout


@pytest.mark.parametrize(
    "argv, load",
    [
        (["--concurrency", "4"], ClosedLoop(4)),
        (["--rate", "5"], RateSteps((5.0,))),
        (["--find-max-rate", "--p99-target-ms", "80", "--start-rate", "10", "--max-rate", "100"],
         MaxRateSearch(80.0, start_rate=10.0, max_rate=100.0)),
    ],
)  # fmt: skip
def test_load_shapes(argv: list[str], load: object) -> None:
    assert _run(URL, *argv).load == load


def test_grpc_target_size_is_optional() -> None:
    assert _run("--grpc", "h:8500", "--rate", "1").target == GrpcTargetPlan("h:8500", "demo", None)
    assert _run("--grpc", "h:8500", "--grpc-size", "32x24", "--rate", "1").target.size == (32, 24)  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "argv, needle",
    [
        ([URL, "--rate", "5", "--rates", "1,2"], "choose one of --rate, --rates"),
        ([URL], "choose a load"),
        ([URL, "--rates", "5,-1"], "--rates needs 1..50 rates, each > 0. Received: '5,-1'"),
        (["--grpc", "nope", "--rate", "1"], "--grpc must be HOST:PORT"),
        (["--grpc", "h:1", "--grpc-size", "0x3", "--rate", "1"], "--grpc-size must be WIDTHxHEIGHT"),
        ([URL, "--rate", "1", "--gen-format", "tiff"], "--gen-format must be one of"),
        ([URL, "--rate", "1", "--body", "raw", "--images-per-request", "2"], "--body raw sends one image"),
        ([URL, "--rate", "1", "--warmup", "-1"], "--warmup must be >= 0"),
        ([URL, "--find-max-rate", "--p99-target-ms", "9", "--start-rate", "90", "--max-rate", "10"],
         "--start-rate <= --max-rate"),
        ([URL, "--rate", "1", "--max-error-rate", "2"], "--max-error-rate must be in [0, 1]"),
    ],
)  # fmt: skip
def test_run_option_errors_name_the_option(argv: list[str], needle: str) -> None:
    with pytest.raises(LoadTestError) as err:
        _run(*argv)
    assert needle in str(err.value)


def test_sweep_plan_grids() -> None:
    gw = _sweep(
        "--rate", "50", "--p99-target-ms", "100", "--max-batch", "8,16", "--max-wait-ms", "2"
    )
    assert gw.grid.points() == [(8, 2.0), (16, 2.0)]  # type: ignore[union-attr]
    tfs = _sweep("--rate", "50", "--p99-target-ms", "100", "--tfs-restart-cmd", "x {batching_file}",
                 "--model-dir", "models/demo")  # fmt: skip
    assert tfs.grid.max_batch is None and tfs.model_dir is not None


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--max-batch", "8,x"], "--max-batch must be comma-separated integers"),
        (["--max-batch", "0,8"], "--max-batch values must be >= 1"),
        (["--max-batch", "1,2,3,4,5", "--max-wait-ms", "1,2,3,4,5"], "sweep has 25 points"),
        (["--cmd", "'unclosed"], "--cmd is not a valid command line"),
        (
            ["--tfs-restart-cmd", "x", "--gateway-max-batch", "0"],
            "--gateway-max-batch must be >= 1",
        ),
    ],
)
def test_sweep_option_errors_name_the_option(argv: list[str], needle: str) -> None:
    with pytest.raises(LoadTestError) as err:
        _sweep("--rate", "50", "--p99-target-ms", "100", *argv)
    assert needle in str(err.value)
