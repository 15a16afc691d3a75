"""`svc edge` as a subprocess serving a routes module."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect

HERE = Path(__file__).parent
SVC = [sys.executable, "-m", "svcbus.cli"]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_serving(process: subprocess.Popen, port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"svc edge exited early: {process.communicate()[1]}")
        try:
            httpx.get(f"http://127.0.0.1:{port}/static/", timeout=0.5)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError("svc edge did not start serving")


@pytest.fixture
def svc_edge():
    started: list[subprocess.Popen] = []

    def start(*args: str) -> tuple[int, subprocess.Popen]:
        port = free_port()
        process = subprocess.Popen(
            [*SVC, "edge", *args, "--bind", f"127.0.0.1:{port}", "--log-level", "warning"],
            cwd=HERE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "SVCBUS_LAYER": ""},
        )
        started.append(process)
        wait_until_serving(process, port)
        return port, process

    yield start
    for process in started:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def exercise(port: int) -> None:
    with connect(f"ws://127.0.0.1:{port}/ws/lobby") as ws:
        ws.send("over the wire")
        assert ws.recv(timeout=5) == "over the wire"
    response = httpx.get(f"http://127.0.0.1:{port}/api/add/40?b=2", timeout=5)
    assert response.json() == {"total": 42}


def test_svc_edge_serves_a_routes_module_and_stops_on_sigint(svc_edge) -> None:
    port, process = svc_edge("edge_service:cli_app")
    exercise(port)
    process.send_signal(signal.SIGINT)
    assert process.wait(10) == 0
    assert "svc edge" in process.stderr.read()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_svc_edge_on_each_event_loop(svc_edge, loop: str) -> None:
    # uvicorn's default (auto) takes uvloop whenever it is installed, so the edge
    # must work on both; the startup line says which one serves.
    port, process = svc_edge("edge_service:cli_app", "--loop", loop)
    exercise(port)
    process.send_signal(signal.SIGINT)
    assert process.wait(10) == 0
    assert f"event loop: {loop}" in process.stderr.read()


@pytest.mark.parametrize("http", ["httptools", "h11"])
def test_svc_edge_on_each_http_parser(svc_edge, http: str) -> None:
    # auto takes httptools when it is installed (the edge extra installs it);
    # h11 is the pure-Python fallback. Both carry the edge's limits.
    port, process = svc_edge("edge_service:cli_app", "--http", http, "--workers", "2")
    exercise(port)
    process.send_signal(signal.SIGINT)
    assert process.wait(10) == 0
    assert f"HTTP: {http}" in process.stderr.read()


def test_svc_edge_with_workers(svc_edge) -> None:
    port, _ = svc_edge("edge_service:cli_app", "--workers", "2")
    exercise(port)


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("edge_service", "must be module:attribute"),
        ("edge_service:nothing", "has no attribute 'nothing'"),
        ("no_such_module:routes", "cannot import 'no_such_module'"),
        ("edge_service:service", "must be a svcbus.edge.Routes table or EdgeApp"),
        ("edge_service:cli_app --http fast", "use one of auto, h11, httptools"),
    ],
)
def test_svc_edge_bad_routes_say_what_to_do(ref: str, message: str) -> None:
    result = subprocess.run(
        [*SVC, "edge", *ref.split(), "--bind", "127.0.0.1:1"],
        cwd=HERE,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert message in result.stderr


def test_svc_edge_bad_bind() -> None:
    result = subprocess.run(
        [*SVC, "edge", "edge_service:routes", "--bind", "localhost"],
        cwd=HERE,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "HOST:PORT" in result.stderr
