"""Slow and noisy clients are bounded; responses carry security headers; logs keep no tokens."""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import Iterator

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from svcbus.edge import EdgeApp, Limits, bearer_token

pytestmark = pytest.mark.anyio
BOTH_PARSERS = True  # each test on the edge's httptools protocol and on its h11 one


@pytest.fixture
def edge_log() -> Iterator[io.StringIO]:
    """Everything the edge and uvicorn log (tracebacks included), as text.

    Call :func:`listen` on it after the server started: uvicorn's logging setup
    replaces the handlers of its loggers.
    """
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    out.handler = handler  # type: ignore[attr-defined]
    yield out
    for name in LOGGERS:
        logging.getLogger(name).removeHandler(handler)


LOGGERS = ("uvicorn", "uvicorn.access", "svcbus.edge")


def listen(out: io.StringIO) -> None:
    """Send the records of uvicorn's and the edge's loggers to ``out`` from now on."""
    for name in LOGGERS:
        logger = logging.getLogger(name)
        logger.addHandler(out.handler)  # type: ignore[attr-defined]
        logger.setLevel(logging.INFO)


async def slow_header_client(host: str, port: int) -> float | None:
    """Open a connection and dribble header bytes; seconds until the edge closed it."""
    started = time.monotonic()
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError:
        return 0.0
    try:
        writer.write(b"GET /api/add/1?b=1 HTTP/1.1\r\nHost: x\r\n")
        await writer.drain()
        while time.monotonic() - started < 20:
            try:
                data = await asyncio.wait_for(reader.read(1024), 0.5)
            except asyncio.TimeoutError:
                writer.write(b"X-Slow: 1\r\n")  # never the blank line that ends the headers
                await writer.drain()
                continue
            if not data or b" 503 " in data:
                return time.monotonic() - started
        return None
    except OSError:
        return time.monotonic() - started
    finally:
        writer.close()


async def test_slow_header_clients_are_refused_or_cut_off(serve, edge_bus) -> None:
    from edge_service import routes

    # TCP connections are capped at max_connections + max_requests = 200.
    limits = Limits(max_connections=100, max_requests=100, header_timeout=2.0)
    app = EdgeApp(routes, layer=edge_bus, limits=limits)
    addr = await serve(app, backlog=1024)
    host, port = addr.split(":")
    results = await asyncio.gather(*(slow_header_client(host, int(port)) for _ in range(500)))
    ended = [r for r in results if r is not None]
    print(
        f"\n500 slow-header connections, limit 200, header timeout 2 s: all ended within "
        f"{max(ended):.1f} s; {sum(r < 1.0 for r in ended)} within 1 s (refused), "
        f"{len(results) - len(ended)} still open after 20 s"
    )
    assert len(ended) == 500
    assert sum(r < 1.0 for r in ended) >= 300, "connections over the limit were not refused"
    assert max(ended) < 2.0 + 1.5
    async with httpx.AsyncClient(base_url=f"http://{addr}") as client:
        assert (await client.get("/api/add/1?b=1")).json() == {"total": 2}


async def test_each_kept_alive_request_gets_the_header_timeout(serve, edge_bus) -> None:
    """A kept-alive connection's next request has the same time for its headers as the first.

    The time counts from the end of the previous response (idle time included).
    """
    from edge_service import routes

    limits = Limits(header_timeout=1.5)
    addr = await serve(EdgeApp(routes, layer=edge_bus, limits=limits))
    host, port = addr.split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        for _ in range(4):  # 2 s in all, each request within its time: all answered
            await asyncio.sleep(0.5)  # idle before each, under the timeout
            assert await _get(reader, writer, "/api/add/1?b=1") == b'{"total":2}'
        # About 1.5 s after the response was sent (read a little later under load).
        assert 1.0 < await _seconds_until_cut_off(reader, writer) < 3.5
    finally:
        writer.close()


async def test_the_header_timeout_waits_out_a_slow_response(serve, edge_bus) -> None:
    """A response slower than the header timeout is not cut off; the next headers get their time.

    The connection's header timer fires while the consumer is still working
    (1.5 s, timeout 0.8 s): the connection stays, and its next request's
    headers have the timeout from the end of that response.
    """
    from edge_service import routes

    addr = await serve(EdgeApp(routes, layer=edge_bus, limits=Limits(header_timeout=0.8)))
    host, port = addr.split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        assert await _get(reader, writer, "/api/slow") == b'{"late":true}'
        assert 0.5 < await _seconds_until_cut_off(reader, writer) < 3.0
    finally:
        writer.close()


