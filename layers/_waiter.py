"""A reusable wake-up for the receive waiting on a channel, and batched wake-ups.

Why not a new ``asyncio.Future`` per wait: a group member waits again as soon as
it has a message, so thousands of them each make a future (and the iterator that
awaiting it makes) per message, and each wake-up schedules its own callback
handle. Two costs follow, both measured with ``bench/group_procs.py --gc``:

* the handles (and their argument tuples) are what drives the garbage
  collector's allocation counter during a fan-out: about 0.8 net per woken
  member with CPython 3.11's free lists, so a young collection every ~700
  wake-ups, and a full one (every object of the process, tens of milliseconds
  with 2,500 members waiting) every 11 collections of generation 1;
* every young collection promotes the waiting receives' objects.

A :class:`Waiter` belongs to one channel's buffer and is armed again for each
wait: awaiting it makes no iterator, and its wake-ups are collected by a
:class:`Wakeups` and run from one callback per event-loop turn, not one handle
each. It speaks the protocol asyncio's ``Task`` uses with future-like objects
(``_asyncio_future_blocking``, ``add_done_callback``, ``cancel``, ``result``),
the same protocol ``asyncio.isfuture`` recognises. It serves one waiting receive
at a time; a second receive on the same channel waits on a plain future.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Generator
from typing import Any, Protocol, TypeAlias

_IDLE = 0  # not in any queue of waiters
_ARMED = 1  # a receive waits on it
_WOKEN = 2  # set_result(): the receive may take a message
_CANCELLED = 3
_FAILED = 4  # set_exception(): the layer closed

_Callback = Callable[[Any], object]

Wait: TypeAlias = "Waiter | asyncio.Future[None]"
"""What a waiting receive awaits: its channel's reusable Waiter, or a future of its own."""


class _Queue(Protocol):
    """Where an owner queues its waiting receives (a deque of waiters)."""

    def append(self, waiter: Waiter, /) -> None: ...


class Wakeups:
    """Wake-ups of :class:`Waiter` objects, run together from one callback per loop turn.

    The queue is flat (callback, waiter, context, callback, ...) and each entry is
    dropped as it runs: a fan-out then allocates nothing per member before the
    members run, and each member's wake-up callback is freed before the next one
    runs. The garbage collector's allocation count stays level through a fan-out
    instead of climbing by one or two per member (a young collection per ~700).
    """

    __slots__ = ("_loop", "_pending")

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: list[Any] = []

    def add(self, callback: _Callback, waiter: Waiter, context: contextvars.Context | None) -> None:
        """Run ``callback(waiter)`` in ``context`` soon, with the others of this turn."""
        pending = self._pending
        if not pending:
            loop = waiter._loop
            assert loop is not None
            self._loop = loop
            loop.call_soon(self._run)
        pending += (callback, waiter, context)

    def _run(self) -> None:
        pending, self._pending = self._pending, []
        for i in range(0, len(pending), 3):
            callback, waiter, context = pending[i], pending[i + 1], pending[i + 2]
            pending[i] = pending[i + 1] = pending[i + 2] = None
            try:
                if context is None:
                    callback(waiter)
                else:
                    context.run(callback, waiter)
            except (SystemExit, KeyboardInterrupt):
                raise
            except BaseException as exc:  # as asyncio's Handle does: report, go on
                assert self._loop is not None
                self._loop.call_exception_handler(
                    {"message": "exception in a receive's wake-up", "exception": exc}
                )
            del callback, waiter, context  # freed before the next member runs


