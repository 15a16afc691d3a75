"""HTTP through the edge's uvicorn protocol in one process, without sockets.

    python bench/edge_protocol.py svcbus 5000   # CPU µs per request: the svcbus edge
    python bench/edge_protocol.py raw 5000      # the bare ASGI app of bench_edge.py

``bench_edge.py``'s two HTTP servers (the edge with its consumer in the
process, and the bare app) served by the edge's httptools protocol, as
``bench_edge.py`` serves both, with 48 kept-alive connections each sending
the benchmark's ``GET /api`` again as soon as its response is written. The
connections' transports are objects in the process: what is measured is
uvicorn's protocol, the app and asyncio, without the kernel's share. On a
shared machine count instructions instead; the difference of two runs takes
the start-up out:

    for n in 1000 6000; do
        PYTHONHASHSEED=0 valgrind --tool=callgrind python bench/edge_protocol.py svcbus $n
    done
    # (Ir(6000) - Ir(1000)) / 5000 = instructions per request

No timer expires during a run (keep-alive, header and request timeouts are
set far out): under valgrind a run is about 50 times slower, and timers
expiring at different points made two runs of the same code differ by 4 %.
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import uvicorn
from bench_edge import RawApp, svcbus_app
from uvicorn.lifespan.on import LifespanOn
from uvicorn.server import ServerState

from svcbus.edge import Limits, uvicorn_options

IN_FLIGHT = 48
WARM_UP = 1000
REQUEST = b"GET /api HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n\r\n"  # what bench_edge.py sends
FAR = 10.0**6
"""Seconds: timeouts that do not expire during a run."""


class Connection(asyncio.Transport):
    """One client connection: the protocol's transport, sending the next request on each response."""

    def __init__(self, run: Run) -> None:
        super().__init__()
        self.run = run
        self.protocol: Any = run.make_protocol()
        self.protocol.connection_made(self)

    def send_request(self) -> None:
        self.protocol.data_received(REQUEST)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        # The edge writes a response's head and body at once; the bare app's server
        # too (the edge's protocol); a response ends with its JSON body.
        if not bytes(data[:12]) == b"HTTP/1.1 200":
            raise RuntimeError(f"unexpected response: {bytes(data[:200])!r}")
        self.run.answered(self)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 40000)}.get(
            name, default
        )

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class Run:
    """``count`` requests over :data:`IN_FLIGHT` connections; :attr:`done` is set after the last."""

    def __init__(self, make_protocol: Any, count: int) -> None:
        self.make_protocol = make_protocol
        self.left_to_send = count
        self.left_to_answer = count
        self.done = asyncio.Event()
        self.connections = [Connection(self) for _ in range(IN_FLIGHT)]

    def start(self) -> None:
        for connection in self.connections:
            self.next(connection)

    def next(self, connection: Connection) -> None:
        if self.left_to_send:
            self.left_to_send -= 1
            asyncio.get_running_loop().call_soon(connection.send_request)

    def answered(self, connection: Connection) -> None:
        self.left_to_answer -= 1
        if not self.left_to_answer:
            self.done.set()
        self.next(connection)

    def close(self) -> None:
        for connection in self.connections:
            connection.protocol.connection_lost(None)


async def main(kind: str, count: int) -> float:
    """CPU seconds per request of ``count`` requests (after a warm-up)."""
    app: Any
    if kind == "svcbus":
        app = svcbus_app()
        app.limits = replace(app.limits, request_timeout=FAR, header_timeout=FAR)
        options = uvicorn_options(app, "httptools")
    else:
        app = RawApp()
        options = uvicorn_options(None, "httptools")
    config = uvicorn.Config(app, log_level="error", timeout_keep_alive=int(FAR), **options)
    config.load()
    if kind != "svcbus":
        # The bare app gets the edge protocol's default limits, its header timer far out.
        config._svcbus_limits = Limits(header_timeout=FAR)  # type: ignore[attr-defined]
    lifespan = LifespanOn(config)
    await lifespan.startup()
    if kind == "svcbus":
        from svcbus.startup_gc import tune_for_serving

        tune_for_serving()  # as svc edge, and bench_edge.py's server
    state = ServerState()

    def make_protocol() -> Any:
        return config.http_protocol_class(config=config, server_state=state, app_state={})

    for phase in (WARM_UP, count):
        run = Run(make_protocol, phase)
        started = time.process_time()
        run.start()
        await run.done.wait()
        seconds = time.process_time() - started
        run.close()
    await lifespan.shutdown()
    return seconds / count


if __name__ == "__main__":
    kind = sys.argv[1] if len(sys.argv) > 1 else "svcbus"
    if kind not in ("svcbus", "raw"):
        raise SystemExit("usage: edge_protocol.py svcbus|raw [COUNT]")
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 5000
    per_request = asyncio.run(main(kind, count))
    print(f"{kind}: {count} requests, {per_request * 1e6:.1f} µs CPU per request")
