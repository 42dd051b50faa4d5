"""The gateway's ceiling: how many images/s its CPUs can feed a model server that is never the
bottleneck, and what that means for sizing a GPU host.

The model server is `testdoubles.fast_tfserving` (real gRPC, TF Serving's messages, no model,
no TensorFlow): each Predict answers after `--base-ms` + `--per-image-ms` per image (default
1.5 + 0.04 ms, about an H100 running ResNet-50 in bfloat16), with a 224x224, 1000-class
ResNet-50-shaped contract written as a manifest-only version folder. The gateway is
`resnet-serving serve --backend tfserving --workers N`; the load is our own open-loop load
tester (`resnet-serving loadtest run --rate R`, step by step: `find_max_rate`), one JPEG per
request (raw body), cycling through photo-like 640x480 and 1920x1080 files. All of it shares this machine's
cores: the load generator and the double take CPU the gateway cannot use.

Reported, each from the same run:

- **decode-only**: images/s of `service.decode.decode_image` on the same files, one process
  per core, nothing else running: the most the cores could do if decoding were all.
- **max images/s**: the highest offered rate whose p99 stays <= `--p99-ms` (100 ms), and at 80 %
  of it p50, p99 and the gateway's CPU: images per CPU-second of the gateway processes (read
  from /proc), its CPU per request minus the decode-only CPU per image ("excluding decode").
- **efficiency**: max images/s divided by decode-only images/s.
- **scaling**: max images/s with N processes over 1 process.
- **two ports** (`--two-ports`): the baseline the one-port mode must match: two separate
  one-process gateways on two ports, the load split evenly between them (two load tester
  processes, each at half the rate, started together; a step passes only when both halves
  pass, and its p50/p99 are the worse half's).
- **cores for one H100**: 23,000 images/s (ResNet-50 bf16) divided by images per CPU-second.
- **batching policy** (`--policies`): the fixed 5 ms window with one call in flight (the
  gateway before issue 16) against sending at once with 1, 2 or 4 calls in flight: p50 of
  lone requests at a low rate, and the max rate.

    python -m benchmarks.gateway_ceiling [--workers 1,2] [--sizes 640x480,1920x1080]
        [--duration 6] [--policies] [--two-ports] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import multiprocessing
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from benchmarks import gateway_proc
from benchmarks.gateway_proc import ROOT, gateway, now_utc
from benchmarks.preprocess import machine, make_photo
from contract.manifest import InputSpec, Manifest, Preprocessing, write_manifest
from testdoubles.fast_tfserving import Spawned, Speed, spawn_process

RESULTS = ROOT / "benchmarks" / "results"
MODEL = "resnet50_contract"
H100_IMAGES_S = 23_000  # ResNet-50 bf16 on one H100 (issue 16)
FILES_PER_SIZE = 6
CLK_TCK = os.sysconf("SC_CLK_TCK")


def write_contract(base: Path) -> Manifest:
    """A manifest-only version folder: the tfserving backend reads only the manifest."""
    manifest = Manifest(
        model_name=MODEL,
        model_version=1,
        architecture="resnet50",
        input=InputSpec(height=224, width=224),
        preprocessing=Preprocessing(crop_fraction=0.875),
        labels=tuple(f"class_{i}" for i in range(1000)),
        precision="bfloat16",
    )
    write_manifest(manifest, base / MODEL / "1")
    return manifest


def write_images(folder: Path, w: int, h: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in range(FILES_PER_SIZE):
        path = folder / f"photo_{seed}.jpg"
        path.write_bytes(make_photo(w, h, seed=seed))
        paths.append(path)
    return paths


# ------------------------------------------------------------------------- decode-only


def _decode_loop(paths: list[str], seconds: float, manifest_json: str) -> tuple[int, float]:
    """In a child process: decode the files round-robin for `seconds`; (images, CPU s)."""
    from service.decode import DecodeLimits, configure_pillow, decode_image
    from service.settings import Settings

    configure_pillow()
    m = Manifest.model_validate_json(manifest_json)
    limits = DecodeLimits.from_settings(Settings())  # the gateway's defaults
    blobs = [Path(p).read_bytes() for p in paths]

    def one(i: int) -> None:
        decode_image(blobs[i % len(blobs)], input_spec=m.input, preprocessing=m.preprocessing,
                     limits=limits)  # fmt: skip

    for i in range(len(blobs)):  # warm
        one(i)
    n, cpu0, end = 0, time.process_time(), time.perf_counter() + seconds
    while time.perf_counter() < end:
        one(n)
        n += 1
    return n, time.process_time() - cpu0


def decode_only(
    paths: list[Path], manifest: Manifest, processes: int, seconds: float
) -> tuple[float, float]:
    """(images/s on `processes` processes at once, CPU seconds per image)."""
    ctx = multiprocessing.get_context("spawn")
    job = ([str(p) for p in paths], seconds, manifest.model_dump_json())
    with ctx.Pool(processes) as pool:
        results = pool.starmap(_decode_loop, [job] * processes)
    images = sum(n for n, _ in results)
    return images / seconds, sum(c for _, c in results) / images


# ------------------------------------------------------------------------- gateway CPU


def _tree_ticks(pid: int) -> int:
    """utime + stime of `pid` and its descendants (the supervisor and its workers)."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        with contextlib.suppress(OSError, IndexError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
            for task in Path(f"/proc/{p}/task").iterdir():
                children = (task / "children").read_text().split()
                todo.extend(int(c) for c in children)
    return total


