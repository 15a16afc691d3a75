"""Small pieces of the NATS protocol the layer's parts share: answers, errors, round trips.

Two nats-py private hooks are used, each with a public fallback; ``pyproject.toml``
pins the nats-py range they were checked against and ``tests/test_nats_layer.py``
fails when either moves:

* ``Client._flush_pending``: write the pending buffer before a PING (see
  :func:`round_trip`);
* ``Client._send_unsubscribe``: an UNSUB that does not also drop the subscription's
  queue, so messages already routed to us are still handled (see :func:`unsubscribe`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from collections.abc import Awaitable, Callable, Sized
from typing import Any

import nats.errors
from nats.aio.client import Client
from nats.aio.subscription import Subscription

from svcbus.errors import LayerError, MessageTooLarge
from svcbus.layers._waiter import Wait

OK = b'{"ok":true}'
"""A control request's positive answer."""
FULL = b"F"
"""A listener's answer to a sender: kept over capacity, store the next ones in the stream."""
STREAM_CONFIG_DIFFERS = 10058
CONSUMER_EXISTS = (10013, 10148)
STREAM_FULL_CODES = (10077, 10078)  # maximum messages / bytes exceeded


async def round_trip(nc: Client, timeout: float = 5.0) -> None:
    """Return once the server has processed everything written so far.

    nats-py 2.16's ``flush()`` writes its PING straight to the socket, ahead of
    commands still waiting in its pending buffer, so its PONG can come back before
    a just-made SUB reaches the server. Writing the pending buffer first (what the
    flusher task does) restores the order.
    """
    flush_pending = getattr(nc, "_flush_pending", None)
    if flush_pending is not None:
        await flush_pending(force_flush=True)
    else:  # without the private hook: a second PING orders after the first
        await nc.flush(timeout)  # type: ignore[arg-type]  # annotated int; takes seconds
    await nc.flush(timeout)  # type: ignore[arg-type]  # annotated int; takes seconds


async def unsubscribe(nc: Client, sub: Subscription) -> None:
    """Leave ``sub``'s subject at the server, then wait until the server processed it.

    Every message the server routed to us before it processed the UNSUB has then
    arrived and sits in the subscription's queue (``sub.drain()`` hands it on).
    """
    send_unsubscribe = getattr(nc, "_send_unsubscribe", None)
    sid = getattr(sub, "_id", None)
    if send_unsubscribe is not None and sid is not None and nc.is_connected:
        await send_unsubscribe(sid)
        await round_trip(nc, 2.0)


def too_large(target: str, message: bytes, nc: Client) -> MessageTooLarge:
    """The error for a message over the server's ``max_payload``."""
    return MessageTooLarge(
        f"message for {target!r} is {len(message)} bytes, more than the NATS server's "
        f"max_payload ({nc.max_payload}); lower max_message_size or raise max_payload in "
        "the server configuration"
    )


def api_error(data: bytes) -> dict[str, Any]:
    """The ``error`` object of a JetStream API answer."""
    with contextlib.suppress(ValueError, KeyError, TypeError):
        error = json.loads(data)["error"]
        if isinstance(error, dict):
            return error
    return {"description": data[:200].decode("utf-8", "replace")}


def connection_error(exc: BaseException) -> LayerError:
    """A :class:`LayerError` that says what a nats-py error means for the caller."""
    if isinstance(exc, nats.errors.OutboundBufferLimitError):
        return LayerError(
            "the NATS connection is down and its reconnect buffer is full: the message was "
            "not sent; retry once the server is back"
        )
    if isinstance(exc, nats.errors.ConnectionClosedError):
        return LayerError("the NATS connection is closed; open a new layer")
    return LayerError(f"NATS connection failed: {exc!r}")


def as_error(exc: BaseException) -> Exception:
    """``exc`` fit for a future that others await (cancellation becomes a LayerError)."""
    return exc if isinstance(exc, Exception) else LayerError("cancelled")


async def wait_turn(
    waiters: deque[Wait],
    items: Sized,
    prepare: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Queue up behind ``waiters`` until :func:`wake` says ``items`` has something.

    ``prepare`` runs once the waiter is queued (ask the server for messages). A
    cancelled wait never swallows a wake-up: one that came already is handed to
    the next waiter, so no message is left with nobody woken for it.
    """
    waiter = queue_waiter(waiters)
    try:
        if prepare is not None:
            await prepare()
        await waiter
    except BaseException:
        abandon(waiters, waiter, items)
        raise


def queue_waiter(waiters: deque[Wait]) -> asyncio.Future[None]:
    """A new waiter at the end of ``waiters``, for the caller to await (see :func:`wait_turn`).

    Awaiting it in the caller's own coroutine, rather than in ``wait_turn``'s, is
    one coroutine less alive per waiting receive (what a group member holds
    between messages; see ``ProcessChannels.arm``).
    """
    waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    waiters.append(waiter)
    return waiter


def abandon(waiters: deque[Wait], waiter: Wait, items: Sized) -> None:
    """The wait on ``waiter`` ended with an exception: leave the queue, passing on a wake-up."""
    if waiter.done() and not waiter.cancelled():
        if items:
            wake(waiters)  # hand our wake-up to the next receiver
    else:
        with contextlib.suppress(ValueError):
            waiters.remove(waiter)


def wake(waiters: deque[Wait]) -> None:
    """Wake the longest-waiting receiver that still waits."""
    while waiters:
        waiter = waiters.popleft()
        if not waiter.done():
            waiter.set_result(None)
            return
