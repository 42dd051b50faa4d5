"""The demo page at `/`, in a real headless Chromium against a real gateway on uvicorn.

The model: every file in `examples/` must show its own label first, so the model has to
classify the shapes. Training the demo recipe takes ~2.5 min on 2 cores and a quicker
recipe does not get all 20 files right, so `shapes_model` is built, not trained: a nearest-
template classifier whose weights are the example files as the gateway itself decodes them
(`service.decode`, 32x32), normalised per image so one matrix product gives their cosine
similarities, then summed per class. It knows exactly `examples/` and nothing else, which
is all the page tests need: it goes through `export_model` and the embedded backend like
any model, and the page has to show its answers in the order the API gives them.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from contract.manifest import InputSpec, Preprocessing
from service.decode import DecodeLimits, decode_image
from service.page import CONTENT_SECURITY_POLICY
from tests.browser import console_errors, wait_for
from tests.service.conftest import LiveServer, gateway_settings, serving

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(p for p in (ROOT / "examples").iterdir() if p.suffix in (".jpg", ".png"))
SHAPES = tuple(sorted({p.stem for p in EXAMPLES}))
MODEL = "shapes"
SIDE = 32
API_KEY = "page-test-key"
BROKEN = b"\xff\xd8\xff\xe0 this is not really a JPEG"
SCREENSHOT_ENV = "DEMO_SCREENSHOT_DIR"  # set it to keep the screenshots (README: docs/)

# ---------------------------------------------------------------- model and gateways


@pytest.fixture(scope="module")
def shapes_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Exported nearest-template model over `examples/` (see the module docstring)."""
    import keras

    from model_builder.artifacts import RunInfo
    from model_builder.export import export_model

    spec, pre = InputSpec(height=SIDE, width=SIDE), Preprocessing()
    limits = DecodeLimits(max_image_pixels=10_000_000, allowed_formats=("JPEG", "PNG"))
    pixels = np.stack([decode_image(p.read_bytes(), input_spec=spec, preprocessing=pre,
                                    limits=limits) for p in EXAMPLES])  # fmt: skip
    flat = pixels.reshape(len(EXAMPLES), -1).astype(np.float32) / 255.0  # the export's scale
    unit = keras.layers.LayerNormalization(center=False, scale=False)  # per image: mean 0, std 1
    templates = np.asarray(unit(flat))
    # Own template: similarity 1; the nearest other file: 0.2-0.8. At 8 every file still gets
    # its own class first (at 5 too) with scores of ~70-99 %, which looks like a real model.
    sharpness = 8.0

    inputs = keras.Input((SIDE, SIDE, 3))
    x = unit(keras.layers.Flatten()(inputs))
    similarity = keras.layers.Dense(len(EXAMPLES), use_bias=False, activation="softmax")
    x = similarity(x)
    per_class = keras.layers.Dense(len(SHAPES), use_bias=False)
    probabilities = per_class(x)
    model = keras.Model(inputs, probabilities)
    similarity.set_weights([templates.T * (sharpness / templates.shape[1])])
    membership = np.zeros((len(EXAMPLES), len(SHAPES)), np.float32)
    membership[np.arange(len(EXAMPLES)), [SHAPES.index(p.stem) for p in EXAMPLES]] = 1.0
    per_class.set_weights([membership])

    info = RunInfo(architecture="nearest_template", input_height=SIDE, input_width=SIDE,
                   labels=SHAPES, outputs_logits=False)  # fmt: skip
    base = tmp_path_factory.mktemp("page_models")
    export_model(model, model_base=base, name=MODEL, version=1, run_info=info, top_k=3,
                 buckets=(1, 2, 4, 8))  # fmt: skip
    return base


def _gateway(model_base: Path, **overrides: Any) -> Iterator[LiveServer]:
    from service.app import create_app

    settings = gateway_settings(model_base, model_name=MODEL, max_wait_ms=5.0, **overrides)
    with serving(create_app(settings)) as live:
        yield live


