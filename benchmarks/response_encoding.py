"""Per-request CPU of the classify response: how a route should send its pydantic model.

Four ways to answer the same `ClassifyResponse` (N images x top-5, `Server-Timing` header),
each as a FastAPI route called in-process through the whole ASGI app (routing, dependency
solving, response encoding; a fake `receive`/`send`, no socket), interleaved round by round:

    dict        hand-built dicts -> JSONResponse (jsonable_encoder is skipped; json.dumps)
    returned    the model returned with response_model=: FastAPI validates it again, then
                serialises it in pydantic-core; headers through an injected `Response`
    dump_json   the model -> Response(model.model_dump_json()) (service.schemas.json_response):
                validated once when built, serialised once, FastAPI adds nothing
    construct   the same with model_construct (no validation at all), for reference
    validate    the dicts of `dict` validated into the model in one call, then dump_json

    python -m benchmarks.response_encoding [--rounds 5] [--seconds 0.5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import fastapi
import numpy as np
import pydantic
from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse

from benchmarks.preprocess import machine
from service.schemas import ClassifyResponse, ModelRef, Prediction, Score, Timing, json_response

RESULTS = Path(__file__).parent / "results"
IMAGES = (1, 8, 32)
TOP_K = 5
VARIANTS = ("dict", "returned", "dump_json", "construct", "validate")
TIMING = {"decode": 1.234, "queue": 4.5, "backend": 12.75, "total": 19.8}
SERVER_TIMING = ", ".join(f"{k};dur={v}" for k, v in TIMING.items())

Ranked = list[list[tuple[str, int, float]]]


def ranked(n: int) -> Ranked:
    """What `_top_k` hands the response builder: per image, (label, class id, score) best first."""
    rng = np.random.default_rng(n)
    out = []
    for _ in range(n):
        probs = rng.dirichlet(np.ones(1000))
        ids = np.argsort(-probs, kind="stable")[:TOP_K]
        out.append([(f"class_{i}", int(i), float(probs[i])) for i in ids])
    return out


def as_model(rows: Ranked) -> ClassifyResponse:
    return ClassifyResponse(
        model=ModelRef(name="demo", version=1),
        predictions=[
            Prediction(top_k=[Score(label=lb, class_id=c, score=s) for lb, c, s in r]) for r in rows
        ],
        timing_ms=Timing(**TIMING),
    )


def as_constructed(rows: Ranked) -> ClassifyResponse:
    return ClassifyResponse.model_construct(
        model=ModelRef.model_construct(name="demo", version=1),
        predictions=[
            Prediction.model_construct(
                top_k=[Score.model_construct(label=lb, class_id=c, score=s) for lb, c, s in r]
            )
            for r in rows
        ],
        timing_ms=Timing.model_construct(None, **TIMING),
    )


def as_dict(rows: Ranked) -> dict[str, Any]:
    return {
        "model": {"name": "demo", "version": 1},
        "predictions": [
            {"top_k": [{"label": lb, "class_id": c, "score": s} for lb, c, s in r]} for r in rows
        ],
        "timing_ms": TIMING,
    }


def build_app(rows: Ranked) -> FastAPI:
    """One route per variant, each answering the same body for `rows`."""
    app = FastAPI()

    @app.post("/dict", response_model=ClassifyResponse)
    async def hand_built() -> JSONResponse:
        return JSONResponse(as_dict(rows), headers={"Server-Timing": SERVER_TIMING})

    @app.post("/returned", response_model=ClassifyResponse)
    async def returned(response: Response) -> ClassifyResponse:
        response.headers["Server-Timing"] = SERVER_TIMING
        return as_model(rows)

    @app.post("/dump_json", response_model=ClassifyResponse)
    async def dump_json() -> Response:
        return json_response(as_model(rows), headers={"Server-Timing": SERVER_TIMING})

    @app.post("/construct", response_model=ClassifyResponse)
    async def construct() -> Response:
        return json_response(as_constructed(rows), headers={"Server-Timing": SERVER_TIMING})

    @app.post("/validate", response_model=ClassifyResponse)
    async def validate() -> Response:
        body = ClassifyResponse.model_validate(as_dict(rows))
        return json_response(body, headers={"Server-Timing": SERVER_TIMING})

    return app


def scope(path: str) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"bench")],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        "state": {},
    }


async def call(app: FastAPI, path: str) -> bytes:
    """One request through the whole ASGI app; returns the body (checked to be the same)."""
    body = bytearray()

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            assert message["status"] == 200, message
        elif message["type"] == "http.response.body":
            body.extend(message.get("body", b""))

    await app(scope(path), receive, send)  # type: ignore[arg-type]
    return bytes(body)


def _request(loop: asyncio.AbstractEventLoop, app: FastAPI, path: str) -> bytes:
    return loop.run_until_complete(call(app, path))


def cpu_per_call(run: Callable[[], Any], seconds: float) -> float:
    """This thread's CPU seconds per call over >= `seconds` of calls (not inflated by waiting
    for a core on a shared machine, which wall time would be)."""
    run()
    n, wall0, cpu0 = 0, time.perf_counter(), time.thread_time()
    while time.perf_counter() - wall0 < seconds:
        for _ in range(50):
            run()
        n += 50
    return (time.thread_time() - cpu0) / n


def run(rounds: int, seconds: float) -> list[dict[str, object]]:
    loop = asyncio.new_event_loop()
    rows_out: list[dict[str, object]] = []
    try:
        for n in IMAGES:
            rows = ranked(n)
            app = build_app(rows)
            bodies = {v: json.loads(loop.run_until_complete(call(app, f"/{v}"))) for v in VARIANTS}
            assert all(b == bodies["dict"] for b in bodies.values()), "variants differ"
            cpu: dict[str, list[float]] = {v: [] for v in VARIANTS}
            for r in range(rounds):  # interleaved: a busy spell slows every variant alike
                for v in VARIANTS if r % 2 == 0 else VARIANTS[::-1]:  # and no fixed order
                    cpu[v].append(cpu_per_call(partial(_request, loop, app, f"/{v}"), seconds))
            med = {v: float(np.median(cpu[v])) * 1e6 for v in VARIANTS}
            row: dict[str, object] = {"images": n, "top_k": TOP_K}
            row.update({f"{v}_us": round(med[v], 1) for v in VARIANTS})
            row.update({f"{v}_best_us": round(min(cpu[v]) * 1e6, 1) for v in VARIANTS})
            rows_out.append(row)
            print(row, flush=True)
    finally:
        loop.close()
    return rows_out


def to_markdown(meta: dict[str, Any], rows: list[dict[str, object]]) -> str:
    lines = [
        "# Response encoding: CPU per classify request by how the route sends its model",
        "",
        f"- Date: {meta['date']}; load average before the run: {meta['load_before']}, "
        f"after: {meta['load_after']}",
        f"- Machine: {meta['machine']['cpu']}, {meta['machine']['cores']} CPUs "
        f"({meta['machine']['platform']})",
        f"- Python {meta['python']}, FastAPI {meta['fastapi']}, pydantic {meta['pydantic']}",
        f"- Command: `{meta['command']}`",
        f"- Method: the whole FastAPI app called in-process (fake receive/send, no socket); "
        f"per case {meta['rounds']} interleaved rounds (order reversed every other round) of >= {meta['seconds_per_round']} s per "
        "variant; microseconds of this thread's CPU per request, median round (best round in "
        "the JSON). Every variant sends the same JSON (checked).",
        "- Variants: see the module docstring of `benchmarks/response_encoding.py`. `dict` is "
        "what the routes did before; `dump_json` is what they do now.",
        "",
        "| images x top-5 | dict µs | returned µs | **dump_json µs** | construct µs "
        "| validate µs | dump_json / dict |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = float(r["dump_json_us"]) / float(r["dict_us"])  # type: ignore[arg-type]
        lines.append(
            f"| {r['images']} | {r['dict_us']} | {r['returned_us']} | **{r['dump_json_us']}** "
            f"| {r['construct_us']} | {r['validate_us']} | {ratio:.2f} |"
        )
    return "\n".join(lines) + "\n"


def _load() -> str:
    with open("/proc/loadavg", encoding="ascii") as f:
        return " ".join(f.read().split()[:3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=0.5, help="minimum seconds per round")
    args = parser.parse_args()
    load_before = _load()
    rows = run(args.rounds, args.seconds)
    meta: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "load_before": load_before,
        "load_after": _load(),
        "machine": machine(),
        "python": platform.python_version(),
        "fastapi": fastapi.__version__,
        "pydantic": pydantic.VERSION,
        "command": " ".join(["python -m benchmarks.response_encoding", *sys.argv[1:]]),
        "rounds": args.rounds,
        "seconds_per_round": args.seconds,
    }
    md = to_markdown(meta, rows)
    print(md)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "response_encoding.md").write_text(md, encoding="utf-8")
    (RESULTS / "response_encoding.json").write_text(
        json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n", encoding="utf-8"
    )


if __name__ == "__main__":
    main()
