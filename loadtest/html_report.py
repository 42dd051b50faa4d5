"""`report.html`: one self-contained page for a load-test run, or for two runs side by side.

Built with the standard library from `result.json` as a plain dict (the file's schema is
the contract, not the Python types that produce it), so a report can be made from any saved
run. Tables (steps, Server-Timing stages, errors, warnings), the run's facts and options, and
the PNG plots embedded as `data:` URIs; CSS inline, no script. A Content-Security-Policy meta
tag lets the page load nothing but its own data URIs, so the file that opens offline, or
attached to an e-mail, is everything there is.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

REPORT_NAME = "report.html"
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
# What a plot shows, under the image (the README explains more).
_CAPTIONS = {
    "latency_vs_load": "Latency percentiles against the offered load (log scale), achieved "
    "throughput on the right axis. The knee is where p99 turns sharply upwards.",
    "latency_over_time": "Per-second p50 and p99 by due time, and completions per second, over "
    "the measured windows (steps back to back). A p99 spike with a dip in completions is a stall.",
}
_STAGE_KEYS = ("p50_ms", "p90_ms", "p99_ms", "max_ms")
_STAGE_ORDER = ("decode", "queue", "backend", "total")  # the gateway's pipeline, in order
# B/A ratios beyond this much either way are marked as a change in the comparison.
_CHANGE = 0.05
_STYLE = """
:root { color-scheme: light dark; --line: #c9ccd2; --muted: #5b5f66; --head: #eef0f3;
        --worse: #9b1c1c; --better: #1d6b2f; }
@media (prefers-color-scheme: dark) {
  :root { --line: #41454c; --muted: #a2a7ae; --head: #24272b; --worse: #ff9c9c; --better: #8fdc9f; }
}
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto;
       max-width: 80rem; padding: 1rem; }
h1 { font-size: 1.5rem; margin: 0 0 .25rem; } h2 { font-size: 1.2rem; margin: 1.5rem 0 .5rem; }
h3 { font-size: 1.05rem; margin: 1rem 0 .4rem; }
.muted, caption, figcaption { color: var(--muted); }
caption { text-align: left; padding: .25rem 0; white-space: nowrap; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; margin: .25rem 0 1rem; }
th, td { border: 1px solid var(--line); padding: .25rem .5rem; text-align: right; white-space: nowrap; }
th { background: var(--head); } td.text, th.text { text-align: left; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: .15rem 1rem; margin: 0; }
dt { color: var(--muted); } dd { margin: 0; overflow-wrap: anywhere; }
.warn { border-left: 4px solid var(--worse); padding: .25rem .75rem; }
.worse { color: var(--worse); font-weight: 600; } .better { color: var(--better); font-weight: 600; }
figure { margin: 1rem 0; } img { max-width: 100%; height: auto; border: 1px solid var(--line); }
.pair { display: grid; grid-template-columns: repeat(auto-fit, minmax(30rem, 1fr)); gap: 1rem; }
.pair > section, .stack > section { min-width: 0; }
pre { overflow-x: auto; background: var(--head); padding: .5rem; }
"""


# ---------------------------------------------------------------- formatting


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: Any, digits: int = 2) -> str:
    """A number for a table cell: thousands separators, `digits` decimals; '-' for none."""
    if isinstance(value, bool) or value is None:
        return "-" if value is None else str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.{1 if abs(value) >= 100 else digits}f}"
    return _esc(value)


def _pct(fraction: Any) -> str:
    return "-" if not isinstance(fraction, (int, float)) else f"{fraction * 100:.2f} %"


def _load(step: dict[str, Any]) -> str:
    """'200/s' for an open-loop step, 'c=8' for a closed-loop one."""
    if step.get("mode") == "open":
        return f"{step.get('offered_rate', 0):g}/s"
    return f"c={step.get('concurrency')}"


def _latency_keys(steps: Sequence[dict[str, Any]]) -> list[str]:
    """The latency columns in the file's own order (min, mean, p50 ... max), count left out."""
    keys: list[str] = []
    for step in steps:
        keys += [k for k in step.get("latency_ms", {}) if k != "count" and k not in keys]
    return keys


def _head(key: str) -> str:
    return key.removesuffix("_ms")


def _table(caption: str, headers: Sequence[str], rows: Iterable[str], text_cols: int = 1) -> str:
    """A table in a scrolling box; its first `text_cols` columns hold words, not numbers."""
    text = ' class="text"'
    ths = "".join(f'<th scope="col"{text if i < text_cols else ""}>{_esc(h)}</th>'
                  for i, h in enumerate(headers))  # fmt: skip
    return (f'<div class="scroll"><table><caption>{_esc(caption)}</caption>'
            f"<thead><tr>{ths}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>")  # fmt: skip


def _cell(value: str, key: str = "", cls: str = "") -> str:
    attrs = (f' data-key="{_esc(key)}"' if key else "") + (f' class="{cls}"' if cls else "")
    return f"<td{attrs}>{value}</td>"


# ---------------------------------------------------------------- one run


def _flat_options(opts: dict[str, Any]) -> dict[str, Any]:
    """The options as schema /1 wrote them (flat CLI names), from schema /2's parsed plan
    (`load`, `bounds`, `inputs`) or as they are."""
    if not isinstance(opts.get("load"), dict):
        return opts
    load, bounds, inputs = opts["load"], opts.get("bounds") or {}, opts.get("inputs") or {}
    search = opts.get("load_kind") == "MaxRateSearch"
    return {
        **{k: v for k, v in load.items() if k in ("concurrency", "rates", "arrival")},
        "find_max_rate": search or None,
        **({"p99_target_ms": load.get("p99_target_ms"), "start_rate": load.get("start_rate")} if search else {}),
        "duration": bounds.get("duration_s"), "warmup": bounds.get("warmup_s"),
        "timeout": bounds.get("timeout_s"), "requests": bounds.get("requests"),
        "body": inputs.get("body"), "images_per_request": inputs.get("per_request", 1),
        "images": inputs.get("images_dir"), "workers": opts.get("workers", 1),
    }  # fmt: skip


def _facts(result: dict[str, Any]) -> str:
    target = result.get("target", {})
    opts = _flat_options(result.get("options", {}))
    machine = result.get("machine", {})
    where = target.get("url") or target.get("address") or "-"
    facts = [
        ("target", f"{target.get('kind', '?')} {where}{target.get('path', '') or ''}"),
        ("created", result.get("created_at", "-")),
        ("machine", f"{machine.get('host', '?')}, {machine.get('cpus', '?')} CPUs, "
                    f"Python {machine.get('python', '?')}, {machine.get('platform', '?')}"),
        ("load", ", ".join(f"{k}={opts[k]}" for k in ("concurrency", "rate", "rates", "ramp",
                                                      "arrival", "find_max_rate", "p99_target_ms",
                                                      "start_rate")
                           if opts.get(k) not in (None, False)) or "-"),
        ("per step", f"duration {opts.get('duration') or '-'} s, warm-up {opts.get('warmup', '-')} s, "
                     f"timeout {opts.get('timeout', '-')} s"
                     + (f", {opts['requests']} requests" if opts.get("requests") else "")),
        ("requests", f"body {opts.get('body', '-')}, {opts.get('images_per_request', 1)} image(s) "
                     f"each, {target.get('request_bytes', '?')} bytes, "
                     f"images {opts.get('images') or 'generated'}"),
        ("generator", f"{opts.get('workers', 1)} worker process(es)"),
    ]  # fmt: skip
    max_rate = result.get("max_rate")
    if max_rate:
        rate = max_rate.get("rate")
        found = "none passed" if rate is None else f"{rate:g}/s"
        facts.append(("max rate", f"{found} with p99 <= {max_rate.get('p99_target_ms', 0):g} ms"))
    items = "".join(f"<dt>{_esc(k)}</dt><dd>{_esc(v)}</dd>" for k, v in facts)
    return f"<dl>{items}</dl>"


def _steps_table(steps: Sequence[dict[str, Any]]) -> str:
    keys = _latency_keys(steps)
    headers = ["load", "requests", "ok", "errors", "error rate", "achieved/s",
               *map(_head, keys), "late", "send lag p99"]  # fmt: skip
    rows = []
    for i, step in enumerate(steps):
        lat = step.get("latency_ms", {})
        sched = step.get("schedule") or {}
        cells = [
            f'<th scope="row" class="text">{_esc(_load(step))}</th>',
            _cell(_num(step.get("requests")), "requests"),
            _cell(_num(step.get("ok")), "ok"),
            _cell(_num(step.get("errors")), "errors"),
            _cell(_pct(step.get("error_rate")), "error_rate"),
            _cell(_num(step.get("throughput_rps"), 1), "throughput_rps"),
            *(_cell(_num(lat.get(k)), f"latency_ms/{k}") for k in keys),
            _cell(_pct(sched.get("late_fraction")), "schedule/late_fraction"),
            _cell(_num(sched.get("send_lag_p99_ms")), "schedule/send_lag_p99_ms"),
        ]
        rows.append(f'<tr data-step="{i}">{"".join(cells)}</tr>')
    return _table("Latency per step (ms), counted from each request's due time", headers, rows)


def _stages_table(steps: Sequence[dict[str, Any]]) -> str:
    rows = []
    for i, step in enumerate(steps):
        stages = step.get("stages_ms") or {}
        order = [*(n for n in _STAGE_ORDER if n in stages), *sorted(set(stages) - {*_STAGE_ORDER})]
        for name, s in ((n, stages[n]) for n in order):
            cells = "".join(_cell(_num(s.get(k)), f"stages_ms/{name}/{k}") for k in _STAGE_KEYS)
            rows.append(f'<tr data-step="{i}" data-stage="{_esc(name)}">'
                        f'<th scope="row" class="text">{_esc(_load(step))}</th>'
                        f'<td class="text">{_esc(name)}</td>{cells}</tr>')  # fmt: skip
    if not rows:
        return '<p class="muted">No Server-Timing stages (the target did not send the header).</p>'
    return _table("Server-Timing stages reported by the gateway (ms)",
                  ["load", "stage", *map(_head, _STAGE_KEYS)], rows, 2)  # fmt: skip


def _problems(result: dict[str, Any]) -> str:
    items = []
    for step in result.get("steps", []):
        bad = {**step.get("status_counts", {}), **step.get("transport_errors", {})}
        bad = {k: v for k, v in bad.items() if not (str(k).startswith("2") or k == "OK")}
        if bad:
            counts = ", ".join(f"{k}: {v}" for k, v in bad.items())
            items.append(f"{_load(step)}: errors {counts}")
        # What the server said, once per distinct text (schema /2).
        items += [
            f"{_load(step)}: {n} x {text}" for text, n in step.get("error_details", {}).items()
        ]
        items += [f"{_load(step)}: {w}" for w in step.get("warnings", [])]
    items += list(result.get("warnings", []))
    if not items:
        return '<p class="muted">No errors and no warnings.</p>'
    return "".join(f'<p class="warn">{_esc(text)}</p>' for text in items)


def _plots(plots: Sequence[Path]) -> str:
    figures = []
    for path in plots:
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        what = path.stem.replace("_", " ")
        caption = _CAPTIONS.get(path.stem, "")
        figures.append(f'<figure><img src="data:image/png;base64,{data}" alt="Plot: {_esc(what)}">'
                       f"<figcaption><strong>{_esc(path.name)}</strong>. {_esc(caption)}"
                       "</figcaption></figure>")  # fmt: skip
    return "".join(figures) or '<p class="muted">No plots (no step completed a request).</p>'


def _sections(result: dict[str, Any], plots: Sequence[Path]) -> list[tuple[str, str]]:
    """(heading, html) of each part of one run's report, in reading order."""
    steps = result.get("steps", [])
    options = json.dumps(result.get("options", {}), indent=2, sort_keys=True)
    return [
        ("The run", _facts(result)
         + f"<details><summary>All options</summary><pre>{_esc(options)}</pre></details>"),
        ("Latency", _steps_table(steps)),
        ("Where the time goes", _stages_table(steps)),
        ("Errors and warnings", _problems(result)),
        ("Plots", _plots(plots)),
    ]  # fmt: skip


def _page(title: str, body: str) -> str:
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_esc(title)}</title><style>{_STYLE}</style></head>"
        f"<body>{body}</body></html>\n"
    )


