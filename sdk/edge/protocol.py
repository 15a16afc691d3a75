"""uvicorn protocols for the edge: limits that must hold before the ASGI app sees a request.

:func:`svcbus.edge.uvicorn_options` names these classes (as import strings,
so ``--workers`` can pass them to worker processes):

* :class:`EdgeHttpProtocol` (h11) and
  :class:`~svcbus.edge.httptools_protocol.EdgeHttpToolsProtocol` (httptools,
  the faster parser, taken when installed): a TCP connection of any kind counts
  against ``Limits.max_connections + Limits.max_requests`` (room for every
  socket and every request in flight) from the moment TCP hands it over,
  headers unsent; over that it gets a 503 at once. The app itself then
  holds WebSockets to ``max_connections`` and requests in flight to
  ``max_requests``. A client has
  ``Limits.header_timeout`` seconds to send a request's headers (the first,
  and each next one on a kept-alive connection); slow-header clients are
  cut off. A response's head and body leave in one write
  (:class:`HeadWithBody`).
* :class:`EdgeWebSocketProtocol` (websockets, sans-I/O): pings draw on the
  connection's frame budget like data frames (over it: close 1008); a text
  frame that is not UTF-8 closes with 1007 and one rate-limited log line.

The limits come from the :class:`~svcbus.edge.EdgeApp` being served (the
defaults of :class:`~svcbus.edge.Limits` under any other app).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import h11
from uvicorn.config import Config
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from .logs import Quiet
from .request import HEADER_MEMO, HeaderMemo
from .security import BUDGET_EXTENSION, FrameBudget, Limits

log = logging.getLogger("svcbus.edge")
quiet = Quiet(log)
"""Protocol-level warnings, one per kind per 10 s in the whole process."""

POLICY_VIOLATION = 1008
INVALID_DATA = 1007

_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"content-type: text/plain; charset=utf-8\r\n"
    b"x-content-type-options: nosniff\r\n"
    b"referrer-policy: no-referrer\r\n"
    b"retry-after: 1\r\n"
    b"connection: close\r\n"
    b"content-length: 47\r\n\r\n"
    b"the edge is at its connection limit; retry later"
)[:-1] + b"\n"
"""Written to a connection over the limit before anything is read from it."""


def limits_of(config: Config) -> Limits:
    """The Limits of the EdgeApp that ``config`` serves (through uvicorn's middleware)."""
    found: Limits | None = getattr(config, "_svcbus_limits", None)
    if found is not None:
        return found
    from .app import EdgeApp  # app imports routing, http...: not needed at module import

    app: Any = config.loaded_app
    for _ in range(8):  # uvicorn wraps the app in a few middlewares, each with .app
        if isinstance(app, EdgeApp) or app is None:
            break
        app = getattr(app, "app", None)
    limits = app.limits if isinstance(app, EdgeApp) else Limits()
    config._svcbus_limits = limits  # type: ignore[attr-defined]  # our mark on uvicorn's Config
    return limits


class HeadWithBody:
    """A response cycle's transport that sends a response's head together with its body.

    uvicorn writes a response's status line and headers, then its body: two
    writes, so two ``send`` system calls and two TCP segments for every
    response, which costs the server (and the client) more than some of the
    edge's own work. This transport holds the head until the first body write
    (or until the response completes or the connection closes, for a HEAD
    response or one that never sends its body) and writes both at once. An
    informational ``1xx`` (``100 Continue``) goes out at once: the client waits
    for it to send its body. A streaming response's head goes out with its
    first chunk.
    """

    __slots__ = ("head", "holding", "transport")

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.head: bytes | None = None
        self.holding = True
        """Whether the next write is a response's head (until it has gone out)."""

    def write(self, data: bytes) -> None:
        head = self.head
        if head is not None:
            self.head = None
            self.transport.write(head + data)
        elif self.holding and not data.startswith(b"HTTP/1.1 1"):
            self.holding = False
            self.head = data
        else:
            self.transport.write(data)

    def flush(self) -> None:
        """Write a held head now; the next response's head is held again."""
        head = self.head
        if head is not None:
            self.head = None
            self.transport.write(head)
        self.holding = True

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def close(self) -> None:
        self.flush()
        self.transport.close()


class ConnectionLimits:
    """The edge's limits on an HTTP protocol class: a connection cap and a header timeout.

    It also gives each request's cycle a :class:`HeadWithBody` to write through.
    Mixed into uvicorn's h11 protocol here and into its httptools protocol
    (:mod:`.httptools_protocol`); each names, in :meth:`waiting_for_headers`,
    how its parser tells that a connection has no complete request headers.
    """

    # What the mixin uses of uvicorn's protocols (both have these).
    connections: set[Any]
    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    client: tuple[str, int] | None

    def __init__(self, config: Config, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)  # type: ignore[call-arg]  # uvicorn's protocol
        self.limits = limits_of(config)
        self.memo = HeaderMemo()
        self.header_timer: asyncio.TimerHandle | None = None
        self.headers_due = 0.0
        """When the current wait for request headers ends (loop time)."""
        self.writer: HeadWithBody | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[misc]  # uvicorn's protocol
        # Counted from the start (uvicorn's own limit looks only at finished headers,
        # which a slow-header client never sends).
        cap = self.limits.max_connections + self.limits.max_requests
        if len(self.connections) > cap:
            quiet.warning(
                "over-limit",
                "refused a connection: %d open, the limit is %d "
                "(Limits.max_connections + Limits.max_requests)",
                len(self.connections) - 1,
                cap,
            )
            self.transport.write(_BUSY)
            self.transport.close()
            return
        self.writer = HeadWithBody(self.transport)
        self._headers_due_from_now()

    def hold_heads(self) -> None:
        """Give the newest request's cycle the transport that joins head and body.

        Its scope also gets the connection's :class:`HeaderMemo`.
        """
        cycle: Any = getattr(self, "cycle", None)
        if cycle is not None and cycle.transport is self.transport and self.writer is not None:
            cycle.transport = self.writer
            cycle.scope[HEADER_MEMO] = self.memo

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)  # type: ignore[misc]  # uvicorn's protocol

    def on_response_complete(self) -> None:
        if self.writer is not None:
            self.writer.flush()
        super().on_response_complete()  # type: ignore[misc]  # uvicorn's protocol
        if not self.transport.is_closing():
            self._headers_due_from_now()  # the next request's headers get the same time

    def handle_websocket_upgrade(self, *args: Any) -> None:
        self._disarm_header_timer()
        super().handle_websocket_upgrade(*args)  # type: ignore[misc]  # uvicorn's protocol

    def waiting_for_headers(self) -> bool:
        """Whether the connection has no complete request headers (the current request's)."""
        raise NotImplementedError

    def _headers_due_from_now(self) -> None:
        """Give the connection's next request headers ``Limits.header_timeout`` from now.

        Only the deadline moves: a timer armed and cancelled per request cost an
        edge request about 7 % of its instructions (the loop's heap of cancelled
        timers). The connection's one timer, when it fires, finds the new
        deadline and waits on (:meth:`_header_timeout`).
        """
        self.headers_due = self.loop.time() + self.limits.header_timeout
        if self.header_timer is None:
            self._wait_for_headers()

    def _wait_for_headers(self) -> None:
        self.header_timer = self.loop.call_at(self.headers_due, self._header_timeout)

    def _disarm_header_timer(self) -> None:
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None

    def _header_timeout(self) -> None:
        self.header_timer = None
        serving: object = self.transport.get_protocol()  # a WebSocket's protocol after an upgrade
        if self.transport.is_closing() or serving is not self:
            return
        if not self.waiting_for_headers():
            return  # a request is being answered: its response's end sets a new deadline
        if self.loop.time() < self.headers_due:
            self._wait_for_headers()  # a response ended since: the time counts from there
        else:
            quiet.log(
                logging.INFO,
                "header-timeout",
                "closed a connection from %s: no complete request headers within %gs",
                f"{self.client[0]}:{self.client[1]}" if self.client else "?",
                self.limits.header_timeout,
            )
            self.transport.close()


