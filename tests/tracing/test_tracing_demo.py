"""``svc demo --trace console`` prints a readable trace of a chat message crossing both services."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest
import websockets

ROOT = Path(__file__).resolve().parents[2]
URL = re.compile(r"http://(\S+)/")

pytestmark = pytest.mark.anyio


def start_demo(log: Path) -> tuple[subprocess.Popen[str], str]:
    """``svc demo --trace console --port 0``; returns the process and its ``host:port``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SVCBUS_", "OTEL_"))}
    with log.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "svcbus.cli", "demo", "--trace", "console", "--port", "0"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    assert process.stdout is not None
    line = process.stdout.readline()  # "open http://127.0.0.1:PORT/ ..." once serving
    found = URL.search(line)
    if found is None:
        process.kill()
        process.wait()
        raise AssertionError(f"svc demo printed {line!r}; log:\n{log.read_text()}")
    return process, found.group(1)


def stop(process: subprocess.Popen[str]) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()
    finally:
        if process.stdout is not None:
            process.stdout.close()


async def test_demo_prints_a_chat_message_crossing_edge_chat_and_stats(tmp_path: Path) -> None:
    log = tmp_path / "demo.log"
    process, address = start_demo(log)
    try:
        async with websockets.connect(f"ws://{address}/chat/tracing?nick=ada") as ws:
            assert json.loads(await ws.recv())["type"] == "welcome"
            await ws.send(json.dumps({"text": "follow me"}))
            with anyio.fail_after(10):
                while True:
                    frame = json.loads(await ws.recv())
                    if frame["type"] == "stats" and frame["stats"]["messages"] == 1:
                        break
        # The stats push is delivered by the edge right after; let the last lines out.
        deadline = time.monotonic() + 5
        while "deliver stats.tracing" not in log.read_text() and time.monotonic() < deadline:
            await anyio.sleep(0.05)
    finally:
        assert stop(process) == 0
    text = log.read_text()
    lines = [line for line in text.splitlines() if re.match(r"^[0-9a-f]{8} ", line)]
    post = [line for line in lines if "WS receive /chat/{room}" in line]
    assert post, text
    trace_id = post[0][:8]
    trace = [line for line in lines if line.startswith(trace_id)]
    names = [re.sub(r" \.+ .*", "", line[9:]) for line in trace]
    # Indented by depth, each span named with its service; parents above children.
    for expected in (
        "edge  WS receive /chat/{room}",
        "  chat  process chat.receive",
        "    chat  send chat.posted",
        "      stats  process chat.posted",
        "        stats  send stats.tracing",
        "          edge  deliver stats.tracing",
        "    chat  send room.tracing",
        "      edge  deliver room.tracing",
    ):
        assert expected in names, "\n".join(trace)
    assert names.index("  chat  process chat.receive") < names.index(
        "      stats  process chat.posted"
    )
    receive = next(line for line in trace if "WS receive" in line)
    assert re.search(r" \d+\.\d\d ms  ok  id=\S+ to=chat.receive links=1$", receive), receive
    assert "sockets=1" in next(line for line in trace if "deliver stats.tracing" in line)
