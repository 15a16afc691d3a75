"""The edge's limits on uvicorn's httptools protocol (the C parser uvicorn prefers when installed).

Parsing with httptools costs the edge about half the CPU per HTTP request of
the pure-Python h11 protocol (see bench/README.md, "Edge"), so
:func:`svcbus.edge.uvicorn_options` takes it whenever httptools is
importable (the ``edge`` extra installs it on CPython). A separate module
because importing it needs httptools.
"""

from __future__ import annotations

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .protocol import ConnectionLimits


class EdgeHttpToolsProtocol(ConnectionLimits, HttpToolsProtocol):
    """uvicorn's httptools protocol with the edge's connection limit and header timeout."""

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self.hold_heads()

    def waiting_for_headers(self) -> bool:
        # The parser makes a request's cycle when its headers are complete.
        return self.cycle is None or self.cycle.response_complete
