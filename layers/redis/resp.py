"""The bits of RESP (the Redis protocol) the layer writes by hand, its clock, and its writes."""

from __future__ import annotations

import time
from typing import Any

from redis.asyncio.connection import AbstractConnection


def bulk(value: bytes) -> bytes:
    """One RESP bulk string."""
    return b"$%d\r\n%b\r\n" % (len(value), value)


def pack(*args: bytes | str | int) -> bytes:
    """One command in RESP (arguments as bulk strings)."""
    out = [b"*%d\r\n" % len(args)]
    for value in args:
        if isinstance(value, str):
            value = value.encode()
        elif isinstance(value, int):
            value = b"%d" % value
        out.append(bulk(value))
    return b"".join(out)


async def write(conn: AbstractConnection, command: bytes | list[bytes]) -> None:
    """Write packed commands to ``conn``: redis-py's ``send_packed_command``, minus a task.

    redis-py runs every write under ``asyncio.wait_for`` for its socket timeout: a
    task and two more event-loop turns per command (Python before 3.12), on every
    request and every reply. The timeout only matters when the socket cannot take
    the bytes, so while its buffer is empty they go straight to the transport;
    whatever the socket did not take at once, and a connection without an open
    stream, go through redis-py as before (with its timeout and errors).
    """
    writer: Any = getattr(conn, "_writer", None)
    transport = writer.transport if writer is not None else None
    if transport is None or transport.is_closing() or transport.get_write_buffer_size():
        await conn.send_packed_command(command, check_health=False)
        return
    if isinstance(command, bytes):
        transport.write(command)
    else:
        transport.writelines(command)
    if transport.get_write_buffer_size():
        # The socket took only part: wait for room (the stream's drain) as redis-py does.
        await conn.send_packed_command(b"", check_health=False)


def now_ms() -> int:
    """Wall-clock milliseconds: list items carry deadlines every host compares (NTP)."""
    return int(time.time() * 1000)
