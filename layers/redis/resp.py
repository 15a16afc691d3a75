"""The bits of RESP (the Redis protocol) the layer writes by hand, and its clock."""

from __future__ import annotations

import time


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


def now_ms() -> int:
    """Wall-clock milliseconds: list items carry deadlines every host compares (NTP)."""
    return int(time.time() * 1000)
