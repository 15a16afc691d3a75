"""Static files: content types, index, ETag/304, HEAD, and no way out of the directory."""

from __future__ import annotations

import asyncio

import httpx
import pytest

pytestmark = pytest.mark.anyio


@pytest.fixture
async def client(edge) -> httpx.AsyncClient:
    addr, _ = edge
    async with httpx.AsyncClient(base_url=f"http://{addr}") as client:
        yield client


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/static/", "text/html; charset=utf-8"),
        ("/static/index.html", "text/html; charset=utf-8"),
        ("/static/app.js", "text/javascript; charset=utf-8"),
        ("/static/style.css", "text/css; charset=utf-8"),
        ("/static/sub/data.json", "application/json"),
    ],
)
async def test_files_have_their_content_types(client, path, content_type) -> None:
    response = await client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"] == content_type
    assert response.headers["x-content-type-options"] == "nosniff"


async def test_index_and_prefix_without_slash(client) -> None:
    response = await client.get("/static")
    assert response.status_code == 200
    assert b"edge test page" in response.content


async def test_etag_gives_304(client) -> None:
    first = await client.get("/static/app.js")
    etag = first.headers["etag"]
    second = await client.get("/static/app.js", headers={"if-none-match": etag})
    assert second.status_code == 304
    assert second.content == b""
    other = await client.get("/static/app.js", headers={"if-none-match": '"other"'})
    assert other.status_code == 200


async def test_head_has_length_but_no_body(client) -> None:
    response = await client.head("/static/style.css")
    assert response.status_code == 200
    assert int(response.headers["content-length"]) > 0
    assert response.content == b""


async def test_post_is_405(client) -> None:
    response = await client.post("/static/app.js")
    assert response.status_code == 405


async def test_missing_file_is_404(client) -> None:
    assert (await client.get("/static/nope.txt")).status_code == 404
    assert (await client.get("/static/sub/")).status_code == 404  # no index.html there


TRAVERSALS = [
    "/static/../secret.txt",
    "/static/..%2fsecret.txt",
    "/static/%2e%2e/secret.txt",
    "/static/%2e%2e%2fsecret.txt",
    "/static/sub/../../secret.txt",
    "/static/..\\secret.txt",
    "/static/..%5csecret.txt",
    "/static/%252e%252e/secret.txt",
    "/static//etc/passwd",
    "/static/%00/../secret.txt",
    "/static/sub/%2e%2e/%2e%2e/edge_service.py",
]


@pytest.mark.parametrize("path", TRAVERSALS)
async def test_traversal_attempts_are_404(edge, path) -> None:
    # Raw requests: httpx would normalise the dots away before sending.
    addr, _ = edge
    host, port = addr.split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    response = await reader.read()
    writer.close()
    status_line = response.split(b"\r\n", 1)[0]
    assert b" 404 " in status_line or b" 400 " in status_line, status_line
    assert b"top secret" not in response
    assert b"edge_service" not in response
    assert b"root:" not in response


async def test_symlink_out_of_the_directory_is_404(serve, edge_bus, tmp_path) -> None:
    from svcbus.edge import EdgeApp, Routes, StaticRoute

    (tmp_path / "outside.txt").write_text("top secret")
    public = tmp_path / "public"
    public.mkdir()
    (public / "ok.txt").write_text("fine")
    (public / "link.txt").symlink_to(tmp_path / "outside.txt")
    addr = await serve(EdgeApp(Routes(StaticRoute("/", public)), layer=edge_bus))
    async with httpx.AsyncClient(base_url=f"http://{addr}") as client:
        assert (await client.get("/ok.txt")).text == "fine"
        response = await client.get("/link.txt")
        assert response.status_code == 404
        assert "secret" not in response.text
