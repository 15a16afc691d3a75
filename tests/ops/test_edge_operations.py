"""`svc edge --health-port`: health, readiness and edge metrics scraped from a real edge."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import httpx
import pytest
from svc_process import SvcProcess
from test_health_metrics import _poll, _sample

pytest.importorskip("uvicorn")
websockets = pytest.importorskip("websockets")

EDGE_TESTS = Path(__file__).parent.parent / "edge"


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def _chat(port: int) -> int:
    async with websockets.connect(
        f"ws://127.0.0.1:{port}/ws/lobby", origin=f"http://127.0.0.1:{port}"
    ) as ws:
        await ws.send("hello")
        assert await ws.recv() == "hello"
        await ws.send("close:4001")
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
        return closed.value.rcvd.code


def test_edge_serves_health_and_counts_frames_and_closes():
    pytest.importorskip("prometheus_client")
    port = _free_port()
    with SvcProcess(
        "edge",
        "edge_service:cli_app",
        "--bind",
        f"127.0.0.1:{port}",
        "--health-port",
        "0",
        cwd=EDGE_TESTS,
    ) as svc:
        health = int(svc.wait_for(r"health on http://127\.0\.0\.1:(\d+)/healthz").group(1))
        base = f"http://127.0.0.1:{health}"
        assert _poll(f"{base}/readyz", 200).text == "ready\n"
        assert httpx.get(f"{base}/healthz").text == "ok\n"
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 404  # not a user route

        assert asyncio.run(_chat(port)) == 4001
        text = ""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            text = httpx.get(f"{base}/metrics").text
            if _sample(text, "svcbus_edge_closes_total", code="4001", by="edge") == 1:
                break
            time.sleep(0.1)
        assert _sample(text, "svcbus_edge_closes_total", code="4001", by="edge") == 1
        assert _sample(text, "svcbus_edge_frames_total", direction="in") == 2
        assert _sample(text, "svcbus_edge_frames_total", direction="out") == 1
        assert _sample(text, "svcbus_edge_sockets_accepted_total") == 1
        assert _sample(text, "svcbus_edge_sockets_open") == 0
        assert _sample(text, "svcbus_edge_rejections_total", limit="origin") == 0

        refused = httpx.get(
            f"http://127.0.0.1:{port}/ws/lobby",
            headers={
                "connection": "upgrade",
                "upgrade": "websocket",
                "origin": "https://evil.example",
                "sec-websocket-version": "13",
                "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
            },
        )
        assert refused.status_code == 403
        text = httpx.get(f"{base}/metrics").text
        assert _sample(text, "svcbus_edge_rejections_total", limit="origin") == 1
        assert re.search(r"svcbus_edge_closes_total\{", text)
        assert svc.terminate() == 0, svc.output
