"""``svc demo``: starts, prints the URL, serves the page and the API, stops cleanly."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import httpx
import pytest
from example_support import SVC, Processes, isolated, read_url
from websockets.sync.client import connect


@pytest.mark.parametrize(
    ("server", "loop"),
    [
        pytest.param(None, "asyncio", id="memory"),
        pytest.param(None, "uvloop", id="memory-uvloop"),
        pytest.param("nats_url", "asyncio", id="nats", marks=pytest.mark.nats),
        pytest.param("redis_url", "asyncio", id="redis", marks=pytest.mark.redis),
    ],
)
def test_svc_demo_serves_the_page_and_stops_on_sigterm(
    server: str | None,
    loop: str,
    request: pytest.FixtureRequest,
    processes: Processes,
    tmp_path: Path,
) -> None:
    layer = ["--layer", isolated(request.getfixturevalue(server))] if server else []
    # From another directory: the demo finds the examples in the checkout itself.
    demo = processes.start("demo", "demo", "--port", "0", "--loop", loop, *layer, cwd=tmp_path)
    url = read_url(demo)
    assert url.startswith("http://127.0.0.1:") and url.endswith("/")

    page = httpx.get(url, timeout=10)
    assert page.status_code == 200 and "svcbus chat" in page.text
    assert httpx.get(url + "app.js", timeout=10).status_code == 200
    assert httpx.get(url + "api/stats/lobby", timeout=10).json() == {
        "room": "lobby",
        "messages": 0,
        "active_users": 0,
        "messages_per_minute": 0,
        "last_message_at": None,
        "seq": 0,
    }
    with connect(url.replace("http", "ws") + "chat/lobby?nick=ada", open_timeout=10) as ws:
        # Over NATS and Redis the room's "joined" (a group message) may overtake the
        # welcome (a direct one); the page copes, and so does this check.
        first_frames = [json.loads(ws.recv(timeout=10))["type"] for _ in range(2)]
        assert "welcome" in first_frames, first_frames

    assert processes.stop(demo) == 0, processes.log("demo")
    assert f"(event loop: {loop})" in processes.log("demo")


def test_svc_demo_says_what_to_do_when_the_port_is_taken() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [*SVC, "demo", "--bind", f"127.0.0.1:{port}"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 2
    assert "--port 0" in result.stderr


def test_svc_demo_bad_bind() -> None:
    result = subprocess.run(
        [*SVC, "demo", "--bind", "localhost"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert "HOST:PORT" in result.stderr
