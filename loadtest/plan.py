"""What one `loadtest run` or `loadtest sweep` will do, as frozen values checked once.

`loadtest.options` builds these from the CLI's options before anything is sent (a bad value
or a clash is a LoadTestError one-liner); the runner, the engine and the sweep take them,
never argparse's Namespace. Nothing here imports grpc, numpy or rich.

    RunPlan     target (HttpTargetPlan | GrpcTargetPlan), load (ClosedLoop | RateSteps |
                MaxRateSearch), inputs, bounds, workers, hard timeout, outputs
    SweepPlan   the gateway URL, one open-loop rate, the p99 target, inputs, bounds,
                workers, outputs, and the grid (GatewayGrid | TfsGrid)
    StepSpec    one bounded step (a rate or a concurrency): what the engine runs
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from loadtest.errors import LoadTestError

Arrival = Literal["constant", "poisson"]
Body = Literal["multipart", "raw", "json"]
ARRIVALS: tuple[Arrival, ...] = ("constant", "poisson")
BODIES: tuple[Body, ...] = ("multipart", "raw", "json")
GEN_FORMATS = {"jpeg": "JPEG", "jpg": "JPEG", "png": "PNG", "webp": "WEBP"}  # ours -> Pillow's
DEFAULT_PATH = "/v1/classify"
DEFAULT_DURATION_S = 10.0
MAX_STEPS = 50  # rates in one --rates / --ramp
MAX_SWEEP_POINTS = 24
HARD_TIMEOUT_SLACK_S = 30.0  # on top of every step's planned time (+5 s each)


@dataclass(frozen=True)
class StepSpec:
    """One step: open loop at `rate` or closed loop with `concurrency`, always bounded."""

    rate: float | None = None
    concurrency: int | None = None
    arrival: Arrival = "constant"
    warmup_s: float = 0.0
    duration_s: float | None = DEFAULT_DURATION_S
    requests: int | None = None  # measured requests (after the warm-up)
    timeout_s: float = 10.0
    seed: int = 0

    def __post_init__(self) -> None:
        if (self.rate is None) == (self.concurrency is None):
            raise LoadTestError(
                "give exactly one of --rate/--rates/--ramp (open loop) or --concurrency (closed loop)"
            )
        if self.rate is not None and not (0 < self.rate <= 1_000_000):
            raise LoadTestError(f"rate must be in (0, 1e6] requests/s. Received: {self.rate}")
        if self.concurrency is not None and not (1 <= self.concurrency <= 100_000):
            raise LoadTestError(f"--concurrency must be in 1..100000. Received: {self.concurrency}")
        if self.arrival not in ARRIVALS:
            raise LoadTestError(
                f"--arrival must be constant or poisson. Received: {self.arrival!r}"
            )
        if self.duration_s is None and self.requests is None:
            raise LoadTestError("a run must be bounded: give --duration or --requests")
        if self.duration_s is not None and self.duration_s <= 0:
            raise LoadTestError(f"--duration must be > 0 seconds. Received: {self.duration_s}")
        if self.requests is not None and self.requests < 1:
            raise LoadTestError(f"--requests must be >= 1. Received: {self.requests}")
        if self.warmup_s < 0 or self.timeout_s <= 0:
            raise LoadTestError(
                f"--warmup must be >= 0 and --timeout > 0. Received: {self.warmup_s}, {self.timeout_s}"
            )

    @property
    def open_loop(self) -> bool:
        return self.rate is not None

    def share(self, index: int, workers: int) -> tuple[int, int | None]:
        """Closed loop: (clients, measured requests) that worker `index` of `workers` runs."""

        def part(n: int) -> int:
            return n // workers + (1 if index < n % workers else 0)

        assert self.concurrency is not None
        return part(self.concurrency), None if self.requests is None else part(self.requests)

    def planned_s(self) -> float:
        """Upper estimate of the step's wall time, for the global hard timeout."""
        if self.duration_s is not None:
            body = self.duration_s
        elif self.rate is not None:
            body = (self.requests or 0) / self.rate
        else:
            body = (self.requests or 0) * self.timeout_s / (self.concurrency or 1)
        return self.warmup_s + body + self.timeout_s


# -- what is sent, and how long it may take ------------------------------------------------


