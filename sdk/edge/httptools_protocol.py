"""The edge's limits on uvicorn's httptools protocol (the C parser uvicorn prefers when installed).

Parsing with httptools costs the edge about half the CPU per HTTP request of
the pure-Python h11 protocol (see bench/README.md, "Edge"), so
:func:`svcbus.edge.uvicorn_options` takes it whenever httptools is
importable (the ``edge`` extra installs it on CPython). A separate module
because importing it needs httptools. Its request cycles write the heads of
the edge's JSON responses as the edge rendered them (:class:`EdgeCycle`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Generator
from typing import Any

from uvicorn.protocols.http.httptools_impl import (
    HEADER_RE,
    HEADER_VALUE_RE,
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)
from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string

from .http import RENDERED_HEAD
from .protocol import ConnectionLimits

_FRAMING = frozenset({b"content-length", b"transfer-encoding", b"connection"})


class EdgeHttpToolsProtocol(ConnectionLimits, HttpToolsProtocol):
    """uvicorn's httptools protocol with the edge's connection limit and header timeout."""

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self.hold_heads()
        cycle = self.cycle
        if type(cycle) is RequestResponseCycle:
            # The request's task has not run yet: it finds the edge's send.
            cycle.__class__ = EdgeCycle

    def waiting_for_headers(self) -> bool:
        # The parser makes a request's cycle when its headers are complete.
        return self.cycle is None or self.cycle.response_complete


class EdgeCycle(RequestResponseCycle):
    """uvicorn's request/response cycle, writing the edge's own response heads as rendered.

    uvicorn checks every header of every response against two regular
    expressions and renders it again; the edge's JSON responses have the same
    headers each time (content type, security headers) but their length, so
    :func:`.http.send_response` renders them from its constants and the length
    and hands the bytes over in the start event (:data:`.http.RENDERED_HEAD`);
    those two headers' checks cost about 4 % of an edge request. Headers that
    changed on their way here (an ASGI middleware around the edge) go through
    uvicorn as they are now. What uvicorn does with a response head otherwise
    happens here too: its default headers (checked once per list: the date
    changes every second), the access log, ``connection: close`` when the
    connection is not kept alive.
    """

    def send(self, message: Any) -> Awaitable[None]:  # type: ignore[override]
        # Not a coroutine itself: uvicorn's send is the awaitable, without a frame around it.
        rendered = message.get(RENDERED_HEAD)
        if rendered is None or self.response_started or self.disconnected:
            return _uvicorn_send(self, message)
        known, defaults = _defaults
        if self.default_headers is not known:
            defaults = _render_defaults(self.default_headers)
        if defaults is None or self.flow.write_paused:
            return _uvicorn_send(self, message)
        block, length, headers = rendered
        if message["headers"] != headers:  # changed on the way (a middleware)
            return _uvicorn_send(self, message)
        status = message["status"]
        self.response_started = True
        self.waiting_for_100_continue = False
        if self.access_log and self.access_logger.isEnabledFor(logging.INFO):
            scope = self.scope
            self.access_logger.info(
                '%s - "%s %s HTTP/%s" %d',
                get_client_addr(scope),
                scope["method"],
                get_path_with_query_string(scope),
                scope["http_version"],
                status,
            )
        self.expected_content_length = length
        self.chunked_encoding = False
        close = b"" if self.keep_alive else b"connection: close\r\n"
        self.transport.write(STATUS_LINE[status] + defaults + block + close + b"\r\n")
        return _DONE


class _Done:
    """An awaitable that is done at once."""

    __slots__ = ()

    def __await__(self) -> Generator[Any, None, None]:
        return iter(())  # type: ignore[return-value]  # an iterator that ends at once


_DONE = _Done()
_uvicorn_send = RequestResponseCycle.send


_defaults: tuple[object, bytes | None] = (None, None)
"""The default headers list last rendered, and its rendering (see :func:`_render_defaults`)."""


def _render_defaults(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    """uvicorn's default headers (date, server, ``--header``) rendered; None to leave it to uvicorn.

    uvicorn's server makes a new list when the date changes: the rendering is
    kept in :data:`_defaults` for as long as the list is the same. None for
    headers uvicorn would reject or that change the response's framing.
    """
    global _defaults
    parts = []
    for name, value in headers:
        lower = name.lower()
        if HEADER_RE.search(name) or HEADER_VALUE_RE.search(value) or lower in _FRAMING:
            _defaults = (headers, None)
            return None
        parts.append(lower + b": " + value + b"\r\n")
    rendered = b"".join(parts)
    _defaults = (headers, rendered)
    return rendered