def render_run(result: dict[str, Any], plots: Sequence[Path] = ()) -> str:
    """The HTML of one run's report."""
    target = result.get("target", {})
    title = f"Load test: {target.get('url') or target.get('address') or 'unknown target'}"
    body = "".join(f"<h2>{_esc(h)}</h2>{part}" for h, part in _sections(result, plots))
    return _page(title, f"<h1>{_esc(title)}</h1>{body}")


def write_run_report(result: dict[str, Any], out_dir: Path, plots: Sequence[Path] = ()) -> Path:
    """Write `out_dir/report.html` for one run; `plots` are the PNG files to embed."""
    path = Path(out_dir) / REPORT_NAME
    path.write_text(render_run(result, plots), encoding="utf-8")
    return path


# ---------------------------------------------------------------- two runs

Metric = tuple[str, ...]  # a path of keys into a step: ("latency_ms", "p99.9_ms")


def _metric(step: dict[str, Any], key: Metric) -> float | None:
    value: Any = step
    for part in key:
        value = value.get(part) if isinstance(value, dict) else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _change(key: Metric, ratio: float | None) -> str:
    """'worse' when latency or errors grew, or throughput fell, by more than _CHANGE."""
    if ratio is None:
        return "-"
    if abs(ratio - 1.0) <= _CHANGE:
        return "same"
    higher_is_better = key == ("throughput_rps",)
    return "better" if (ratio > 1.0) == higher_is_better else "worse"


