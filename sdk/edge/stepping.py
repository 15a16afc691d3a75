"""Running an awaitable in place, with no task or timer unless it actually has to wait.

Most of the edge's awaits finish without ever suspending: a ``memory://``
send, an ASGI ``send`` on a socket whose buffer has room. Wrapping each in a
task (for a socket's writer) or a timeout (for the bus's patience) costs more
than the operation itself: a cancel scope and a timer per frame were a
quarter of the edge's CPU in an echo profile. So the edge steps the coroutine
once by hand (:func:`first_step`) and pays for a task or a timer only when it
did suspend (:func:`finish` then drives it on in the caller's task).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Coroutine
from types import CoroutineType
from typing import Any

DONE: Any = object()
"""What :func:`first_step` returns for a coroutine that finished without suspending."""


def coroutine_of(awaitable: Awaitable[None]) -> Coroutine[Any, Any, None]:
    """``awaitable`` as a coroutine that can be stepped by hand."""
    if type(awaitable) is CoroutineType or isinstance(awaitable, Coroutine):
        return awaitable
    return _awaiting(awaitable)


async def _awaiting(awaitable: Awaitable[None]) -> None:
    await awaitable


def first_step(coro: Coroutine[Any, Any, None]) -> Any:
    """Run ``coro`` until it first suspends: what it waits on, or :data:`DONE`.

    An exception the coroutine raises before suspending propagates, as it
    would from ``await``.
    """
    try:
        return coro.send(None)
    except StopIteration:
        return DONE


async def finish(coro: Coroutine[Any, Any, None], waiting_on: Any) -> None:
    """Drive ``coro``, suspended on ``waiting_on`` by :func:`first_step`, to its end.

    It runs in the calling task. A cancellation of that task reaches the
    coroutine the way a task's would: the future it waits on is cancelled (so
    whoever would complete it sees nobody waits any more) and the coroutine
    resumes to find the ``CancelledError`` where it awaited.
    """
    while True:
        try:
            if waiting_on is None:
                await asyncio.sleep(0)  # a bare yield: just give the loop a turn
            else:
                # Wait without taking the outcome: the coroutine sees it when resumed.
                await asyncio.wait([waiting_on])
        except asyncio.CancelledError as exc:
            # With the cancellation's message, as Task.cancel does: anyio tells its own
            # cancellations (a scope's timeout) from others by it.
            message = exc.args[0] if exc.args else None
            if waiting_on is None or not waiting_on.cancel(message):
                try:
                    waiting_on = coro.throw(exc)
                except StopIteration:
                    return  # it handled the cancellation and finished
                continue
        try:
            waiting_on = coro.send(None)
        except StopIteration:
            return
