"""Spans at the edge: where a browser's request enters the bus (opentelemetry-api only).

The edge calls these helpers only when its bus has a tracer (``bus.tracer is
not None``), decided once per request, connection or group pump; with tracing
off none of this runs.

* HTTP: one SERVER span per request, ``GET /api/stats/{room}`` (the route
  template), parented on the client's ``traceparent`` header if it sent one.
  ``bus.request`` runs inside it, so the consumer's span is its grandchild.
* WebSocket: ``WS connect /chat/{room}`` (SERVER) from the handshake until the
  consumer's verdict, parented on the handshake's ``traceparent``; one
  ``WS receive /chat/{room}`` per frame and ``WS disconnect /chat/{room}``,
  each the root of its own trace (a connection can live for days: one trace per
  connection would never end) and linked to the connect span.
* Group fan-out: one ``deliver <group>`` CONSUMER span per group message per
  edge process, the child of the sender's span, with the number of sockets it
  reached and links to (up to :data:`MAX_SOCKET_LINKS`) those sockets' connect
  spans; never one span per socket.
"""

from __future__ import annotations

from itertools import islice
from typing import TYPE_CHECKING, Any

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode
from pydantic import BaseModel, ConfigDict, ValidationError

from ..envelope import new_message_id

if TYPE_CHECKING:
    from .app import EdgeApp
    from .groups import LocalGroup
    from .http import Receive
    from .http import Send as AsgiSend
    from .websocket import Connection

SERVICE = "edge"
"""The ``svcbus.service`` attribute of the edge's spans (readable traces in one-process demos)."""

MAX_SOCKET_LINKS = 32
"""Links from one group delivery to its sockets' connect spans (the SDK keeps 128 at most)."""

_TRACE_HEADERS = frozenset((b"traceparent", b"tracestate", b"baggage"))


class _TracePeek(BaseModel):
    """The id and trace context of an envelope, without its body's contract."""

    model_config = ConfigDict(extra="ignore")
    id: str | None = None
    tc: dict[str, str] | None = None


def incoming(scope: dict[str, Any]) -> Context | None:
    """The W3C trace context the client sent (``traceparent`` header), if any."""
    carrier = {
        key.decode("latin-1"): value.decode("latin-1")
        for key, value in scope["headers"]
        if key in _TRACE_HEADERS
    }
    return propagate.extract(carrier) if carrier else None


def outgoing(span: trace.Span) -> tuple[dict[str, str], str]:
    """The envelope ``tc`` that makes ``span`` the parent, and a message id recorded on it."""
    carrier: dict[str, str] = {}
    # Injected even for a span the sampler dropped: its traceparent says "not
    # sampled", so that parent-based samplers downstream drop the children too.
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    message_id = new_message_id()
    if span.is_recording():
        span.set_attribute("messaging.message.id", message_id)
    return carrier, message_id


# HTTP ------------------------------------------------------------------------------------


async def serve_http(
    edge: EdgeApp, tracer: trace.Tracer, scope: dict[str, Any], receive: Receive, send: AsgiSend
) -> None:
    """Answer one HTTP request inside a SERVER span named after its route."""
    method = scope["method"]
    route = edge.routes.match_http(method, scope["path"]).route
    attributes: dict[str, Any] = {
        "svcbus.service": SERVICE,
        "http.request.method": method,
        "url.path": scope["path"],
        "url.scheme": scope.get("scheme", "http"),
    }
    if route is not None:
        attributes["http.route"] = route.path
        attributes["messaging.destination.name"] = route.channel
    status = 0

    async def send_and_watch(event: dict[str, Any]) -> None:
        nonlocal status
        if event["type"] == "http.response.start":
            status = event["status"]
        await send(event)

    with tracer.start_as_current_span(
        f"{method} {route.path}" if route is not None else method,
        context=incoming(scope),
        kind=SpanKind.SERVER,
        attributes=attributes,
    ) as span:
        try:
            await edge._http(scope, receive, send_and_watch)
        except BaseException as exc:
            span.set_attribute("error.type", type(exc).__qualname__)
            raise
        finally:
            if status:
                span.set_attribute("http.response.status_code", status)
        if status >= 500:
            # 4xx is the client's fault: the server span stays unset (HTTP semconv).
            span.set_status(Status(StatusCode.ERROR, f"HTTP {status}"))
            span.set_attribute("error.type", str(status))


