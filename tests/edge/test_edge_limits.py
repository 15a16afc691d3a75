"""Security and limits, on by default: origins, sizes, rates, connection cap, bad frames, auth."""

from __future__ import annotations

import asyncio
import contextlib
import json

import httpx
import pytest
from raw_handshake import websocket_handshake
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from svcbus import Bus
from svcbus.edge import EdgeApp, Limits, bearer_token, cookie

pytestmark = pytest.mark.anyio


async def app_on(serve, bus: Bus, *, http: str | None = None, **options) -> str:
    from edge_service import routes

    server_options = {"http": http} if http is not None else {}
    return await serve(EdgeApp(routes, layer=bus, **options), **server_options)


PLAIN_H11 = "uvicorn.protocols.http.h11_impl:H11Protocol"
"""uvicorn's own h11 protocol, without the edge's connection limit and header timeout."""


async def close_code(ws) -> int:
    """Read until the server closes; the code it closed with."""
    with pytest.raises(ConnectionClosed) as info:
        for _ in range(1000):
            await ws.recv()
    assert info.value.rcvd is not None, "the server did not send a close frame"
    return info.value.rcvd.code


async def still_echoes(addr: str) -> None:
    async with connect(f"ws://{addr}/ws/other") as ws:
        await ws.send("ping")
        assert await ws.recv() == "ping"


# -- origins ---------------------------------------------------------------------------


async def test_foreign_origin_is_refused_by_default(edge) -> None:
    addr, app = edge
    with pytest.raises(InvalidStatus) as info:
        async with connect(f"ws://{addr}/ws/lobby", origin="https://evil.example"):
            pass
    assert info.value.response.status_code == 403
    assert app.stats.refused_origin == 1
    async with connect(f"ws://{addr}/ws/lobby", origin=f"http://{addr}") as ws:
        await ws.send("same host")
        assert await ws.recv() == "same host"


async def test_configured_origins_and_subdomain_patterns(serve, edge_bus) -> None:
    addr = await app_on(
        serve, edge_bus, allowed_origins=["https://app.example.com", "https://*.example.org"]
    )
    for origin in ("https://app.example.com", "https://a.b.example.org"):
        async with connect(f"ws://{addr}/ws/lobby", origin=origin) as ws:
            await ws.send("ok")
            assert await ws.recv() == "ok"
    for origin in ("https://example.org", "http://app.example.com", "https://evilexample.org"):
        with pytest.raises(InvalidStatus):
            async with connect(f"ws://{addr}/ws/lobby", origin=origin):
                pass


# -- sizes -------------------------------------------------------------------------------


async def test_oversize_frame_closes_1009(serve, edge_bus) -> None:
    addr = await app_on(serve, edge_bus, limits=Limits(max_message_size=1024))
    async with connect(f"ws://{addr}/ws/lobby") as ws:
        await ws.send("x" * 1024)  # at the limit: fine
        assert len(await ws.recv()) == 1024
        await ws.send("é" * 513)  # 1026 UTF-8 bytes: the edge counts bytes, not characters
        assert await close_code(ws) == 1009
    async with connect(f"ws://{addr}/ws/lobby", max_size=None) as ws:
        await ws.send(b"y" * 100_000)  # far over: the server refuses it before buffering
        assert await close_code(ws) == 1009
    await still_echoes(addr)


# -- rate --------------------------------------------------------------------------------


async def test_flooding_closes_1008(serve, edge_bus) -> None:
    addr = await app_on(serve, edge_bus, limits=Limits(messages_per_second=5, burst=5))
    async with connect(f"ws://{addr}/ws/lobby") as ws:
        for i in range(50):
            try:
                await ws.send(f"m{i}")
            except ConnectionClosed:
                break
        assert await close_code(ws) == 1008
    await still_echoes(addr)


async def test_steady_rate_is_allowed(serve, edge_bus) -> None:
    addr = await app_on(serve, edge_bus, limits=Limits(messages_per_second=100, burst=2))
    async with connect(f"ws://{addr}/ws/lobby") as ws:
        for i in range(10):
            await ws.send(f"m{i}")
            assert await ws.recv() == f"m{i}"
            await asyncio.sleep(0.02)


