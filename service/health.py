"""Operational endpoints: liveness, readiness and Prometheus metrics.

Live and ready are different questions: `/livez` says the process and its event loop answer
(restart me if not); `/readyz` says requests will be served now (model loaded, its contract
checked, warmed up, batcher running) for every model it serves, so a load balancer may send
traffic (strict, like Triton's default readiness: one model that cannot serve makes the
gateway not ready).
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import Response

from service.breaker import State
from service.errors import NotReady
from service.metrics import CONTENT_TYPE
from service.openapi_docs import error_responses
from service.schemas import LiveResponse, ModelRef, ReadyResponse, json_response
from service.state import StateDep

router = APIRouter(tags=["health"])

_READY_PROBE_TIMEOUT_S = 2.0  # a probe that hangs is an answer too: not ready


@router.get(
    "/livez",
    response_model=LiveResponse,
    summary="The process is alive (200 while the event loop runs)",
)
async def livez() -> Response:
    return json_response(LiveResponse())


@router.get(
    "/readyz",
    response_model=ReadyResponse,
    responses=error_responses(503),
    summary="200 when the model is loaded, checked and warm; else 503",
)
async def readyz(state: StateDep) -> Response:
    models, _ = state.serving()  # 503 while starting or shutting down
    retry = state.settings.retry_after_s
    why = models.not_ready()
    if why is not None:
        raise NotReady(why, retry_after_s=retry)
    refs = []
    for served in models.models.values():
        current = served.current()
        assert current is not None  # not_ready() said every model has one
        if not current.batcher.running:
            raise NotReady(
                f"model {served.name!r}: its batcher is not running", retry_after_s=retry
            )
        refs.append(ModelRef(name=served.name, version=current.version))
    breaker = state.backend.breaker
    if breaker is not None and breaker.state is State.OPEN:
        raise NotReady("the circuit to the model server is open", retry_after_s=retry)
    try:
        ok = await asyncio.wait_for(state.backend.ready(), _READY_PROBE_TIMEOUT_S)
    except Exception:  # TimeoutError or a backend failure: both mean not ready
        ok = False
    if not ok:
        raise NotReady(f"the {state.backend.name} backend is not ready", retry_after_s=retry)
    return json_response(ReadyResponse(model=refs[0], models=refs, backend=state.backend.name))


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def metrics(state: StateDep) -> Response:
    return Response(state.metrics.render(), media_type=CONTENT_TYPE)
