"""The edge's routing table for the example system: chat sockets, stats and history over HTTP, the page.

Serve it with ``svc edge services.example_chat.routing:routes --layer nats://...``
(``svc demo`` serves it with both services in one process).
"""

from __future__ import annotations

from pathlib import Path

import contracts  # noqa: F401  (registers the contracts the HTTP routes validate against)
from svcbus.edge import HttpRoute, Routes, StaticRoute, WebSocketRoute

WEB = Path(__file__).parent / "web"
"""The page: plain HTML, CSS and JavaScript, no build step."""

# The edge validates HTTP input against the contract registered for the route's
# channel (StatsQuery, HistoryQuery): a bad room name is a 422 that never
# reaches the services.
routes = Routes(
    WebSocketRoute("/chat/{room}", "chat"),  # chat.connect / chat.receive / chat.disconnect
    HttpRoute("/api/stats/{room}", "stats.get"),
    HttpRoute("/api/history/{room}", "chat.history"),
    StaticRoute("/", WEB),
)
