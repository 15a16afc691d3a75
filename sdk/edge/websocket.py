"""WebSocket connections through the edge.

One connection costs one small :class:`Connection` object and two tasks: the
ASGI task reads frames from the client and sends them on the route's
channels; a pump task reads the connection's reply channel in batches and
writes to the socket. On ``memory://`` a Send to a connection whose reply
channel is empty is written by the sender's task itself
(:meth:`Connection.take`), without waking the pump. Replies are decoded once
per distinct message (:meth:`EdgeApp.decode_reply`), so a ``group_send`` to
10,000 sockets costs one decode and 10,000 socket writes.

Lifecycle: handshake -> origin, auth and connection-limit checks -> a
``WebSocketConnect`` on the route's connect channel -> a consumer answers on
the reply channel with Accept (or Send, which accepts implicitly) or Close
within ``Limits.accept_timeout`` -> frames flow both ways -> on disconnect
the edge leaves every group the connection joined (through Accept/Join) and
sends ``WebSocketDisconnect``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio
from pydantic_core import from_json, to_json

from ..envelope import envelope_head, new_message_id, now_ms
from ..errors import InvalidChannelName, SvcbusError
from . import tracing
from .contracts import (
    Accept,
    PathParams,
    Send,
    WebSocketConnect,
    WebSocketDisconnect,
    WebSocketReceive,
)
from .delivery import DELIVERED, INTERNAL_ERROR
from .groups import drain, queue_write
from .http import with_security_headers
from .replies import ACCEPT, CLOSE, JOIN, SEND, Decoded, ready
from .request import Request
from .routing import WebSocketRoute
from .security import BUDGET_EXTENSION, AuthenticationFailed, FrameBudget

if TYPE_CHECKING:
    from .app import EdgeApp
    from .http import Receive
    from .http import Send as AsgiSend

log = logging.getLogger("svcbus.edge")

# Close codes (RFC 6455 section 7.4.1).
POLICY_VIOLATION = 1008
MESSAGE_TOO_BIG = 1009
INVALID_DATA = 1007
TRY_AGAIN_LATER = 1013

PUMP_BATCH = 32
ENVELOPE_ROOM = 1024
"""More than an encoded reply's envelope adds to its payload (ids, times, contract name)."""


