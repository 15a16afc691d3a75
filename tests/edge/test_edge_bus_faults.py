"""The edge on a failing bus: a real redis-server or nats-server restarted under live sockets.

What must hold (the issue "Nothing lost without a word"): every frame a client
sent either reached the consumer, or its socket was closed with a code (1011 or
1013, never an abrupt 1006), or the consumer's layer counted it lost in doubt (a
pop whose answer the dying server never sent); handshakes during the outage get
a 503 that names no host; nothing logs a traceback; sockets and groups carry on
once the bus is back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import anyio
import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from svcbus import Bus, Context, Runtime, Service
from svcbus.edge import (
    Accept,
    EdgeApp,
    HttpRequest,
    HttpRoute,
    Limits,
    Routes,
    Send,
    WebSocketConnect,
    WebSocketReceive,
    WebSocketRoute,
)

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(90)]

CLIENTS = 50
FRAMES = 60
PACE = 0.05  # seconds between a client's frames: 20/s, under the default rate limit
ROOM = "faults.room"

service = Service("edge-faults")
delivered: set[str] = set()


@service.consumes("faults.ws.connect")
async def on_connect(msg: WebSocketConnect, ctx: Context) -> None:
    await ctx.send(msg.reply_channel, Accept(groups=[ROOM]))


@service.consumes("faults.ws.receive")
async def on_receive(msg: WebSocketReceive) -> None:
    delivered.add(msg.text or "")


@service.consumes("faults.ping")
async def on_ping(request: HttpRequest) -> dict:
    return {"pong": True}


routes = Routes(
    WebSocketRoute("/f/{n}", "faults.ws", disconnect=None),
    HttpRoute("/api/ping", "faults.ping"),
)


class Client:
    """One socket's record: the frames it sent, and how it ended."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.sent: list[str] = []
        self.close_code: int | None = None
        """The code of the server's close frame; 1006 when the socket just dropped."""
        self.ws: ClientConnection | None = None

    async def run(self, addr: str) -> None:
        self.ws = ws = await connect(f"ws://{addr}/f/{self.n}")
        try:
            for i in range(FRAMES):
                text = f"{self.n}:{i}"
                await ws.send(text)
                self.sent.append(text)
                await asyncio.sleep(PACE)
        except ConnectionClosed:
            self.ended()

    def ended(self) -> bool:
        """Whether the socket has ended; records the code the server closed it with."""
        ws = self.ws
        if ws is None or self.close_code is not None:
            return self.close_code is not None
        received = ws.protocol.close_rcvd
        if received is not None:
            self.close_code = received.code
        elif ws.protocol.state.name == "CLOSED":
            self.close_code = 1006
        return self.close_code is not None


async def knock(addr: str, bodies: list[str], statuses: list[int]) -> None:
    """A new handshake and an HTTP request, recording what the edge answered."""
    try:
        async with connect(f"ws://{addr}/f/new", open_timeout=10) as ws:
            await ws.send("new:0")
            statuses.append(101)
    except InvalidStatus as exc:
        statuses.append(exc.response.status_code)
        bodies.append(exc.response.body.decode(errors="replace"))
    async with httpx.AsyncClient(base_url=f"http://{addr}", timeout=15) as client:
        response = await client.get("/api/ping")
        statuses.append(response.status_code)
        bodies.append(response.text)


async def wait_delivered(frames: set[str], within: float) -> None:
    deadline = time.monotonic() + within
    while not frames <= delivered and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("kind", ["redis", "nats"])
async def test_bus_restart_under_live_sockets(
    kind: str, request: pytest.FixtureRequest, serve: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # Redis with its append-only file: a restart must not lose what it stored, so
    # any loss here is the edge's or the layer's (a plain redis-server restart loses
    # whatever waits in its lists, which no client can count).
    server = request.getfixturevalue("redis_server_aof" if kind == "redis" else "nats_server")
    caplog.set_level(logging.WARNING)
    # uvicorn's loggers do not propagate to the root logger, where caplog listens.
    uvicorn_log = logging.getLogger("uvicorn")
    uvicorn_log.addHandler(caplog.handler)
    request.addfinalizer(lambda: uvicorn_log.removeHandler(caplog.handler))
    delivered.clear()
    async with Bus(server.url) as consumer_bus, Runtime(service, consumer_bus).running():
        app = EdgeApp(routes, layer=server.url, limits=Limits(request_timeout=3.0))
        addr = await serve(app)
        # Less patient than the outage is long: its handshakes must get a clean 503.
        impatient = EdgeApp(
            routes, layer=server.url, limits=Limits(accept_timeout=0.3, request_timeout=0.3)
        )
        impatient_addr = await serve(impatient)
        clients = [Client(n) for n in range(CLIENTS)]
        bodies: list[str] = []
        statuses: list[int] = []
        refusals: list[int] = []
        async with anyio.create_task_group() as tasks:
            for client in clients:
                tasks.start_soon(client.run, addr)
            await asyncio.sleep(1.0)
            await anyio.to_thread.run_sync(server.stop)
            tasks.start_soon(knock, addr, bodies, statuses)  # patient: may get through
            await knock(impatient_addr, bodies, refusals)
            await asyncio.sleep(0.2)
            await anyio.to_thread.run_sync(server.start)  # down for about 1 s
        sent = {text for c in clients for text in c.sent}
        await wait_delivered(sent, 10)

        await asyncio.sleep(0.2)  # closes the edge sent while frames were retried arrive
        for client in clients:
            client.ended()
        lost = {c.n: [t for t in c.sent if t not in delivered] for c in clients}
        closed = {c.n: c.close_code for c in clients if c.close_code is not None}
        print(
            f"\n{kind}: {len(clients)} sockets, frames sent {len(sent)}, delivered "
            f"{len(sent & delivered)}, sockets closed {closed}, answers during the outage "
            f"{statuses} (impatient edge {refusals}), "
            f"stats {app.stats}"
        )
        # The bus is back: the sockets still open, and their group, carry on. (A
        # socket whose frame was in a batch the dying server never answered is
        # closed: that frame is in doubt. All 50 can be in one batch, so a socket
        # made after the outage joins the group too.)
        fresh = Client(CLIENTS)
        fresh.ws = await connect(f"ws://{addr}/f/{CLIENTS}", open_timeout=10)
        survivors = [c for c in clients if c.close_code is None] + [fresh]
        await asyncio.sleep(0.5)
        await consumer_bus.group_send(ROOM, Send(text="after"))
        for client in survivors:
            assert client.ws is not None
            with anyio.fail_after(10):
                while (await client.ws.recv()) != "after":
                    pass
        await knock(addr, bodies, statuses)
        assert statuses[-2:] == [101, 200], statuses

        for client in clients:
            if client.ws is not None:
                await client.ws.close()
    assert all(code in (1011, 1013) for code in closed.values()), closed
    # A frame may be lost on the consumer's side (a pop in flight when the connection
    # broke): its layer counts those in doubt. Any other loss closed its socket.
    unexplained = [t for n, missing in lost.items() if n not in closed for t in missing]
    in_doubt = int(consumer_bus.layer.lost)  # type: ignore[attr-defined]
    print(f"frames lost without a close code {unexplained}; consumer counted {in_doubt} in doubt")
    assert len(unexplained) <= in_doubt, f"lost without a close code or a count: {unexplained}"
    assert all(status in (101, 200, 503) for status in statuses), statuses
    assert refusals == [503, 503], refusals
    for body in bodies:
        assert str(server.port) not in body and "127.0.0.1" not in body, body
    tracebacks = [r.getMessage() for r in caplog.records if r.exc_info]
    assert not tracebacks, tracebacks
