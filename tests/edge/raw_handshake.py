"""A WebSocket opening handshake written by hand, for tests that must see the raw reply."""

from __future__ import annotations


def websocket_handshake(addr: str, path: str) -> bytes:
    """The bytes of a valid client handshake for ``ws://addr/path`` (RFC 6455's sample key)."""
    return (
        b"GET " + path.encode() + b" HTTP/1.1\r\nHost: " + addr.encode() + b"\r\n"
        b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
