"""HTTP through a real uvicorn edge: request/reply and every status the edge produces."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from svcbus import Bus, Runtime, Service
from svcbus.edge import EdgeApp, HttpRequest, HttpRoute, Limits, Routes

pytestmark = pytest.mark.anyio
BOTH_PATHS = True  # each test with the service in process (svcbus.local) and through the layer
BOTH_PARSERS = True  # and on the edge's httptools protocol and on its h11 one


@pytest.fixture
async def client(edge) -> httpx.AsyncClient:
    addr, _ = edge
    async with httpx.AsyncClient(base_url=f"http://{addr}") as client:
        yield client


async def test_typed_channel_merges_path_query_and_body(client) -> None:
    response = await client.get("/api/add/2", params={"b": "40"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"total": 42}
    response = await client.post("/api/add/5", json={"b": 6})
    assert response.json() == {"total": 11}


async def test_path_parameter_wins_over_body(client) -> None:
    response = await client.post("/api/add/1", json={"a": 100, "b": 1})
    assert response.json() == {"total": 2}


async def test_invalid_body_is_422_with_pydantic_errors(client) -> None:
    response = await client.post("/api/add/1", json={"b": "not a number"})
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert detail[0]["loc"] == ["b"]
    assert detail[0]["type"] == "int_parsing"
    response = await client.post("/api/add/1")  # b missing
    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "missing"


async def test_bad_json_is_422(client) -> None:
    response = await client.post(
        "/api/add/1", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "json_invalid"
    response = await client.post("/api/add/1", content=b"[1, 2]")
    assert response.status_code == 422
    # The edge keeps serving.
    assert (await client.get("/api/add/1?b=1")).json() == {"total": 2}


async def test_untyped_channel_gets_http_request_and_returns_http_response(client) -> None:
    response = await client.put("/api/echo", content=b"\x00raw bytes\xff")
    assert response.status_code == 201
    assert response.content == b"\x00raw bytes\xff"
    assert response.headers["x-method"] == "PUT"
    assert response.headers["content-type"] == "application/octet-stream"


async def test_bodies_arrive_however_they_are_framed(client) -> None:
    """Content-Length, chunked, an empty Content-Length and none at all (no body in HTTP/1.1)."""

    async def chunks():
        for part in (b"chunk", b"ed ", b"body"):
            yield part

    framed = {
        "content-length": await client.put("/api/echo", content=b"sized body"),
        "chunked": await client.put("/api/echo", content=chunks()),
        "empty": await client.put("/api/echo", content=b""),
    }
    assert {k: r.status_code for k, r in framed.items()} == dict.fromkeys(framed, 201)
    assert {k: r.content for k, r in framed.items()} == {
        "content-length": b"sized body",
        "chunked": b"chunked body",
        "empty": b"",
    }
    # Neither header (httpx always sends one for PUT): written by hand.
    reader, writer = await asyncio.open_connection(client.base_url.host, client.base_url.port)
    try:
        writer.write(b"PUT /api/echo HTTP/1.1\r\nHost: x\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 201 "), head
        assert b"\r\ncontent-length: 0\r\n" in head.lower()
    finally:
        writer.close()


async def test_credentials_do_not_travel(client) -> None:
    response = await client.get(
        "/api/whoami/7",
        params={"q": "1"},
        headers={"authorization": "Bearer secret", "cookie": "session=abc", "x-custom": "ok"},
    )
    body = response.json()
    assert body["params"] == {"id": 7}
    assert body["query"] == {"q": "1"}
    assert body["headers"]["x-custom"] == "ok"
    assert "authorization" not in body["headers"]
    assert "cookie" not in body["headers"]
    assert "secret" not in response.text


async def test_each_request_gets_its_own_headers_on_a_kept_alive_connection(
    serve, hub_url, in_process
) -> None:
    """The edge's protocols remember a connection's last headers (svcbus.edge.request.HeaderMemo).

    Requests alike, changed and alike again on one connection each reach the
    consumer with their own headers, credentials dropped, although the
    consumer changes the dict it was given (in process it is the message's
    own, not a copy).
    """
    service = Service("memo-test")

    @service.consumes("memo.headers")
    async def headers(request: HttpRequest) -> dict:
        seen = dict(request.headers)
        request.headers.pop("x-a", None)
        request.headers["x-injected"] = "by the consumer"
        return seen

    async with Bus(hub_url) as bus, Runtime(service, bus, in_process=in_process).running():
        addr = await serve(EdgeApp(Routes(HttpRoute("/h", "memo.headers")), layer=bus))
        # One connection (httpx keeps it alive), headers alike but for X-A.
        async with httpx.AsyncClient(base_url=f"http://{addr}") as client:
            seen = []
            for value in ("1", "1", "1", "2", "1", "1"):
                response = await client.get(
                    "/h", headers={"x-a": value, "authorization": "Bearer secret"}
                )
                seen.append(response.json())
    assert [s["x-a"] for s in seen] == ["1", "1", "1", "2", "1", "1"]
    assert not any("x-injected" in s or "authorization" in s for s in seen)
    assert all(s["host"] == addr for s in seen)


async def test_no_route_is_404(client) -> None:
    assert (await client.get("/api/nothing-here")).status_code == 404


async def test_path_parameter_type_mismatch_is_404(client) -> None:
    assert (await client.get("/api/add/abc")).status_code == 404


async def test_wrong_method_is_405_with_allow(client) -> None:
    response = await client.delete("/api/add/1")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, POST"


async def test_body_too_large_is_413(client) -> None:
    response = await client.post("/api/echo", content=b"x" * (1024 * 1024 + 1))
    assert response.status_code == 413


async def test_streamed_body_too_large_is_413(client) -> None:
    async def chunks():
        for _ in range(20):
            yield b"y" * 65536

    response = await client.post("/api/echo", content=chunks())  # chunked: no content-length
    assert response.status_code == 413


async def test_no_reply_is_504(client) -> None:
    response = await client.get("/api/nobody")  # request_timeout=1.0, no consumer
    assert response.status_code == 504
    response = await client.get("/api/slow")  # the consumer takes 1.5s
    assert response.status_code == 504


async def test_consumer_failure_is_500(client) -> None:
    response = await client.get("/api/fail")
    assert response.status_code == 500
    assert response.json()["type"] == "RuntimeError"
    assert "deliberate" not in response.text  # internals stay inside


async def test_full_channel_is_503(serve, hub_url) -> None:
    async with Bus(f"{hub_url}?channel_capacity=edgetest.full:1") as bus:
        routes = Routes(HttpRoute("/full", "edgetest.full"))
        addr = await serve(EdgeApp(routes, layer=bus, limits=Limits(request_timeout=0.5)))
        async with httpx.AsyncClient(base_url=f"http://{addr}") as client:
            first = await client.get("/full")  # fills the channel, nobody consumes
            assert first.status_code == 504
            second = await client.get("/full")
            assert second.status_code == 503


async def test_edge_opens_its_own_layer_in_lifespan(serve, hub_url) -> None:
    from edge_service import routes, service

    app = EdgeApp(routes, layer=hub_url, services=[service])
    addr = await serve(app)
    async with httpx.AsyncClient(base_url=f"http://{addr}") as client:
        assert (await client.get("/api/add/20?b=22")).json() == {"total": 42}


def test_http_request_built_without_model_construct_is_the_same_message() -> None:
    """The edge's shortcut for HttpRequest builds what model_construct builds, byte for byte."""
    from svcbus.edge import HttpRequest
    from svcbus.edge.http import _http_request

    # The shortcut is only sound for a model without these (see _http_request).
    assert HttpRequest.__pydantic_post_init__ is None
    assert HttpRequest.model_config.get("extra") in (None, "ignore")
    assert not HttpRequest.__private_attributes__
    values = {
        "method": "POST",
        "path": "/api/x/1",
        "params": {"id": 1},
        "query": {"q": "é"},
        "headers": {"host": "h"},
        "body": b"\x00\xff",
        "client": "127.0.0.1:5",
        "identity": {"sub": "ada"},
    }
    fast = _http_request(*values.values())
    slow = HttpRequest.model_construct(**values)
    assert type(fast) is HttpRequest
    assert fast == slow
    assert fast.model_fields_set == slow.model_fields_set
    assert fast.model_dump_json() == slow.model_dump_json()
    assert fast.__pydantic_extra__ is slow.__pydantic_extra__ is None
    assert fast.__pydantic_private__ is slow.__pydantic_private__ is None


