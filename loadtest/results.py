"""What a run measured, as typed values, and their JSON form (`result.json`, `sweep.json`).

    RunResult      one `loadtest run`: target, options, steps, max_rate, warnings
     +-- StepResult one step: counts, Latency (HdrHistogram summary), Server-Timing stages,
                    Schedule (open loop), per-second TimePoints, Generator CPU, error texts
    SweepResult    one `loadtest sweep`: a SweepPoint (setting + StepResult) per setting

`to_json()` writes the documented schema (docs/loadtest.md); `from_json()` reads it back,
including files written under the previous schema, so `compare` reads old runs. Only
this module knows the JSON layout; everything else uses attributes.

Schema history: `resnet-serving.loadtest/1` had `options` as the raw CLI options and no
`error_details`; `/2` has `options` as the parsed plan and `error_details` per step.
"""

from __future__ import annotations

import os
import platform
import re
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal, TypeVar

SCHEMA = "resnet-serving.loadtest/2"
READABLE_SCHEMAS = ("resnet-serving.loadtest/1", SCHEMA)
_PERCENTILE_KEY = re.compile(r"^p(\d+(?:\.\d+)?)_ms$")


def percentile_key(p: float) -> str:
    """`50.0` -> `p50_ms`, `99.9` -> `p99.9_ms` (the names used in JSON, CSV and tables)."""
    return f"p{p:g}_ms"


@dataclass(frozen=True)
class Latency:
    """A histogram's summary in ms; every value None when nothing was recorded."""

    count: int = 0
    min_ms: float | None = None
    mean_ms: float | None = None
    percentiles_ms: Mapping[float, float | None] = field(default_factory=dict)
    max_ms: float | None = None

    def at(self, p: float) -> float | None:
        """The value at percentile `p` (e.g. 99.0), None if not recorded."""
        return self.percentiles_ms.get(p)

    @property
    def p50_ms(self) -> float | None:
        return self.at(50.0)

    @property
    def p99_ms(self) -> float | None:
        return self.at(99.0)

    def to_json(self) -> dict[str, Any]:
        pct = {percentile_key(p): v for p, v in self.percentiles_ms.items()}
        return {"count": self.count, "min_ms": self.min_ms, "mean_ms": self.mean_ms, **pct,
                "max_ms": self.max_ms}  # fmt: skip

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Latency:
        pct = {float(m[1]): v for k, v in doc.items() if (m := _PERCENTILE_KEY.match(k))}
        return cls(int(doc.get("count", 0)), doc.get("min_ms"), doc.get("mean_ms"), pct,
                   doc.get("max_ms"))  # fmt: skip


@dataclass(frozen=True)
class Schedule:
    """Open loop only: how well the generator kept its schedule."""

    late_threshold_ms: float
    late: int
    late_fraction: float
    send_lag_p50_ms: float | None
    send_lag_p99_ms: float | None
    send_lag_max_ms: float | None
    waited_for_connection: int
    behind: bool


@dataclass(frozen=True)
class TimePoint:
    """One second of the measured window: completions by done time, p50/p99 by due time."""

    t_s: int
    completed: int
    p50_ms: float | None
    p99_ms: float | None


@dataclass(frozen=True)
class Generator:
    """CPU the load generator spent; one core sustains about 1e6 / cpu_us_per_request."""

    cpu_s: float
    cpu_us_per_request: float | None


F = TypeVar("F", Schedule, TimePoint, Generator)


def _flat(cls: type[F], doc: Mapping[str, Any]) -> F:
    values: dict[str, Any] = {f.name: doc.get(f.name) for f in fields(cls)}
    return cls(**values)


@dataclass(frozen=True)
class StepResult:
    """One step's numbers. Latency percentiles are over successful responses; failures are
    counted by status (`status_counts`), by transport kind (`transport_errors`) and by the
    server's own error text (`error_details`, deduplicated)."""

    mode: Literal["open", "closed"]
    offered_rate: float | None
    arrival: str | None
    concurrency: int | None
    warmup_s: float
    started_at: float
    window_s: float
    elapsed_s: float
    requests: int
    ok: int
    errors: int
    error_rate: float
    throughput_rps: float
    latency_ms: Latency
    status_counts: dict[str, int]
    transport_errors: dict[str, int]
    error_details: dict[str, int]
    stages_ms: dict[str, Latency]
    schedule: Schedule | None
    timeseries: tuple[TimePoint, ...]
    generator: Generator
    warnings: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """`50/s` (open loop) or `c=4` (closed loop)."""
        return f"{self.offered_rate:g}/s" if self.mode == "open" else f"c={self.concurrency}"

    def failures(self) -> dict[str, int]:
        """Non-success statuses and transport errors with their counts."""
        bad = {**self.status_counts, **self.transport_errors}
        return {k: v for k, v in bad.items() if not (k.startswith("2") or k == "OK")}

    def to_json(self) -> dict[str, Any]:
        doc = {f.name: getattr(self, f.name) for f in fields(self)}
        doc.update(
            latency_ms=self.latency_ms.to_json(),
            stages_ms={k: v.to_json() for k, v in self.stages_ms.items()},
            schedule=None if self.schedule is None else asdict(self.schedule),
            timeseries=[asdict(t) for t in self.timeseries],
            generator=asdict(self.generator),
            warnings=list(self.warnings),
        )
        return doc

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> StepResult:
        plain: dict[str, Any] = {f.name: doc.get(f.name) for f in fields(cls)}
        sched = doc.get("schedule")
        plain.update(
            latency_ms=Latency.from_json(doc["latency_ms"]),
            status_counts=dict(doc.get("status_counts") or {}),
            transport_errors=dict(doc.get("transport_errors") or {}),
            error_details=dict(doc.get("error_details") or {}),  # absent before schema /2
            stages_ms={k: Latency.from_json(v) for k, v in (doc.get("stages_ms") or {}).items()},
            schedule=None if sched is None else _flat(Schedule, sched),
            timeseries=tuple(_flat(TimePoint, t) for t in doc.get("timeseries") or ()),
            generator=_flat(Generator, doc.get("generator") or {}),
            warnings=tuple(doc.get("warnings") or ()),
        )
        return cls(**plain)


