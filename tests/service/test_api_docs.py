"""`/docs` works offline: the page and every file it loads come from the gateway itself."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from service.app import create_app
from tests.browser import wait_for
from tests.service.conftest import LiveServer, gateway_settings, serving
from tests.service.test_api import DoubleBackend


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    settings = gateway_settings(tmp_path_factory.mktemp("docs"))
    with serving(create_app(settings, backend=DoubleBackend())) as server:
        yield server


def test_the_docs_page_loads_nothing_from_elsewhere(live: LiveServer) -> None:
    page = httpx.get(f"{live.url}/docs", timeout=10)
    assert page.status_code == 200
    sources = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text)
    assert sources and all(s.startswith("/") for s in sources), sources  # same origin only
    assert "cdn" not in page.text.lower()
    for url in sources:
        asset = httpx.get(f"{live.url}{url}", timeout=10)
        assert asset.status_code == 200, url
        assert len(asset.content) > 500
    assert httpx.get(f"{live.url}/docs/assets/../app.py", timeout=10).status_code == 404
    assert httpx.get(f"{live.url}/redoc", timeout=10).status_code == 404


def test_swagger_ui_renders_the_schema_in_a_browser(live: LiveServer, browser: Any) -> None:
    """In Chromium on this offline machine: a CDN-loaded page would stay blank."""
    browser.get(f"{live.url}/docs")
    title = wait_for(
        lambda: browser.execute_script(
            "const t = document.querySelector('.swagger-ui .info .title');return t && t.textContent"
        ),
        "Swagger UI to render the API title",
    )
    assert "resnet-serving gateway" in title
    operations = browser.execute_script(
        "return [...document.querySelectorAll('.opblock-summary-path')].map(e => e.textContent)"
    )
    assert any("/v1/classify" in op for op in operations), operations
