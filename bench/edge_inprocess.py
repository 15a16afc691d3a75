"""The edge without sockets: echo frames and HTTP requests through ``EdgeApp`` in one process.

    python bench/edge_inprocess.py echo 5000     # µs per echoed frame
    python bench/edge_inprocess.py http 5000     # µs per HTTP request/reply
    python bench/edge_inprocess.py request 5000  # a bare Bus.request to the same consumer

The app is ``bench_edge.py``'s (memory://, its consumers in the process),
called with an ASGI ``receive``/``send`` pair instead of a server: what is
left is the edge, the bus, the runtime and asyncio, with no socket or
protocol cost. On a shared machine, count instructions instead of time;
callgrind's counts repeat to a few parts in a thousand, and the difference
of two runs takes the start-up out:

    for n in 300 1300; do
        PYTHONHASHSEED=0 valgrind --tool=callgrind python bench/edge_inprocess.py echo $n
    done
    # (Ir(1300) - Ir(300)) / 1000 = instructions per frame

(a fixed hash seed keeps set and dict probing alike between runs: without it
two runs of the same code differ by about 1 %).
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_edge import PAD, svcbus_app

from svcbus import Bus, Runtime, Service
from svcbus.edge import EdgeApp, HttpRequest

WARM_UP = 300


async def lifespan(app: EdgeApp) -> tuple[asyncio.Queue[dict[str, Any]], asyncio.Task[None]]:
    """Start ``app``'s lifespan; put ``lifespan.shutdown`` on the queue and await the task to end it."""
    events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    started = asyncio.Event()

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "lifespan.startup.complete":
            started.set()

    events.put_nowait({"type": "lifespan.startup"})
    task = asyncio.create_task(app({"type": "lifespan"}, events.get, send))
    await started.wait()
    return events, task


async def echo(count: int) -> float:
    """Seconds per frame, ``count`` frames one after the other on one socket."""
    app = svcbus_app()
    # The frame rate limit is not what this measures.
    app.limits = replace(app.limits, messages_per_second=1e9, burst=10**9)
    events, life = await lifespan(app)
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    echoed: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "websocket.send":
            echoed.put_nowait(message)

    scope = {
        "type": "websocket",
        "path": "/ws",
        "query_string": b"",
        "headers": [(b"host", b"bench")],
        "client": ("127.0.0.1", 1),
        "scheme": "ws",
        "subprotocols": [],
        "extensions": {},
        "asgi": {"version": "3.0"},
    }
    inbox.put_nowait({"type": "websocket.connect"})
    socket = asyncio.create_task(app(scope, inbox.get, send))
    frame = {"type": "websocket.receive", "text": f"e:1:{PAD}"}
    for _ in range(WARM_UP):
        inbox.put_nowait(frame)
        await echoed.get()
    started = time.perf_counter()
    for _ in range(count):
        inbox.put_nowait(frame)
        await echoed.get()
    elapsed = time.perf_counter() - started
    inbox.put_nowait({"type": "websocket.disconnect", "code": 1000})
    await socket
    events.put_nowait({"type": "lifespan.shutdown"})
    await life
    return elapsed / count


async def http(count: int) -> float:
    """Seconds per request, ``count`` GET /api one after the other."""
    app = svcbus_app()
    events, life = await lifespan(app)
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/api",
        "query_string": b"",
        "headers": [(b"host", b"bench")],
        "client": ("127.0.0.1", 1),
        "scheme": "http",
        "http_version": "1.1",
        "asgi": {"version": "3.0"},
    }
    bodies: list[bytes] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body":
            bodies.append(message["body"])

    for _ in range(WARM_UP):
        await app(dict(scope), receive, send)
    started = time.perf_counter()
    for _ in range(count):
        await app(dict(scope), receive, send)
    elapsed = time.perf_counter() - started
    assert bodies[-1].startswith(b'{"ok":true'), bodies[-1]
    events.put_nowait({"type": "lifespan.shutdown"})
    await life
    return elapsed / count


async def request(count: int) -> float:
    """Seconds per bare ``Bus.request`` to a consumer like the edge's (the edge's floor)."""
    service = Service("bench-request")

    @service.consumes("bench.http")
    async def api(request: HttpRequest) -> dict[str, Any]:
        return {"ok": True, "path": request.path}

    message = HttpRequest.model_construct(
        method="GET", path="/api", params={}, query={}, headers={"host": "bench"}, body=b""
    )
    async with Bus("memory://bench-request") as bus, Runtime(service, bus).running():
        for _ in range(WARM_UP):
            await bus.request("bench.http", message, reply_type=Any)
        started = time.perf_counter()
        for _ in range(count):
            await bus.request("bench.http", message, reply_type=Any)
        return (time.perf_counter() - started) / count


def main() -> None:
    paths = {"echo": echo, "http": http, "request": request}
    if len(sys.argv) != 3 or sys.argv[1] not in paths:
        raise SystemExit(__doc__)
    seconds = asyncio.run(paths[sys.argv[1]](int(sys.argv[2])))
    print(f"{sys.argv[1]}: {seconds * 1e6:.1f} µs each")


if __name__ == "__main__":
    main()
