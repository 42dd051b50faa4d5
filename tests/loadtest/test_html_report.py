"""report.html from `loadtest run --out` and `loadtest compare --html`, opened in headless Chromium.

Real runs of the CLI against the local gateway look-alike; the browser checks that every
embedded plot decodes and that every number in the tables is the one in result.json.
"""

from __future__ import annotations

import json
import re
import struct
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from loadtest.html_report import render_compare, render_run
from tests.browser import console_errors
from tests.loadtest.conftest import run_cli

TABLES_JS = """
return [...document.querySelectorAll('table')].map((t) => ({
  caption: t.caption ? t.caption.textContent : '',
  headers: [...t.querySelectorAll('thead th')].map((th) => th.textContent),
  rows: [...t.querySelectorAll('tbody tr')].map((tr) => ({
    step: tr.dataset.step, stage: tr.dataset.stage || null, metric: tr.dataset.metric || null,
    cells: [...tr.children].map((c) => ({ key: c.dataset.key || null, text: c.textContent })),
  })),
}));
"""
IMAGES_JS = """
return [...document.images].map((i) => ({ complete: i.complete, width: i.naturalWidth,
                                          alt: i.alt }));
"""
# Step-table headers that are not latency columns, and the result.json key each one shows.
STEP_COLUMNS = {
    "requests": "requests",
    "ok": "ok",
    "errors": "errors",
    "error rate": "error_rate",
    "achieved/s": "throughput_rps",
    "late": "schedule/late_fraction",
    "send lag p99": "schedule/send_lag_p99_ms",
}


