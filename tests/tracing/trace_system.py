"""Helpers of the tracing tests: a private tracer provider, and the example system behind an edge.

Every test records spans with its own ``TracerProvider`` and an in-memory
exporter, handed to each Bus as ``tracer=``: the global provider stays unset,
so the rest of the suite runs untraced. The edge runs under uvicorn in the
test's own event loop; the chat and stats services each get a Bus of their
own, as if they were separate processes.
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import uvicorn
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import Sampler

from svcbus import Bus, Context, Runtime, Service
from svcbus.edge import EdgeApp, HttpRoute, Routes, config

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
"""What a traced browser (or a proxy in front of the edge) sends."""
CALLER_TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C
CALLER_SPAN_ID = 0xB7AD6B7169203331


class Spans:
    """The spans a test recorded, with lookups that wait for asynchronous ones."""

    def __init__(self, sampler: Sampler | None = None) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider(sampler=sampler)
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer = self.provider.get_tracer("svcbus")

    def finished(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.finished() if s.name == name]

    async def wait_for(
        self, name: str, where: Callable[[ReadableSpan], bool] = lambda s: True
    ) -> ReadableSpan:
        """The first finished span called ``name`` that satisfies ``where`` (waits up to 5 s)."""
        with anyio.fail_after(5):
            while True:
                for span in self.named(name):
                    if where(span):
                        return span
                await anyio.sleep(0.01)


boom = Service("ttrace-boom")


@boom.consumes("ttrace.boom")
async def explode(message: Any, ctx: Context) -> None:
    """A consumer that always fails (ERROR status on its span, 500 at the edge)."""
    raise RuntimeError("the stats database is on fire")


def example_routes() -> Routes:
    """The example system's routes plus ``GET /api/boom``, whose consumer fails."""
    from services import example_chat

    routes = example_chat.routes
    return Routes(*routes.websocket, *routes.http, HttpRoute("/api/boom", "ttrace.boom"))


@asynccontextmanager
async def example_system(url: str, tracer: Any) -> AsyncIterator[str]:
    """Edge + chat + stats (+ boom) on ``url``, all traced by ``tracer``; yields ``host:port``."""
    from services import example_chat, example_stats

    async with (
        Bus(url, tracer=tracer) as edge_bus,
        Bus(url, tracer=tracer) as chat_bus,
        Bus(url, tracer=tracer) as stats_bus,
        Runtime(example_chat.service, chat_bus).running(),
        Runtime(example_stats.service, stats_bus).running(),
        Runtime(boom, stats_bus).running(),
        serve_edge(EdgeApp(example_routes(), layer=edge_bus)) as address,
    ):
        yield address


@asynccontextmanager
async def serve_edge(app: EdgeApp) -> AsyncIterator[str]:
    """Serve ``app`` with uvicorn in this event loop; yields ``host:port``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        config(app, port=port, log_level="warning", timeout_graceful_shutdown=2)
    )
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    try:
        with anyio.fail_after(5):
            while not server.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.01)
        yield f"127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


def room() -> str:
    """A room of this test's own (the example services keep module-level state)."""
    return f"r{uuid.uuid4().hex[:8]}"


def isolated(url: str) -> str:
    """A NATS URL with a subject prefix of its own."""
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}prefix=t{uuid.uuid4().hex[:10]}"