# WebSocket -------------------------------------------------------------------------------


def _ws_attributes(conn: Connection) -> dict[str, Any]:
    return {"svcbus.service": SERVICE, "url.path": conn.path, "http.route": conn.route.path}


def _links(conn: Connection) -> list[Link] | None:
    context = conn.span
    return [Link(context)] if isinstance(context, SpanContext) else None


def start_connect(tracer: trace.Tracer, conn: Connection, scope: dict[str, Any]) -> trace.Span:
    """The ``WS connect`` span, open until the consumer accepts or closes (see :func:`end_connect`)."""
    attributes = _ws_attributes(conn)
    if conn.route.connect is not None:
        attributes["messaging.destination.name"] = conn.route.connect
    return tracer.start_span(
        f"WS connect {conn.route.path}",
        context=incoming(scope),
        kind=SpanKind.SERVER,
        attributes=attributes,
    )


def end_connect(conn: Connection) -> None:
    """End the connect span once; the connection keeps only its context, for links."""
    span = conn.span
    if span is None or isinstance(span, SpanContext):
        return
    if span.is_recording():
        span.set_attribute("svcbus.edge.accepted", conn.accepted)
    span.end()
    # Kept even when the sampler dropped it: each frame is a trace of its own,
    # sampled on its own, and links to it.
    conn.span = span.get_span_context()


async def forward(conn: Connection, text: str | None, binary: bytes | None) -> int:
    """``Connection.forward`` inside a ``WS receive`` span that parents the consumer's span."""
    channel = conn.route.receive
    if channel is None:
        return await conn.forward(text, binary)
    attributes = _ws_attributes(conn)
    attributes["messaging.destination.name"] = channel
    attributes["messaging.message.body.size"] = len(text or binary or "")
    tracer = conn.edge.bus.tracer
    with tracer.start_span(  # type: ignore[union-attr]  # called only with tracing on
        f"WS receive {conn.route.path}",
        kind=SpanKind.SERVER,
        attributes=attributes,
        links=_links(conn),
    ) as span:
        carrier, message_id = outgoing(span)
        code = await conn.forward(text, binary, trace=carrier, message_id=message_id)
        if code:
            span.set_attribute("svcbus.edge.dropped", True)
        return code


def start_disconnect(conn: Connection, code: int) -> trace.Span:
    """The ``WS disconnect`` span, around telling the consumers the socket closed."""
    attributes = _ws_attributes(conn)
    attributes["messaging.destination.name"] = conn.route.disconnect
    attributes["websocket.close.code"] = code
    return conn.edge.bus.tracer.start_span(  # type: ignore[union-attr]  # called only with tracing on
        f"WS disconnect {conn.route.path}",
        kind=SpanKind.SERVER,
        attributes=attributes,
        links=_links(conn),
    )


# group fan-out ---------------------------------------------------------------------------


def start_delivery(tracer: trace.Tracer, system: str, local: LocalGroup, data: bytes) -> trace.Span:
    """One span for a group message written to this process's sockets in ``local``."""
    try:
        peek = _TracePeek.model_validate_json(data)
    except ValidationError:
        peek = _TracePeek()
    members = local.members
    attributes: dict[str, Any] = {
        "svcbus.service": SERVICE,
        "messaging.system": system,
        "messaging.destination.name": local.name,
        "messaging.operation.name": "deliver",
        "messaging.operation.type": "process",
        "messaging.message.body.size": len(data),
        "svcbus.edge.sockets": len(members),
    }
    if peek.id is not None:
        attributes["messaging.message.id"] = peek.id
    span = tracer.start_span(
        f"deliver {local.name}",
        context=propagate.extract(peek.tc) if peek.tc else None,
        kind=SpanKind.CONSUMER,
        attributes=attributes,
    )
    # Links to the sockets' connect spans only for a span that is recorded: a
    # sampled-out group message (most, under a ratio sampler) walks no sockets.
    if span.is_recording():
        for conn in islice(members, MAX_SOCKET_LINKS):
            if isinstance(conn.span, SpanContext):
                span.add_link(conn.span)
    return span