class Connection:
    """The state of one WebSocket: kept small, there may be tens of thousands."""

    __slots__ = (
        "accepted",
        "backlog",
        "budget",
        "closed",
        "edge",
        "frame_head",
        "groups",
        "identity",
        "order",
        "params",
        "path",
        "pumping",
        "reply_channel",
        "route",
        "send",
        "span",
        "subprotocols",
        "writer",
    )

    def __init__(
        self,
        edge: EdgeApp,
        route: WebSocketRoute,
        path: str,
        params: PathParams,
        identity: Any,
        send: AsgiSend,
        subprotocols: list[str] | tuple[str, ...],
        budget: FrameBudget | None = None,
    ) -> None:
        self.edge = edge
        self.route = route
        self.path = path
        self.params = params
        self.identity = identity
        self.send = send
        self.subprotocols = subprotocols
        self.reply_channel = ""
        self.order = 0
        self.groups: set[str] | None = None
        self.backlog: list[Decoded] | None = None
        """Group messages waiting for this socket's writer (see groups.queue_write)."""
        self.writer: asyncio.Task[None] | None = None
        """The task writing ``backlog``, while there is one (kept: the loop holds tasks weakly)."""
        self.pumping = False
        """True while the pump acts on a batch from the reply channel (see :meth:`take`)."""
        self.accepted = False
        self.closed = False
        self.budget = budget or FrameBudget()
        """Frames (and, through the edge's server protocol, pings) draw on it."""
        self.budget.adopt(edge.limits)
        self.span: Any = None
        """Tracing on: the open connect span, then its SpanContext (for links). Else None."""
        self.frame_head: bytes | None = None
        """The encoded WebSocketReceive up to its ``order`` value (made at the first frame)."""

    # replies from consumers -----------------------------------------------------------

    async def apply(self, item: Decoded) -> bool:
        """Act on one reply; False once the connection is closed."""
        kind, payload = item
        if kind == SEND:
            if not self.accepted and not await self.accept(None):
                return False
            await self.send(payload)
        elif kind == ACCEPT:
            if not self.accepted:
                return await self.accept(payload)
        elif kind == CLOSE:
            self.closed = True
            if not self.accepted:
                self.edge.stats.rejected += 1
            # Before accept the server turns this into an HTTP 403 (ASGI spec).
            await self.send(payload)
            return False
        elif kind == JOIN:
            await self.join(payload)
        else:
            await self.leave(payload)
        return True

    async def accept(self, accept: Accept | None) -> bool:
        """Join Accept's groups, then complete the handshake."""
        event: dict[str, Any] = {"type": "websocket.accept"}
        if accept is not None:
            if accept.subprotocol is not None:
                if accept.subprotocol not in self.subprotocols:
                    log.error(
                        "consumer of %s accepted %s with subprotocol %r, which the client did "
                        "not offer (%s); refusing the connection",
                        self.route.connect,
                        self.path,
                        accept.subprotocol,
                        self.subprotocols,
                    )
                    await self.send({"type": "websocket.close", "code": 1002})
                    self.closed = True
                    return False
                event["subprotocol"] = accept.subprotocol
            if accept.headers:
                event["headers"] = [
                    (k.lower().encode("latin-1"), v.encode("latin-1"))
                    for k, v in accept.headers.items()
                    if "\r" not in v and "\n" not in v
                ]
            # Groups first: a group_send made after the client sees the accept reaches it.
            await self.join(accept.groups)
        await self.send(event)
        self.accepted = True
        self.edge.stats.accepted += 1
        return True

    async def join(self, groups: Any) -> None:
        """Join ``groups`` through the edge's local fan-out; remembered for the disconnect."""
        fanout = self.edge.fanout
        for group in groups:
            if self.groups is not None and group in self.groups:
                continue
            try:
                await fanout.join(self, group)
            except InvalidChannelName as exc:
                self.edge.quiet.warning(
                    "bad-group", "consumer asked %s to join an invalid group: %s", self.path, exc
                )
                continue
            except SvcbusError as exc:
                self.edge.quiet.warning(
                    "join-failed", "%s could not join group %s: %s", self.path, group, exc
                )
                continue
            if self.groups is None:
                self.groups = set()
            self.groups.add(group)

    async def leave(self, groups: Any) -> None:
        """Leave ``groups``."""
        fanout = self.edge.fanout
        for group in groups:
            if self.groups is not None and group in self.groups:
                self.groups.discard(group)
                await fanout.leave(self, group)

    async def pump(self) -> None:
        """Reply channel -> socket, until the connection closes."""
        receive_many = self.edge.bus.layer.receive_many
        decode = self.edge.decode_reply
        channel = self.reply_channel
        try:
            while True:
                batch = await receive_many(channel, PUMP_BATCH)
                self.pumping = True
                for data in batch:
                    item = decode(data)
                    if item is None:
                        continue
                    while self.writer is not None:
                        # A write started elsewhere (take, a group message) is still
                        # going: it goes first, so the socket sees the sent order.
                        await asyncio.wait([self.writer])
                    if not await self.apply(item):
                        return
                self.pumping = False
        except OSError:
            return  # the client went away; the ASGI task sees the disconnect
        except SvcbusError as exc:
            self.edge.quiet.log(
                logging.ERROR,
                "reply-failed",
                "reply channel of %s failed: %s; closing",
                self.path,
                exc,
            )
            self.edge.stats.closed_bus += 1
            await _close_quietly(self.send, INTERNAL_ERROR)

    def _writes_directly(self) -> bool:
        """Whether a reply may be written now, in the sender's task, without overtaking any.

        Not before the socket is accepted, nor after it closed, nor while the
        pump or a writer still has earlier items for it.
        """
        return not (self.pumping or self.backlog is not None or self.closed or not self.accepted)

    def take(self, data: bytes) -> bool:
        """``memory://``'s listener on the reply channel: a Send written in the sender's task.

        A consumer in this process answering the socket (``ctx.send(msg.reply_channel,
        Send(...))``) then writes to it directly, as a group message does
        (:func:`~svcbus.edge.groups.queue_write`: the write is started by hand,
        and only a socket whose buffer is full gets a writer task), instead of
        queueing the reply and waking the pump: one task switch less per echoed
        frame. Anything else (Accept, Close, Join, Leave, a socket not accepted
        yet, or one whose earlier writes are still going) returns False and is
        queued for the pump, which keeps the order (see :meth:`MemoryLayer.listen`).
        """
        if not self._writes_directly():
            return False
        item = self.edge.decode_reply(data)
        if item is None:
            return True  # invalid (counted) or expired: dropped, as the pump would
        if item[0] != SEND:
            return False  # may await (groups, the handshake): the pump acts on it
        queue_write(self, item)
        return True

    def take_message(self, message: Any) -> bool:
        """:meth:`take` for a reply handed over unencoded (``MemoryLayer.deliver_locally``).

        A ``Send`` from a consumer in this process is written as it is: no
        envelope is encoded for it and none decoded here. It must fit the
        layer's size limit as the encoded reply would: a payload that might not
        (JSON escapes at most 6 bytes per character) goes the encoded way,
        where the layer measures it. The event is built before returning, so
        the sender may reuse the object.
        """
        if type(message) is not Send:
            return False  # Accept, Close, Join, Leave: the encoded way, to the pump
        if not self._writes_directly():
            return False
        text = message.text
        size = len(text) if text is not None else len(message.binary or b"")
        if size * 6 + ENVELOPE_ROOM > self.edge.bus.layer.options.max_message_size:
            return False
        queue_write(self, ready(message))
        return True

    # frames from the client ---------------------------------------------------------

    def check(self, text: str | None, binary: bytes | None) -> int:
        """0 if the frame may go on, else the close code it earns."""
        limits = self.edge.limits
        if text is not None:
            # Characters are at most 4 UTF-8 bytes: encode only when it might matter.
            size = len(text)
            if size * 4 > limits.max_message_size:
                size = len(text.encode())
        else:
            size = len(binary or b"")
        if size > limits.max_message_size:
            self.edge.stats.closed_size += 1
            return MESSAGE_TOO_BIG
        if not self.budget.take():
            self.edge.stats.closed_rate += 1
            return POLICY_VIOLATION
        if text is not None and self.route.json_frames:
            try:
                from_json(text)
            except ValueError:
                self.edge.stats.closed_bad_frame += 1
                return INVALID_DATA
        return 0

    async def forward(
        self,
        text: str | None,
        binary: bytes | None,
        trace: dict[str, str] | None = None,
        message_id: str | None = None,
    ) -> int:
        """Send one frame to the route's receive channel: 0, or the code to close the socket with.

        A full channel or an unreachable bus is retried until ``accept_timeout``
        (the socket is not read meanwhile); see :mod:`svcbus.edge.delivery`.
        """
        self.order += 1
        channel = self.route.receive
        if channel is None:
            return DELIVERED
        bus = self.edge.bus
        head = self.frame_head
        if head is None:
            head = self.frame_head = _frame_head(self)
        if text is not None and head and trace is None and message_id is None:
            # The common frame: the envelope written in one step around the connection's
            # fixed part of the body, byte-identical to bus.encode of the message.
            sent_at = now_ms()
            data = b'{"v":1,"id":"%s%s%d,"ex":%d,"b":%s%d,"text":%s,"binary":null}}' % (
                new_message_id().encode(),
                _RECEIVE_HEAD,
                sent_at,
                sent_at + bus.expiry_ms(channel),
                head,
                self.order,
                to_json(text),
            )
        else:
            data = self._encoded(channel, text, binary, trace, message_id)
        code = await self.edge.delivery.send(channel, data, self.edge.limits.accept_timeout)
        if code:
            self.edge.stats.dropped += 1
        return code

    def _encoded(
        self,
        channel: str,
        text: str | None,
        binary: bytes | None,
        trace: dict[str, str] | None,
        message_id: str | None,
    ) -> bytes:
        """A frame's WebSocketReceive encoded by the bus (binary frames, traced frames)."""
        message = WebSocketReceive.model_construct(
            reply_channel=self.reply_channel,
            path=self.path,
            params=self.params,
            identity=self.identity,
            order=self.order,
            text=text,
            binary=binary,
        )
        return self.edge.bus.encode(
            channel, message, contract=WebSocketReceive, trace=trace, message_id=message_id
        )


