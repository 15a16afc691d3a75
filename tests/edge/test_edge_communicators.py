"""svcbus.testing's in-process edge clients against the edge test service: no server, no sockets."""

from __future__ import annotations

import socket
import sys
import types

import pytest
from edge_service import routes, service

from svcbus import consumes
from svcbus.testing import EdgeClient, WebsocketClosed, harness

pytestmark = pytest.mark.anyio


@pytest.fixture(autouse=True)
def no_sockets(monkeypatch):
    """Prove the point: any socket opened during these tests fails them."""

    def refuse(*args, **kwargs):
        raise AssertionError("the in-process clients opened a socket")

    # Connecting or listening is what a server or a network client would do; the
    # event loop's own socketpair does neither.
    for name in ("connect", "connect_ex", "bind", "listen"):
        monkeypatch.setattr(socket.socket, name, refuse)


async def test_websocket_connect_send_receive_and_disconnect():
    async with EdgeClient(routes, services=[service]) as edge:
        ws = edge.websocket("/ws/lobby")
        connected = await ws.connect()
        assert connected.accepted and connected.subprotocol is None
        await ws.send_text("hello")
        assert await ws.receive_text() == "hello"
        await ws.send_bytes(b"abc")
        assert await ws.receive() == b"cba"
        assert await ws.receive_nothing()
        await ws.disconnect()


async def test_json_frames_and_subprotocols():
    async with EdgeClient(routes, services=[service]) as edge:
        ws = edge.websocket("/json/lobby", subprotocols=["chat.v1"])
        assert (await ws.connect()).subprotocol == "chat.v1"
        await ws.send_json({"a": [1, 2]})
        assert await ws.receive_json() == {"a": [1, 2]}
        await ws.disconnect()


async def test_close_codes_from_the_consumer():
    async with EdgeClient(routes, services=[service]) as edge:
        refused = await edge.websocket("/ws/forbidden").connect()
        assert not refused and refused.close_code == 4003

        ws = edge.websocket("/ws/lobby")
        assert await ws.connect()
        await ws.send_text("close:4001")
        with pytest.raises(WebsocketClosed) as closed:
            await ws.receive_text()
        assert closed.value.code == 4001 == ws.close_code


async def test_the_edge_security_applies_in_process():
    async with EdgeClient(routes, services=[service]) as edge:
        evil = await edge.websocket("/ws/lobby", origin="https://evil.example").connect()
        # Without the ASGI denial-response extension the edge refuses with close 1008.
        assert not evil and evil.close_code == 1008


async def test_group_send_reaches_every_socket_in_the_room():
    async with EdgeClient(routes, services=[service]) as edge:
        ada, bob = edge.websocket("/ws/kitchen"), edge.websocket("/ws/kitchen")
        assert await ada.connect() and await bob.connect()
        await ada.send_text("broadcast:dinner")
        assert await ada.receive_text() == "dinner"
        assert await bob.receive_text() == "dinner"


async def test_http_request_reply():
    async with EdgeClient(routes, services=[service]) as edge:
        response = await edge.http("GET", "/api/add/2?b=3")
        assert response.status == 200, response.text
        assert response.json() == {"total": 5}
        echo = await edge.http("POST", "/api/echo", body=b"\x00\x01")
        assert echo.status == 201 and echo.body == b"\x00\x01"
        assert echo.headers["x-method"] == "POST"
        assert (await edge.http("GET", "/nowhere")).status == 404
        failed = await edge.http("GET", "/api/fail")
        assert failed.status >= 500


async def test_harness_takes_a_module_of_consumers(monkeypatch):
    module = types.ModuleType("greet_module")

    @consumes("greet.hello")
    async def hello(message: dict) -> dict:
        return {"hi": message["name"]}

    module.hello = hello
    monkeypatch.setitem(sys.modules, "greet_module", module)
    async with harness(module) as h:
        assert await h.request("greet.hello", {"name": "ada"}) == {"hi": "ada"}
