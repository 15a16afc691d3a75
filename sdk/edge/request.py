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
        self.headers = sanitise_headers(scope["headers"], edge.limits, edge.dropped_headers)
        client = scope.get("client")
        self.client = f"{client[0]}:{client[1]}" if client else None

    def header(self, name: bytes) -> str | None:
        """A raw request header (first occurrence), credentials included."""
        for key, value in self.scope["headers"]:
            if key == name:
                text: str = value.decode("latin-1")
                return text
        return None
