"""A real headless Chromium for the browser tests, driven by Selenium through chromedriver.

Debian's `chromium` and `chromium-driver` packages (installed by `.ci/run`; README for local
runs): nothing is downloaded, Selenium Manager is never asked. Without them the browser tests
skip with that reason, unless `RESNET_SERVING_REQUIRE_BROWSER=1` (CI) turns the skip into a
failure, so a CI machine that lost its browser cannot pass silently.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
REQUIRE_ENV = "RESNET_SERVING_REQUIRE_BROWSER"
INSTALL_HINT = "apt-get install chromium chromium-driver"
WAIT_S = 30.0  # every wait for the page is bounded

# Flags for a closed network: without the background-networking ones Chromium keeps trying
# to reach Google's update, sync and QUIC endpoints, whose refused connections stall start-up.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",  # CI runs as root in a container
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--hide-scrollbars",
)

T = TypeVar("T")


def find_chromium() -> tuple[str, str] | None:
    """(browser, chromedriver) paths, or None when either is missing."""
    browser = next(filter(None, map(shutil.which, CHROMIUM_NAMES)), None)
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def skip_or_fail_without_browser() -> tuple[str, str]:
    found = find_chromium()
    if found is not None:
        return found
    reason = f"no chromium + chromedriver on PATH: {INSTALL_HINT} (Debian) to run browser tests"
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{REQUIRE_ENV}=1 but {reason}")
    pytest.skip(reason)


@contextlib.contextmanager
def chromium(width: int = 1280, height: int = 900) -> Iterator[Any]:
    """A fresh headless Chromium (own profile folder), closed and cleaned up afterwards."""
    browser_path, driver_path = skip_or_fail_without_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    options = webdriver.ChromeOptions()
    options.binary_location = browser_path
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # console, CSP reports
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    try:
        driver.set_page_load_timeout(WAIT_S)
        driver.set_script_timeout(WAIT_S)
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def wait_for(check: Callable[[], T | None], what: str, timeout_s: float = WAIT_S) -> T:
    """Poll `check` until it returns something truthy; fail naming `what` after the timeout."""
    end = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(0.05)


def console_errors(driver: Any) -> list[str]:
    """Messages the page logged at SEVERE since the last call (CSP violations land here)."""
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