# -- connection cap ----------------------------------------------------------------------


async def test_socket_cap_refuses_sockets_but_never_http(serve, edge_bus) -> None:
    """max_connections counts WebSockets only: a full house of sockets still answers HTTP."""
    addr = await app_on(serve, edge_bus, limits=Limits(max_connections=3))
    held = [await connect(f"ws://{addr}/ws/lobby") for _ in range(3)]
    try:
        async with connect(f"ws://{addr}/ws/lobby") as ws:
            assert await close_code(ws) == 1013
        async with httpx.AsyncClient(base_url=f"http://{addr}") as client:
            response = await client.post("/api/add/1?b=2")
            assert response.status_code == 200, response.text
            assert response.json() == {"total": 3}
    finally:
        for ws in held:
            await ws.close()
    await asyncio.sleep(0.1)
    await still_echoes(addr)


async def test_request_cap_refuses_requests_over_it_with_503(serve, edge_bus) -> None:
    """max_requests counts HTTP requests in flight: the one over it gets 503 and Retry-After."""
    addr = await app_on(serve, edge_bus, limits=Limits(max_requests=2))
    async with httpx.AsyncClient(base_url=f"http://{addr}", timeout=10) as client:
        slow = [asyncio.create_task(client.get("/api/slow")) for _ in range(2)]
        await asyncio.sleep(0.5)  # both are with the consumer now
        response = await client.get("/api/add/1?b=1")
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        assert response.headers["x-content-type-options"] == "nosniff"
        assert "requests" in response.json()["error"]
        assert [r.status_code for r in await asyncio.gather(*slow)] == [200, 200]
        assert (await client.get("/api/add/1?b=1")).status_code == 200  # room again
    await still_echoes(addr)  # sockets do not count against max_requests


@pytest.mark.parametrize("http_parser", ["httptools", "h11"])
async def test_tcp_cap_refuses_with_503_before_reading(serve, edge_bus) -> None:
    """The edge's protocol counts TCP connections from their first byte, up to both limits."""
    addr = await app_on(serve, edge_bus, limits=Limits(max_connections=2, max_requests=1))
    host, port = addr.split(":")
    held = [await connect(f"ws://{addr}/ws/lobby") for _ in range(2)]
    idle = await asyncio.open_connection(host, int(port))  # headers never sent
    try:
        # A handshake written by hand: the refusal comes before the server reads
        # it, which a WebSocket client library may take for a broken connection.
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(websocket_handshake(addr, "/ws/lobby"))
        with contextlib.suppress(ConnectionError):  # refused: the server may close first
            await writer.drain()
        head = (await asyncio.wait_for(reader.read(), 5)).split(b"\r\n\r\n")[0].lower()
        writer.close()
        assert head.startswith(b"http/1.1 503 "), head
        assert b"\r\nx-content-type-options: nosniff" in head
        async with httpx.AsyncClient(base_url=f"http://{addr}") as client:
            response = await client.get("/api/add/1?b=1")
            assert response.status_code == 503
            assert "connection limit" in response.text
    finally:
        idle[1].close()
        for ws in held:
            await ws.close()
    await asyncio.sleep(0.1)
    await still_echoes(addr)


async def test_connection_cap_closes_1013_under_a_plain_server(serve, edge_bus) -> None:
    """Under an ASGI server without the edge's protocol the app itself refuses: 1013 / 503."""
    addr = await app_on(serve, edge_bus, limits=Limits(max_connections=3), http=PLAIN_H11)
    held = [await connect(f"ws://{addr}/ws/lobby") for _ in range(3)]
    try:
        async with connect(f"ws://{addr}/ws/lobby") as ws:
            assert await close_code(ws) == 1013
    finally:
        for ws in held:
            await ws.close()
    await asyncio.sleep(0.1)
    await still_echoes(addr)


# -- bad frames ----------------------------------------------------------------------------


async def test_invalid_utf8_text_frame_closes_1007(edge) -> None:
    addr, _ = edge
    async with connect(f"ws://{addr}/ws/lobby") as ws:
        await ws.send(b"\xff\xfe not utf-8", text=True)
        assert await close_code(ws) == 1007
    await still_echoes(addr)


