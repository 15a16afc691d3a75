"""Headless Chromium for the browser tests: Debian's binary, driven by Playwright.

Never a downloaded browser. The flags keep Chromium off the network (this
machine has none) and quiet at start.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
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
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    return api


def launch(playwright: Any) -> Any:
    """A headless Chromium browser from a running ``sync_playwright()``."""
    return playwright.chromium.launch(
        executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
    )