def _comparison_table(a: dict[str, Any], b: dict[str, Any]) -> str:
    steps_a, steps_b = a.get("steps", []), b.get("steps", [])
    keys: list[Metric] = [("throughput_rps",), ("error_rate",),
                          *(("latency_ms", k) for k in _latency_keys([*steps_a, *steps_b]))]  # fmt: skip
    rows = []
    for i, (sa, sb) in enumerate(zip(steps_a, steps_b, strict=False)):
        load = _load(sa) if _load(sa) == _load(sb) else f"{_load(sa)} vs {_load(sb)}"
        for key in keys:
            va, vb = _metric(sa, key), _metric(sb, key)
            ratio = vb / va if va and vb is not None else None
            change = _change(key, ratio)
            shown = _pct if key == ("error_rate",) else _num
            rows.append(
                f'<tr data-step="{i}" data-metric="{_esc("/".join(key))}">'
                f'<th scope="row" class="text">{_esc(load)}</th>'
                f'<td class="text">{_esc(_head(key[-1]))}</td>'
                f"{_cell(shown(va), 'a')}{_cell(shown(vb), 'b')}"
                f"{_cell('-' if ratio is None else f'{ratio:.2f}x', 'ratio')}"
                f"{_cell(change, 'change', change if change in ('better', 'worse') else '')}</tr>"
            )
    unpaired = abs(len(steps_a) - len(steps_b))
    note = (f'<p class="muted">{unpaired} step(s) without a partner are left out: steps are '
            "paired by position.</p>" if unpaired else "")  # fmt: skip
    return note + _table("Steps paired by position: A, B and B/A (latency in ms)",
                         ["load", "metric", "A", "B", "B/A", "B vs A"], rows, 2)  # fmt: skip


