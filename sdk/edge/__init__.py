"""The edge: WebSocket and HTTP traffic in, typed channel messages out (Daphne's role).

::

    from svcbus.edge import EdgeApp, HttpRoute, Routes, StaticRoute, WebSocketRoute

    routes = Routes(
        WebSocketRoute("/chat/{room}", "chat"),
        HttpRoute("/api/stats/{room}", "stats.get"),
        StaticRoute("/", "web"),
    )

Serve it with ``svc edge myapp.routing:routes --layer nats://localhost:4222``.
Consumers answer connections with :class:`Accept`, :class:`Send`,
:class:`Close`, :class:`Join` and :class:`Leave` on ``msg.reply_channel``.
See ``docs/edge.md``.
"""

from .app import EdgeApp, EdgeStats
from .contracts import (
    Accept,
    Close,
    EdgeReply,
    HttpRequest,
    HttpResponse,
    Identity,
    Join,
    Leave,
    Send,
    WebSocketConnect,
    WebSocketDisconnect,
    WebSocketReceive,
)
from .request import Request
from .routing import HttpRoute, PathPattern, Routes, StaticRoute, WebSocketRoute
from .security import (
    DROPPED_HEADERS,
    AuthenticationFailed,
    Handshake,
    Limits,
    OriginPolicy,
    bearer_token,
    cookie,
)
from .server import app_from_env, config, load_edge, uvicorn_options

__all__ = [
    "DROPPED_HEADERS",
    "Accept",
    "AuthenticationFailed",
    "Close",
    "EdgeApp",
    "EdgeReply",
    "EdgeStats",
    "Handshake",
    "HttpRequest",
    "HttpResponse",
    "HttpRoute",
    "Identity",
    "Join",
    "Leave",
    "Limits",
    "OriginPolicy",
    "PathPattern",
    "Request",
    "Routes",
    "Send",
    "StaticRoute",
    "WebSocketConnect",
    "WebSocketDisconnect",
    "WebSocketReceive",
    "WebSocketRoute",
    "app_from_env",
    "bearer_token",
    "config",
    "cookie",
    "load_edge",
    "uvicorn_options",
]