_RECEIVE_HEAD = envelope_head(WebSocketReceive.__contract_name__, WebSocketReceive.__version__)
_RECEIVE_TAIL = b'0,"text":null,"binary":null}'


def _frame_head(conn: Connection) -> bytes:
    """``conn``'s WebSocketReceive body as the serializer writes it, up to the order's digits."""
    message = WebSocketReceive.model_construct(
        reply_channel=conn.reply_channel,
        path=conn.path,
        params=conn.params,
        identity=conn.identity,
        order=0,
        text=None,
        binary=None,
    )
    body = WebSocketReceive.__pydantic_serializer__.to_json(message)
    if not body.endswith(b'"order":' + _RECEIVE_TAIL):
        return b""  # not the expected layout: every frame takes bus.encode
    return body[: -len(_RECEIVE_TAIL)]


async def handle_websocket(
    edge: EdgeApp, scope: dict[str, Any], receive: Receive, send: AsgiSend
) -> None:
    """The ASGI handler of one WebSocket connection."""
    if (await receive())["type"] != "websocket.connect":
        return
    found = edge.routes.match_websocket(scope["path"])
    if found is None:
        await deny(scope, send, 404, "no WebSocket route for this path")
        return
    route, params = found
    stats = edge.stats
    if stats.connections >= edge.limits.max_connections:
        stats.refused_busy += 1
        # Accept-then-close so every client (browsers too) sees the reason: 1013.
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": TRY_AGAIN_LATER, "reason": "edge is full"})
        return
    # Counted from here, before the first await: handshakes in progress take their
    # place too, so a burst of them cannot overshoot the limit.
    stats.connections += 1
    try:
        await _handshake(edge, scope, receive, send, route, params)
    finally:
        stats.connections -= 1


