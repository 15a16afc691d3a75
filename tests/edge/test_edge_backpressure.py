"""A full receive channel holds frames instead of dropping them: 1,000 sockets, default capacity.

Each socket sends 20 frames as fast as it can into a channel of capacity 100
(the default). The edge must hold a frame that finds the channel full, stop
reading that socket and retry until ``accept_timeout``; a frame is either
delivered or its socket is closed with a code.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import anyio
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from svcbus import Bus, Context, Runtime, Service
from svcbus.edge import (
    Accept,
    EdgeApp,
    Routes,
    Send,
    WebSocketConnect,
    WebSocketReceive,
    WebSocketRoute,
)

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(60)]

SOCKETS = 1000
FRAMES = 20

service = Service("edge-backpressure")
delivered: set[str] = set()


@service.consumes("bp.ws.connect")
async def on_connect(msg: WebSocketConnect, ctx: Context) -> None:
    await ctx.send(msg.reply_channel, Accept())


@service.consumes("bp.ws.receive")
async def on_receive(msg: WebSocketReceive, ctx: Context) -> None:
    # A consumer slower than the sockets (at most ~5,000 frames/s at the runtime's
    # concurrency of 10), so that the channel fills however fast the edge and the
    # event loop are: the test is about what happens then.
    await anyio.sleep(0.002)
    delivered.add(msg.text or "")
    await ctx.send(msg.reply_channel, Send(text=msg.text or ""))


routes = Routes(WebSocketRoute("/bp/{n}", "bp.ws", disconnect=None))


async def client(addr: str, n: int, sent: list[str], codes: dict[int, int]) -> None:
    """Send FRAMES frames back to back, then read the echoes (or the close)."""
    ws: ClientConnection = await connect(f"ws://{addr}/bp/{n}", open_timeout=30)
    try:
        for i in range(FRAMES):
            text = f"{n}:{i}"
            await ws.send(text)
            sent.append(text)
        echoed = 0
        with anyio.move_on_after(20):
            while echoed < FRAMES:
                await ws.recv()
                echoed += 1
    except ConnectionClosed as exc:
        codes[n] = exc.rcvd.code if exc.rcvd is not None else 1006
    finally:
        await ws.close()


async def test_full_channel_holds_frames_instead_of_dropping_them(serve) -> None:
    delivered.clear()
    async with Bus(f"memory://bp-{uuid.uuid4().hex[:8]}") as bus, Runtime(service, bus).running():
        app = EdgeApp(routes, layer=bus)
        assert bus.layer.options.capacity == 100
        addr = await serve(app, backlog=2048)
        sent: list[str] = []
        codes: dict[int, int] = {}
        started = time.monotonic()
        async with anyio.create_task_group() as tasks:
            for n in range(SOCKETS):
                tasks.start_soon(client, addr, n, sent, codes)
        took = time.monotonic() - started
        await asyncio.sleep(0.2)
    undelivered = {t for t in sent if t not in delivered}
    print(
        f"\n{SOCKETS} sockets x {FRAMES} frames at capacity 100: sent {len(sent)}, delivered "
        f"{len(set(sent) & delivered)}, sockets closed with a code {len(codes)} "
        f"({sorted(set(codes.values()))}), retries {app.stats.retried}, dropped "
        f"{app.stats.dropped}, {took:.1f} s"
    )
    assert took < 30
    assert all(code == 1013 for code in codes.values()), codes
    owners = {int(text.split(":")[0]) for text in undelivered}
    assert owners <= set(codes), f"frames of sockets {owners - set(codes)} lost without a close"
    assert app.stats.dropped == len(codes)
    assert app.stats.retried > 0, "the channel never filled: the test did not test backpressure"
