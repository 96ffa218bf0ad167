"""A real headless browser for the report's tests: Debian's chromium driven by selenium (never a
downloaded browser). CI installs it with `apt-get install -y chromium chromium-driver`."""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("NESTKIT_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("NESTKIT_TEST_CHROMEDRIVER", "/usr/bin/chromedriver")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,1000",
)


@contextmanager
def chromium():
    """A selenium driver on Debian's chromium with a fresh profile; fails (never skips) without it."""
    if not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()):
        pytest.fail(
            f"chromium: not installed (expected {CHROMIUM} and {CHROMEDRIVER}). Install it: apt-get install -y chromium chromium-driver"
        )
    from selenium import webdriver

    profile = tempfile.mkdtemp(prefix="nestkit-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def console_errors(driver) -> list[dict]:
    return [entry for entry in driver.get_log("browser") if entry.get("level") in ("SEVERE", "ERROR")]


def screenshot_spread(element) -> tuple[float, int, int]:
    """(standard deviation of the pixel values, width, height) of the element's screenshot: a blank
    or broken image is one flat colour."""
    import numpy as np
    from PIL import Image

    element.parent.execute_script("arguments[0].scrollIntoView({block: 'start'});", element)
    image = np.asarray(Image.open(io.BytesIO(element.screenshot_as_png)).convert("L"), dtype=np.float32)
    return float(image.std()), image.shape[1], image.shape[0]