class EdgeHttpProtocol(ConnectionLimits, H11Protocol):
    """uvicorn's h11 protocol (pure Python) with the edge's connection limit and header timeout."""

    def handle_events(self) -> None:
        super().handle_events()
        self.hold_heads()

    def waiting_for_headers(self) -> bool:
        return self.conn.their_state in (h11.IDLE, h11.DONE) and (
            self.cycle is None or self.cycle.response_complete
        )


class EdgeWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol, with pings on the frame budget and quiet 1007s."""

    def __init__(self, config: Config, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self.budget = FrameBudget()

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None:
            scope["extensions"][BUDGET_EXTENSION] = self.budget

    def handle_ping(self) -> None:
        if self.close_sent or self.budget.take():
            super().handle_ping()
            return
        quiet.log(
            logging.INFO,
            "ping-flood",
            "closed WebSocket %s with 1008: pings over the frame rate",
            getattr(self, "scope", {}).get("path", "?"),
        )
        self._close(POLICY_VIOLATION, "rate limit")

    def send_receive_event_to_app(self) -> None:
        if self.curr_msg_data_type == "text" and not self.close_sent:
            data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
            if not data.isascii():
                try:
                    data.decode()
                except UnicodeDecodeError:
                    # A client's mistake, not a server error: one line, no traceback.
                    self.frames = []
                    quiet.log(
                        logging.INFO,
                        "bad-utf8",
                        "closed WebSocket %s with 1007: a text frame is not valid UTF-8",
                        getattr(self, "scope", {}).get("path", "?"),
                    )
                    self._close(INVALID_DATA, "invalid UTF-8")
                    return
        super().send_receive_event_to_app()

    def _close(self, code: int, reason: str) -> None:
        """Close from the server side: a close frame, the app told, reading resumed for the reply."""
        if self.close_sent or self.transport.is_closing():
            return
        self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        self.conn.send_close(code, reason)
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()
        self.close_timer = self.loop.call_later(self.close_timeout, self.transport.close)
