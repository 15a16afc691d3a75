"""What a consumer's reply to a WebSocket becomes at the edge: a kind and a payload.

Both the connection (:mod:`.websocket`) and the group fan-out (:mod:`.groups`)
act on these; keeping them here lets each import it without importing the other.
"""

from __future__ import annotations

from typing import Any

from .contracts import Accept, Close, Join, Send

# Decoded replies, ready for the socket: (kind, payload). Kinds are small ints
# so the per-message dispatch in the pump is a cheap comparison.
SEND, CLOSE, ACCEPT, JOIN, LEAVE = range(5)
Decoded = tuple[int, Any]


def ready(reply: Any) -> Decoded:
    """A decoded reply turned into what a connection acts on (ASGI events built once)."""
    if isinstance(reply, Send):
        if reply.text is not None:
            return SEND, {"type": "websocket.send", "text": reply.text}
        return SEND, {"type": "websocket.send", "bytes": reply.binary}
    if isinstance(reply, Close):
        return CLOSE, {"type": "websocket.close", "code": reply.code, "reason": reply.reason}
    if isinstance(reply, Accept):
        return ACCEPT, reply
    if isinstance(reply, Join):
        return JOIN, tuple(reply.groups)
    return LEAVE, tuple(reply.groups)
