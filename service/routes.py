"""The classification API: read images from the request, decode them off the loop, batch, answer.

Three ways to send images: multipart files (field `image` or `images`, repeated), one raw
image body (`Content-Type: image/*`), or JSON `{"images": ["<base64>", ...]}`. A request goes
to one version of one model (`service.models`): the default model at `/v1/classify`, any
served model at `/v1/models/{name}/classify`; `?version=N` or `?label=L` picks a version, and
every answer names the version that answered it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
import time
from concurrent.futures import Executor
from functools import partial
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Query, Request, Response
from fastapi.dependencies.utils import request_params_to_args
from fastapi.routing import APIRoute
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from contract.manifest import Manifest
from service.decode import DecodeLimits, declared_size, decode_image
from service.errors import (
    BadBase64,
    BadRequest,
    DeadlineExceeded,
    EmptyImage,
    GatewayError,
    InvalidParameter,
    RequestTimeout,
    TooManyImages,
    UnsupportedMediaType,
)
from service.models import Choice, ModelRegistry, ServedModel
from service.openapi_docs import (
    API_ERRORS,
    CLASSIFY_ERRORS,
    CLASSIFY_REQUEST_BODY,
    error_responses,
)
from service.schemas import (
    CanaryInfo,
    ClassifyResponse,
    ModelInfo,
    ModelsResponse,
    UnavailableModel,
    VersionInfo,
    json_bytes_response,
    json_response,
)
from service.settings import Settings
from service.state import GatewayState, StateDep, state_of

router = APIRouter(prefix="/v1", tags=["classify"])

IMAGE_FIELDS = ("image", "images")
_MAX_FORM_FIELDS = 16  # non-file parts we tolerate (and ignore) in a multipart body
_MAX_FIELD_BYTES = 64 * 1024  # per non-file part; images must come as file parts

TopK = Annotated[
    int | None,
    Query(ge=1, description="How many classes per image (1..number of labels)."),
]
Version = Annotated[
    int | None,
    Query(ge=1, description="Serve with this model version (404 if it is not served now)."),
]
Label = Annotated[
    str | None,
    Query(
        min_length=1,
        max_length=64,
        description="Serve with the version this label names on the model server, e.g. "
        "`canary` (404 if the label is not set). Not with `version`.",
    ),
]


_OK_DOC: dict[int | str, dict[str, Any]] = {
    200: {"description": "One prediction per image, in request order."}
}
CLASSIFY_DOC = {**_OK_DOC, **error_responses(*CLASSIFY_ERRORS)}


@router.post(
    "/classify",
    response_model=ClassifyResponse,
    responses=CLASSIFY_DOC,
    openapi_extra=CLASSIFY_REQUEST_BODY,
    summary="Classify one or more images with the default model",
)
async def classify(
    request: Request,
    state: StateDep,
    top_k: TopK = None,
    version: Version = None,
    label: Label = None,
) -> Response:
    # Declared here for the OpenAPI schema, FastAPI's 405s and the requests the classify lane
    # leaves to the router; the others are answered by `classify_request` through
    # `service.middleware.lane`, past FastAPI's router, with the same answers.
    return await _classify(request, state, state.settings.model_name, top_k, version, label)


@router.post(
    "/models/{name}/classify",
    response_model=ClassifyResponse,
    responses=CLASSIFY_DOC,
    openapi_extra=CLASSIFY_REQUEST_BODY,
    summary="Classify with a named model (404 for a model this gateway does not serve)",
)
async def classify_named(
    name: str,
    request: Request,
    state: StateDep,
    top_k: TopK = None,
    version: Version = None,
    label: Label = None,
) -> Response:
    return await _classify(request, state, name, top_k, version, label)


def query_params_of(route: APIRoute, request: Request) -> dict[str, Any] | None:
    """The classify route's query parameters as FastAPI's own validation reads them (its
    `request_params_to_args` on the route's declared parameters): {} when there is no query
    string, None when one is invalid (the router then answers, with FastAPI's 422)."""
    if not request.scope.get("query_string"):
        return {}
    values, errors = request_params_to_args(route.dependant.query_params, request.query_params)
    return None if errors else values


async def classify_request(request: Request, name: str | None, params: dict[str, Any]) -> Response:
    """`POST /v1/classify` (`name` None) or `/v1/models/{name}/classify` with the query
    `params` already validated (`query_params_of`): the handler the classify lane calls."""
    state = state_of(request.app)
    return await _classify(
        request,
        state,
        state.settings.model_name if name is None else name,
        params.get("top_k"),
        params.get("version"),
        params.get("label"),
    )


@router.get(
    "/models",
    response_model=ModelsResponse,
    responses=error_responses(*API_ERRORS),
    summary="The served models: each one's contract, versions, labels and canary",
)
async def list_models(state: StateDep) -> Response:
    models = state.serving().models
    listed, unavailable = [], []
    for served in models.models.values():
        info = _model_info(served, models, state)
        if info is None:
            unavailable.append(UnavailableModel(name=served.name, reason=served.why_not_serving()))
        else:
            listed.append(info)
    return json_response(ModelsResponse(models=listed, unavailable=unavailable))


def _model_info(
    served: ServedModel, models: ModelRegistry, state: GatewayState
) -> ModelInfo | None:
    current = served.current()
    if current is None:
        return None
    m = current.manifest
    canary = served.canary()
    labels_of: dict[int, list[str]] = {}
    for label, v in sorted(served.labels.items()):
        labels_of.setdefault(v, []).append(label)
    versions = [
        VersionInfo(
            version=v,
            state=served.states.get(v, "AVAILABLE"),
            serving=v in served.slots,
            labels=labels_of.get(v, []),
            error=served.rejected.get(v) or served.errors.get(v),
        )
        for v in sorted(set(served.states) | set(served.slots), reverse=True)
    ]
    return ModelInfo(
        name=served.name,
        default=served is models.default,
        version=current.version,
        architecture=m.architecture,
        backend=state.backend.name,
        input=m.input,
        preprocessing=m.preprocessing,
        num_labels=m.num_classes,
        default_top_k=min(state.settings.default_top_k, m.num_classes),
        batch_buckets=list(m.batch_buckets),
        precision=m.precision,
        xla_compiled=m.xla_compiled,
        versions=versions,
        labels=dict(served.labels),
        canary=CanaryInfo(
            version=canary.version if canary is not None else None,
            fraction=state.traffic.fraction(served.name),
        ),
    )


async def _classify(
    request: Request,
    state: StateDep,
    name: str,
    top_k: int | None,
    version: int | None,
    label: str | None,
) -> Response:
    loop = asyncio.get_running_loop()
    # Deadlines run on the loop's clock (asyncio.timeout_at); durations on perf_counter, since
    # uvloop's loop.time() ticks in whole milliseconds.
    started_pc = time.perf_counter()
    settings = state.settings
    deadline = loop.time() + settings.request_timeout_s
    models, decode_pool = state.serving()
    if version is not None and label is not None:
        raise InvalidParameter(
            f"ask for a version or a label, not both. Received: version={version}, label={label!r}"
        )
    served = models.model(name)
    choice = Choice(version, label)
    route = models.route(served, choice)
    k = _resolve_top_k(top_k, settings, route.slot.manifest)
    breaker = state.backend.breaker
    if breaker is not None:  # model server known down: 503 now, not after a wait in the queue
        breaker.fail_fast()
    # Overloaded: shed now, before spending CPU on reading and decoding (submit checks again).
    route = models.admit(route, deadline=deadline)
    manifest = route.slot.manifest

    budget = settings.request_timeout_s
    read_s = 0.0
    blobs: list[bytes] = []
    metrics = state.metrics

    def out_of_time(t0: float) -> DeadlineExceeded:
        return DeadlineExceeded(
            f"request budget of {budget:g} s ran out while decoding {len(blobs)} image(s) "
            f"({time.perf_counter() - t0:.2f} s decoding, after {read_s:.2f} s reading the body)"
        )

    async def decoded(for_manifest: Manifest) -> list[np.ndarray]:
        pixels, seconds = await _decode_all(blobs, for_manifest, state, decode_pool)
        for each in seconds:
            metrics.decode_seconds.observe(each)
        return pixels

    async def decode(for_manifest: Manifest) -> list[np.ndarray]:
        """Decode again for another version's input (a retry that moved the request)."""
        t0 = time.perf_counter()
        try:
            async with asyncio.timeout_at(deadline):
                return await decoded(for_manifest)
        except TimeoutError:
            raise out_of_time(t0) from None

    t0 = started_pc
    try:  # one timer for reading and decoding; the batcher keeps the same deadline after
        async with asyncio.timeout_at(deadline):
            blobs = await read_images(request, settings)
            t0 = time.perf_counter()
            read_s = t0 - started_pc
            pixels = await decoded(manifest)
    except TimeoutError:
        if not blobs:
            raise RequestTimeout(
                f"the request body was not received within the request budget "
                f"(request_timeout_s={budget:g})"
            ) from None
        raise out_of_time(t0) from None
    decode_s = time.perf_counter() - t0

    answer = await models.predict(served, choice, route, pixels, decode, deadline=deadline)
    results, answered = answer.results, answer.slot
    queue_s = backend_s = 0.0
    for r in results:
        metrics.queue_seconds.observe(r.queue_s)
        queue_s = max(queue_s, r.queue_s)
        backend_s = max(backend_s, r.backend_s)
    metrics.images.inc(len(results))

    total_s = time.perf_counter() - started_pc
    m = answered.manifest
    k = min(k, m.num_classes)  # a retry may have landed on a version with fewer labels
    predictions = [_top_k(r.probabilities, k, m) for r in results]
    metrics.observe_version(served.name, answered.version, ok=True, seconds=total_s)
    metrics.observe_top1(served.name, answered.version, [p[0]["label"] for p in predictions])
    timing = {
        "decode": round(decode_s * 1000, 3),
        "queue": round(queue_s * 1000, 3),
        "backend": round(backend_s * 1000, 3),
        "total": round(total_s * 1000, 3),
    }
    # Plain dicts in `ClassifyResponse`'s shape, encoded by orjson (tests compare the bytes
    # with the model's own encoding): a tenth of the cost of building and dumping the models.
    body = {
        "model": {"name": served.name, "version": answered.version},
        "predictions": [{"top_k": p} for p in predictions],
        "timing_ms": timing,
    }
    server_timing = ", ".join(f"{part};dur={ms}" for part, ms in timing.items())
    return json_bytes_response(body, headers={"Server-Timing": server_timing})


async def _decode_all(
    blobs: list[bytes], manifest: Manifest, state: GatewayState, pool: Executor
) -> tuple[list[np.ndarray], list[float]]:
    """The images decoded, and each one's seconds. Small ones are decoded right here on the
    event loop (`inline_decode_max_pixels` per request): handing them to a thread and back
    costs more CPU than they take when each process has a core of its own. The rest go to the
    worker pool, at most `max_decodes_per_request` at once: one request with many costly
    images must leave workers for everyone else's. Images not yet started when the request
    gives up (deadline, disconnect) are never decoded."""
    limits = state.decode_limits
    out: list[tuple[np.ndarray, float] | None] = [None] * len(blobs)
    pooled: list[int] = []
    inline_left = state.settings.inline_decode_pixels()
    for i, data in enumerate(blobs):
        pixels = _inline_pixels(data, inline_left)
        if pixels:
            inline_left -= pixels
            out[i] = _decode_timed(data, manifest, limits, i)
        else:
            pooled.append(i)
    if pooled:
        loop = asyncio.get_running_loop()
        slots = asyncio.Semaphore(state.settings.decode_slots_per_request())

        async def one(i: int) -> None:
            async with slots:
                out[i] = await loop.run_in_executor(
                    pool, partial(_decode_timed, blobs[i], manifest, limits, i)
                )

        await asyncio.gather(*(one(i) for i in pooled))
    done = [o for o in out if o is not None]
    return [p for p, _ in done], [t for _, t in done]


def _inline_pixels(data: bytes, budget: int) -> int:
    """The pixels `data` declares if it may be decoded on the event loop within `budget`
    (at most 2 bytes of file per pixel: a dense file costs more than its pixels say), else 0."""
    if budget <= 0 or len(data) > 2 * budget:
        return 0
    declared = declared_size(data)
    if declared is None:
        return 0
    pixels = declared[1] * declared[2]
    return pixels if 0 < pixels <= budget and len(data) <= 2 * pixels + 4096 else 0


def _resolve_top_k(top_k: int | None, settings: Settings, manifest: Manifest) -> int:
    if top_k is None:
        return min(settings.default_top_k, manifest.num_classes)
    if top_k > manifest.num_classes:
        raise InvalidParameter(
            f"top_k must be between 1 and {manifest.num_classes} (the number of labels). "
            f"Received: top_k={top_k}"
        )
    return top_k


def _top_k(probs: np.ndarray, k: int, manifest: Manifest) -> list[dict[str, Any]]:
    """The k best classes, best first; ties keep class order, same as tf.math.top_k."""
    ids = top_k_indices(probs, k)
    labels = manifest.labels
    return [
        {"label": labels[i], "class_id": i, "score": score}
        for i, score in zip(ids.tolist(), probs[ids].tolist(), strict=True)
    ]


def top_k_indices(probs: np.ndarray, k: int) -> np.ndarray:
    """Indices of the `k` largest values, largest first, ties in index order (a stable sort
    of the negated values), without sorting all of them: 1000 classes take ~7 us, not ~27."""
    n = probs.shape[0]
    if k * 8 >= n:
        return np.argsort(-probs, kind="stable")[:k]
    kth = probs[np.argpartition(-probs, k - 1)[k - 1]]
    if kth != kth:  # NaN: let the full sort place it as before
        return np.argsort(-probs, kind="stable")[:k]
    above = np.flatnonzero(probs > kth)
    ties = np.flatnonzero(probs == kth)[: k - above.shape[0]]
    ids = np.concatenate((above, ties))
    return ids[np.lexsort((ids, -probs[ids]))]


def _decode_timed(
    data: bytes, manifest: Manifest, limits: DecodeLimits, index: int
) -> tuple[np.ndarray, float]:
    t0 = time.perf_counter()
    try:
        arr = decode_image(
            data, input_spec=manifest.input, preprocessing=manifest.preprocessing, limits=limits
        )
    except GatewayError as exc:
        raise type(exc)(f"images[{index}]: {exc.detail}") from None
    return arr, time.perf_counter() - t0


async def read_images(request: Request, settings: Settings) -> list[bytes]:
    """The encoded images of a request, by content type; never more than the settings allow."""
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type == "multipart/form-data":
        blobs = await _read_multipart(request, settings)
    elif media_type.startswith("image/"):
        blobs = [await request.body()]
    elif media_type == "application/json":
        blobs = _read_json(await request.body(), settings)
    else:
        raise UnsupportedMediaType(
            "send multipart/form-data, image/* or application/json. "
            f"Received: Content-Type={media_type or '(none)'!r}"
        )
    if not blobs or all(not b for b in blobs):
        raise EmptyImage("the request carries no image bytes")
    if len(blobs) > settings.max_images_per_request:
        raise _too_many(len(blobs), settings)
    return blobs


def _too_many(n: int | str, settings: Settings) -> TooManyImages:
    return TooManyImages(
        f"at most {settings.max_images_per_request} images per request. Received: {n}"
    )


async def _read_multipart(request: Request, settings: Settings) -> list[bytes]:
    try:
        form = await request.form(
            max_files=settings.max_images_per_request,
            max_fields=_MAX_FORM_FIELDS,
            max_part_size=_MAX_FIELD_BYTES,
        )
    except HTTPException as exc:  # Starlette's MultiPartException, as a 400
        if "Too many files" in str(exc.detail):
            raise _too_many(f"more than {settings.max_images_per_request}", settings) from None
        raise BadRequest(f"malformed multipart body: {exc.detail}") from None
    try:
        parts = [p for field in IMAGE_FIELDS for p in form.getlist(field)]
        blobs: list[bytes] = []
        for part in parts:
            if not isinstance(part, UploadFile):
                raise BadRequest(
                    "multipart image parts must be file uploads (curl -F 'image=@cat.jpg')"
                )
            blobs.append(await part.read())
    finally:
        await form.close()
    if not parts:
        names = " or ".join(map(repr, IMAGE_FIELDS))
        if not form:  # python-multipart drops a part the body ends inside of, without a word
            raise EmptyImage(f"no complete multipart part arrived, so no file named {names} "
                             "(a body that ends before its closing boundary loses its last "
                             "part)")  # fmt: skip
        raise EmptyImage(f"no multipart file named {names}")
    return blobs


def _read_json(body: bytes, settings: Settings) -> list[bytes]:
    if not body:
        raise EmptyImage("empty JSON body")
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):  # deep nesting is hostile too
        raise BadRequest('body is not valid JSON: expected {"images": ["<base64>", ...]}') from None
    images = doc.get("images") if isinstance(doc, dict) else None
    if not isinstance(images, list) or not all(isinstance(s, str) for s in images):
        raise BadRequest('JSON body must be {"images": ["<base64>", ...]}')
    if len(images) > settings.max_images_per_request:
        raise _too_many(len(images), settings)
    out = []
    for i, text in enumerate(images):
        if text.startswith("data:") and "," in text:  # data URL: keep the payload
            text = text.split(",", 1)[1]
        try:
            out.append(base64.b64decode(text, validate=True))
        except (binascii.Error, ValueError):
            out.append(_lenient_b64(text, i))
    return out


_B64_NORMAL = str.maketrans("-_", "+/", " \t\r\n")  # URL-safe to standard, line breaks out
_NOT_B64 = re.compile(r"[^A-Za-z0-9+/=\-_ \t\r\n]")  # either alphabet, padding, line breaks


def _lenient_b64(text: str, index: int) -> bytes:
    """Base64 as clients send it besides the strict form: wrapped in lines (MIME, the `base64`
    tool), in the URL-safe alphabet (RFC 4648 section 5), or without its `=` padding. Anything
    else is BadBase64 saying what is wrong."""
    where = f"images[{index}] is not valid base64"
    bad = _NOT_B64.search(text)  # positions are the client's, in the string it sent
    if bad is not None:
        ch = bad.group()
        shown = repr(ch) if ch.isprintable() else f"U+{ord(ch):04X}"
        raise BadBase64(f"{where}: character {shown} at position {bad.start()} is not in "
                        "the base64 alphabet")  # fmt: skip
    body = text.translate(_B64_NORMAL).rstrip("=")
    if "=" in body:
        raise BadBase64(f"{where}: '=' padding in the middle, at position {text.index('=')}")
    if len(body) % 4 == 1:
        raise BadBase64(f"{where}: {len(body)} characters cannot be base64 (one too many or "
                        "one missing)")  # fmt: skip
    try:
        return base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:  # not expected after the checks above
        raise BadBase64(f"{where}: {exc}") from None
