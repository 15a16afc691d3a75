"""Headless Chromium for the browser tests: Debian's binary, driven by Playwright.

Never a downloaded browser. The flags keep Chromium off the network (this
machine has none) and quiet at start.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

CHROMIUM_ENV = "SVCBUS_CHROMIUM"
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> Path | None:
    """``$SVCBUS_CHROMIUM`` if set, else the first Chromium-like browser on PATH."""
    given = os.environ.get(CHROMIUM_ENV)
    if given:
        return Path(given) if Path(given).exists() else None
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return Path(found)
    return None


CHROMIUM = find_chromium()
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def sync_api_or_skip() -> Any:
    """``playwright.sync_api``, or skip the test with what to install."""
    api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if CHROMIUM is None:
        pytest.skip(
            f"no Chromium on PATH ({', '.join(CHROMIUM_NAMES)}) and no ${CHROMIUM_ENV}: "
            "apt-get install chromium, or set SVCBUS_CHROMIUM=/path/to/chrome"
        )
    return api


def launch(playwright: Any) -> Any:
    """A headless Chromium browser from a running ``sync_playwright()``."""
    return playwright.chromium.launch(
        executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
    )