@dataclass(frozen=True)
class MaxRate:
    """What `--find-max-rate` found: the highest passing rate (None: none passed)."""

    rate: float | None
    p99_target_ms: float


def machine_info() -> dict[str, Any]:
    return {"host": platform.node(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "platform": platform.platform()}  # fmt: skip


def _utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class RunResult:
    """One `loadtest run`. Steps are appended as they finish (partial after a hard timeout);
    read from an older schema, it is written back in the current one.

    `target` (what the runner connected to) and `options` (the plan) are descriptive
    records, kept as JSON-able mappings."""

    target: dict[str, Any]
    options: dict[str, Any]
    steps: list[StepResult] = field(default_factory=list)
    max_rate: MaxRate | None = None
    warnings: list[str] = field(default_factory=list)
    machine: dict[str, Any] = field(default_factory=machine_info)
    created_at: str = field(default_factory=_utc_now)

    @property
    def where(self) -> str:
        """The URL or gRPC address the run was aimed at."""
        return str(self.target.get("url") or self.target.get("address") or "?")

    def reported_step(self) -> StepResult | None:
        """The step the run reports: the one at the max rate found (`--find-max-rate`), else
        the last one. Its Server-Timing stages are the ones worth printing."""
        if self.max_rate is not None and self.max_rate.rate is not None:
            for step in reversed(self.steps):
                if step.offered_rate == self.max_rate.rate:
                    return step
        return self.steps[-1] if self.steps else None

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "created_at": self.created_at, "machine": self.machine,
                "target": self.target, "options": self.options,
                "steps": [s.to_json() for s in self.steps],
                "max_rate": None if self.max_rate is None else asdict(self.max_rate),
                "warnings": list(self.warnings)}  # fmt: skip

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> RunResult:
        """Read a document of any READABLE_SCHEMAS (KeyError/TypeError/ValueError if broken)."""
        m = doc.get("max_rate")
        return cls(target=dict(doc.get("target") or {}), options=dict(doc.get("options") or {}),
                   steps=[StepResult.from_json(s) for s in doc["steps"]],
                   max_rate=None if m is None else MaxRate(m.get("rate"), m["p99_target_ms"]),
                   warnings=list(doc.get("warnings") or ()), machine=dict(doc.get("machine") or {}),
                   created_at=str(doc.get("created_at", "")))  # fmt: skip


# -- loadtest sweep ----------------------------------------------------------------------------


@dataclass(frozen=True)
class GatewaySetting:
    """The gateway's micro-batching (RESNET_SERVING_MAX_BATCH_SIZE / _MAX_WAIT_MS)."""

    max_batch_size: int
    max_wait_ms: float

    @property
    def label(self) -> str:
        return f"gateway max_batch_size={self.max_batch_size} max_wait_ms={self.max_wait_ms:g}"

    def env_text(self) -> str:
        """`gateway.env`: the two settings as RESNET_SERVING_* lines."""
        return (f"RESNET_SERVING_MAX_BATCH_SIZE={self.max_batch_size}\n"
                f"RESNET_SERVING_MAX_WAIT_MS={self.max_wait_ms:g}\n")  # fmt: skip


@dataclass(frozen=True)
class TfsSetting:
    """TF Serving's BatchingParameters for one point (allowed sizes: the buckets up to max)."""

    max_batch_size: int
    batch_timeout_micros: int
    num_batch_threads: int
    allowed_batch_sizes: tuple[int, ...]

    @property
    def label(self) -> str:
        return (f"tfs max_batch_size={self.max_batch_size} batch_timeout_micros="
                f"{self.batch_timeout_micros} num_batch_threads={self.num_batch_threads}")  # fmt: skip


@dataclass(frozen=True)
class SweepPoint:
    setting: GatewaySetting | TfsSetting
    step: StepResult

    def to_json(self) -> dict[str, Any]:
        key = "gateway" if isinstance(self.setting, GatewaySetting) else "tfs"
        setting = asdict(self.setting)
        if isinstance(self.setting, TfsSetting):
            setting["allowed_batch_sizes"] = list(self.setting.allowed_batch_sizes)
        return {key: setting, "step": self.step.to_json()}


@dataclass(frozen=True)
class SweepResult:
    """Every point measured, and the passing one with the lowest p99 (None if none passed)."""

    rate: float
    p99_target_ms: float
    points: tuple[SweepPoint, ...]
    best: SweepPoint | None
    warnings: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"schema": "resnet-serving.sweep/1", "rate": self.rate,
                "p99_target_ms": self.p99_target_ms, "points": [p.to_json() for p in self.points],
                "best": None if self.best is None else self.best.to_json(),
                "warnings": list(self.warnings)}  # fmt: skip