async def _get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str) -> bytes:
    """The body of a 200 response to ``GET path`` on a kept-alive connection."""
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200 "), head
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    return await reader.readexactly(length)


async def _seconds_until_cut_off(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> float:
    """Send headers that never end; seconds until the edge closes the connection, sending nothing."""
    started = time.monotonic()
    writer.write(b"GET /api/add/1?b=1 HTTP/1.1\r\nHost: x\r\n")  # never finished
    assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, nothing sent
    return time.monotonic() - started


async def test_a_ping_flood_is_rate_limited(serve, edge_bus) -> None:
    from edge_service import routes

    app = EdgeApp(routes, layer=edge_bus, limits=Limits(messages_per_second=5, burst=5))
    addr = await serve(app)
    async with connect(f"ws://{addr}/ws/lobby", ping_interval=None) as ws:
        with pytest.raises(ConnectionClosed) as info:
            for _ in range(100):
                await ws.ping()
                await asyncio.sleep(0.001)
            await asyncio.wait_for(ws.recv(), 5)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1008
    async with connect(f"ws://{addr}/ws/lobby") as ws:  # the edge is fine
        await ws.send("hi")
        assert await ws.recv() == "hi"


async def test_invalid_utf8_is_one_line_without_traceback(
    serve, edge_bus, edge_log, monkeypatch
) -> None:
    from edge_service import routes

    from svcbus.edge import protocol
    from svcbus.edge.logs import Quiet

    # The protocols' rate limit is per process: a fresh one, whatever ran before.
    monkeypatch.setattr(protocol, "quiet", Quiet(protocol.log))

    addr = await serve(EdgeApp(routes, layer=edge_bus), log_level="info")
    listen(edge_log)
    for _ in range(3):
        async with connect(f"ws://{addr}/ws/lobby") as ws:
            await ws.send(b"\xff\xfe not utf-8", text=True)
            with pytest.raises(ConnectionClosed) as info:
                await asyncio.wait_for(ws.recv(), 5)
            assert info.value.rcvd is not None and info.value.rcvd.code == 1007
    text = edge_log.getvalue()
    print(f"\nlog of 3 invalid-UTF-8 frames:\n{text}")
    assert "Traceback" not in text and "ERROR" not in text
    assert text.count("not valid UTF-8") == 1  # then counted, summarised after 10 s


async def test_security_headers_on_every_response(serve, edge_bus) -> None:
    from edge_service import routes

    addr = await serve(EdgeApp(routes, layer=edge_bus))
    async with httpx.AsyncClient(base_url=f"http://{addr}") as client:
        responses = {
            "static html": await client.get("/static/index.html"),
            "static css": await client.get("/static/style.css"),
            "consumer json": await client.get("/api/add/1?b=2"),
            "consumer HttpResponse": await client.post("/api/echo", content=b"x"),
            "not found": await client.get("/nowhere"),
            "wrong method": await client.delete("/api/add/1"),
            "edge error": await client.post("/api/add/1", content=b"not json"),
        }
    for what, response in responses.items():
        assert response.headers.get("x-content-type-options") == "nosniff", what
        assert response.headers.get("referrer-policy") == "no-referrer", what
        is_html = response.headers.get("content-type", "").startswith("text/html")
        csp = response.headers.get("content-security-policy")
        assert (csp == "frame-ancestors 'self'") if is_html else csp is None, (what, csp)
    assert responses["static html"].status_code == 200


async def test_access_log_never_records_tokens(serve, edge_bus, edge_log) -> None:
    from edge_service import routes

    app = EdgeApp(routes, layer=edge_bus, authenticate=bearer_token({"SECRET": "alice"}.get))
    addr = await serve(app, log_level="info", access_log=True)
    listen(edge_log)
    async with httpx.AsyncClient(base_url=f"http://{addr}") as client:
        response = await client.get("/api/whoami/1?access_token=SECRET&room=1")
        assert response.json()["identity"] == "alice"
        await client.get("/api/add/1?b=1&token=SECRET2")
    async with connect(f"ws://{addr}/ws/whoami?access_token=SECRET") as ws:
        await ws.recv()
    await asyncio.sleep(0.1)
    text = edge_log.getvalue()
    print(f"\naccess log:\n{text}")
    assert "/api/whoami/1?access_token=[redacted]&room=1" in text
    assert "SECRET" not in text
    assert text.count("[redacted]") >= 3, "the requests were not logged at all"
