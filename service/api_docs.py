"""The interactive API docs at `/docs`, served entirely by the gateway: it works offline.

FastAPI's default `/docs` page loads Swagger UI's script and stylesheet from a public CDN, so
on an offline or locked-down host it is a blank page. Here the same page (FastAPI's own
`get_swagger_ui_html`) points at Swagger UI's files from the `swagger-ui-bundle-v2` package
(the `[gateway]` extra), served under `/docs/assets/`. ReDoc is not served: it has no such
package, and one documentation UI is enough.
"""

from __future__ import annotations

from importlib.abc import Traversable

from fastapi import APIRouter
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response
from swagger_ui_bundle import swagger_ui_path

from service.errors import NotFound

ASSETS_PREFIX = "/docs/assets"
_MEDIA_TYPES = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "favicon-32x32.png": "image/png",
}


def _load(root: Traversable) -> dict[str, bytes]:
    """The three files the page needs, read once (package data, present in every image)."""
    return {name: root.joinpath(name).read_bytes() for name in _MEDIA_TYPES}


_ASSETS = _load(swagger_ui_path)

router = APIRouter(include_in_schema=False)


@router.get("/docs", response_class=HTMLResponse)
async def docs() -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url="/openapi.json",
        title="resnet-serving gateway - API docs",
        swagger_js_url=f"{ASSETS_PREFIX}/swagger-ui-bundle.js",
        swagger_css_url=f"{ASSETS_PREFIX}/swagger-ui.css",
        swagger_favicon_url=f"{ASSETS_PREFIX}/favicon-32x32.png",
    )


@router.get(ASSETS_PREFIX + "/{name}")
async def asset(name: str) -> Response:
    body = _ASSETS.get(name)
    if body is None:
        raise NotFound(f"no such docs asset. Received: {name!r}")
    # The files change only with the package version: let browsers keep them a day.
    return Response(body, media_type=_MEDIA_TYPES[name],
                    headers={"Cache-Control": "public, max-age=86400"})  # fmt: skip
