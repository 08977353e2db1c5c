"""Fixtures for the HTML report tests: the example recordings and a real headless Chromium."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.analysis.conftest import recording
from tests.conftest import REQUIRE_SERVICES

CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1400,900",
)


@pytest.fixture(scope="session")
def django_recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return recording(tmp_path_factory, "django")


@pytest.fixture(scope="session")
def fastapi_recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return recording(tmp_path_factory, "fastapi")


def _missing(what: str) -> None:
    message = f"{what} (apt-get install chromium chromium-driver; pip install selenium)"
    if REQUIRE_SERVICES:
        pytest.fail(message + " (STAGETRACE_TEST_REQUIRE_SERVICES=1: the browser is required)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """A real headless Chromium driven by chromedriver, with its console log readable; skipped
    when absent locally, required in CI."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _missing("selenium is not installed")
    binary = next((p for p in CHROMIUM if Path(p).exists()), None) or shutil.which("chromium")
    if binary is None:
        _missing("Chromium is not installed")
    if not Path(CHROMEDRIVER).exists():
        _missing("chromedriver is not installed")
    profile = tempfile.mkdtemp(prefix="stagetrace-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