def render_compare(
    a: dict[str, Any],
    b: dict[str, Any],
    *,
    names: tuple[str, str] = ("A", "B"),
    plots: tuple[Sequence[Path], Sequence[Path]] = ((), ()),
) -> str:
    """The HTML of two runs side by side: the B/A table, then each part of A next to B's."""
    title = f"Load test comparison: {names[0]} vs {names[1]}"
    parts = [_sections(r, p) for r, p in zip((a, b), plots, strict=True)]
    body = [f"<h1>{_esc(title)}</h1><p>A = {_esc(names[0])}<br>B = {_esc(names[1])}</p>",
            f"<h2>B against A</h2>{_comparison_table(a, b)}"]  # fmt: skip
    for (heading, part_a), (_, part_b) in zip(*parts, strict=True):
        layout = "stack" if heading == "Latency" else "pair"  # wide tables one above the other
        body.append(f'<h2>{_esc(heading)}</h2><div class="{layout}">'
                    f"<section><h3>A</h3>{part_a}</section>"
                    f"<section><h3>B</h3>{part_b}</section></div>")  # fmt: skip
    return _page(title, "".join(body))


def plots_beside(result_path: Path) -> list[Path]:
    """The PNG plots written next to a result.json (as `loadtest run --out` leaves them)."""
    known = list(_CAPTIONS)  # the plots we know first, in their order; then any others
    found = Path(result_path).parent.glob("*.png")
    return sorted(found, key=lambda p: (known.index(p.stem) if p.stem in known else 99, p.name))


def write_compare_report(
    a: dict[str, Any], b: dict[str, Any], path_a: Path, path_b: Path, out: Path
) -> Path:
    """Write the comparison of the runs saved at `path_a` and `path_b` (plots beside them)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    page = render_compare(
        a, b, names=(str(path_a), str(path_b)), plots=(plots_beside(path_a), plots_beside(path_b))
    )
    out.write_text(page, encoding="utf-8")
    return out