class Waiter(Generator[Any, None, None]):
    """A future-like wake-up one receive at a time awaits; armed again for each wait.

    Lifecycle: :meth:`arm` (the owner queues it), ``await`` it, then
    :meth:`set_result` / :meth:`cancel` / :meth:`set_exception` end the wait;
    resuming after a wake-up makes it idle again, and a wait that ends with an
    exception must call :meth:`reset` once the owner has dealt with it.
    """

    __slots__ = (
        "_asyncio_future_blocking",
        "_callback",
        "_context",
        "_error",
        "_loop",
        "_state",
        "_wakeups",
        "_yielded",
    )

    def __init__(self, wakeups: Wakeups) -> None:
        self._wakeups = wakeups
        self._loop: asyncio.AbstractEventLoop | None = None
        self._state = _IDLE
        self._yielded = False
        self._callback: _Callback | None = None
        self._context: contextvars.Context | None = None
        self._error: BaseException | None = None
        self._asyncio_future_blocking = False

    @property
    def idle(self) -> bool:
        """Whether no receive uses it (it may be armed)."""
        return self._state == _IDLE

    def arm(self) -> Waiter:
        """Start a wait (the owner queues this waiter and the receive awaits it)."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        self._state = _ARMED
        self._yielded = False
        return self

    def claim(self, waiters: _Queue) -> Waiter | None:
        """:meth:`arm` and queue at the end of ``waiters`` if idle; None if a receive uses it.

        One call where a group member re-arms once per message (``idle``, ``arm``
        and the append were three).
        """
        if self._state != _IDLE:
            return None
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        self._state = _ARMED
        self._yielded = False
        waiters.append(self)
        return self

    def reset(self) -> None:
        """The wait ended with an exception and its owner has handled it: idle again."""
        self._state = _IDLE
        self._yielded = False
        self._callback = self._context = self._error = None
        self._asyncio_future_blocking = False

    # waking ---------------------------------------------------------------------------

    def set_result(self, result: None) -> None:
        """Wake the waiting receive (asyncio.Future's name, so queues hold either)."""
        if self._state == _ARMED:
            self._state = _WOKEN
            self._schedule()

    def wake(self) -> bool:
        """Wake the waiting receive if it still waits; False if its wait already ended.

        :meth:`set_result` with the wake-up queued inline: a fan-out calls this
        once per member, where ``done``, ``set_result``, ``_schedule`` and
        ``Wakeups.add`` were four calls.
        """
        if self._state != _ARMED:
            return False
        self._state = _WOKEN
        callback = self._callback
        if callback is not None:  # else the Task's add_done_callback schedules it
            context = self._context
            self._callback = self._context = None
            wakeups = self._wakeups
            pending = wakeups._pending
            if not pending:
                loop = self._loop
                assert loop is not None
                wakeups._loop = loop
                loop.call_soon(wakeups._run)
            pending += (callback, self, context)
        return True

    def set_exception(self, exception: BaseException) -> None:
        """End the wait with ``exception`` (the layer closed)."""
        if self._state == _ARMED:
            self._state = _FAILED
            self._error = exception
            self._schedule()

    def cancel(self, msg: Any = None) -> bool:
        """Cancel the wait (``Task.cancel`` calls this); False if it already ended."""
        if self._state != _ARMED:
            return False
        self._state = _CANCELLED
        self._error = asyncio.CancelledError() if msg is None else asyncio.CancelledError(msg)
        self._schedule()
        return True

    def _schedule(self) -> None:
        callback = self._callback
        if callback is not None:
            context = self._context
            self._callback = self._context = None
            self._wakeups.add(callback, self, context)

    # what asyncio's Task asks of a future-like object ----------------------------------
    #
    # No ``get_loop`` method: the Task looks for one on every wait and, without it,
    # reads ``_loop`` (CPython's C Task, get_future_loop(), and the Python Task's
    # futures._get_loop() alike), which saves a Python call per wait.

    def add_done_callback(
        self, fn: _Callback, *, context: contextvars.Context | None = None
    ) -> None:
        """Called once per wait by the awaiting Task: how to wake it."""
        self._callback = fn
        self._context = context
        if self._state != _ARMED:
            self._schedule()

    def remove_done_callback(self, fn: _Callback) -> int:
        """Forget the wake-up callback ``fn``; how many were removed."""
        if self._callback is not None and self._callback == fn:
            self._callback = self._context = None
            return 1
        return 0

    def done(self) -> bool:
        """Whether the wait ended (woken, cancelled or failed)."""
        return self._state not in (_IDLE, _ARMED)

    def cancelled(self) -> bool:
        """Whether the wait was cancelled."""
        return self._state == _CANCELLED

    def exception(self) -> BaseException | None:
        """The exception the wait ended with (the layer closed), or None."""
        return self._error if self._state == _FAILED else None

    def result(self) -> None:
        """None once woken; raises what ended the wait otherwise."""
        if self._state in (_CANCELLED, _FAILED):
            assert self._error is not None
            raise self._error

    # awaiting: the iterator is the waiter itself ----------------------------------------

    def __await__(self) -> Generator[Any, None, None]:
        return self

    def __iter__(self) -> Generator[Any, None, None]:
        return self

    def send(self, value: None) -> Any:
        """What ``await`` asks of it (see :meth:`__next__`)."""
        return self.__next__()

    def __next__(self) -> Any:
        """First step: hand the Task this waiter to wait on; next: the wait is over.

        ``await`` steps an iterator with ``__next__`` when it sends None (always,
        here), so the work is done here, not in :meth:`send`.
        """
        if not self._yielded and self._state == _ARMED:
            self._yielded = True
            self._asyncio_future_blocking = True
            return self
        if self._state == _WOKEN:
            self._state = _IDLE
            self._yielded = False
            raise StopIteration
        if self._state in (_CANCELLED, _FAILED):
            self.result()
        raise RuntimeError("a receive's waiter was resumed before its wake-up")

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        """An exception thrown into the waiting receive is raised where it awaits."""
        if val is None:
            val = typ() if isinstance(typ, type) else typ
        if tb is not None:
            val = val.with_traceback(tb)
        raise val

    def __repr__(self) -> str:
        names = ("idle", "armed", "woken", "cancelled", "failed")
        return f"<Waiter {names[self._state]}>"