async def _handshake(
    edge: EdgeApp,
    scope: dict[str, Any],
    receive: Receive,
    send: AsgiSend,
    route: WebSocketRoute,
    params: PathParams,
) -> None:
    """Origin, authentication, the reply channel; then the connection is served."""
    stats = edge.stats
    request = Request(edge, scope, params)
    if not edge.origins.allows(request.header(b"origin"), request.header(b"host")):
        stats.refused_origin += 1
        log.info("refused WebSocket %s from origin %s", scope["path"], request.header(b"origin"))
        await deny(scope, send, 403, "origin not allowed")
        return
    try:
        identity = await edge.identify(request)
    except AuthenticationFailed as exc:
        stats.refused_auth += 1
        await deny(scope, send, 401, str(exc) or "authentication failed")
        return
    extensions = scope.get("extensions") or {}
    conn = Connection(
        edge,
        route,
        scope["path"],
        params,
        identity,
        send,
        list(scope.get("subprotocols", ())),
        extensions.get(BUDGET_EXTENSION),
    )
    try:
        conn.reply_channel = await edge.bus.new_channel("edge")
    except SvcbusError as exc:
        await refuse_unavailable(edge, scope, send, exc)
        return
    if edge.bus.tracer is not None:
        conn.span = tracing.start_connect(edge.bus.tracer, conn, scope)
    announce = [_announcement(conn, request)] if route.connect is not None else []
    # Headers and query travel once, on connect; a long-lived connection keeps none of it
    # (nor does any frame: _serve pops the encoded announcement and drops it once sent).
    del request
    await _serve(conn, scope, announce, receive)