@pytest.fixture(scope="module")
def gateway(shapes_model: Path) -> Iterator[LiveServer]:
    yield from _gateway(shapes_model)


@pytest.fixture(scope="module")
def keyed_gateway(shapes_model: Path) -> Iterator[LiveServer]:
    yield from _gateway(shapes_model, api_keys=(API_KEY,))


# ---------------------------------------------------------------- helpers

CARDS_JS = """
return [...document.querySelectorAll('#results .card')].map((li) => ({
  name: li.querySelector('.name').textContent,
  state: li.dataset.state,
  says: li.querySelector('.state').textContent,
  labels: [...li.querySelectorAll('.labels li')].map((r) => ({
    label: r.querySelector('.label').textContent,
    score: r.querySelector('.score').textContent,
    width: r.querySelector('.fill').style.width,
  })),
  meta: li.querySelector('.meta').textContent,
  timing: li.querySelector('.timing').textContent,
  error: li.querySelector('.error').hidden ? null : li.querySelector('.error').textContent,
  preview: li.querySelector('img').naturalWidth,
}));
"""


def open_page(driver: Any, url: str) -> None:
    driver.get(url + "/")
    console_errors(driver)  # drop what earlier pages logged
    wait_for(lambda: "Model shapes version 1" in driver.find_element("id", "model").text
             or "API key" in driver.find_element("id", "model").text, "the model line")  # fmt: skip


def cards(driver: Any) -> list[dict[str, Any]]:
    return list(driver.execute_script(CARDS_JS))


def settled(driver: Any, n: int) -> list[dict[str, Any]]:
    """The result cards once `n` of them are finished (done or error)."""

    def check() -> list[dict[str, Any]] | None:
        now = cards(driver)
        finished = [c for c in now if c["state"] in ("done", "error")]
        return now if len(now) == n and len(finished) == n else None

    return wait_for(check, f"{n} finished result cards")


def choose_files(driver: Any, paths: list[Path]) -> None:
    driver.find_element("id", "files").send_keys("\n".join(str(p) for p in paths))


def dispatch_file_event(driver: Any, event: str, name: str, data: bytes, mime: str) -> None:
    """A drop or paste of one file, as the browser would deliver it (DataTransfer + event)."""
    driver.execute_script(
        """
        const [kind, name, b64, mime] = arguments;
        const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], name, { type: mime }));
        const target = document.getElementById('drop');
        if (kind === 'paste') {
          target.dispatchEvent(new ClipboardEvent('paste', { clipboardData: dt, bubbles: true }));
        } else {
          for (const type of ['dragenter', 'dragover', 'drop']) {
            target.dispatchEvent(new DragEvent(type, { dataTransfer: dt, bubbles: true, cancelable: true }));
          }
        }
        """,
        event,
        name,
        base64.b64encode(data).decode("ascii"),
        mime,
    )


def csp_violations(driver: Any) -> list[str]:
    return [m for m in console_errors(driver) if "Content Security Policy" in m]


# ---------------------------------------------------------------- over HTTP, no browser


def test_the_page_and_its_files_are_served_with_a_strict_policy(gateway: LiveServer) -> None:
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        page = client.get("/")
        assert page.status_code == 200 and client.head("/").status_code == 200
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert "'unsafe-inline'" not in CONTENT_SECURITY_POLICY
        assert page.headers["x-content-type-options"] == "nosniff"
        for name, media_type in (("app.js", "text/javascript"), ("style.css", "text/css"),
                                 ("icon.svg", "image/svg+xml")):  # fmt: skip
            asset = client.get(f"/static/{name}")
            assert asset.status_code == 200 and asset.headers["content-type"].startswith(media_type)
            again = client.get(f"/static/{name}", headers={"If-None-Match": asset.headers["etag"]})
            assert again.status_code == 304 and not again.content
        for missing in ("/static/index.html", "/static/nope.js", "/static/..%2Fpage.py"):
            reply = client.get(missing)
            assert reply.status_code == 404 and reply.json()["error"] == "not_found", missing
        assert "/" not in client.get("/openapi.json").json()["paths"]  # not part of the API