def _machine_busy_s() -> float:
    """CPU seconds every core of the machine spent busy since boot (/proc/stat: all but idle
    and iowait): the gateway, the load generator, the model-server double and anything else."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


@dataclass
class CpuSampler:
    """CPU seconds of a process tree, or of several (and of the whole machine), sampled with
    wall-clock stamps in a thread."""

    pid: int | tuple[int, ...]
    interval_s: float = 0.1
    samples: list[tuple[float, float]] = field(default_factory=list)
    machine: list[tuple[float, float]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> CpuSampler:
        threading.Thread(target=self._run, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.time()
            pids = self.pid if isinstance(self.pid, tuple) else (self.pid,)
            self.samples.append((now, sum(_tree_ticks(p) for p in pids) / CLK_TCK))
            self.machine.append((now, _machine_busy_s()))
            self._stop.wait(self.interval_s)

    def at(self, t: float, *, machine: bool = False) -> float:
        """CPU seconds used by time `t` (linear between samples): the gateway's, or with
        `machine` every core's."""
        s = self.machine if machine else self.samples
        for (t0, c0), (t1, c1) in itertools.pairwise(s):
            if t0 <= t <= t1:
                return c0 + (c1 - c0) * (t - t0) / max(t1 - t0, 1e-9)
        return s[-1][1] if t > s[-1][0] else s[0][1]


# ------------------------------------------------------------------------- load


@dataclass
class Step:
    rate: float
    images_s: float
    p50_ms: float | None
    p99_ms: float | None
    errors: int
    queue_p50_ms: float | None
    cpu_s: float
    images: int
    mean_batch: float | None = None
    machine_cpu_s: float = 0.0  # every core's busy seconds over the same window
    window_s: float = 0.0
    double_cpu_s: float = 0.0  # the model-server double's CPU seconds over the same window

    @property
    def images_per_cpu_s(self) -> float:
        return self.images / self.cpu_s if self.cpu_s > 0 else 0.0

    @property
    def cpu_ms_per_image(self) -> float:
        return 1000 * self.cpu_s / self.images if self.images else float("nan")

    @property
    def double_ms_per_image(self) -> float:
        """CPU per image of the model-server double (its gRPC server: grpc.aio in Python)."""
        return 1000 * self.double_cpu_s / self.images if self.images else 0.0

    @property
    def others_ms_per_image(self) -> float:
        """CPU per image of everything but the gateway and the double: the load generator and
        any other job on the machine."""
        rest = self.machine_cpu_s - self.cpu_s - self.double_cpu_s
        return 1000 * rest / self.images if self.images else 0.0

    def machine_busy(self, cores: int) -> float:
        """Share of the machine's cores busy over the window."""
        return self.machine_cpu_s / (cores * self.window_s) if self.window_s else 0.0


