"""How the edge's HTTP protocols write responses: a head leaves with its body, on both parsers.

uvicorn writes a response's head and body separately; the edge's protocols
join them (:class:`svcbus.edge.protocol.HeadWithBody`). What must still hold
through a real server: a HEAD response (no body) is sent whole and the
connection goes on, and ``100 Continue`` is not held back. The edge's JSON
responses leave with heads rendered once (:data:`svcbus.edge.http.RENDERED_HEAD`):
the bytes on the wire are those uvicorn's own protocol writes.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from svcbus.edge import EdgeApp, Limits
from svcbus.edge.protocol import HeadWithBody

pytestmark = pytest.mark.anyio

BOTH_PARSERS = True  # on the edge's httptools protocol and on its h11 one


async def _head(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)


def _length(head: bytes) -> int:
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":", 1)[1])
    raise AssertionError(f"no content-length in {head!r}")


async def test_a_head_response_is_sent_and_the_connection_goes_on(edge) -> None:
    address, _ = edge
    host, port = address.split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(b"HEAD /api/whoami/1 HTTP/1.1\r\nHost: edge\r\n\r\n")
        head = await _head(reader)
        assert head.startswith(b"HTTP/1.1 200"), head
        assert _length(head) > 0  # the GET's length, without its body
        assert b"x-content-type-options: nosniff" in head
        writer.write(b"GET /api/whoami/2 HTTP/1.1\r\nHost: edge\r\n\r\n")
        head = await _head(reader)  # no body of the HEAD came before it
        assert head.startswith(b"HTTP/1.1 200"), head
        body = await asyncio.wait_for(reader.readexactly(_length(head)), 3)
        assert json.loads(body)["params"] == {"id": 2}
    finally:
        writer.close()


async def test_100_continue_is_not_held_back(edge) -> None:
    address, _ = edge
    host, port = address.split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(
            b"POST /api/echo HTTP/1.1\r\nHost: edge\r\nContent-Length: 5\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        # The client sends its body only after this: holding it would hang both sides.
        assert (await _head(reader)).startswith(b"HTTP/1.1 100 ")
        writer.write(b"hello")
        head = await _head(reader)
        assert head.startswith(b"HTTP/1.1 201"), head
        assert await asyncio.wait_for(reader.readexactly(_length(head)), 3) == b"hello"
    finally:
        writer.close()


async def _exchange(address: str, requests: list[bytes]) -> list[bytes]:
    """Each request's response, whole, on one connection; the last one read until it closes."""
    host, port = address.split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    responses = []
    try:
        for request in requests[:-1]:
            writer.write(request)
            head = await _head(reader)
            length = 0 if request.startswith(b"HEAD ") else _length(head)
            responses.append(head + await asyncio.wait_for(reader.readexactly(length), 3))
        writer.write(requests[-1])
        responses.append(await asyncio.wait_for(reader.read(), 3))  # the server closes
    finally:
        writer.close()
    return responses


def _without_date(response: bytes) -> bytes:
    lines = response.split(b"\r\n")
    dates = [line for line in lines if line.lower().startswith(b"date: ")]
    assert len(dates) == 1, response
    return b"\r\n".join(line for line in lines if line not in dates)