async def test_bad_json_on_json_route_closes_1007(edge) -> None:
    addr, app = edge
    async with connect(f"ws://{addr}/json/lobby") as ws:
        await ws.send('{"ok": true}')
        assert await ws.recv() == '{"ok": true}'
        await ws.send("{not json")
        assert await close_code(ws) == 1007
    assert app.stats.closed_bad_frame == 1
    await still_echoes(addr)


@pytest.mark.parametrize("http_parser", ["httptools", "h11"])
async def test_garbage_handshake_does_not_hurt_the_edge(edge) -> None:
    addr, _ = edge
    host, port = addr.split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"GET /ws/lobby HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    )
    await writer.drain()
    status = await reader.readline()
    assert b" 400 " in status or b" 426 " in status or status == b""
    writer.close()
    await still_echoes(addr)


# -- authentication ----------------------------------------------------------------------------

TOKENS = {"tok-alice": {"sub": "alice", "role": "admin"}}


async def test_bearer_token_identity_reaches_consumer_not_the_token(serve, edge_bus) -> None:
    addr = await app_on(serve, edge_bus, authenticate=bearer_token(TOKENS.get))
    async with connect(
        f"ws://{addr}/ws/whoami", additional_headers={"Authorization": "Bearer tok-alice"}
    ) as ws:
        text = await ws.recv()
    info = json.loads(text)
    assert info["identity"] == {"sub": "alice", "role": "admin"}
    assert "tok-alice" not in text
    # Browsers pass the token in the query; it is stripped before it travels.
    async with connect(f"ws://{addr}/ws/whoami?access_token=tok-alice&room=1") as ws:
        text = await ws.recv()
    info = json.loads(text)
    assert info["identity"]["sub"] == "alice"
    assert info["query"] == {"room": "1"}
    assert "tok-alice" not in text
    async with httpx.AsyncClient(base_url=f"http://{addr}") as client:
        response = await client.get("/api/whoami/1", headers={"Authorization": "Bearer tok-alice"})
        assert response.json()["identity"] == {"sub": "alice", "role": "admin"}
        assert "tok-alice" not in response.text
        bad = await client.get("/api/whoami/1", headers={"Authorization": "Bearer forged"})
        assert bad.status_code == 401
    with pytest.raises(InvalidStatus) as info_exc:
        async with connect(
            f"ws://{addr}/ws/lobby", additional_headers={"Authorization": "Bearer x"}
        ):
            pass
    assert info_exc.value.response.status_code == 401


async def test_cookie_auth_and_required_identity(serve, edge_bus) -> None:
    sessions = {"s1": "bob"}
    addr = await app_on(
        serve, edge_bus, authenticate=cookie("session", sessions.get), require_identity=True
    )
    async with connect(f"ws://{addr}/ws/whoami", additional_headers={"Cookie": "session=s1"}) as ws:
        text = await ws.recv()
    assert json.loads(text)["identity"] == "bob"
    assert "s1" not in json.loads(text)["headers"].get("cookie", "")
    with pytest.raises(InvalidStatus) as info:
        async with connect(f"ws://{addr}/ws/lobby"):
            pass
    assert info.value.response.status_code == 401
    async with httpx.AsyncClient(base_url=f"http://{addr}") as client:
        assert (await client.get("/api/add/1?b=1")).status_code == 401
        ok = await client.get("/api/add/1?b=1", headers={"Cookie": "session=s1"})
        assert ok.json() == {"total": 2}


async def test_client_cannot_choose_its_identity(serve, edge_bus) -> None:
    addr = await app_on(serve, edge_bus)
    async with httpx.AsyncClient(base_url=f"http://{addr}") as client:
        response = await client.get("/api/whoami/1", params={"identity": "admin"})
        assert response.json()["identity"] is None


async def test_broken_auth_hook_fails_closed(serve, edge_bus) -> None:
    def broken(handshake):
        raise KeyError("bug in the hook")

    addr = await app_on(serve, edge_bus, authenticate=broken)
    with pytest.raises(InvalidStatus) as info:
        async with connect(f"ws://{addr}/ws/lobby"):
            pass
    assert info.value.response.status_code == 401