async def test_the_setting_turns_the_page_off(shapes_model: Path) -> None:
    from service.app import create_app

    app = create_app(gateway_settings(shapes_model, model_name=MODEL, demo_page=False))
    transport = httpx.ASGITransport(app=app)  # no lifespan: the model is never loaded
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        for path in ("/", "/static/app.js"):
            reply = await client.get(path)
            assert reply.status_code == 404 and reply.json()["error"] == "not_found"


def test_the_page_needs_nothing_from_elsewhere() -> None:
    """Offline: no URL to another origin in the page's files (the SVG namespace is a name)."""
    static = ROOT / "service" / "static"
    for path in static.iterdir():
        text = path.read_text(encoding="utf-8").replace('xmlns="http://www.w3.org/2000/svg"', "")
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text, re.I), path.name
        assert "@import" not in text and "@font-face" not in text, path.name
    html = (static / "index.html").read_text(encoding="utf-8")
    assert not re.search(r"<script(?![^>]*\bsrc=)", html), "inline script (the CSP forbids it)"
    assert " style=" not in html, "inline style attribute (the CSP forbids it)"


# ---------------------------------------------------------------- in the browser


def test_every_example_shows_its_own_label_first(browser: Any, gateway: LiveServer) -> None:
    open_page(browser, gateway.url)
    choose_files(browser, EXAMPLES)
    shown = settled(browser, len(EXAMPLES))
    assert [c["name"] for c in shown] == [p.name for p in EXAMPLES]  # in the order chosen
    by_name = {c["name"]: c for c in shown}
    for path in EXAMPLES:
        card = by_name[path.name]
        assert card["state"] == "done", card
        assert card["labels"][0]["label"] == path.stem, card
        assert len(card["labels"]) == 5  # the gateway's default_top_k, from v1/models
        assert card["meta"] == "shapes version 1"
        assert re.fullmatch(
            r"decode [\d.]+ ms · queue [\d.]+ ms · backend [\d.]+ ms · server total [\d.]+ ms"
            r" · round trip [\d.]+ ms",
            card["timing"],
        ), card["timing"]
        assert card["preview"] > 0  # the preview image loaded
        for row in card["labels"]:  # each bar is as long as its text says
            assert abs(float(row["width"].rstrip("%")) - float(row["score"].rstrip(" %"))) < 0.05
    assert not csp_violations(browser)
    origins = browser.execute_script(
        "return performance.getEntriesByType('resource').map((e) => new URL(e.name).origin)"
    )
    assert set(origins) == {gateway.url}, origins  # nothing fetched from anywhere else


@pytest.mark.parametrize("how", ["drop", "paste"])
def test_a_dropped_or_pasted_image_is_classified(
    browser: Any, gateway: LiveServer, how: str
) -> None:
    open_page(browser, gateway.url)
    star = ROOT / "examples" / "star.jpg"
    dispatch_file_event(browser, how, star.name, star.read_bytes(), "image/jpeg")
    [card] = settled(browser, 1)
    assert (card["name"], card["state"], card["labels"][0]["label"]) == ("star.jpg", "done", "star")
    status = browser.find_element("id", "status")
    assert status.get_attribute("aria-live") == "polite"
    assert status.text.startswith("star.jpg: star, ")  # announced to screen readers


def test_a_broken_file_shows_the_apis_own_message(browser: Any, gateway: LiveServer) -> None:
    api = httpx.post(f"{gateway.url}/v1/classify", files={"image": ("broken.jpg", BROKEN)},
                     timeout=10).json()  # fmt: skip
    open_page(browser, gateway.url)
    dispatch_file_event(browser, "drop", "broken.jpg", BROKEN, "image/jpeg")
    [card] = settled(browser, 1)
    assert card["state"] == "error" and not card["labels"]
    assert card["error"].startswith(api["detail"] + " ("), card["error"]
    assert f"({api['error']}, request " in card["error"]
    assert browser.find_element("id", "status").text == f"broken.jpg: error: {api['detail']}"


