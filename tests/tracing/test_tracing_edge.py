"""One trace from the browser through the edge, chat and stats: memory and NATS.

Checks the parent/child structure (an incoming ``traceparent`` is honoured),
the attributes of the edge's spans, links for frames and group fan-out, and
ERROR status when a consumer raises.
"""

from __future__ import annotations

import json

import anyio
import httpx
import pytest
import websockets
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased
from opentelemetry.trace import SpanKind, StatusCode
from trace_system import (
    CALLER_SPAN_ID,
    CALLER_TRACE_ID,
    TRACEPARENT,
    Spans,
    example_system,
    isolated,
    room,
    serve_edge,
)

from svcbus import Bus
from svcbus.edge import EdgeApp, Routes, WebSocketRoute

pytestmark = pytest.mark.anyio

LAYERS = [
    pytest.param("memory", id="memory"),
    pytest.param("nats", id="nats", marks=pytest.mark.nats),
]


@pytest.fixture(params=LAYERS)
def url(request: pytest.FixtureRequest) -> str:
    if request.param == "memory":
        return f"memory://ttrace-{room()}"
    return isolated(request.getfixturevalue("nats_url"))


def child_of(parent):
    return lambda span: span.parent is not None and span.parent.span_id == parent.context.span_id


async def test_http_request_joins_the_callers_trace(url: str, spans: Spans) -> None:
    name = room()
    async with example_system(url, spans.tracer) as address, httpx.AsyncClient() as client:
        response = await client.get(
            f"http://{address}/api/stats/{name}", headers={"traceparent": TRACEPARENT}
        )
        assert response.status_code == 200
        server = await spans.wait_for("GET /api/stats/{room}")
        request = await spans.wait_for("request stats.get", child_of(server))
        process = await spans.wait_for("process stats.get", child_of(request))

    assert server.kind == SpanKind.SERVER
    assert server.context.trace_id == CALLER_TRACE_ID
    assert server.parent.span_id == CALLER_SPAN_ID and server.parent.is_remote
    assert {request.context.trace_id, process.context.trace_id} == {CALLER_TRACE_ID}
    assert dict(server.attributes) == {
        "svcbus.service": "edge",
        "http.request.method": "GET",
        "url.path": f"/api/stats/{name}",
        "url.scheme": "http",
        "http.route": "/api/stats/{room}",
        "messaging.destination.name": "stats.get",
        "http.response.status_code": 200,
    }
    assert server.status.status_code == StatusCode.UNSET
    assert process.attributes["svcbus.service"] == "stats"
    assert process.attributes["messaging.system"] == url.split(":")[0]


async def test_websocket_post_is_one_trace_through_chat_and_stats(url: str, spans: Spans) -> None:
    name = room()
    async with example_system(url, spans.tracer) as address:
        async with websockets.connect(
            f"ws://{address}/chat/{name}?nick=ada", additional_headers={"traceparent": TRACEPARENT}
        ) as ws:
            # On NATS the room's "joined" (a group message) may overtake the welcome.
            first_frames = [json.loads(await ws.recv())["type"] for _ in range(2)]
            assert "welcome" in first_frames, first_frames
            await ws.send(json.dumps({"text": "hello"}))
            with anyio.fail_after(5):
                while True:
                    frame = json.loads(await ws.recv())
                    if frame["type"] == "stats" and frame["stats"]["messages"] == 1:
                        break
            frame_span = await spans.wait_for("WS receive /chat/{room}")
            chat = await spans.wait_for("process chat.receive", child_of(frame_span))
            posted = await spans.wait_for("send chat.posted", child_of(chat))
            stats = await spans.wait_for("process chat.posted", child_of(posted))
            push = await spans.wait_for(f"send stats.{name}", child_of(stats))
            deliver = await spans.wait_for(f"deliver stats.{name}", child_of(push))
            room_send = await spans.wait_for(f"send room.{name}", child_of(chat))
            await spans.wait_for(f"deliver room.{name}", child_of(room_send))
        goodbye = await spans.wait_for("WS disconnect /chat/{room}")
        await spans.wait_for("process chat.disconnect", child_of(goodbye))

    connect = spans.named("WS connect /chat/{room}")[0]
    # The handshake carried the caller's context; chat.connect is its child.
    assert connect.context.trace_id == CALLER_TRACE_ID
    assert connect.parent.span_id == CALLER_SPAN_ID
    assert connect.attributes["svcbus.edge.accepted"] is True
    assert spans.named("process chat.connect")[0].parent.span_id == connect.context.span_id

    # One trace per frame, browser -> edge -> chat -> stats -> edge, linked to the connection.
    trace_ids = {s.context.trace_id for s in (frame_span, chat, posted, stats, push, deliver)}
    assert trace_ids == {frame_span.context.trace_id}
    assert frame_span.parent is None
    assert [link.context.span_id for link in frame_span.links] == [connect.context.span_id]
    assert frame_span.kind == SpanKind.SERVER
    assert frame_span.attributes["messaging.destination.name"] == "chat.receive"
    assert frame_span.attributes["http.route"] == "/chat/{room}"
    assert frame_span.attributes["url.path"] == f"/chat/{name}"
    assert frame_span.attributes["messaging.message.id"] == chat.attributes["messaging.message.id"]
    assert chat.attributes["svcbus.service"] == "chat"
    assert stats.attributes["svcbus.service"] == "stats"

    # Fan-out: one span per group message per edge, linked to the sockets it reached.
    assert deliver.kind == SpanKind.CONSUMER
    assert deliver.attributes["svcbus.edge.sockets"] == 1
    assert deliver.attributes["messaging.destination.name"] == f"stats.{name}"
    assert deliver.attributes["messaging.system"] == url.split(":")[0]
    assert [link.context.span_id for link in deliver.links] == [connect.context.span_id]
    assert len(spans.named(f"deliver stats.{name}")) >= 1

    assert goodbye.attributes["websocket.close.code"] == 1000
    assert goodbye.links[0].context.span_id == connect.context.span_id


