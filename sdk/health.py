"""Health, readiness and metrics over HTTP for ``svc run`` and ``svc edge``.

A tiny HTTP/1.1 server on its own port (``--health-port``), in the process's
event loop, with no dependency beyond the standard library:

* ``GET /healthz``: 200 while the process's event loop answers (liveness).
* ``GET /readyz``: 200 when the layer is connected and the consumers are
  receiving, else 503 with the reason (readiness: take the process out of a
  load balancer during a broker outage, put it back after).
* ``GET /metrics``: Prometheus text exposition (see :mod:`svcbus.metrics`;
  needs the ``metrics`` extra, else 501 with the install hint).

It is a separate port, not a route of the edge, so probes never compete with
browser traffic for the edge's connection limit and never reach user routes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from .layer import Layer

log = logging.getLogger("svcbus.health")

ReadyCheck = Callable[[], Awaitable[str | None]]
"""Returns None when ready, else why not (one line)."""
MetricsRender = Callable[[], tuple[bytes, str]]
"""Returns the exposition body and its content type."""

PROBE_TIMEOUT = 1.0
"""Seconds a readiness probe may wait for the broker before calling it unreachable."""
PROBE_CACHE = 0.5
"""Seconds a probe result is reused: many probers must not mean many broker round trips."""
MAX_REQUEST_HEAD = 8192


class HealthServer:
    """Serve ``/healthz``, ``/readyz`` and ``/metrics`` on ``host:port`` (0: any free port)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        ready: ReadyCheck,
        metrics: MetricsRender | None = None,
        reuse_port: bool = False,
    ) -> None:
        self.host = host
        self.port = port
        self.ready = ready
        self.metrics = metrics
        self.reuse_port = reuse_port
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        """Start listening; returns the port (the real one when 0 was asked for).

        Raises ``OSError`` when the port cannot be bound.
        """
        self._server = await asyncio.start_server(
            self._serve, self.host, self.port, reuse_port=self.reuse_port or None
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def close(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> HealthServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.IncompleteReadError):
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
                status, body, content_type = await self._answer(head)
                writer.write(
                    f"HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\n"
                    f"content-length: {len(body)}\r\ncache-control: no-store\r\n"
                    "connection: close\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
        except (ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass  # a prober that went away or sent garbage: nothing to answer
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(self, head: bytes) -> tuple[str, bytes, str]:
        text = "text/plain; charset=utf-8"
        parts = head.split(b"\r\n", 1)[0].split()
        if len(parts) != 3 or parts[0] not in (b"GET", b"HEAD"):
            return "405 Method Not Allowed", b"GET /healthz, /readyz or /metrics\n", text
        path = parts[1].split(b"?", 1)[0]
        if path == b"/healthz":
            return "200 OK", b"ok\n", text
        if path == b"/readyz":
            try:
                reason = await self.ready()
            except Exception as exc:  # a broken check must say not ready, not crash
                log.exception("readiness check failed")
                reason = f"readiness check failed: {exc}"
            if reason is None:
                return "200 OK", b"ready\n", text
            return "503 Service Unavailable", f"not ready: {reason}\n".encode(), text
        if path == b"/metrics":
            if self.metrics is None:
                return (
                    "501 Not Implemented",
                    b"metrics need prometheus-client: pip install 'svcbus[metrics]'\n",
                    text,
                )
            body, content_type = self.metrics()
            return "200 OK", body, content_type
        return "404 Not Found", b"not found; try /healthz, /readyz or /metrics\n", text


class LayerProbe:
    """Whether a layer can reach its broker now (None) or why not; results cached briefly."""

    def __init__(self, layer: Layer) -> None:
        self.layer = layer
        self._checked = 0.0
        self._result: str | None = "not checked yet"

    async def __call__(self) -> str | None:
        now = time.monotonic()
        if now - self._checked >= PROBE_CACHE:
            try:
                with anyio.fail_after(PROBE_TIMEOUT):
                    self._result = await _probe(self.layer)
            except TimeoutError:
                self._result = (
                    f"the {self.layer.system} server did not answer within {PROBE_TIMEOUT}s"
                )
            self._checked = time.monotonic()
        return self._result


async def _probe(layer: Layer) -> str | None:
    system = layer.system
    if system == "nats":
        nc = layer.connection  # type: ignore[attr-defined]  # NatsLayer's, checked by system above
        if not nc.is_connected:
            return "the NATS connection is down (reconnecting)"
        # A round trip, not just the flag: a half-open TCP connection looks connected.
        await nc.flush(timeout=PROBE_TIMEOUT)
        return None
    if system == "redis":
        return await _probe_redis(layer)
    return None  # memory: in process, always there


async def _probe_redis(layer: Layer) -> str | None:
    # RedisLayer.probe() PINGs each server on a fresh connection: a server that
    # answers now, whatever the layer's long-lived connections noticed so far.
    probe = getattr(layer, "probe", None)
    return await probe() if probe is not None else None


def runtime_ready(runtime: Any) -> ReadyCheck:
    """The readiness check of a :class:`~svcbus.Runtime`: consumers receiving, layer connected."""
    probe: LayerProbe | None = None

    async def check() -> str | None:
        nonlocal probe
        if not runtime.started.is_set():
            return "the consumers are not subscribed yet"
        if runtime._stopping:
            return "shutting down"
        if probe is None:
            probe = LayerProbe(runtime.bus.layer)
        return await probe()

    return check


def edge_ready(edge: Any) -> ReadyCheck:
    """The readiness check of an :class:`~svcbus.edge.EdgeApp`: bus open, layer connected."""
    probe: LayerProbe | None = None

    async def check() -> str | None:
        nonlocal probe
        bus = edge._bus
        if bus is None:
            return "the edge's bus is not open (starting or stopping)"
        if probe is None or probe.layer is not bus.layer:
            probe = LayerProbe(bus.layer)
        return await probe()

    return check


class EdgeHealth:
    """ASGI wrapper that runs a :class:`HealthServer` for an edge during its lifespan.

    The server starts when the lifespan starts (so ``/healthz`` answers while the
    edge connects, and ``/readyz`` says why it is not ready yet) and stops when
    the lifespan ends. Every other scope goes straight to ``app``.
    """

    def __init__(
        self,
        app: Any,
        edge: Any,
        host: str,
        port: int,
        *,
        metrics: MetricsRender | None = None,
        reuse_port: bool = False,
        on_listening: Callable[[int], None] | None = None,
    ) -> None:
        self.app = app
        self.server = HealthServer(
            host, port, ready=edge_ready(edge), metrics=metrics, reuse_port=reuse_port
        )
        self.on_listening = on_listening

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        try:
            port = await self.server.start()
        except OSError as exc:
            await receive()  # lifespan.startup
            await send(
                {
                    "type": "lifespan.startup.failed",
                    "message": f"cannot listen on health port {self.server.port}: "
                    f"{exc.strerror or exc}; pick another --health-port",
                }
            )
            return
        if self.on_listening is not None:
            self.on_listening(port)
        try:
            await self.app(scope, receive, send)
        finally:
            await self.server.close()