@dataclass(frozen=True)
class Inputs:
    """The images sent: a folder (cycled) or generated ones, and how a request carries them."""

    images_dir: Path | None = None
    gen_sizes: tuple[tuple[int, int], ...] = ((640, 480),)  # (width, height)
    gen_formats: tuple[str, ...] = ("jpeg",)
    gen_count: int = 4
    per_request: int = 1
    body: Body = "multipart"
    top_k: int | None = None


@dataclass(frozen=True)
class Bounds:
    """How long each step and each request may take; the open-loop connection cap."""

    warmup_s: float = 1.0
    duration_s: float | None = DEFAULT_DURATION_S  # None: bounded by `requests` alone
    requests: int | None = None
    timeout_s: float = 10.0  # per request, counted from its due time
    connect_timeout_s: float = 3.0
    max_connections: int | None = None  # None: rate x timeout
    seed: int = 0

    def spec(self, *, arrival: Arrival = "constant", rate: float | None = None,
             concurrency: int | None = None) -> StepSpec:  # fmt: skip
        """One step of this shape at `rate` (open loop) or `concurrency` (closed loop)."""
        return StepSpec(rate=rate, concurrency=concurrency, arrival=arrival,
                        warmup_s=self.warmup_s, duration_s=self.duration_s, requests=self.requests,
                        timeout_s=self.timeout_s, seed=self.seed)  # fmt: skip

    def connection_cap(self, peak_rate: float) -> int:
        """`--max-connections`, or enough for `peak_rate` requests per second that each take
        up to the timeout (at least 64, at most 20000)."""
        return self.max_connections or max(64, min(20_000, int(peak_rate * self.timeout_s) + 1))


@dataclass(frozen=True)
class Outputs:
    out_dir: Path | None = None
    quiet: bool = False


# -- where requests go -----------------------------------------------------------------------


@dataclass(frozen=True)
class HttpTargetPlan:
    """The gateway's HTTP API: `url` split once into host, port and path (+ query)."""

    url: str
    host: str
    port: int
    path: str

    @classmethod
    def parse(cls, url: str) -> HttpTargetPlan:
        host, port, path = parse_url(url)
        return cls(url, host, port, path)


@dataclass(frozen=True)
class GrpcTargetPlan:
    """TF Serving's gRPC Predict. The input size comes from the served signature
    (GetModelMetadata); `size` (WIDTH, HEIGHT) is needed only where it leaves H and W open."""

    address: str
    model: str
    size: tuple[int, int] | None = None


TargetPlan = HttpTargetPlan | GrpcTargetPlan


# -- the load shape ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ClosedLoop:
    """N clients, each sending its next request when the last one finished."""

    concurrency: int


@dataclass(frozen=True)
class RateSteps:
    """Open loop, one step per rate, in order."""

    rates: tuple[float, ...]
    arrival: Arrival = "constant"


@dataclass(frozen=True)
class MaxRateSearch:
    """Open loop: double from `start_rate` until a step fails the target, then bisect."""

    p99_target_ms: float
    start_rate: float = 50.0
    max_rate: float = 20_000.0
    bisect_steps: int = 4
    max_error_rate: float = 0.01
    arrival: Arrival = "constant"

    def max_steps(self) -> int:
        """Upper bound on the steps the search runs (doublings + bisections)."""
        doublings = math.floor(math.log2(self.max_rate / self.start_rate)) + 1
        return max(1, doublings) + self.bisect_steps


Load = ClosedLoop | RateSteps | MaxRateSearch


