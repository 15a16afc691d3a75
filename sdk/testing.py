"""Drive a service in tests, in-process, on a private memory layer.

::

    async with harness(stats_service) as h:
        await h.send("chat.posted", ChatPosted(room="a", text="hi"))
        await h.next_call("chat.posted")              # the consumer has run
        reply = await h.request("stats.get", StatsQuery(room="a"))
"""

from __future__ import annotations

import types
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import anyio

from .bus import DEFAULT_REQUEST_TIMEOUT, Bus
from .envelope import Envelope
from .errors import ConfigurationError
from .layer import Layer, LayerOptions
from .runtime import Runtime
from .service import Service


@dataclass(frozen=True)
class Call:
    """One message a consumer has finished handling."""

    channel: str
    message: Any
    """The validated body the consumer received."""
    result: Any
    """What the consumer returned."""
    envelope: Envelope[Any]


class Harness:
    """A running service plus a bus to talk to it; made by :func:`harness`."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.bus: Bus = runtime.bus
        self._calls: deque[Call] = deque()
        self._changed = anyio.Event()
        runtime.observers.append(self._observe)

    def _observe(self, channel: str, envelope: Envelope[Any], result: Any) -> None:
        self._calls.append(Call(channel, envelope.b, result, envelope))
        self._changed.set()
        self._changed = anyio.Event()

    async def send(self, channel: str, message: Any) -> str:
        """Send a message to the service."""
        return await self.bus.send(channel, message)

    async def request(
        self, channel: str, message: Any, *, timeout: float = DEFAULT_REQUEST_TIMEOUT
    ) -> Any:
        """Send a request and return the typed reply."""
        return await self.bus.request(channel, message, timeout=timeout)

    async def next_call(self, channel: str | None = None, *, timeout: float = 5.0) -> Call:
        """Wait until a consumer (of ``channel``, if given) has handled a message."""
        with anyio.fail_after(timeout):
            while True:
                for call in self._calls:
                    if channel is None or call.channel == channel:
                        self._calls.remove(call)
                        return call
                await self._changed.wait()

    @property
    def stats(self) -> Any:
        """The runtime's per-channel counters."""
        return self.runtime.stats


def as_service(target: Service | types.ModuleType) -> Service:
    """``target`` itself, or the service a module holds (as ``svc run module`` finds it).

    A module with exactly one :class:`Service` gives that service; otherwise its
    module-level ``@consumes`` functions make one.
    """
    if isinstance(target, Service):
        return target
    if isinstance(target, types.ModuleType):
        found = [v for v in vars(target).values() if isinstance(v, Service)]
        if len(found) == 1:
            return found[0]
        service = Service.from_module(target)
        if service.consumers:
            return service
        raise ConfigurationError(
            f"module {target.__name__!r} has no Service and no @consumes functions to test"
        )
    raise ConfigurationError(
        f"harness() takes a Service or a module of @consumes functions, not {type(target).__name__}"
    )


@asynccontextmanager
async def harness(
    service: Service | types.ModuleType,
    *,
    layer: Layer | None = None,
    concurrency: int = 1,
    **options: Any,
) -> AsyncIterator[Harness]:
    """Run ``service`` (or a module's consumers) on a fresh memory layer, or ``layer``."""
    service = as_service(service)
    if layer is None:
        from svcbus.layers.memory import MemoryHub, MemoryLayer

        layer = MemoryLayer(LayerOptions(**options), hub=MemoryHub())
    runtime = Runtime(service, layer, concurrency=concurrency, shutdown_timeout=2.0)
    async with runtime.running():
        yield Harness(runtime)


# In-process clients for edge routes (no server, no sockets): see svcbus.communicators.
from .communicators import (  # noqa: E402 - after the harness, which they do not need
    Connected,
    EdgeClient,
    HttpCommunicator,
    HttpResult,
    WebsocketClosed,
    WebsocketCommunicator,
)

__all__ = [
    "Call",
    "Connected",
    "EdgeClient",
    "Harness",
    "HttpCommunicator",
    "HttpResult",
    "WebsocketClosed",
    "WebsocketCommunicator",
    "as_service",
    "harness",
]
