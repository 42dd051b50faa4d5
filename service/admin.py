"""The admin API: what `resnet-serving rollout` changes while the gateway serves.

    PUT /admin/models/{name}/canary  {"fraction": 0.25}     send it 25 % of the default traffic

The answer (and `GET /v1/models`, for anyone) says the share now and which versions it splits
between. The share is kept by `service.traffic` (shared by every worker process of the host when
`shared_state_dir` is set). Each call needs one of `admin_keys` in `X-Admin-Key` (or
`Authorization: Bearer`), compared in constant time; with none configured every admin route
answers 403. Admin routes are not under `/v1/`, so API keys and rate limits do not apply to
them, and the proxy in front of the gateway (deploy/proxy) does not forward `/admin/`: the
rollout talks to the gateway from inside the deployment.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header
from fastapi.responses import Response
from pydantic import BaseModel, Field

from service.auth import ApiKeys, bearer_or_header
from service.errors import Forbidden, ModelNotFound
from service.openapi_docs import error_responses
from service.schemas import json_response
from service.state import GatewayState, StateDep

ADMIN_KEY_HEADER = "X-Admin-Key"

router = APIRouter(prefix="/admin", tags=["admin"])


class CanaryUpdate(BaseModel):
    fraction: float = Field(ge=0.0, le=1.0, description="Share of default requests (0..1).")


class CanaryState(BaseModel):
    model: str
    fraction: float = Field(description="Share of default requests the canary gets (0..1).")
    canary_version: int | None = Field(description="The `canary` label's version, if served.")
    stable_version: int | None = Field(description="The version the other requests go to.")
    shared: bool = Field(description="Shared by every worker process (shared_state_dir).")


def _check_admin(
    state: StateDep,
    x_admin_key: Annotated[str | None, Header()] = None,
    authorization: Annotated[str | None, Header()] = None,
) -> GatewayState:
    keys = ApiKeys(state.settings.admin_keys)
    if not keys.enabled:
        raise Forbidden("the admin API is off: set admin_keys (RESNET_SERVING_ADMIN_KEYS)")
    keys.authenticate(bearer_or_header(authorization, x_admin_key))  # 401 if wrong
    return state


AdminDep = Annotated[GatewayState, Depends(_check_admin)]
_DOC = error_responses(400, 401, 403, 404, 422, 503)


def _canary_state(state: GatewayState, name: str) -> CanaryState:
    if name not in state.settings.served_models():
        raise ModelNotFound(
            f"this gateway serves the models {list(state.settings.served_models())}. "
            f"Received: name={name!r}"
        )
    canary = current = None
    if state.models is not None:
        served = state.models.model(name)
        canary, current = served.canary(), served.current()
    return CanaryState(
        model=name,
        fraction=state.traffic.fraction(name),
        canary_version=canary.version if canary is not None else None,
        stable_version=current.version if current is not None else None,
        shared=state.traffic.shared,
    )


@router.put(
    "/models/{name}/canary",
    response_model=CanaryState,
    responses=_DOC,
    summary="Set the share of the default traffic the canary version gets",
)
async def put_canary(name: str, update: CanaryUpdate, state: AdminDep) -> Response:
    _canary_state(state, name)  # 404 before anything changes
    state.traffic.set(name, update.fraction)
    return json_response(_canary_state(state, name))
