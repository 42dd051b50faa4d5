"""Schemathesis against the running gateway's own OpenAPI schema (bounded; part of `make test`).

Every operation in `/openapi.json` is called with generated requests (schema examples, the
coverage phase's boundary and negative cases, then random fuzzing) on a real uvicorn over the
embedded backend. Checks: no 5xx, status codes, content types, headers and bodies as the schema
documents them, and schema-invalid requests rejected with a 4xx. A longer run is in the README
(`SCHEMA_FUZZ_EXAMPLES=500`).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, settings

from service.errors import BadRequest, CircuitOpen, GatewayError, NotReady, RateLimited
from tests.service.conftest import GatewayModel, LiveServer, gateway_settings, serving

schemathesis = pytest.importorskip(
    "schemathesis", reason="schemathesis is in the dev extra; install with `make install`"
)

MAX_EXAMPLES = int(os.environ.get("SCHEMA_FUZZ_EXAMPLES", "25"))
SEEN: dict[str, Counter[int]] = {}  # operation -> status -> count, for the coverage check


@pytest.fixture(scope="module")
def fuzzed_gateway(gateway_model: GatewayModel) -> Iterator[LiveServer]:
    """Its own gateway: short batching wait so the 200 paths stay quick, 5 s budget per request."""
    from service.app import create_app

    app = create_app(
        gateway_settings(gateway_model.model_base, max_wait_ms=2.0, request_timeout_s=5.0)
    )
    with serving(app) as live:
        yield live


def _schema_document() -> dict[str, Any]:
    """The gateway's OpenAPI document; it depends on the code and the model name, not the model.

    Built at import because schemathesis parametrizes at collection time (its lazy
    `from_fixture` loader does not work with pytest 9); the test below checks that the live
    gateway serves this very document.
    """
    from service.app import create_app

    return create_app(gateway_settings(Path("unused"))).openapi()


SCHEMA_DOC = _schema_document()
# Every check but one: a schema-valid body need not hold a decodable image (JSON Schema cannot
# say "a PNG"), and top_k's upper bound is the served model's label count, so the gateway
# rightly answers some schema-valid requests with 400/422. Schema-INVALID ones must get a 4xx.
CONFIG = {"request-timeout": 10, "checks": {"positive_data_acceptance": {"enabled": False}}}
schema = schemathesis.openapi.from_dict(SCHEMA_DOC, config=schemathesis.Config.from_dict(CONFIG))


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,  # the same cases every run: a failure here is reproducible
    suppress_health_check=list(HealthCheck),
)
def test_gateway_conforms_to_its_schema(case: Any, fuzzed_gateway: LiveServer) -> None:
    response = case.call_and_validate(base_url=fuzzed_gateway.url)
    assert response.status_code < 500, response.text
    SEEN.setdefault(f"{case.method} {case.path}", Counter())[response.status_code] += 1


def test_the_fuzzing_reached_both_outcomes() -> None:
    """Runs after the fuzzing: the classify routes answered 200s (the schema's example image)
    and 4xx, so the run exercised the model path and the rejections, not just one of them."""
    for route in ("POST /v1/classify", "POST /v1/models/{name}/classify"):
        statuses = SEEN.get(route, Counter())
        assert statuses[200] > 0 and any(400 <= s < 500 for s in statuses), (route, statuses)


def test_schema_documents_every_error_status(fuzzed_gateway: LiveServer) -> None:
    doc = httpx.get(f"{fuzzed_gateway.url}/openapi.json", timeout=10).json()
    assert doc == SCHEMA_DOC  # the schema fuzzed above is the one the gateway serves
    classify = doc["paths"]["/v1/classify"]["post"]
    for status in ("400", "413", "415", "422", "429", "503", "504"):
        content = classify["responses"][status]["content"]["application/json"]
        assert content["schema"] == {"$ref": "#/components/schemas/ErrorBody"}, status
    assert "Retry-After" in classify["responses"]["503"]["headers"]
    assert set(classify["requestBody"]["content"]) >= {"multipart/form-data", "application/json"}
    assert "HTTPValidationError" not in doc["components"]["schemas"]  # our 422 is ErrorBody


@pytest.mark.parametrize(
    ("error", "retry_after"),
    [
        (NotReady("raised by a backend, which does not know the settings"), "1"),
        (CircuitOpen("open", retry_after_s=3), "3"),
        (RateLimited("slow down"), "1"),
        (BadRequest("no retry for a client error"), None),
    ],
)
def test_every_429_and_503_says_when_to_retry(error: GatewayError, retry_after: str | None) -> None:
    """The schema promises Retry-After on every 429/503, even one raised without a value."""
    assert error.headers().get("Retry-After") == retry_after
