"""An edge app that sets its own channel capacities (for tests/edge/test_edge_layer_url.py)."""

from svcbus.edge import EdgeApp, Routes, WebSocketRoute

edge = EdgeApp(
    Routes(WebSocketRoute("/ws", "cap")),
    layer="memory://app-own?channel_capacity=cap.*:7&expiry=30",
)