def steps_of(
    result: dict[str, Any], cpu: CpuSampler, double: CpuSampler | None = None
) -> list[Step]:
    """The load tester's steps, each with the CPU `cpu` (the gateway), `double` (the model
    server double) and the machine used over its measured window."""
    out = []
    for s in result["steps"]:
        start = s["started_at"] + s["warmup_s"]
        end = start + s["window_s"]
        used = cpu.at(end) - cpu.at(start)
        double_s = double.at(end) - double.at(start) if double else 0.0
        machine = cpu.at(end, machine=True) - cpu.at(start, machine=True)
        queue = (s.get("stages_ms") or {}).get("queue") or {}
        out.append(Step(
            rate=s["offered_rate"], images_s=s["throughput_rps"],
            p50_ms=s["latency_ms"].get("p50_ms"), p99_ms=s["latency_ms"].get("p99_ms"),
            errors=s["errors"], queue_p50_ms=queue.get("p50_ms"), cpu_s=used, images=s["ok"],
            machine_cpu_s=machine, window_s=s["window_s"], double_cpu_s=double_s,
        ))  # fmt: skip
    return out


def loadtest(
    url: str, images: Path, out: Path, args: list[str], timeout_s: float
) -> dict[str, Any]:
    """Our load tester sending the JPEGs in `images` as raw bodies; its result.json."""
    return gateway_proc.loadtest(url, out, "--images", str(images), "--body", "raw",
                                 "--timeout", "10", *args, timeout_s=timeout_s)  # fmt: skip


def _batches(url: str) -> tuple[float, float]:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    values = {}
    for line in text.splitlines():
        if line.startswith(("gateway_batch_size_count ", "gateway_batch_size_sum ")):
            name, value = line.split()
            values[name] = float(value)
    return values.get("gateway_batch_size_count", 0.0), values.get("gateway_batch_size_sum", 0.0)


@dataclass
class Run:
    """One gateway configuration: its max rate, its 80 % step, and optionally a low-rate step."""

    label: str
    size: str
    workers: int
    settings: dict[str, Any]
    max_rate: float | None = None
    search: list[Step] = field(default_factory=list)
    at80: Step | None = None
    low: Step | None = None


def warm(url: str, images: Path) -> None:
    """20 requests before any step is measured (connections, first batches, lazy imports)."""
    body = next(images.iterdir()).read_bytes()
    for _ in range(20):
        httpx.post(f"{url}/v1/classify", content=body, headers={"content-type": "image/jpeg"},
                   timeout=10)  # fmt: skip


def run_gateway(
    label: str, size: str, images: Path, workers: int, tfs: Spawned, model_base: Path,
    args: argparse.Namespace, work: Path, start_rate: float, low_rate: float | None = None,
    **settings: Any,
) -> Run:  # fmt: skip
    """Start the gateway, find its max rate, measure at 80 % of it (and at `low_rate`)."""
    run = Run(label, size, workers, settings)
    values = {"backend": "tfserving", "tfserving_address": tfs.address, "model_name": MODEL,
              "workers": workers, **settings}  # fmt: skip
    with (
        gateway(model_base, work / f"{label}.log", **values) as gw,
        CpuSampler(gw.pid) as cpu,
        CpuSampler(tfs.pid) as dbl,
    ):
        warm(gw.url, images)
        timing = ["--duration", str(args.duration), "--warmup", str(args.warmup)]
        if low_rate is not None:
            low = loadtest(gw.url, images, work / f"{label}-low", [
                "--rate", str(low_rate), "--arrival", "poisson", *timing], 300)  # fmt: skip
            run.low = steps_of(low, cpu, dbl)[0]

        def one_step(rate: float, i: int) -> Step:
            out = work / f"{label}-{i}"
            return _step(gw.url, images, out, rate, timing, (cpu, dbl), run)

        run.max_rate = find_max_rate(one_step, start_rate, args)
        if run.max_rate:
            c0, s0 = _batches(gw.url)
            at80 = loadtest(gw.url, images, work / f"{label}-80", [
                "--rate", f"{0.8 * run.max_rate:.0f}", *timing], 600)  # fmt: skip
            c1, s1 = _batches(gw.url)
            run.at80 = steps_of(at80, cpu, dbl)[0]
            run.at80.mean_batch = (s1 - s0) / (c1 - c0) if c1 > c0 else None
    print(f"{label}: max {run.max_rate} img/s; at 80 %: {run.at80}", flush=True)
    return run


