"""Serving the edge with uvicorn, with the settings the edge relies on."""

from __future__ import annotations

import importlib.util
import os
from typing import TYPE_CHECKING, Any

from ..bus import Bus
from ..errors import ConfigurationError
from ..layer import Layer, keep_options
from ..references import resolve
from .app import EdgeApp
from .routing import Routes

if TYPE_CHECKING:
    import uvicorn

ROUTES_ENV = "SVCBUS_EDGE_ROUTES"
LAYER_ENV = "SVCBUS_LAYER"
TRACE_ENV = "SVCBUS_TRACE"
EDGE_SERVICE_NAME = "svcbus-edge"
"""The ``service.name`` of a traced edge process."""


def load_edge(ref: str, layer: str | Layer | Bus | None = None) -> EdgeApp:
    """The edge ``ref`` (``module:attribute``) names: a Routes table, an EdgeApp or a factory.

    A Routes table gets an :class:`EdgeApp` with default security and limits;
    ``layer`` (if given) replaces the app's layer; a URL keeps the app's common
    options it does not set itself (:func:`svcbus.layer.keep_options`).
    """
    found: Any = resolve(ref, example="myapp.routing:routes")
    if callable(found) and not isinstance(found, EdgeApp | Routes):
        found = found()
    if isinstance(found, Routes):
        return EdgeApp(found, layer=layer if layer is not None else "memory://")
    if isinstance(found, EdgeApp):
        if isinstance(layer, str) and isinstance(found.layer, str):
            # The app's channel settings (capacity patterns...) stay; the address changes.
            found.layer = keep_options(layer, found.layer)
        elif layer is not None:
            found.layer = layer
        return found
    raise ConfigurationError(
        f"{ref!r} is {type(found).__name__}; it must be a svcbus.edge.Routes table or EdgeApp"
    )


def app_from_env() -> EdgeApp:
    """uvicorn factory for worker processes: the edge named by ``$SVCBUS_EDGE_ROUTES``."""
    ref = os.environ.get(ROUTES_ENV)
    if not ref:
        raise ConfigurationError(f"set {ROUTES_ENV}=module:attribute to name the edge's routes")
    trace = os.environ.get(TRACE_ENV, "off")
    if trace != "off":
        from ..telemetry import setup_tracing

        setup_tracing(trace, EDGE_SERVICE_NAME)
    app = load_edge(ref, os.environ.get(LAYER_ENV) or None)
    # A worker process serves this app and nothing else (as svc edge's one process does).
    from ..startup_gc import tune_for_serving

    tune_for_serving()
    return app


HTTP_PROTOCOLS = {
    "h11": "svcbus.edge.protocol:EdgeHttpProtocol",
    "httptools": "svcbus.edge.httptools_protocol:EdgeHttpToolsProtocol",
}
"""The edge's HTTP protocols for uvicorn, by parser (import strings, so that
``--workers`` can pass them to worker processes)."""


def http_parser(choice: str = "auto") -> str:
    """The HTTP parser ``choice`` names: ``auto`` takes httptools when it is installed, else h11.

    Raises :class:`~svcbus.errors.ConfigurationError` for an unknown name or a
    missing httptools.
    """
    if choice not in ("auto", *HTTP_PROTOCOLS):
        raise ConfigurationError(f"HTTP parser {choice!r}: use one of auto, h11, httptools")
    has_httptools = importlib.util.find_spec("httptools") is not None
    if choice == "httptools" and not has_httptools:
        raise ConfigurationError(
            "the httptools parser is not installed: pip install 'svcbus[edge]' (or use h11)"
        )
    if choice == "auto":
        return "httptools" if has_httptools else "h11"
    return choice


def uvicorn_options(edge: EdgeApp | None = None, http: str = "auto") -> dict[str, Any]:
    """uvicorn settings the edge needs: its protocols, no compression, frame cap.

    ``http`` picks the HTTP parser (:func:`http_parser`): httptools, when
    installed, costs about half of h11's CPU per request.
    """
    max_size = (edge.limits.max_message_size if edge is not None else 64 * 1024) + 16
    return {
        # uvicorn's protocol with the edge's connection limit and header timeout
        # (svcbus.edge.protocol).
        "http": HTTP_PROTOCOLS[http_parser(http)],
        # The sans-I/O protocol keeps no tasks per connection (timers instead): a
        # large part of why 10,000 idle sockets fit in little memory. The edge's
        # subclass charges pings to the frame budget and closes bad UTF-8 quietly.
        "ws": "svcbus.edge.protocol:EdgeWebSocketProtocol",
        # Compression costs ~64 KiB of zlib state per socket and a CPU pass per
        # frame; it also opens compression side channels. Off unless asked for.
        "ws_per_message_deflate": False,
        # The server refuses oversized frames itself (close 1009) before they are
        # buffered; a few bytes of slack let the edge count UTF-8 text exactly.
        "ws_max_size": max_size,
        "lifespan": "on",
        "backlog": 4096,
        "server_header": False,
    }


def config(
    edge: EdgeApp,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    parser: str = "auto",
    **overrides: Any,
) -> uvicorn.Config:
    """A ``uvicorn.Config`` serving ``edge`` with :func:`uvicorn_options`.

    ``parser`` is the HTTP parser of the edge's protocol (``auto``, ``h11``
    or ``httptools``); ``overrides`` are other ``uvicorn.Config`` settings
    (``http=`` replaces the edge's protocol, and with it its connection limit
    and header timeout).
    """
    import uvicorn

    options = uvicorn_options(edge, parser)
    return uvicorn.Config(edge, host=host, port=port, **{**options, **overrides})
