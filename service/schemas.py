"""The gateway's response bodies as pydantic models: what the OpenAPI schema shows is what is sent.

Each route declares its model (`response_model=`) for the schema and sends an instance of it
through `json_response`, which serialises it once, in pydantic's Rust core, with the headers
the route adds (`Server-Timing`). Returning the model itself would have FastAPI validate it a
second time and needs a `Response` parameter for the headers; returning a hand-built dict
goes through `jsonable_encoder` and `json.dumps`, and nothing checks it against the schema.
`benchmarks/response_encoding.py` measures the three (results in `benchmarks/results/`).
The one exception is the classify answer, the body sent on every request at full load: the
route builds it as plain dicts and lists of str, int and float in the shape of
`ClassifyResponse` and `json_bytes_response` encodes it with orjson, ~1.5 us against ~12 us
for building and dumping the models (tests check the two give the same bytes, and
schemathesis checks every answer against the schema). Error bodies are
`service.openapi_docs.ErrorBody`, sent by `service.error_responses`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import orjson
from pydantic import BaseModel, Field
from starlette.responses import Response

from contract.manifest import InputSpec, Precision, Preprocessing


class Score(BaseModel):
    label: str
    class_id: int
    score: float


class Prediction(BaseModel):
    top_k: list[Score] = Field(description="Best classes first; ties keep class order.")


class ModelRef(BaseModel):
    name: str
    version: int


class Timing(BaseModel):
    """Milliseconds, also sent as the `Server-Timing` header."""

    decode: float
    queue: float
    backend: float
    total: float


class ClassifyResponse(BaseModel):
    model: ModelRef
    predictions: list[Prediction] = Field(description="One per image, in request order.")
    timing_ms: Timing


class VersionInfo(BaseModel):
    """One version of a model as the model server reports it and this gateway uses it."""

    version: int
    state: str = Field(description="The model server's state: LOADING, AVAILABLE, END, ...")
    serving: bool = Field(description="This gateway sends requests to it.")
    labels: list[str] = Field(description="Version labels that point at it.")
    error: str | None = Field(
        default=None, description="Why it ended in error, or why its contract was refused."
    )


class CanaryInfo(BaseModel):
    """The share of the default traffic sent to the `canary` label's version."""

    version: int | None = Field(description="The canary version now; null: no canary.")
    fraction: float = Field(description="Share of default requests it gets (0..1).")


class ModelInfo(BaseModel):
    """A served model: the contract of its default version (as its manifest says), how this
    gateway serves it, and every version it knows."""

    name: str
    default: bool = Field(description="Served at /v1/classify too.")
    version: int = Field(description="The version default requests go to now.")
    architecture: str
    backend: str
    input: InputSpec
    preprocessing: Preprocessing
    num_labels: int
    default_top_k: int
    batch_buckets: list[int]
    precision: Precision
    xla_compiled: bool
    versions: list[VersionInfo]
    labels: dict[str, int]
    canary: CanaryInfo


class UnavailableModel(BaseModel):
    """A model this gateway serves that has no version it can send requests to now."""

    name: str
    reason: str


class ModelsResponse(BaseModel):
    models: list[ModelInfo]
    unavailable: list[UnavailableModel] = []


class LiveResponse(BaseModel):
    status: Literal["alive"] = "alive"


class ReadyResponse(BaseModel):
    status: Literal["ready"] = "ready"
    model: ModelRef = Field(description="The default model and its default version.")
    models: list[ModelRef] = Field(description="Every served model and its default version.")
    backend: str


def json_response(body: BaseModel, *, headers: Mapping[str, str] | None = None) -> Response:
    """`body` as an `application/json` response, serialised once (FastAPI adds no pass)."""
    return Response(body.model_dump_json(), media_type="application/json", headers=headers)


def json_bytes_response(body: object, *, headers: Mapping[str, str] | None = None) -> Response:
    """`body` (dicts, lists, str, int, float only) as an `application/json` response, encoded
    by orjson: for the classify answer, which must follow `ClassifyResponse` by construction."""
    return Response(orjson.dumps(body), media_type="application/json", headers=headers)