def run_two_ports(
    label: str, size: str, images: Path, tfs: Spawned, model_base: Path, args: argparse.Namespace,
    work: Path, start_rate: float,
) -> Run:  # fmt: skip
    """The baseline for `--workers 2`: two one-process gateways on two ports, each offered half
    of every step's rate by its own load tester, both started together."""
    run = Run(label, size, 2, {"ports": 2})
    values = {"backend": "tfserving", "tfserving_address": tfs.address, "model_name": MODEL,
              "workers": 1}  # fmt: skip
    with contextlib.ExitStack() as stack:
        gws = [stack.enter_context(gateway(model_base, work / f"{label}-{i}.log", **values))
               for i in range(2)]  # fmt: skip
        cpu = stack.enter_context(CpuSampler(tuple(gw.pid for gw in gws)))
        dbl = stack.enter_context(CpuSampler(tfs.pid))
        for gw in gws:
            warm(gw.url, images)
        timing = ["--duration", str(args.duration), "--warmup", str(args.warmup)]
        urls = [gw.url for gw in gws]

        def split(rate: float, name: str) -> Step:
            halves: list[Step | None] = [None, None]

            def one(i: int) -> None:
                result = loadtest(urls[i], images, work / f"{name}-{i}",
                                  ["--rate", f"{rate / 2:g}", *timing], 600)  # fmt: skip
                halves[i] = steps_of(result, cpu, dbl)[0]

            threads = [threading.Thread(target=one, args=(i,)) for i in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            a, b = halves
            if a is None or b is None:
                raise RuntimeError(f"a load tester of {label} failed (see its log above)")
            return merge_halves(a, b)

        def step(rate: float, i: int) -> Step:
            s = split(rate, f"{label}-{i}")
            run.search.append(s)
            return s

        run.max_rate = find_max_rate(step, start_rate, args)
        if run.max_rate:
            run.at80 = split(round(0.8 * run.max_rate), f"{label}-80")
    print(f"{label}: max {run.max_rate} img/s; at 80 %: {run.at80}", flush=True)
    return run


def merge_halves(a: Step, b: Step) -> Step:
    """One step from two load testers run side by side: counts add up; the latencies are the
    worse half's (a p99 of the union lies between the halves' p99s); CPU is of both gateways
    over the same window, read by each half, so averaged."""

    def worse(x: float | None, y: float | None) -> float | None:
        return None if x is None or y is None else max(x, y)

    return Step(
        rate=a.rate + b.rate, images_s=a.images_s + b.images_s, p50_ms=worse(a.p50_ms, b.p50_ms),
        p99_ms=worse(a.p99_ms, b.p99_ms), errors=a.errors + b.errors,
        queue_p50_ms=worse(a.queue_p50_ms, b.queue_p50_ms), cpu_s=(a.cpu_s + b.cpu_s) / 2,
        images=a.images + b.images, machine_cpu_s=(a.machine_cpu_s + b.machine_cpu_s) / 2,
        window_s=(a.window_s + b.window_s) / 2, double_cpu_s=(a.double_cpu_s + b.double_cpu_s) / 2,
    )  # fmt: skip


def _step(url: str, images: Path, out: Path, rate: float, timing: list[str],
          cpu: tuple[CpuSampler, CpuSampler], run: Run) -> Step:  # fmt: skip
    """One load step; `cpu`: the gateway's sampler and the double's."""
    result = loadtest(url, images, out, ["--rate", f"{rate:g}", *timing], 600)
    step = steps_of(result, *cpu)[0]
    run.search.append(step)
    return step


def passes(step: Step, p99_ms: float) -> bool:
    """The load tester's rule (loadtest.search.step_passes): p99 within the target, at most
    1 % errors, and the offered rate kept up."""
    return (
        step.p99_ms is not None and step.p99_ms <= p99_ms
        and step.errors <= 0.01 * max(step.images + step.errors, 1)
        and step.images_s >= 0.9 * step.rate
    )  # fmt: skip


def find_max_rate(
    run_step: Callable[[float, int], Step], start: float, args: argparse.Namespace
) -> float | None:
    """The load tester's search (double from `start` until a step fails, then bisect), with
    one difference for a shared machine: a failing step is run once more before it counts,
    so one burst of someone else's work does not end the search."""
    calls = iter(range(1000))

    def ok(rate: float) -> bool:
        return any(passes(run_step(rate, next(calls)), args.p99_ms) for _ in range(2))

    good: float | None = None
    rate, bad = start, None
    while rate <= start * 64:
        if not ok(rate):
            bad = rate
            break
        good, rate = rate, rate * 2
    if bad is None:
        return good
    low = good or 0.0
    for _ in range(args.bisect):
        mid = round((low + bad) / 2, -1) if bad - low > 40 else round((low + bad) / 2, 1)
        if mid <= low or mid >= bad:
            break
        if ok(mid):
            low = good = mid
        else:
            bad = mid
    return good


# ------------------------------------------------------------------------- report


def _f(v: float | None, fmt: str = ".1f") -> str:
    return "-" if v is None else format(v, fmt)


def to_markdown(meta: dict[str, Any], decode: dict[str, tuple[float, float]],
                runs: list[Run], policies: list[Run]) -> str:  # fmt: skip
    lines = [
        "# Gateway ceiling: images/s the gateway's CPUs can feed a GPU-speed model server",
        "",
        f"- Date: {meta['date']}; command: `{meta['command']}`",
        f"- Machine: {meta['machine']['cpu']}, {meta['cores']} cores ({meta['machine']['platform']}), "
        f"Python {meta['python']}; load average before / after: {meta['load_before']} / "
        f"{meta['load_after']}{' (**busy machine**: other jobs were running when it started)' if meta['busy'] else ''}",
        f"- Model server: `testdoubles.fast_tfserving` (not TF Serving): {meta['speed']}; "
        "contract 224x224 (crop 0.875, bilinear), 1000 classes, buckets 1..64. It, the load "
        "generator and the gateway share the cores.",
        f"- Load: our load tester, open loop, one `resnet-serving loadtest run --rate R` per step "
        f"({meta['duration']} s after {meta['warmup']} s warmup): the rate doubles until a step "
        f"fails (p99 > {meta['p99_ms']:g} ms, > 1 % errors or the rate not kept up; a failing "
        f"step is run once more before it counts, against bursts of other jobs), then "
        f"{meta['bisect']} bisections. One JPEG per request (raw body), {FILES_PER_SIZE} "
        "photo-like files per size (benchmarks.preprocess.make_photo, q90), cycled.",
        "- CPU: utime+stime of the gateway's processes (supervisor and workers) from /proc, "
        "over each step's measured window. Excluding decode: minus the decode-only CPU per "
        "image of the same files. Machine busy: every core's busy time (/proc/stat) over the "
        "same window. The double's CPU (its grpc.aio server in Python: on a GPU host TF Serving "
        "does this work in C++) and others' (the machine's busy time minus the gateway's and the "
        "double's: the load generator and any other job), per request, over the same window.",
        "",
        "## Decode-only (the most these cores could do)",
        "",
        "| image | processes | images/s | CPU ms per image |",
        "|---|---:|---:|---:|",
    ]
    for size, (rate, cpu) in decode.items():
        lines.append(f"| {size} | {meta['cores']} | {rate:.0f} | {cpu * 1000:.2f} |")
    lines += [
        "",
        "## The gateway",
        "",
        "| image | processes | max images/s (p99 <= "
        f"{meta['p99_ms']:g} ms) | efficiency | scaling | at 80 %: p50 / p99 ms | images per "
        "CPU-s | CPU ms per request | excl. decode | mean batch | cores per H100 | machine busy | "
        "double's CPU ms per request | others' CPU ms per request |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    one = {r.size: r.max_rate for r in runs if r.workers == 1}
    for r in runs:
        dec_rate, dec_cpu = decode[r.size]
        eff = (r.max_rate or 0) / dec_rate
        base_rate = one.get(r.size)
        scale = (r.max_rate or 0) / base_rate if base_rate else None
        s = r.at80
        excl = s.cpu_ms_per_image - dec_cpu * 1000 if s else None
        cores = H100_IMAGES_S / s.images_per_cpu_s if s and s.images_per_cpu_s else None
        lines.append(
            f"| {r.size} | {r.workers}{' on two ports' if r.settings.get('ports') else ''} | "
            f"{_f(r.max_rate, '.0f')} | {eff:.2f} | "
            f"{_f(scale, '.2f')}x | {_f(s.p50_ms if s else None)} / {_f(s.p99_ms if s else None)} | "
            f"{_f(s.images_per_cpu_s if s else None, '.0f')} | "
            f"{_f(s.cpu_ms_per_image if s else None, '.2f')} | {_f(excl, '.2f')} | "
            f"{_f(s.mean_batch if s else None)} | {_f(cores, '.0f')} | "
            f"{_f(100 * s.machine_busy(meta['cores']) if s else None, '.0f')} % | "
            f"{_f(s.double_ms_per_image if s else None, '.2f')} | "
            f"{_f(s.others_ms_per_image if s else None, '.2f')} |"
        )
    for size in dict.fromkeys(r.size for r in runs):
        one_port = [r.max_rate for r in runs if r.size == size and r.workers == 2
                    and not r.settings.get("ports")]  # fmt: skip
        two_ports = [r.max_rate for r in runs if r.size == size and r.settings.get("ports")]
        if one_port and two_ports and one_port[0] and two_ports[0]:
            lines += ["", f"{size}: 2 processes behind one port reach "
                      f"{one_port[0] / two_ports[0]:.2f}x the images/s of two one-process "
                      "gateways on two ports, measured in this run."]  # fmt: skip
    if policies:
        lines += [
            "",
            "## Batching policy (1 process)",
            "",
            f"The double here merges calls as TF Serving's batching does: a batch closes "
            f"{meta['policy_window_ms']:g} ms after its first call (our export's "
            "batch_timeout_micros) or when full, and its calls end together. Lone requests: "
            f"Poisson arrivals at {meta['low_rate']:g} req/s, so almost every request finds the "
            "model server idle; `queue` is the gateway's own Server-Timing stage (time in the "
            "batcher before the call).",
            "",
            "| policy | lone: p50 ms | lone: queue p50 ms | max images/s | at 80 %: p50 / p99 "
            "ms | at 80 %: CPU ms per request | mean batch |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in policies:
            lo, s = r.low, r.at80
            lines.append(
                f"| {r.label} | {_f(lo.p50_ms if lo else None, '.2f')} | "
                f"{_f(lo.queue_p50_ms if lo else None, '.2f')} | {_f(r.max_rate, '.0f')} | "
                f"{_f(s.p50_ms if s else None)} / {_f(s.p99_ms if s else None)} | "
                f"{_f(s.cpu_ms_per_image if s else None, '.2f')} | "
                f"{_f(s.mean_batch if s else None)} |"
            )
    lines += [
        "",
        "Every step of every search (offered rate: images/s, p99 ms, gateway CPU ms per image, "
        "machine busy %):",
        "",
    ]
    for r in [*runs, *policies]:
        steps = ", ".join(
            f"{s.rate:g}: {s.images_s:.0f}/{_f(s.p99_ms, '.0f')}/{s.cpu_ms_per_image:.2f}/"
            f"{100 * s.machine_busy(meta['cores']):.0f}"
            for s in r.search
        )
        lines.append(f"- {r.label}: {steps}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2", help="gateway process counts to measure")
    parser.add_argument("--sizes", default="640x480,1920x1080")
    parser.add_argument("--duration", type=float, default=6.0, help="measured seconds per step")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--bisect", type=int, default=3)
    parser.add_argument("--p99-ms", type=float, default=100.0)
    parser.add_argument("--base-ms", type=float, default=Speed.base_ms)
    parser.add_argument("--per-image-ms", type=float, default=Speed.per_image_ms)
    parser.add_argument("--decode-seconds", type=float, default=5.0)
    parser.add_argument("--policies", action="store_true", help="also compare batching policies")
    parser.add_argument("--two-ports", action="store_true",
                        help="also measure two one-process gateways on two ports (the baseline "
                        "for 2 processes behind one port)")  # fmt: skip
    parser.add_argument("--low-rate", type=float, default=20.0, help="lone-request rate (policies)")
    parser.add_argument("--policy-window-ms", type=float, default=2.0,
                        help="the double's batching window for --policies (TF Serving's "
                        "batch_timeout_micros in our export: 2000)")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="short steps, to check the script")
    parser.add_argument("--name", default="gateway_ceiling", help="results file name")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.warmup, args.bisect, args.decode_seconds = 2.0, 0.5, 1, 1.5
    workers = [int(w) for w in args.workers.split(",")]
    sizes = args.sizes.split(",")
    cores = os.cpu_count() or 1
    load_before = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    speed = Speed(args.base_ms, args.per_image_ms)
    work = Path(tempfile.mkdtemp(prefix="gateway_ceiling-"))
    try:
        base = work / "models"
        manifest = write_contract(base)
        folders = {}
        for size in sizes:
            w, h = (int(v) for v in size.split("x"))
            write_images(work / size, w, h)
            folders[size] = work / size
        decode = {s: decode_only(sorted(folders[s].iterdir()), manifest, cores, args.decode_seconds)
                  for s in sizes}  # fmt: skip
        print(f"decode-only: {decode}", flush=True)
        runs: list[Run] = []
        policies: list[Run] = []
        with spawn_process(base, MODEL, speed=speed, log=work / "double.log") as tfs:
            for size in sizes:
                for n in workers:
                    start = max(10.0, round(decode[size][0] * min(n, cores) / cores / 4, -1))
                    runs.append(run_gateway(f"{size} x{n}", size, folders[size], n, tfs, base,
                                            args, work, start))  # fmt: skip
                if args.two_ports:
                    start = max(10.0, round(decode[size][0] * min(2, cores) / cores / 4, -1))
                    runs.append(run_two_ports(f"{size} two ports", size, folders[size], tfs,
                                              base, args, work, start))  # fmt: skip
        if args.policies:  # against a double that merges calls as TF Serving's batching does
            window = Speed(args.base_ms, args.per_image_ms, batch_timeout_ms=args.policy_window_ms)
            with spawn_process(base, MODEL, speed=window, log=work / "double-window.log") as tfs:
                size = sizes[0]
                start = max(10.0, round(decode[size][0] / cores / 4, -1))
                for label, extra in (
                    ("5 ms window, 1 in flight (before)", {"max_wait_ms": 5, "max_inflight_batches": 1}),
                    ("at once, 1 in flight", {"max_wait_ms": 0, "max_inflight_batches": 1}),
                    ("at once, 2 in flight", {"max_wait_ms": 0, "max_inflight_batches": 2}),
                    ("at once, 4 in flight", {"max_wait_ms": 0, "max_inflight_batches": 4}),
                ):  # fmt: skip
                    policies.append(run_gateway(label, size, folders[size], 1, tfs, base, args,
                                                work, start, low_rate=args.low_rate, **extra))  # fmt: skip
        load_after = os.getloadavg()
        meta = {
            "date": now_utc(), "command": " ".join(["python -m benchmarks.gateway_ceiling", *sys.argv[1:]]),
            "machine": machine(), "cores": cores, "python": platform.python_version(),
            "load_before": load_before, "load_after": ", ".join(f"{x:.2f}" for x in load_after),
            # the run's own load raises the load average after it: judge by the one before,
            # and read each step's others' CPU (the load generator and any other job)
            "busy": float(load_before.split(",")[0]) > 1.0,
            "speed": f"{speed.base_ms:g} ms + {speed.per_image_ms:g} ms per image",
            "p99_ms": args.p99_ms, "duration": args.duration, "warmup": args.warmup,
            "bisect": args.bisect, "low_rate": args.low_rate,
            "policy_window_ms": args.policy_window_ms,
        }  # fmt: skip
        md = to_markdown(meta, decode, runs, policies)
        print(md)
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"{args.name}.md").write_text(md, encoding="utf-8")
        doc = {"meta": meta, "decode_only": decode,
               "runs": [asdict(r) for r in runs], "policies": [asdict(r) for r in policies]}  # fmt: skip
        (RESULTS / f"{args.name}.json").write_text(json.dumps(doc, indent=2) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
