"""The report: result.json of this and the previous schema read back, and the terminal
summary showing the numbers of the rate it reports."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from rich.console import Console

from loadtest.compare import compare_rows
from loadtest.errors import LoadTestError
from loadtest.html_report import render_run
from loadtest.plan import Bounds, HttpTargetPlan, MaxRateSearch, RunPlan
from loadtest.report import load_result, print_summary, write_outputs
from loadtest.results import SCHEMA, Latency, MaxRate, RunResult, StepResult

V1 = Path(__file__).parent / "data" / "result_v1_find_max_rate.json"


def _printed(result: RunResult) -> str:
    console = Console(record=True, width=200)
    print_summary(result, console)
    return console.export_text()


def test_stages_shown_are_those_of_the_reported_rate() -> None:
    """--find-max-rate reported 80/s after bisecting at 120/s: the stages printed must be
    80/s's (they were the last step's)."""
    shown = _printed(load_result(V1))
    assert "max rate keeping p99 <= 60 ms: 80/s" in shown
    assert "Server-Timing stages (ms), step 80/s" in shown, shown
    assert "step 120/s" not in shown


def test_compare_reads_results_of_the_previous_schema(tmp_path: Path) -> None:
    old = load_result(V1)
    assert [s.offered_rate for s in old.steps] == [40.0, 80.0, 160.0, 120.0]
    assert all(s.error_details == {} for s in old.steps)  # absent in schema /1
    rows = compare_rows(old, old)
    assert rows and all(r["ratio"] in (1.0, None) for r in rows)
    # Written again, it is a current-schema file with the same steps.
    (path,) = [p for p in write_outputs(old, tmp_path) if p.name == "result.json"]
    doc, v1 = json.loads(path.read_text()), json.loads(V1.read_text())
    assert doc["schema"] == SCHEMA
    for new_step, old_step in zip(doc["steps"], v1["steps"], strict=True):
        assert new_step == {**old_step, "error_details": {}}
    assert load_result(path) == RunResult.from_json(doc)


@pytest.mark.parametrize(
    "content, needle",
    [
        ('{"schema": "something/9", "steps": []}', "not a loadtest result"),
        ('{"schema": "resnet-serving.loadtest/2", "steps": [{"mode": "open"}]}', "is damaged"),
        ("[1, 2", "cannot read a loadtest result"),
    ],
)
def test_unreadable_results_are_one_line_errors(tmp_path: Path, content: str, needle: str) -> None:
    path = tmp_path / "result.json"
    path.write_text(content)
    with pytest.raises(LoadTestError, match=needle):
        load_result(path)


def test_a_search_that_found_nothing_says_so(make_step: Callable[..., StepResult]) -> None:
    steps = [make_step(offered_rate=50.0, p99_ms=90.0, stages_ms={"total": Latency(1, 1.0)})]
    shown = _printed(RunResult(target={"url": "http://x"}, options={}, steps=steps,
                               max_rate=MaxRate(None, 60.0)))  # fmt: skip
    assert "max rate keeping p99 <= 60 ms: none passed" in shown
    assert "Server-Timing stages (ms), step 50/s" in shown


def test_html_report_reads_the_plan_and_the_error_texts(
    make_step: Callable[..., StepResult],
) -> None:
    """report.html of a schema /2 run: the load and bounds come from the parsed plan, a search
    that found nothing says so, and what the server said is listed."""
    plan = RunPlan(HttpTargetPlan.parse("http://h:1"), MaxRateSearch(60.0, start_rate=25.0),
                   bounds=Bounds(duration_s=3.0, warmup_s=0.5))  # fmt: skip
    step = make_step(errors=4, error_details={"HTTP 503 queue_full: 9 waiting": 4})
    doc = RunResult({"kind": "http", "url": "http://h:1"}, plan.describe(), [step],
                    max_rate=MaxRate(None, 60.0)).to_json()  # fmt: skip
    page = render_run(doc)
    assert "find_max_rate=True, p99_target_ms=60.0, start_rate=25.0" in page
    assert "duration 3.0 s, warm-up 0.5 s" in page
    assert "none passed with p99 &lt;= 60 ms" in page
    assert "100/s: 4 x HTTP 503 queue_full: 9 waiting" in page
