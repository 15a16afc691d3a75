"""Example chat service: WebSocket chat rooms behind the svcbus edge.

Run it with ``svc run services.example_chat --layer nats://localhost:4222`` and
serve the page and sockets with
``svc edge services.example_chat.routing:routes --layer nats://localhost:4222``.
"""

from .consumers import room_group, service
from .routing import routes

__all__ = ["room_group", "routes", "service"]