def test_json_size_bound_holds_for_any_request_the_edge_builds() -> None:
    """The in-process hand-over skips the size check's encoding within this bound: it must hold.

    Random requests from a nasty alphabet (control characters, quotes, backslashes,
    non-ASCII, astral), percent-escaped queries, capped and repeated headers, binary
    bodies of every base64 padding, ASCII string identities: the bound is never below
    the encoded size. HttpRequest's fields are the ones the bound knows.
    """
    import random

    from svcbus.edge import HttpRequest
    from svcbus.edge.http import build_message, json_size_bound
    from svcbus.edge.request import Request
    from svcbus.envelope import body_json

    assert set(HttpRequest.model_fields) == {
        "type", "method", "path", "params", "query", "headers", "body", "client", "identity"
    }  # fmt: skip  # a new field needs its place in json_size_bound
    cap = 40
    edge = EdgeApp(
        Routes(HttpRoute("/x", "bound.x")), layer="memory://", limits=Limits(max_header_length=cap)
    )
    alphabet = '\x00\x01\x1f"\\/aZ9 é€😀\u2028'
    rng = random.Random(7)

    def text(most: int) -> str:
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, most)))

    def raw(most: int) -> bytes:
        return text(most).encode("utf-8", "surrogatepass")

    for _ in range(400):
        query = "&".join(
            f"{rng.choice(['%00', '%22', '%F0%9F%98%80', 'a', '+', ''])}="
            f"{rng.choice(['%5C', 'b', '%E2%80%A8', ''])}" * rng.randint(0, 3)
            for _ in range(rng.randint(0, 6))
        )
        headers = [(raw(3 * cap).lower(), raw(3 * cap)) for _ in range(rng.randint(0, 40))]
        scope = {
            "type": "http",
            "method": rng.choice(["GET", "POST", "M\x01"]),
            "path": "/" + text(60),
            "query_string": query.encode(),
            "headers": headers + headers[:3],  # repeats are joined, then capped
            "client": rng.choice([None, ("127.0.0.1", 5), ("::1", 65535)]),
        }
        params: dict[str, int | str] = rng.choice(
            [{}, {"room": text(10)}, {"n": rng.randint(0, 10**9), "name": text(5)}]
        )
        request = Request(edge, scope, params)
        body = bytes(rng.randrange(256) for _ in range(rng.choice([0, 1, 2, 3, 100])))
        identity = rng.choice([None, "".join(rng.choice('\x00\x1f"\\aZ9 ') for _ in range(30))])
        message = build_message(None, request, body, identity)
        bound = json_size_bound(message, request, cap)
        assert bound is not None
        assert bound >= len(body_json(message)), (scope, params, identity)
    # What the bound cannot know: another message type, a dict identity, a string
    # identity that is not ASCII (a lone surrogate in it would not encode at all).
    request = Request(edge, {"type": "http", "method": "GET", "path": "/x", "headers": []}, {})
    for identity in ({"sub": "ada"}, "ad\u00e0", "ada\ud800"):
        unknown = build_message(None, request, b"", identity)
        assert json_size_bound(unknown, request, cap) is None, identity

    class Ticket(HttpRequest):
        seat: str = ""

    ticket = build_message(Ticket, request, b"", None)
    assert type(ticket) is Ticket and json_size_bound(ticket, request, cap) is None