def _announcement(conn: Connection, request: Any) -> bytes:
    """The encoded WebSocketConnect for ``conn``."""
    channel = conn.route.connect
    assert channel is not None
    message = WebSocketConnect.model_construct(
        reply_channel=conn.reply_channel,
        path=conn.path,
        params=conn.params,
        query=request.query,
        headers=request.headers,
        subprotocols=conn.subprotocols,
        client=request.client,
        identity=conn.identity,
        order=0,
    )
    trace, message_id = tracing.outgoing(conn.span) if conn.span is not None else (None, None)
    return conn.edge.bus.encode(
        channel, message, contract=WebSocketConnect, trace=trace, message_id=message_id
    )


async def _serve(
    conn: Connection, scope: dict[str, Any], announce: list[bytes], receive: Receive
) -> None:
    edge, route = conn.edge, conn.route
    code = 1006
    announced = False
    unlisten: Callable[[str], None] | None = None
    pump: asyncio.Task[None] | None = None
    try:
        if route.connect is None or not announce:
            await conn.accept(None)
        else:
            data = announce.pop()  # the list lets this frame drop the bytes once sent
            sent = await edge.delivery.send(route.connect, data, edge.limits.accept_timeout)
            del data
            if sent != DELIVERED:
                edge.stats.refused_bus += 1
                edge.quiet.warning(
                    "connect-refused",
                    "refused WebSocket %s: %s did not take the connection (full or the bus is "
                    "down) within %gs",
                    conn.path,
                    route.connect,
                    edge.limits.accept_timeout,
                )
                await deny(scope, conn.send, 503, UNAVAILABLE)
                return
            announced = True
            if not await _await_verdict(conn):
                return
        tracing.end_connect(conn)
        if conn.closed:
            return
        conn.subprotocols = ()
        layer = edge.bus.layer
        listen = getattr(layer, "listen", None)
        if listen is not None and edge.bus.tracer is None:
            listen(conn.reply_channel, conn.take, conn.take_message)  # memory:// (Connection.take)
            unlisten = getattr(layer, "unlisten", None)
        pump = asyncio.get_running_loop().create_task(conn.pump())
        code = await _read_frames(conn, receive)
    except OSError:
        pass  # client gone mid-handshake
    except SvcbusError as exc:
        # The bus failed where no retry applies (joining groups, say): end this socket
        # cleanly, say why in the log, and leave every other socket alone.
        edge.stats.closed_bus += 1
        edge.quiet.warning("bus-socket", "closing WebSocket %s: %s", conn.path, exc)
        if conn.accepted:
            await _close_quietly(conn.send, INTERNAL_ERROR)
        else:
            with contextlib.suppress(OSError, RuntimeError):
                await deny(scope, conn.send, 503, UNAVAILABLE)
        code = INTERNAL_ERROR
    finally:
        if unlisten is not None:
            unlisten(conn.reply_channel)
        if pump is not None:
            pump.cancel()
            await asyncio.wait([pump])
        tracing.end_connect(conn)  # refused or failed before the verdict
        await _cleanup(conn, code, announced)


async def _await_verdict(conn: Connection) -> bool:
    """Wait for Accept or Close; True once accepted."""
    edge = conn.edge
    receive_many = edge.bus.layer.receive_many
    with anyio.move_on_after(edge.limits.accept_timeout):
        while True:
            try:
                batch = await receive_many(conn.reply_channel, 8)
            except SvcbusError as exc:
                edge.quiet.warning(
                    "verdict-failed", "waiting for the verdict on %s failed: %s", conn.path, exc
                )
                edge.stats.closed_bus += 1
                await conn.send({"type": "websocket.close", "code": INTERNAL_ERROR})
                conn.closed = True
                return False
            for data in batch:
                item = edge.decode_reply(data)
                # Items after an Accept in the same batch (a greeting Send) still apply.
                if item is not None and not await conn.apply(item):
                    return False
            if conn.accepted:
                return True
    edge.stats.rejected += 1
    edge.quiet.warning(
        "no-verdict",
        "no consumer of %s answered the connection to %s within %gs; rejected it "
        "(is a service consuming %s running on this layer?)",
        conn.route.connect,
        conn.path,
        edge.limits.accept_timeout,
        conn.route.connect,
    )
    await conn.send({"type": "websocket.close", "code": 1011})
    conn.closed = True
    return False


