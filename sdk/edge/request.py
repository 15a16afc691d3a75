"""One HTTP request or WebSocket handshake as the edge sees it, parsed once.

Its own module so that the HTTP and WebSocket handlers, which :mod:`.app`
imports, can use it without importing the app back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from .contracts import PathParams
from .security import sanitise_headers

if TYPE_CHECKING:
    from .app import EdgeApp

MAX_QUERY_PARAMS = 64

HEADER_MEMO = "svcbus.header_memo"
"""The scope key of a connection's :class:`HeaderMemo` (set by the edge's HTTP protocols)."""


class HeaderMemo:
    """A connection's last request headers and what the edge made of them.

    A client sends the same headers with each request of a kept-alive
    connection, as a rule; :class:`Request` compares the raw headers with the
    last ones and, when equal, copies the sanitised headers
    (:func:`.security.sanitise_headers`) instead of working them out again: for
    a browser's dozen headers 0.2 µs instead of 4 µs, about a fifth of the edge's
    own CPU time per request.
    """

    __slots__ = ("raw", "sanitised")

    def __init__(self) -> None:
        self.raw: list[tuple[bytes, bytes]] | None = None
        """A copy of the last raw headers (the scope's list is the request's)."""
        self.sanitised: dict[str, str] = {}
        """Those headers sanitised; copied out, never handed over itself."""


class Request:
    """One HTTP request or WebSocket handshake, parsed once: what may travel and what may not."""

    __slots__ = ("client", "headers", "params", "query", "raw_query", "scope")

    def __init__(self, edge: EdgeApp, scope: dict[str, Any], params: PathParams) -> None:
        self.scope = scope
        self.params = params
        query_string = scope.get("query_string")
        if query_string:
            raw = parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)
            cap = edge.limits.max_header_length
            self.raw_query = {k: v for k, v in raw[:MAX_QUERY_PARAMS]}
            # Credentials in the query (?access_token=) are for the auth hook only.
            secret = edge.secret_query_params
            self.query = {k[:cap]: v[:cap] for k, v in self.raw_query.items() if k not in secret}
        else:
            self.raw_query = {}
            self.query = {}  # its own: the message's, which a consumer may change
        raw = scope["headers"]
        memo: HeaderMemo | None = scope.get(HEADER_MEMO)
        if memo is None:  # another server than the edge's protocols
            self.headers = sanitise_headers(raw, edge.limits, edge.dropped_headers)
        elif raw == memo.raw:
            self.headers = memo.sanitised.copy()  # the message's own: a consumer may change it
        else:
            memo.sanitised = sanitise_headers(raw, edge.limits, edge.dropped_headers)
            memo.raw = list(raw)
            self.headers = memo.sanitised.copy()
        client = scope.get("client")
        self.client = f"{client[0]}:{client[1]}" if client else None

    def header(self, name: bytes) -> str | None:
        """A raw request header (first occurrence), credentials included."""
        for key, value in self.scope["headers"]:
            if key == name:
                text: str = value.decode("latin-1")
                return text
        return None
