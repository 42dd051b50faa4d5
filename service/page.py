"""The demo page at `/`: choose, drop or paste images and see what the served model says.

A static page (`service/static/`: HTML, one script, one stylesheet; no build step, no CDN, no
web font) that calls the public API like any client: `GET v1/models` for the model,
`POST v1/classify` (multipart) per image, the `Server-Timing` header for the stages. It adds
no endpoint of its own and holds no secret, so it sits outside the API-key check; when keys
are on, the API's 401 makes the page ask for one. `Settings.demo_page = False` leaves the
router out (then `/` is a 404 like any unknown path).

The files are package data, read once at import. Every response carries a strict
Content-Security-Policy: scripts and styles only from this origin (no inline code, so an
injected string cannot run), requests only to this origin, images from this origin or from
the `blob:` previews the page makes of the user's own files. ETag + `no-cache` let a browser
reuse its copy yet see a new one as soon as the gateway is upgraded.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from typing import NamedTuple

from fastapi import APIRouter, Request, Response

from service.errors import NotFound

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidate with the ETag: a new gateway serves new files
}
_MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}


class Asset(NamedTuple):
    body: bytes
    media_type: str
    etag: str


def _load_assets() -> dict[str, Asset]:
    """Every file of `service/static/` by name (package data: present in wheels and images)."""
    assets = {}
    for entry in resources.files("service").joinpath("static").iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in _MEDIA_TYPES:
            body = entry.read_bytes()
            etag = '"' + hashlib.sha256(body).hexdigest()[:16] + '"'
            assets[entry.name] = Asset(body, _MEDIA_TYPES[suffix], etag)
    return assets


ASSETS = _load_assets()
INDEX = "index.html"

router = APIRouter(include_in_schema=False)


def _serve(asset: Asset, request: Request) -> Response:
    headers = {**SECURITY_HEADERS, "ETag": asset.etag}
    if request.headers.get("if-none-match") == asset.etag:
        return Response(status_code=304, headers=headers)
    return Response(asset.body, media_type=asset.media_type, headers=headers)


@router.api_route("/", methods=["GET", "HEAD"])
async def index(request: Request) -> Response:
    return _serve(ASSETS[INDEX], request)


@router.api_route("/static/{name}", methods=["GET", "HEAD"])
async def static(name: str, request: Request) -> Response:
    asset = ASSETS.get(name)  # a fixed set of names: no path from the request touches the disk
    if asset is None or name == INDEX:
        raise NotFound(f"no such file: /static/{name}")
    return _serve(asset, request)