@pytest.fixture(scope="module")
def runs(server_url: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """An open-loop run with two steps and a closed-loop run, each with --out."""
    a, b = tmp_path_factory.mktemp("open"), tmp_path_factory.mktemp("closed")
    ra = run_cli("run", server_url, "--rates", "20,40", "--duration", "1", "--warmup", "0.2",
                 "--gen-size", "64x48", "--out", str(a), "--quiet")  # fmt: skip
    assert ra.returncode == 0, ra.stderr
    assert f"wrote {a / 'report.html'}" in ra.stdout
    rb = run_cli("run", server_url, "--concurrency", "2", "--requests", "30", "--warmup", "0",
                 "--gen-size", "32x32", "--out", str(b), "--quiet")  # fmt: skip
    assert rb.returncode == 0, rb.stderr
    return a, b


def png_width(path: Path) -> int:
    return int(struct.unpack(">I", path.read_bytes()[16:20])[0])  # IHDR width


def shown_matches(text: str, expected: Any) -> bool:
    """`text` is `expected` as the report shows it: rounded to the digits it shows."""
    if expected is None:
        return text == "-"
    text = text.replace(",", "").strip()
    scale = 1.0
    if text.endswith("%"):
        text, scale = text.rstrip(" %"), 0.01
    digits = len(text.partition(".")[2])
    return abs(float(text) - float(expected) / scale) <= 0.5 * 10**-digits + 1e-9


def value_at(step: dict[str, Any], key: str) -> Any:
    value: Any = step
    for part in key.split("/"):
        value = (value or {}).get(part)
    return value


def open_report(browser: Any, path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    browser.get(path.as_uri())
    tables, images = browser.execute_script(TABLES_JS), browser.execute_script(IMAGES_JS)
    assert not console_errors(browser)  # nothing refused by the page's own CSP
    assert browser.execute_script("return performance.getEntriesByType('resource').length") == 0
    return tables, images


def check_step_table(table: dict[str, Any], steps: list[dict[str, Any]]) -> int:
    """Every cell of a step table against result.json; returns the number of cells checked."""
    checked = 0
    for row in table["rows"]:
        step = steps[int(row["step"])]
        for header, cell in zip(table["headers"][1:], row["cells"][1:], strict=True):
            key = STEP_COLUMNS.get(header, f"latency_ms/{header}_ms")
            assert cell["key"] == key, (header, cell)
            assert shown_matches(cell["text"], value_at(step, key)), (header, cell, step)
            checked += 1
    return checked


def test_run_report_in_the_browser(browser: Any, runs: tuple[Path, Path]) -> None:
    for out in runs:
        result = json.loads((out / "result.json").read_text())
        tables, images = open_report(browser, out / "report.html")

        pngs = sorted(out.glob("*.png"))
        assert pngs and len(images) == len(pngs)
        assert sorted(i["width"] for i in images) == sorted(map(png_width, pngs))
        assert all(i["complete"] and i["alt"].startswith("Plot: ") for i in images)

        steps_table, stages_table = tables
        assert len(steps_table["rows"]) == len(result["steps"])
        latency_columns = [h for h in steps_table["headers"] if h not in STEP_COLUMNS][1:]
        assert latency_columns == ["min", "mean", "p50", "p90", "p95", "p99", "p99.9", "max"]
        assert check_step_table(steps_table, result["steps"]) == len(result["steps"]) * 15

        shown = {(r["step"], r["stage"]) for r in stages_table["rows"]}
        assert shown == {(str(i), stage) for i, s in enumerate(result["steps"])
                         for stage in s["stages_ms"]}  # fmt: skip
        for row in stages_table["rows"]:
            step = result["steps"][int(row["step"])]
            for cell in row["cells"][2:]:
                assert shown_matches(cell["text"], value_at(step, cell["key"])), (row, cell)


def test_compare_report_in_the_browser(
    browser: Any, runs: tuple[Path, Path], tmp_path: Path
) -> None:
    a, b = (out / "result.json" for out in runs)
    out = tmp_path / "cmp" / "compare.html"
    proc = run_cli("compare", str(a), str(b), "--html", str(out))
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {out}" in proc.stdout
    ra, rb = json.loads(a.read_text()), json.loads(b.read_text())
    tables, images = open_report(browser, out)

    assert len(images) == len(list(runs[0].glob("*.png"))) + len(list(runs[1].glob("*.png")))
    assert all(i["complete"] and i["width"] > 0 for i in images)
    ratios = tables[0]
    assert ratios["headers"] == ["load", "metric", "A", "B", "B/A", "B vs A"]
    assert len(ratios["rows"]) == min(len(ra["steps"]), len(rb["steps"])) * 10
    for row in ratios["rows"]:
        sa, sb = ra["steps"][int(row["step"])], rb["steps"][int(row["step"])]
        va, vb = value_at(sa, row["metric"]), value_at(sb, row["metric"])
        cells = {c["key"]: c["text"] for c in row["cells"]}
        assert shown_matches(cells["a"], va) and shown_matches(cells["b"], vb), row
        if va:
            assert cells["ratio"] == f"{vb / va:.2f}x", row
        else:
            assert cells["ratio"] == "-", row
    # then each run's own tables, A above B: the same numbers as their files
    step_tables = [t for t in tables if t["caption"].startswith("Latency per step")]
    assert len(step_tables) == 2
    for table, result in zip(step_tables, (ra, rb), strict=True):
        check_step_table(table, result["steps"])


# ---------------------------------------------------------------- without a browser


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def tags_of(page: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = _Tags()
    parser.feed(page)
    return parser.tags


HOSTILE = "<script>alert(1)</script>"


def hostile_result() -> dict[str, Any]:
    """A gRPC-style result (no Server-Timing, no plots) whose strings carry markup."""
    step = {"mode": "closed", "concurrency": 3, "requests": 5, "ok": 4, "errors": 1,
            "error_rate": 0.2, "throughput_rps": 12.5,
            "latency_ms": {"count": 4, "p50_ms": 1.5, "max_ms": 2.0},
            "status_counts": {}, "transport_errors": {HOSTILE: 1}, "stages_ms": {},
            "schedule": None, "warnings": [HOSTILE]}  # fmt: skip
    return {"schema": "resnet-serving.loadtest/1", "target": {"kind": "grpc", "address": HOSTILE},
            "options": {"note": HOSTILE}, "steps": [step], "warnings": [], "max_rate": None}  # fmt: skip


def test_strings_from_the_file_are_text_never_markup() -> None:
    result = hostile_result()
    for page in (render_run(result), render_compare(result, result, names=(HOSTILE, "b"))):
        assert HOSTILE not in page and "&lt;script&gt;" in page
        tags = tags_of(page)
        assert "script" not in {t for t, _ in tags}
        refs = [v for _, attrs in tags for k, v in attrs.items() if k in ("src", "href")]
        assert all(str(v).startswith("data:image/png;base64,") for v in refs)
        assert "No Server-Timing stages" in page and "No plots" in page
        assert re.search(r"<th[^>]*>c=3</th>", page)


def test_a_report_opens_offline_by_construction(runs: tuple[Path, Path]) -> None:
    page = (runs[0] / "report.html").read_text(encoding="utf-8")
    [csp] = [
        a["content"] for t, a in tags_of(page) if a.get("http-equiv") == "Content-Security-Policy"
    ]
    assert csp == "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
    assert not [a for t, a in tags_of(page) if t in ("link", "script", "iframe", "object")]
