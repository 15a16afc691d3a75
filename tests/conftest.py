"""Shared fixtures: the layers under test and real servers behind them."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # tests/servers.py and friends
sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))  # contracts/, services/

from svcbus import Layer, open_layer

pytest_plugins = ["fixtures_servers", "timeouts"]

LayerFactory = Callable[..., Awaitable[Layer]]

# Every layer the conformance suite runs against. NATS and Redis tests start
# their own servers unless SVCBUS_NATS_URL / SVCBUS_REDIS_URL are set.
LAYERS = [
    pytest.param("memory", id="memory"),
    pytest.param("nats", id="nats", marks=pytest.mark.nats),
    pytest.param("redis", id="redis", marks=pytest.mark.redis),
]


TEST_LOOP = os.environ.get("SVCBUS_TEST_LOOP", "asyncio")
"""The event loop async tests run on: ``asyncio`` or ``uvloop`` (``SVCBUS_TEST_LOOP``)."""


@pytest.fixture
def anyio_backend() -> Any:
    if TEST_LOOP == "uvloop":
        return ("asyncio", {"use_uvloop": True})
    return "asyncio"


@pytest.fixture(params=LAYERS)
def layer_url(request: pytest.FixtureRequest) -> str:
    """A layer URL for this test: a private memory hub, or a real server's URL."""
    kind = request.param
    if kind == "memory":
        return f"memory://test-{uuid.uuid4().hex[:8]}"
    pytest.importorskip(f"svcbus.layers.{kind}", reason=f"the {kind} layer is not built yet")
    return request.getfixturevalue(f"{kind}_url")


@pytest.fixture
async def make_layer(layer_url: str) -> AsyncIterator[LayerFactory]:
    """Open connected layers on ``layer_url``; each is its own "process". Closed after the test."""
    opened: list[Layer] = []

    async def make(**options: Any) -> Layer:
        layer = open_layer(layer_url, **options)
        await layer.connect()
        opened.append(layer)
        return layer

    yield make
    for layer in reversed(opened):
        await layer.close()


@pytest.fixture
def uniq() -> Callable[[str], str]:
    """Channel/group names unique to this test, so tests sharing a server never collide."""
    prefix = f"t{uuid.uuid4().hex[:10]}"
    return lambda name: f"{prefix}.{name}"


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: Any) -> None:
    """End the run with one line on what was skipped and how to get it (skip_summary.py)."""
    from skip_summary import write_summary

    write_summary(terminalreporter)
