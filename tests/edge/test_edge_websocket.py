"""WebSockets through a real uvicorn edge: connect, accept, reject, echo, order, groups."""

from __future__ import annotations

import asyncio
import json

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

pytestmark = pytest.mark.anyio


async def test_accept_and_echo_text(edge) -> None:
    addr, app = edge
    async with connect(f"ws://{addr}/ws/lobby") as ws:
        await ws.send("hello")
        assert await ws.recv() == "hello"
        await ws.send("héllo ✓")
        assert await ws.recv() == "héllo ✓"
    assert app.stats.accepted == 1


async def test_echo_binary(edge) -> None:
    addr, _ = edge
    async with connect(f"ws://{addr}/ws/lobby") as ws:
        await ws.send(b"\x00\x01\xffabc")
        assert await ws.recv() == b"cba\xff\x01\x00"


async def test_replies_reach_the_socket_in_the_order_sent(edge) -> None:
    addr, app = edge
    async with connect(f"ws://{addr}/ws/lobby") as ws:
        for _ in range(3):
            await ws.send("burst:60")
            assert [await ws.recv() for _ in range(60)] == [str(i) for i in range(60)]
        await ws.send("still in order")
        assert await ws.recv() == "still in order"
    assert app.stats.dropped == 0


async def test_subprotocol_is_negotiated(edge) -> None:
    addr, _ = edge
    async with connect(f"ws://{addr}/ws/lobby", subprotocols=["chat.v2", "chat.v1"]) as ws:
        assert ws.subprotocol == "chat.v1"
    async with connect(f"ws://{addr}/ws/lobby") as ws:
        assert ws.subprotocol is None


async def test_consumer_rejects_with_close(edge) -> None:
    addr, app = edge
    with pytest.raises(InvalidStatus) as info:
        async with connect(f"ws://{addr}/ws/forbidden"):
            pass
    assert info.value.response.status_code == 403
    assert app.stats.rejected == 1


async def test_unanswered_connection_times_out(edge) -> None:
    addr, app = edge  # accept_timeout=1.0
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(InvalidStatus) as info:
        async with connect(f"ws://{addr}/ws/silent"):
            pass
    assert info.value.response.status_code == 403
    assert 0.9 < loop.time() - start < 3
    assert app.stats.rejected == 1
    # The edge still serves others.
    async with connect(f"ws://{addr}/ws/lobby") as ws:
        await ws.send("still here")
        assert await ws.recv() == "still here"


async def test_no_route_is_404(edge) -> None:
    addr, _ = edge
    with pytest.raises(InvalidStatus) as info:
        async with connect(f"ws://{addr}/nowhere"):
            pass
    assert info.value.response.status_code == 404


async def test_consumer_closes_with_code(edge) -> None:
    addr, _ = edge
    async with connect(f"ws://{addr}/ws/lobby") as ws:
        await ws.send("close:4001")
        with pytest.raises(ConnectionClosed) as info:
            await ws.recv()
    assert info.value.rcvd is not None and info.value.rcvd.code == 4001


async def test_messages_carry_order_and_connect_details(edge) -> None:
    addr, _ = edge
    async with connect(
        f"ws://{addr}/ws/whoami?x=1&y=two", additional_headers={"X-Trace": "t1"}
    ) as ws:
        info = json.loads(await ws.recv())
        assert info["params"] == {"room": "whoami"}
        assert info["query"] == {"x": "1", "y": "two"}
        assert info["headers"]["x-trace"] == "t1"
        assert "sec-websocket-key" not in info["headers"]
        assert info["client"].startswith("127.0.0.1:")
        for expected in ("1", "2", "3"):
            await ws.send("order")
            assert await ws.recv() == expected


async def test_route_without_connect_channel_accepts_itself(edge) -> None:
    addr, _ = edge
    async with connect(f"ws://{addr}/auto") as ws:
        await ws.send("x")
        assert await ws.recv() == "auto:x"


async def test_disconnect_reaches_consumer(edge) -> None:
    from edge_service import disconnects

    addr, _ = edge
    before = len(disconnects)
    async with connect(f"ws://{addr}/ws/bye") as ws:
        await ws.send("order")
        assert await ws.recv() == "1"
    for _ in range(100):
        if len(disconnects) > before:
            break
        await asyncio.sleep(0.01)
    last = disconnects[-1]
    assert last.params == {"room": "bye"}
    assert last.code == 1000
    assert last.order == 2


async def test_many_clients_at_once(edge) -> None:
    addr, _ = edge

    async def client(i: int) -> None:
        async with connect(f"ws://{addr}/ws/many") as ws:
            for j in range(5):
                await ws.send(f"{i}-{j}")
                assert await ws.recv() == f"{i}-{j}"

    await asyncio.gather(*(client(i) for i in range(50)))
