"""The example system as separate processes over a real NATS or Redis: edge, chat, stats.

Real WebSocket clients (``websockets``) and HTTP (``httpx``) drive the edge,
as a browser would.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from example_support import Processes, free_port, isolated, wait_for_http
from websockets.sync.client import ClientConnection, connect

LAYERS = [
    pytest.param("nats_url", id="nats", marks=pytest.mark.nats),
    pytest.param("redis_url", id="redis", marks=pytest.mark.redis),
]


@contextmanager
def chat_socket(base: str, room: str, nick: str) -> Iterator[ClientConnection]:
    """A WebSocket in ``room``, past its welcome frame."""
    with connect(f"ws://{base}/chat/{room}?nick={nick}", open_timeout=10) as ws:
        # Room frames (group_send) may overtake the welcome (a direct send).
        assert next_of(ws, "welcome")["room"] == room
        yield ws


def next_of(
    ws: ClientConnection, kind: str, timeout: float = 10.0, **fields: Any
) -> dict[str, Any]:
    """The next frame of type ``kind`` with ``fields``, skipping any other."""
    deadline = time.monotonic() + timeout
    while True:
        frame = json.loads(ws.recv(timeout=max(0.01, deadline - time.monotonic())))
        if frame["type"] == kind and all(frame.get(k) == v for k, v in fields.items()):
            return frame


def drain(ws: ClientConnection, seconds: float = 0.5) -> list[dict[str, Any]]:
    """Every frame arriving within ``seconds``."""
    frames = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            frames.append(json.loads(ws.recv(timeout=left)))
        except TimeoutError:
            break
    return frames


def stats_of(base: str, room: str) -> dict[str, Any]:
    response = httpx.get(f"http://{base}/api/stats/{room}", timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def eventually(check: Any, timeout: float = 10.0) -> None:
    """Retry ``check`` (an assertion) until it passes: events are asynchronous."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            check()
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.mark.parametrize("server", LAYERS)
def test_edge_chat_and_stats_as_separate_processes(
    server: str, request: pytest.FixtureRequest, processes: Processes
) -> None:
    layer = isolated(request.getfixturevalue(server))
    port = free_port()
    base = f"127.0.0.1:{port}"
    chat = processes.start("chat", "run", "services.example_chat", "--layer", layer)
    stats = processes.start("stats", "run", "services.example_stats", "--layer", layer)
    edge = processes.start(
        "edge", "edge", "services.example_chat.routing:routes", "--layer", layer,
        "--bind", base, "--log-level", "warning",
    )  # fmt: skip
    try:
        wait_for_http(f"http://{base}/", edge)
        # Both services answer through the edge once they consume.
        wait_for_http(f"http://{base}/api/history/lobby", chat)
        wait_for_http(f"http://{base}/api/stats/lobby", stats)

        with (
            chat_socket(base, "lobby", "ada") as ada,
            chat_socket(base, "lobby", "bob") as bob,
            chat_socket(base, "elsewhere", "eve") as eve,
        ):
            next_of(ada, "joined", nick="bob")
            ada.send(json.dumps({"text": "hello bob <b>"}))
            for ws in (ada, bob):
                message = next_of(ws, "message")
                assert (message["nick"], message["text"]) == ("ada", "hello bob <b>")
            bob.send(json.dumps({"text": "hi ada"}))
            for ws in (ada, bob):
                next_of(ws, "message", nick="bob", text="hi ada")

            ada.send("{not json")
            assert "not JSON" in next_of(ada, "error")["error"]
            assert all(f["type"] not in ("message", "error") for f in drain(bob))

            def counted() -> None:
                lobby = stats_of(base, "lobby")
                assert (lobby["messages"], lobby["active_users"]) == (2, 2)
                assert lobby["messages_per_minute"] == 2

            eventually(counted)
            assert stats_of(base, "elsewhere")["messages"] == 0
            # eve, in another room, saw nothing of the lobby: only her own room's
            # stats and (if it came after her welcome) her own arrival
            for frame in drain(eve):
                assert frame["type"] in ("stats", "joined"), frame
                assert frame.get("nick", "eve") == "eve", frame
                assert frame.get("stats", {}).get("room", "elsewhere") == "elsewhere", frame

            bob.close()
            next_of(ada, "left", nick="bob")

            def one_left() -> None:
                assert stats_of(base, "lobby")["active_users"] == 1

            eventually(one_left)

        history = httpx.get(f"http://{base}/api/history/lobby?limit=1", timeout=10).json()
        assert [m["text"] for m in history["messages"]] == ["hi ada"]
        assert httpx.get(f"http://{base}/api/stats/Bad_Room", timeout=10).status_code == 422
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{processes.describe()}") from exc

    # The services stop cleanly on SIGTERM, finishing what they hold.
    assert processes.stop(chat) == 0, processes.log("chat")
    assert processes.stop(stats) == 0, processes.log("stats")
