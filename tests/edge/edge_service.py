"""A small service and routing table the edge tests (and `svc edge` in a subprocess) serve."""

from __future__ import annotations

import json
from pathlib import Path

import anyio

from svcbus import Context, Contract, Service
from svcbus.edge import (
    Accept,
    Close,
    EdgeApp,
    HttpRequest,
    HttpResponse,
    HttpRoute,
    Join,
    Leave,
    Routes,
    Send,
    StaticRoute,
    WebSocketConnect,
    WebSocketDisconnect,
    WebSocketReceive,
    WebSocketRoute,
)

HERE = Path(__file__).parent


class AddReply(Contract):
    total: int


class AddQuery(Contract, channel="edgetest.add", reply=AddReply):
    a: int
    b: int


service = Service("edge-test")
disconnects: list[WebSocketDisconnect] = []
"""Every disconnect message the service saw (tests read it)."""


@service.consumes("edgetest.ws.connect")
async def on_connect(msg: WebSocketConnect, ctx: Context) -> None:
    room = str(msg.params.get("room", "none"))
    if room == "forbidden":
        await ctx.send(msg.reply_channel, Close(code=4003))
        return
    if room == "silent":
        return  # never answers: the edge must time the connection out
    subprotocol = "chat.v1" if "chat.v1" in msg.subprotocols else None
    await ctx.send(msg.reply_channel, Accept(subprotocol=subprotocol, groups=[f"room.{room}"]))
    if room == "whoami":
        info = {
            "identity": msg.identity,
            "headers": msg.headers,
            "query": msg.query,
            "params": msg.params,
            "client": msg.client,
        }
        await ctx.send(msg.reply_channel, Send(text=json.dumps(info)))


@service.consumes("edgetest.ws.receive")
async def on_receive(msg: WebSocketReceive, ctx: Context) -> None:
    room = str(msg.params.get("room", "none"))
    if msg.binary is not None:
        await ctx.send(msg.reply_channel, Send(binary=msg.binary[::-1]))
        return
    text = msg.text or ""
    if text.startswith("broadcast:"):
        await ctx.group_send(f"room.{room}", Send(text=text.removeprefix("broadcast:")))
    elif text.startswith("join:"):
        await ctx.send(msg.reply_channel, Join(groups=[text.removeprefix("join:")]))
        await ctx.send(msg.reply_channel, Send(text="joined"))
    elif text.startswith("leave:"):
        await ctx.send(msg.reply_channel, Leave(groups=[text.removeprefix("leave:")]))
        await ctx.send(msg.reply_channel, Send(text="left"))
    elif text.startswith("close:"):
        await ctx.send(msg.reply_channel, Close(code=int(text.removeprefix("close:"))))
    elif text.startswith("burst:"):
        # Sends with Joins and Leaves among them: a Send may go to the socket at once
        # (memory://, Connection.take) while a Join waits for the pump; the socket
        # must still see everything in the order it was sent.
        for i in range(int(text.removeprefix("burst:"))):
            if i % 7 == 3:
                await ctx.send(msg.reply_channel, Join(groups=["burst"]))
            elif i % 7 == 5:
                await ctx.send(msg.reply_channel, Leave(groups=["burst"]))
            await ctx.send(msg.reply_channel, Send(text=str(i)))
    elif text == "order":
        await ctx.send(msg.reply_channel, Send(text=str(msg.order)))
    else:
        await ctx.send(msg.reply_channel, Send(text=text))


@service.consumes("edgetest.ws.disconnect")
async def on_disconnect(msg: WebSocketDisconnect) -> None:
    disconnects.append(msg)


@service.consumes("edgetest.auto.receive")
async def on_auto(msg: WebSocketReceive, ctx: Context) -> None:
    await ctx.send(msg.reply_channel, Send(text=f"auto:{msg.text}"))


@service.consumes("edgetest.add")
async def add(query: AddQuery) -> AddReply:
    return AddReply(total=query.a + query.b)


@service.consumes("edgetest.http.echo")
async def http_echo(request: HttpRequest) -> HttpResponse:
    return HttpResponse(
        status=201,
        headers={"content-type": "application/octet-stream", "x-method": request.method},
        body=request.body,
    )


@service.consumes("edgetest.http.whoami")
async def http_whoami(request: HttpRequest) -> dict:
    return {
        "identity": request.identity,
        "headers": request.headers,
        "query": request.query,
        "params": request.params,
    }


@service.consumes("edgetest.http.slow")
async def http_slow(request: HttpRequest) -> dict:
    await anyio.sleep(1.5)
    return {"late": True}


@service.consumes("edgetest.http.fail")
async def http_fail(request: HttpRequest) -> dict:
    raise RuntimeError("deliberate failure")


routes = Routes(
    WebSocketRoute("/ws/{room}", "edgetest.ws"),
    WebSocketRoute("/auto", connect=None, receive="edgetest.auto.receive", disconnect=None),
    WebSocketRoute("/json/{room}", "edgetest.ws", json_frames=True),
    HttpRoute("/api/add/{a:int}", "edgetest.add", methods=["GET", "POST"]),
    HttpRoute("/api/echo", "edgetest.http.echo", methods=["POST", "PUT"]),
    HttpRoute("/api/whoami/{id:int}", "edgetest.http.whoami"),
    HttpRoute("/api/slow", "edgetest.http.slow"),
    HttpRoute("/api/fail", "edgetest.http.fail"),
    HttpRoute("/api/nobody", "edgetest.nobody"),
    StaticRoute("/static", HERE / "web"),
)

cli_app = EdgeApp(routes, services=[service])
"""The edge `svc edge edge_service:cli_app` serves: the test service runs in the same process."""
