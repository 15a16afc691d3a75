"""The edge ASGI application: WebSocket and HTTP traffic in, channel messages out.

``EdgeApp(routes, layer="nats://...")`` is a plain ASGI 3 app; serve it with
uvicorn (``svc edge`` does) or any ASGI server. It opens its bus in the
lifespan startup, or uses a :class:`~svcbus.Bus` you pass and manage.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Collection, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import anyio
from pydantic import ValidationError

from ..bus import Bus
from ..deadlines import Deadlines
from ..envelope import envelope_decoder, now_ms
from ..errors import ConfigurationError
from ..layer import Layer
from ..runtime import Runtime
from ..service import Service
from . import tracing
from .contracts import EdgeReply, Identity
from .delivery import Delivery
from .groups import Fanout
from .http import Receive, handle_request, secure_headers, send_response
from .http import Send as AsgiSend
from .logs import Quiet, redact_access_logs
from .replies import Decoded, ready
from .request import Request
from .routing import Routes
from .security import (
    DROPPED_HEADERS,
    Authenticate,
    AuthenticationFailed,
    Handshake,
    Limits,
    OriginPolicy,
    call_hook,
    parse_cookies,
    secret_query_params,
)
from .static import serve_static
from .websocket import handle_websocket

log = logging.getLogger("svcbus.edge")

REPLY_CACHE_SIZE = 128

_decode_reply = envelope_decoder(EdgeReply)
"""Reply bytes -> Envelope[EdgeReply], one validation pass (the model's validator itself)."""


@dataclass
class EdgeStats:
    """Counters of one edge process (read them for metrics and tests)."""

    connections: int = 0
    """WebSockets open now, handshakes in progress included (``Limits.max_connections``)."""
    in_flight: int = 0
    """HTTP requests being answered now (``Limits.max_requests``)."""
    accepted: int = 0
    rejected: int = 0
    """Connections a consumer closed before accepting, or that no consumer answered in time."""
    refused_origin: int = 0
    refused_auth: int = 0
    refused_busy: int = 0
    """WebSockets over ``max_connections`` and HTTP requests over ``max_requests``."""
    refused_bus: int = 0
    """Handshakes and HTTP requests answered 503 because the bus could not take them."""
    closed_rate: int = 0
    closed_size: int = 0
    closed_bad_frame: int = 0
    closed_bus: int = 0
    """Sockets closed with 1011/1013 because the bus did not take (or may have lost) a frame."""
    dropped: int = 0
    """Frames not delivered: given up after ``accept_timeout`` (its socket closed with 1013),
    doubted after a bus error (1011), or a group message a slow socket had no room for."""
    retried: int = 0
    """Sends tried again because the channel was full or the bus unreachable."""
    invalid_replies: int = 0
    http_requests: int = 0


class EdgeApp:
    """An ASGI app that puts WebSocket and HTTP traffic on the bus.

    ``layer`` is a layer URL or :class:`~svcbus.Layer` (the edge opens and
    closes a Bus on it in the ASGI lifespan) or an open :class:`~svcbus.Bus`
    that the caller manages. ``allowed_origins`` is None for same-host only,
    else a list of origins and ``https://*.example.com`` patterns.
    ``authenticate`` is a hook (see :func:`~svcbus.edge.bearer_token`); with
    ``require_identity`` anonymous requests are refused. ``services`` run in
    this process on the edge's bus (demos, ``memory://``, tests); on
    ``memory://`` the edge hands its HTTP requests to them directly
    (:mod:`svcbus.local`), unless ``in_process=False``.
    """

    def __init__(
        self,
        routes: Routes,
        *,
        layer: str | Layer | Bus = "memory://",
        limits: Limits | None = None,
        allowed_origins: Iterable[str] | None = None,
        allow_missing_origin: bool = True,
        authenticate: Authenticate | None = None,
        require_identity: bool = False,
        dropped_headers: Collection[str] = DROPPED_HEADERS,
        services: Iterable[Service] = (),
        in_process: bool = True,
    ) -> None:
        if not isinstance(routes, Routes):
            raise ConfigurationError(f"EdgeApp needs a Routes table, got {type(routes).__name__}")
        self.routes = routes
        self.layer = layer
        self.limits = limits or Limits()
        self.origins = OriginPolicy(allowed_origins, allow_missing=allow_missing_origin)
        self.authenticate = authenticate
        self.require_identity = require_identity
        self.secret_query_params = secret_query_params(authenticate)
        self.dropped_headers = frozenset(h.lower() for h in dropped_headers)
        self.services = list(services)
        self.in_process = in_process
        self.stats = EdgeStats()
        self.quiet = Quiet(log)
        """Rate-limited warnings: one per kind per 10 s, then a count."""
        self.delivery = Delivery(self)
        """Every send made for a client: retried, confirmed (see :mod:`svcbus.edge.delivery`)."""
        redact_access_logs(self.secret_query_params)
        self.fanout = Fanout(self)
        """This process's sockets per group (see :mod:`svcbus.edge.groups`)."""
        self.deadlines = Deadlines()
        """The patience of HTTP requests in flight, on one shared timer (:mod:`svcbus.deadlines`)."""
        self._bus: Bus | None = layer if isinstance(layer, Bus) else None
        self._reply_cache: dict[bytes, Decoded | None] = {}

    def __repr__(self) -> str:
        return f"<EdgeApp {self.routes!r}>"

    @property
    def bus(self) -> Bus:
        """The bus the edge talks on (open once the lifespan has started)."""
        if self._bus is None:
            raise ConfigurationError(
                "the edge's bus is not open: serve the app with lifespan enabled "
                "(uvicorn's default), or pass layer=<an open Bus>"
            )
        return self._bus

    # ASGI ----------------------------------------------------------------------------

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: AsgiSend) -> None:
        kind = scope["type"]
        if kind == "http":
            bus = self._bus
            if bus is not None and bus.tracer is not None:
                await tracing.serve_http(self, bus.tracer, scope, receive, send)
            else:
                await self._http(scope, receive, send)
        elif kind == "websocket":
            await handle_websocket(self, scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _http(self, scope: dict[str, Any], receive: Receive, send: AsgiSend) -> None:
        method = scope["method"]
        match = self.routes.match_http(method, scope["path"])
        if match.allowed:
            allow = ", ".join(match.allowed).encode()
            await send_response(
                send, 405, b"method not allowed\n", [(b"allow", allow)], head=method == "HEAD"
            )
            return
        if match.static is not None:
            # Every other response gets its security headers from send_response.
            await serve_static(match.static, match.subpath, scope, secure_headers(send))
            return
        if match.route is None:
            await send_response(send, 404, b"not found\n", head=method == "HEAD")
            return
        stats = self.stats
        if stats.in_flight >= self.limits.max_requests:
            stats.refused_busy += 1
            await send_response(
                send,
                503,
                b'{"error":"the edge is answering as many requests as it may; retry later"}',
                [(b"content-type", b"application/json"), (b"retry-after", b"1")],
            )
            return
        stats.http_requests += 1
        stats.in_flight += 1
        try:
            # A fresh dict for the message: the match's may be shared (see match_http).
            params = match.params or {}
            await handle_request(self, match.route, Request(self, scope, params), receive, send)
        finally:
            stats.in_flight -= 1

    async def _lifespan(self, receive: Receive, send: AsgiSend) -> None:
        await receive()  # lifespan.startup
        started = owned = False
        try:
            bus, owned = self._lifespan_bus()  # inside: a bad layer URL fails the startup
            async with _open(bus, owned), anyio.create_task_group() as services:
                self._bus = bus
                runtimes = [
                    Runtime(service, bus, in_process=self.in_process) for service in self.services
                ]
                for runtime in runtimes:
                    services.start_soon(partial(runtime.run, handle_signals=False))
                    await runtime.started.wait()
                refresher = anyio.CancelScope()
                every = bus.layer.options.group_expiry / 2
                services.start_soon(self._refresh_groups, every, refresher)
                await send({"type": "lifespan.startup.complete"})
                started = True
                await receive()  # lifespan.shutdown
                await self.fanout.close()
                await self.delivery.close()
                refresher.cancel()
                for runtime in runtimes:
                    runtime.stop()
        except Exception as exc:
            log.exception("edge lifespan failed")
            phase = "shutdown" if started else "startup"
            await send({"type": f"lifespan.{phase}.failed", "message": f"edge: {exc}"})
            return
        finally:
            if owned:
                self._bus = None
        await send({"type": "lifespan.shutdown.complete"})

    def _lifespan_bus(self) -> tuple[Bus, bool]:
        """The bus to serve on, and whether the edge owns it (opens and closes it)."""
        if self._bus is not None:
            return self._bus, False
        if isinstance(self.layer, Bus):  # given as layer= after construction (load_edge)
            return self.layer, False
        return Bus(self.layer), True

    async def _refresh_groups(self, every: float, scope: anyio.CancelScope) -> None:
        with scope:
            while True:
                await anyio.sleep(every)
                await self.fanout.refresh()

    # shared by HTTP and WebSocket -------------------------------------------------------

    async def identify(self, request: Request) -> Identity:
        """Run the authentication hook; raises :class:`AuthenticationFailed` to refuse."""
        if self.authenticate is None:
            identity = None
        else:
            headers: dict[str, str] = {}
            for key, value in request.scope["headers"]:
                name = key.decode("latin-1").lower()
                text = value.decode("latin-1")
                headers[name] = f"{headers[name]}, {text}" if name in headers else text
            handshake = Handshake(
                path=request.scope["path"],
                headers=headers,
                query=request.raw_query,
                client=request.client,
                cookies=parse_cookies(headers.get("cookie")),
            )
            try:
                identity = await call_hook(self.authenticate, handshake)
            except AuthenticationFailed:
                raise
            except Exception as exc:
                # A broken hook must fail closed, not let the request through.
                log.exception("authentication hook failed")
                raise AuthenticationFailed("authentication failed") from exc
        if identity is None and self.require_identity:
            raise AuthenticationFailed("authentication required")
        return identity

    def decode_reply(self, data: bytes) -> Decoded | None:
        """Decode a message from a reply channel, once per distinct message.

        A ``group_send`` hands the same bytes to every member's reply channel;
        the cache turns 10,000 decodes (and ASGI event dicts) into one.
        """
        cache = self._reply_cache
        found = cache.get(data, False)
        if found is not False:
            return found  # type: ignore[return-value]  # False is the miss sentinel, ruled out above
        decoded: Decoded | None
        try:
            envelope = _decode_reply(data)
        except ValidationError as exc:
            self.stats.invalid_replies += 1
            self.quiet.warning(
                "invalid-reply",
                "dropped a reply the edge cannot use (send Accept, Send, Close, Join or "
                "Leave from svcbus.edge): %s",
                exc.errors(include_url=False, include_input=False)[:3],
            )
            decoded = None
        else:
            decoded = (
                None if envelope.ex is not None and envelope.ex <= now_ms() else ready(envelope.b)
            )
        if len(cache) >= REPLY_CACHE_SIZE:
            cache.clear()
        cache[data] = decoded
        return decoded


@asynccontextmanager
async def _open(bus: Bus, owned: bool) -> AsyncIterator[Bus]:
    if not owned:
        yield bus
        return
    async with bus:
        yield bus
