"""Groups reach sockets, on one edge and across edges; disconnects leave nothing behind."""

from __future__ import annotations

import asyncio

import pytest
from raw_handshake import websocket_handshake
from websockets.asyncio.client import connect

from svcbus import Bus, Runtime
from svcbus.edge import EdgeApp, Send
from svcbus.layers.memory import hub

pytestmark = pytest.mark.anyio


async def no_message(ws, wait: float = 0.2) -> bool:
    try:
        await asyncio.wait_for(ws.recv(), wait)
    except asyncio.TimeoutError:
        return True
    return False


async def test_broadcast_reaches_the_room_only(edge) -> None:
    addr, _ = edge
    room_a = [await connect(f"ws://{addr}/ws/a") for _ in range(3)]
    room_b = await connect(f"ws://{addr}/ws/b")
    try:
        await room_a[0].send("broadcast:hello a")
        for ws in room_a:
            assert await ws.recv() == "hello a"
        assert await no_message(room_b)
    finally:
        for ws in [*room_a, room_b]:
            await ws.close()


async def test_service_group_send_reaches_sockets(edge, edge_bus) -> None:
    addr, _ = edge
    async with connect(f"ws://{addr}/ws/news") as one, connect(f"ws://{addr}/ws/news") as two:
        await edge_bus.group_send("room.news", Send(text="extra!"))
        assert await one.recv() == "extra!"
        assert await two.recv() == "extra!"
        await edge_bus.group_send("room.news", Send(binary=b"\x01\x02"))
        assert await one.recv() == b"\x01\x02"


async def test_join_and_leave_through_the_edge(edge, edge_bus) -> None:
    addr, _ = edge
    async with connect(f"ws://{addr}/ws/x") as ws:
        await ws.send("join:topic.extra")
        assert await ws.recv() == "joined"
        await edge_bus.group_send("topic.extra", Send(text="for topic"))
        assert await ws.recv() == "for topic"
        await ws.send("leave:topic.extra")
        assert await ws.recv() == "left"
        await edge_bus.group_send("topic.extra", Send(text="not any more"))
        assert await no_message(ws)


async def test_invalid_reply_is_dropped_and_connection_survives(edge, edge_bus) -> None:
    addr, app = edge
    async with connect(f"ws://{addr}/ws/odd") as ws:
        await edge_bus.group_send("room.odd", {"type": "websocket.explode"})
        await edge_bus.group_send("room.odd", Send(text="after"))
        assert await ws.recv() == "after"
    assert app.stats.invalid_replies == 1


async def test_thousand_cycles_leave_no_members_or_channels(edge, hub_url) -> None:
    addr, app = edge
    memory = hub(hub_url.split("://", 1)[1])

    async def cycles(worker: int) -> None:
        for i in range(50):
            async with connect(f"ws://{addr}/ws/cycle{(worker + i) % 5}") as ws:
                if i % 10 == 0:
                    await ws.send("join:cycle.extra")
                    assert await ws.recv() == "joined"

    await asyncio.gather(*(cycles(w) for w in range(20)))  # 1,000 connections
    for _ in range(200):
        if app.stats.connections == 0:
            break
        await asyncio.sleep(0.01)
    assert app.stats.connections == 0
    assert app.stats.accepted == 1000
    await asyncio.sleep(0.05)
    assert not memory.groups, f"leaked group members: {list(memory.groups)[:5]}"
    leaked = [name for name in memory.queues if name.startswith("edge.")]
    assert leaked == [], f"leaked reply channels: {leaked[:5]}"


async def test_groups_across_two_edge_processes_on_nats(serve, nats_url, uniq) -> None:
    pytest.importorskip("svcbus.layers.nats", reason="the NATS layer is not built yet")
    from edge_service import routes, service

    # Two edges and the service, each with its own NATS connection: three "processes".
    async with Bus(nats_url) as service_bus, Runtime(service, service_bus).running():
        first = await serve(EdgeApp(routes, layer=nats_url))
        second = await serve(EdgeApp(routes, layer=nats_url))
        room = uniq("r").replace(".", "-")
        async with (
            connect(f"ws://{first}/ws/{room}") as one,
            connect(f"ws://{second}/ws/{room}") as two,
        ):
            await one.send("broadcast:across edges")
            assert await asyncio.wait_for(one.recv(), 5) == "across edges"
            assert await asyncio.wait_for(two.recv(), 5) == "across edges"
            await service_bus.group_send(f"room.{room}", Send(text="from the service"))
            assert await asyncio.wait_for(one.recv(), 5) == "from the service"
            assert await asyncio.wait_for(two.recv(), 5) == "from the service"


async def test_a_stalled_client_does_not_hold_up_the_room(edge, edge_bus) -> None:
    addr, app = edge
    host, port = addr.split(":")
    # A client that completes the handshake and then never reads again.
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(websocket_handshake(addr, "/ws/stall"))
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
    try:
        async with connect(f"ws://{addr}/ws/stall", max_size=None) as reading:
            chunk = "z" * 32_000
            # ~25 MB in steps the reading client keeps up with: far more than the
            # stalled socket's buffers and backlog can hold.
            for step in range(40):
                for i in range(step * 20, step * 20 + 20):
                    await edge_bus.group_send("room.stall", Send(text=f"{i}:{chunk}"))
                for i in range(step * 20, step * 20 + 20):
                    message = await asyncio.wait_for(reading.recv(), 5)
                    assert message.startswith(f"{i}:")
        assert app.stats.dropped > 0  # the stalled socket's backlog overflowed
    finally:
        writer.close()