async def test_rendered_heads_are_the_bytes_uvicorn_writes(serve, edge_bus, http_parser) -> None:
    """The edge's responses byte for byte as through uvicorn's own protocol (the date aside).

    JSON replies and errors (heads rendered by the edge), other responses, a
    HEAD, a server ``--header``, and the ends of a connection: a client's
    ``Connection: close`` on HTTP/1.1 and an HTTP/1.0 request.
    """
    from edge_service import routes

    limits = Limits(max_body_size=64)
    options = {"headers": [("x-served-by", "edge-test")]}
    edge_address = await serve(EdgeApp(routes, layer=edge_bus, limits=limits), **options)
    plain_address = await serve(  # uvicorn's protocol, which ignores the rendered heads
        EdgeApp(routes, layer=edge_bus, limits=limits), http=http_parser, **options
    )
    kept = [
        b"GET /api/add/1?b=2 HTTP/1.1\r\nHost: edge\r\n\r\n",  # 200 JSON
        b"HEAD /api/add/1?b=2 HTTP/1.1\r\nHost: edge\r\n\r\n",
        b"GET /api/add/1?b=x HTTP/1.1\r\nHost: edge\r\n\r\n",  # 422 JSON
        b"POST /api/add/1 HTTP/1.1\r\nHost: edge\r\nContent-Length: 65\r\n\r\n" + b"{" * 65,
        b"GET /api/nowhere HTTP/1.1\r\nHost: edge\r\n\r\n",  # 404, text
        b"PUT /api/add/1 HTTP/1.1\r\nHost: edge\r\nContent-Length: 0\r\n\r\n",  # 405, text
        b"GET /api/add/1?b=3 HTTP/1.1\r\nHost: edge\r\nConnection: close\r\n\r\n",
    ]
    once = [b"GET /api/add/2?b=2 HTTP/1.0\r\nHost: edge\r\n\r\n"]
    statuses = []
    for requests in (kept, once):
        through_edge = await _exchange(edge_address, requests)
        through_uvicorn = await _exchange(plain_address, requests)
        assert [_without_date(r) for r in through_edge] == [
            _without_date(r) for r in through_uvicorn
        ]
        assert all(b"\r\nx-served-by: edge-test\r\n" in r for r in through_edge)
        statuses += [r.split(b" ", 2)[1] for r in through_edge]
    assert statuses == [b"200", b"200", b"422", b"413", b"404", b"405", b"200", b"200"]


class _Restyle:
    """An ASGI middleware around the edge that changes response headers on their way out."""

    def __init__(self, app: EdgeApp) -> None:
        self.app = app
        self.limits = app.limits  # what svcbus.edge.config reads from the app it serves

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        async def restyled(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = message["headers"]
                for i, (name, _) in enumerate(headers):
                    if name == b"content-type":  # in place: the list and its length stay
                        headers[i] = (name, b"application/json; charset=utf-8")
                if b"more" in scope["query_string"]:
                    headers.append((b"x-restyled", b"yes"))
            await send(message)

        await self.app(scope, receive, restyled)


async def test_headers_a_middleware_changed_are_written_as_changed(serve, edge_bus) -> None:
    """The edge's rendered heads give way to headers an ASGI middleware changed."""
    from edge_service import routes

    address = await serve(_Restyle(EdgeApp(routes, layer=edge_bus)))
    replaced, added = await _exchange(
        address,
        [
            b"GET /api/add/1?b=2 HTTP/1.1\r\nHost: edge\r\n\r\n",
            b"GET /api/add/1?b=2&more=1 HTTP/1.1\r\nHost: edge\r\nConnection: close\r\n\r\n",
        ],
    )
    for response in (replaced, added):
        assert b"\r\ncontent-type: application/json; charset=utf-8\r\n" in response
        assert b"\r\nx-content-type-options: nosniff\r\n" in response
        assert response.endswith(b'{"total":3}')
    assert b"x-restyled" not in replaced
    assert b"\r\nx-restyled: yes\r\n" in added


class _Recorded:
    """The writes a transport was given, and whether it was closed."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


def test_head_and_body_leave_in_one_write() -> None:
    transport = _Recorded()
    writer = HeadWithBody(transport)  # type: ignore[arg-type]
    writer.write(b"HTTP/1.1 200 OK\r\n\r\n")
    assert transport.writes == []
    writer.write(b"body")
    writer.write(b" more")  # a streamed response's later chunks go straight out
    writer.flush()  # the response completed
    writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")  # the next response: held again
    writer.flush()  # completed without a body (HEAD, 204)
    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # informational: at once
    writer.write(b"HTTP/1.1 500 Internal Server Error\r\n\r\n")
    writer.close()  # closing sends what is held first
    assert transport.writes == [
        b"HTTP/1.1 200 OK\r\n\r\nbody",
        b" more",
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"HTTP/1.1 500 Internal Server Error\r\n\r\n",
    ]
    assert transport.closed