def test_the_page_asks_for_an_api_key_and_keeps_it_out_of_the_url(
    browser: Any, keyed_gateway: LiveServer
) -> None:
    open_page(browser, keyed_gateway.url)
    form = browser.find_element("id", "key-form")
    key_input = browser.find_element("id", "api-key")
    wait_for(form.is_displayed, "the API key form")
    assert browser.switch_to.active_element == key_input  # focus moved to the key field
    choose_files(browser, [ROOT / "examples" / "ring.png"])  # waits for a key
    wait_for(lambda: [c["says"] for c in cards(browser)] == ["Waiting for an API key…"],
             "the card to wait for a key")  # fmt: skip

    key_input.send_keys("wrong-key")
    form.submit()
    error = browser.find_element("id", "key-error")
    wait_for(lambda: error.is_displayed() and "invalid API key" in error.text, "the refusal")
    assert cards(browser)[0]["state"] == "pending"  # still waiting, not lost

    key_input.send_keys(API_KEY)
    form.submit()
    [card] = settled(browser, 1)
    assert (card["state"], card["labels"][0]["label"]) == ("done", "ring")
    wait_for(lambda: "Model shapes version 1" in browser.find_element("id", "model").text,
             "the model line once the key is given")  # fmt: skip
    assert not form.is_displayed()
    assert (
        browser.execute_script("return sessionStorage.getItem('resnet-serving.api-key')") == API_KEY
    )
    assert API_KEY not in browser.current_url and "key" not in browser.current_url

    browser.find_element("id", "forget-key").click()
    assert browser.execute_script("return sessionStorage.getItem('resnet-serving.api-key')") is None
    wait_for(form.is_displayed, "the key form again once the key is forgotten")


def test_keyboard_and_screen_reader_basics(browser: Any, gateway: LiveServer) -> None:
    open_page(browser, gateway.url)
    unlabelled = browser.execute_script(
        """
        const bad = [];
        for (const e of document.querySelectorAll('input, button')) {
          const named = e.tagName === 'BUTTON' ? e.textContent.trim() : e.labels.length > 0;
          if (!named && !e.getAttribute('aria-label')) bad.push(e.id || e.outerHTML);
        }
        return bad;
        """
    )
    assert unlabelled == []
    # The drop zone's button is the first stop with Tab, and Enter on it opens the file
    # picker (intercepted here: a headless browser shows no dialog).
    browser.execute_script(
        "document.getElementById('files').addEventListener('click', (e) => {"
        " e.preventDefault(); window.pickerOpened = true; });"
    )
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    ActionChains(browser).send_keys(Keys.TAB).perform()
    assert browser.switch_to.active_element.get_attribute("id") == "choose"
    for key in (Keys.ENTER, Keys.SPACE):
        browser.execute_script("window.pickerOpened = false;")
        ActionChains(browser).send_keys(key).perform()
        wait_for(lambda: browser.execute_script("return window.pickerOpened === true"),
                 f"the file picker opened from the keyboard ({key!r})")  # fmt: skip


def test_phone_width_and_screenshots(browser: Any, gateway: LiveServer, tmp_path: Path) -> None:
    """Readable at 375 px (nothing wider than the screen), and the screenshots for the README."""
    shots = {"demo-page.png": (1000, 1300), "demo-page-phone.png": (375, 812)}
    keep = os.environ.get(SCREENSHOT_ENV)
    try:
        for name, (width, height) in shots.items():
            browser.set_window_size(width, height)
            open_page(browser, gateway.url)
            dispatch_file_event(browser, "drop", "broken.jpg", BROKEN, "image/jpeg")
            choose_files(browser, [ROOT / "examples" / n for n in ("ring.png", "star.jpg")])
            settled(browser, 3)
            overflow = browser.execute_script(
                "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
            )
            assert overflow <= 0, f"{overflow} px wider than a {width} px window"
            path = tmp_path / name
            assert browser.save_screenshot(str(path))
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
            if keep:
                shutil.copy(path, Path(keep) / name)
    finally:
        browser.set_window_size(1280, 900)
