"""Fixtures of the edge tests: real uvicorn servers on free loopback ports, in the test's loop.

Servers run as tasks in the test's own event loop (not threads), so an edge on
``memory://`` shares its hub, and its anyio events, with the services and the
assertions of the test.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

sys.path.insert(0, os.path.dirname(__file__))  # edge_service

import uvicorn

from svcbus import Bus, Runtime
from svcbus.edge import EdgeApp, Limits, config

Serve = Callable[..., Awaitable[str]]


def free_socket() -> socket.socket:
    """A listening-ready socket on a free loopback port (no bind race with other tests)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@pytest.fixture
async def serve(http_parser: str) -> AsyncIterator[Serve]:
    """``await serve(app)`` starts uvicorn for ``app`` and returns ``host:port``; stopped after."""
    started: list[tuple[uvicorn.Server, asyncio.Task[None]]] = []

    async def start(app: EdgeApp, **overrides: Any) -> str:
        sock = free_socket()
        port = sock.getsockname()[1]
        options = {"log_level": "warning", "timeout_graceful_shutdown": 2, **overrides}
        server = uvicorn.Server(config(app, port=port, parser=http_parser, **options))
        task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
        started.append((server, task))
        for _ in range(500):
            if server.started:
                return f"127.0.0.1:{port}"
            if task.done():
                task.result()
                raise RuntimeError("uvicorn stopped during startup")
            await asyncio.sleep(0.01)
        raise RuntimeError("uvicorn did not start within 5s")

    yield start
    for server, _ in started:
        server.should_exit = True
    for _, task in started:
        await asyncio.wait_for(task, 10)


@pytest.fixture
def hub_url() -> str:
    """A private memory hub for this test."""
    return f"memory://edge-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def in_process() -> bool:
    """Whether the test service takes the edge's messages in process (svcbus.local).

    A test module that sets ``BOTH_PATHS = True`` runs each of its tests both
    ways: handed over in process, and through the layer.
    """
    return True


@pytest.fixture
def http_parser() -> str:
    """The HTTP parser of the edge's uvicorn protocol in ``serve``.

    A test module that sets ``BOTH_PARSERS = True`` runs each of its tests
    on both: httptools (what ``auto`` takes when installed) and h11.
    """
    return "auto"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if getattr(metafunc.module, "BOTH_PATHS", False) and "in_process" in metafunc.fixturenames:
        metafunc.parametrize("in_process", [True, False], ids=["in-process", "through-layer"])
    if getattr(metafunc.module, "BOTH_PARSERS", False) and "http_parser" in metafunc.fixturenames:
        metafunc.parametrize("http_parser", ["httptools", "h11"])


@pytest.fixture
async def edge_bus(hub_url: str, in_process: bool) -> AsyncIterator[Bus]:
    """An open bus on the test's hub, with the test service consuming on it."""
    from edge_service import service

    async with Bus(hub_url) as bus, Runtime(service, bus, in_process=in_process).running():
        yield bus


@pytest.fixture
async def edge(serve: Serve, edge_bus: Bus) -> AsyncIterator[tuple[str, EdgeApp]]:
    """The test routes served on the test bus with default settings: (host:port, app)."""
    from edge_service import routes

    app = EdgeApp(routes, layer=edge_bus, limits=Limits(accept_timeout=1.0, request_timeout=1.0))
    yield await serve(app), app
