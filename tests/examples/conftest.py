"""Fixtures of the example-system tests; the helpers live in example_support.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from example_support import Processes


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    """Start ``svc`` processes; all of them are stopped after the test, even on failure."""
    procs = Processes(tmp_path)
    try:
        yield procs
    finally:
        procs.stop_all()