@dataclass(frozen=True)
class RunPlan:
    """Everything one `loadtest run` does, decided before the first request."""

    target: TargetPlan
    load: Load
    inputs: Inputs = Inputs()
    bounds: Bounds = Bounds()
    workers: int = 1
    hard_timeout_s: float | None = None  # None: every step's planned time plus slack
    outputs: Outputs = Outputs()

    @property
    def open_loop(self) -> bool:
        return not isinstance(self.load, ClosedLoop)

    def first_spec(self) -> StepSpec:
        """The first step (the closed-loop step, the first rate, or the search's start)."""
        load = self.load
        if isinstance(load, ClosedLoop):
            return self.bounds.spec(concurrency=load.concurrency)
        rate = load.rates[0] if isinstance(load, RateSteps) else load.start_rate
        return self.bounds.spec(arrival=load.arrival, rate=rate)

    def peak_rate(self) -> float:
        load = self.load
        if isinstance(load, RateSteps):
            return max(load.rates)
        return load.max_rate if isinstance(load, MaxRateSearch) else 1.0

    def connection_cap(self) -> int:
        """Closed loop: one connection per client; open loop: see Bounds.connection_cap."""
        if isinstance(self.load, ClosedLoop):
            return self.load.concurrency
        return self.bounds.connection_cap(self.peak_rate())

    def worker_count(self) -> int:
        """`workers`, but no more than the clients in closed loop (each runs one at least)."""
        if isinstance(self.load, ClosedLoop):
            return min(self.workers, self.load.concurrency)
        return self.workers

    def hard_timeout(self) -> float:
        """`--hard-timeout`, or every step's planned time (+5 s each) plus 30 s."""
        if self.hard_timeout_s is not None:
            return self.hard_timeout_s
        load = self.load
        if isinstance(load, RateSteps):
            specs = [self.bounds.spec(arrival=load.arrival, rate=r) for r in load.rates]
        else:  # the search's slowest step is its first (lowest rate), with --requests
            n = load.max_steps() if isinstance(load, MaxRateSearch) else 1
            specs = [self.first_spec()] * n
        return sum(s.planned_s() + 5.0 for s in specs) + HARD_TIMEOUT_SLACK_S

    def describe(self) -> dict[str, Any]:
        """The plan as JSON-able data (result.json's `options`)."""
        return _jsonable(dataclasses.asdict(self)) | {
            "target_kind": "grpc" if isinstance(self.target, GrpcTargetPlan) else "http",
            "load_kind": type(self.load).__name__,
            "hard_timeout_s": self.hard_timeout(),
        }


# -- loadtest sweep --------------------------------------------------------------------------


@dataclass(frozen=True)
class GatewayGrid:
    """Start the gateway once per (max batch, max wait) with RESNET_SERVING_* set."""

    cmd: tuple[str, ...]
    max_batch: tuple[int, ...]
    max_wait_ms: tuple[float, ...]

    def points(self) -> list[tuple[int, float]]:
        return [(b, w) for b in self.max_batch for w in self.max_wait_ms]


@dataclass(frozen=True)
class TfsGrid:
    """Restart TF Serving once per batching setting; the gateway at the URL stays up.

    `max_batch` None: every batch bucket from the gateway's largest batch up. The gateway's
    largest batch is `gateway_max_batch` padded to its bucket (None: the largest bucket).
    """

    restart_cmd: str
    max_batch: tuple[int, ...] | None
    timeout_us: tuple[int, ...]
    threads: tuple[int, ...]
    gateway_max_batch: int | None = None


@dataclass(frozen=True)
class SweepPlan:
    """Everything one `loadtest sweep` does: one open-loop rate against every setting."""

    target: HttpTargetPlan
    rate: float
    p99_target_ms: float
    grid: GatewayGrid | TfsGrid
    max_error_rate: float = 0.01
    arrival: Arrival = "constant"
    model_dir: Path | None = None  # where to read the batch buckets (else GET /v1/models)
    ready_timeout_s: float = 120.0
    hard_timeout_s: float | None = None  # None: every point's planned time plus slack
    inputs: Inputs = Inputs()
    bounds: Bounds = Bounds()
    workers: int = 1
    outputs: Outputs = Outputs()

    def spec(self) -> StepSpec:
        return self.bounds.spec(arrival=self.arrival, rate=self.rate)

    def hard_timeout(self, points: int) -> float:
        """`--hard-timeout`, or per point: start-up (--ready-timeout) + the step + 5 s; + 30 s."""
        if self.hard_timeout_s is not None:
            return self.hard_timeout_s
        per = self.ready_timeout_s + self.spec().planned_s() + 5.0
        return points * per + HARD_TIMEOUT_SLACK_S

    @property
    def out_dir(self) -> Path:
        return self.outputs.out_dir or Path(".")


# -- helpers -------------------------------------------------------------------------------


def parse_url(url: str) -> tuple[str, int, str]:
    """`http://host:port/path?query` -> (host, port, path+query); the path defaults to /v1/classify."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise LoadTestError(
            f"URL must look like http://HOST[:PORT][/PATH] (https is not supported). Received: {url!r}"
        )
    try:
        port = parts.port or 80
    except ValueError as exc:
        raise LoadTestError(f"URL has a bad port. Received: {url!r}") from exc
    path = parts.path if parts.path not in ("", "/") else DEFAULT_PATH
    if parts.query:
        path += "?" + parts.query
    return parts.hostname, port, path


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return str(value) if isinstance(value, Path) else value