async def _read_frames(conn: Connection, receive: Receive) -> int:
    """Client -> bus until the client disconnects or breaks a limit; returns the close code."""
    forward = conn.forward if conn.span is None else partial(tracing.forward, conn)
    while True:
        message = await receive()
        kind = message["type"]
        if kind == "websocket.receive":
            text = message.get("text")
            binary = message.get("bytes") if text is None else None
            code = conn.check(text, binary)
            if code:
                conn.edge.quiet.log(
                    logging.INFO,
                    f"frame-{code}",
                    "closed WebSocket %s with %d: %s",
                    conn.path,
                    code,
                    _REASONS.get(code, "limit"),
                )
                await _close_quietly(conn.send, code)
                return code
            code = await forward(text, binary)
            if code:
                # The bus did not take the frame (or may have lost it): say so, and stop.
                conn.edge.stats.closed_bus += 1
                await _close_quietly(conn.send, code)
                return code
        elif kind == "websocket.disconnect":
            return int(message.get("code", 1000))


async def _cleanup(conn: Connection, code: int, announced: bool) -> None:
    """Leave groups, drop what is left on the reply channel, tell the consumers."""
    edge = conn.edge
    bus = edge.bus
    conn.closed = True
    with anyio.CancelScope(shield=True):
        if conn.groups:
            for group in conn.groups:
                try:
                    await edge.fanout.leave(conn, group)
                except SvcbusError as exc:
                    log.warning("could not leave %s for %s: %s", group, conn.path, exc)
            conn.groups = None
        await drain(edge, conn.reply_channel)
        if announced and conn.route.disconnect is not None:
            conn.order += 1
            message = WebSocketDisconnect.model_construct(
                reply_channel=conn.reply_channel,
                path=conn.path,
                params=conn.params,
                identity=conn.identity,
                order=conn.order,
                code=code,
            )
            channel = conn.route.disconnect
            span = tracing.start_disconnect(conn, code) if conn.span is not None else None
            trace, message_id = tracing.outgoing(span) if span is not None else (None, None)
            data = bus.encode(
                channel, message, contract=WebSocketDisconnect, trace=trace, message_id=message_id
            )
            if await edge.delivery.send(channel, data, edge.limits.accept_timeout):
                edge.quiet.warning(
                    "disconnect-lost", "disconnect of %s not delivered to %s", conn.path, channel
                )
            if span is not None:
                span.end()


async def deny(scope: dict[str, Any], send: AsgiSend, status: int, reason: str) -> None:
    """Refuse a handshake: an HTTP response where the server supports it, else 403."""
    if "websocket.http.response" in (scope.get("extensions") or {}):
        body = reason.encode() + b"\n"
        await send(
            {
                "type": "websocket.http.response.start",
                "status": status,
                "headers": with_security_headers(
                    [
                        (b"content-type", b"text/plain; charset=utf-8"),
                        (b"content-length", str(len(body)).encode()),
                    ]
                ),
            }
        )
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": 1008})


UNAVAILABLE = "the service is unavailable; retry later"
"""What a refused handshake or request says when the bus failed: no host names, no details."""

_REASONS = {
    MESSAGE_TOO_BIG: "frame over max_message_size",
    POLICY_VIOLATION: "over the frame rate",
    INVALID_DATA: "frame is not JSON",
}


async def refuse_unavailable(
    edge: EdgeApp, scope: dict[str, Any], send: AsgiSend, error: BaseException
) -> None:
    """Refuse a handshake the bus cannot serve now: 503, the details in the log only."""
    edge.stats.refused_bus += 1
    edge.quiet.warning("bus-handshake", "refused WebSocket %s: %s", scope["path"], error)
    await deny(scope, send, 503, UNAVAILABLE)


async def _close_quietly(send: AsgiSend, code: int) -> None:
    with contextlib.suppress(OSError, RuntimeError):
        await send({"type": "websocket.close", "code": code})