async def test_a_failing_consumer_marks_its_span_and_the_request_errors(
    url: str, spans: Spans
) -> None:
    async with example_system(url, spans.tracer) as address, httpx.AsyncClient() as client:
        response = await client.get(f"http://{address}/api/boom")
        assert response.status_code == 500
        server = await spans.wait_for("GET /api/boom")
        request = await spans.wait_for("request ttrace.boom", child_of(server))
        process = await spans.wait_for("process ttrace.boom", child_of(request))

    assert process.status.status_code == StatusCode.ERROR
    assert process.attributes["error.type"] == "RuntimeError"
    assert "on fire" in process.status.description
    assert process.events[0].name == "exception"
    assert request.status.status_code == StatusCode.ERROR
    assert request.attributes["error.type"] == "RemoteError"
    assert server.status.status_code == StatusCode.ERROR
    assert server.attributes["error.type"] == "500"
    assert server.attributes["http.response.status_code"] == 500
    assert server.parent is None  # no traceparent sent: the edge starts the trace


async def test_not_found_is_traced_without_a_route(spans: Spans) -> None:
    async with example_system(f"memory://ttrace-{room()}", spans.tracer) as address:
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"http://{address}/api/nothing")).status_code == 404
        server = await spans.wait_for("GET")
    assert server.attributes["http.response.status_code"] == 404
    assert "http.route" not in server.attributes
    assert server.status.status_code == StatusCode.UNSET  # 4xx: the client's error


async def test_tracing_off_puts_no_trace_context_on_frames() -> None:
    """No tracer: the edge makes no spans and its envelopes carry no ``tc``."""
    url = f"memory://ttrace-{room()}"
    routes = Routes(WebSocketRoute("/raw", connect=None, receive="ttrace.raw", disconnect=None))
    async with Bus(url) as edge_bus, Bus(url) as reader:
        assert edge_bus.tracer is None
        async with (
            serve_edge(EdgeApp(routes, layer=edge_bus)) as address,
            websockets.connect(f"ws://{address}/raw") as ws,
        ):
            await ws.send("hi")
            with anyio.fail_after(5):
                raw = await reader.layer.receive("ttrace.raw")
    assert b'"tc"' not in raw
    assert b'"text":"hi"' in raw


async def test_a_parent_based_sampler_is_honoured_end_to_end(url: str) -> None:
    """Sampled out at the edge: no span anywhere downstream; the caller's "sampled" flag wins."""
    spans = Spans(ParentBased(ALWAYS_OFF))  # roots dropped; children follow their parent
    not_sampled = TRACEPARENT[:-2] + "00"
    name = room()
    async with example_system(url, spans.tracer) as address, httpx.AsyncClient() as client:
        response = await client.get(
            f"http://{address}/api/stats/{name}", headers={"traceparent": not_sampled}
        )
        assert response.status_code == 200
        async with websockets.connect(f"ws://{address}/chat/{name}?nick=ada") as ws:
            await ws.send(json.dumps({"text": "unsampled"}))
            with anyio.fail_after(5):  # through chat, stats and a group message back
                while json.loads(await ws.recv())["type"] != "stats":
                    pass
        await anyio.sleep(0.2)
        assert spans.finished() == []  # nothing recorded: not the edge, not the services

        response = await client.get(
            f"http://{address}/api/stats/{name}", headers={"traceparent": TRACEPARENT}
        )
        assert response.status_code == 200
        server = await spans.wait_for("GET /api/stats/{room}")
        await spans.wait_for("process stats.get", lambda s: s.context.trace_id == CALLER_TRACE_ID)
    assert server.context.trace_id == CALLER_TRACE_ID
