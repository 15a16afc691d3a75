"""Deadlines for requests in flight without a cancel scope and a timer each.

A request's wait for its reply (:meth:`svcbus.Bus.request`) and an edge HTTP
request's patience (:func:`svcbus.edge.http._request`) must be bounded, but
they almost never expire. An anyio cancel scope with a deadline costs about
40k instructions (its enter/exit and a timer armed and cancelled), as much as
the edge's own share of an HTTP request. Here the requests in flight share one
timer (:class:`DeadlineTimer`): :meth:`Deadlines.watch` records the task and
its deadline (a dict entry), :meth:`Deadlines.release` removes it, and only a
deadline that actually passes costs anything: the timer cancels that task
(``Task.cancel``), and the watcher turns the ``CancelledError`` into its own
outcome (:meth:`Watch.expired`). In-process requests (:mod:`svcbus.local`)
keep their reply deadlines on a :class:`DeadlineTimer` too.

asyncio only (the edge is served on asyncio; ``Bus.request`` falls back to a
cancel scope elsewhere).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class DeadlineTimer(Generic[K]):
    """Deadlines of many items on one event loop, kept by one timer.

    Adding and discarding an item are a dict entry each; only a deadline that
    passes costs more: the timer calls ``expired(item)`` for every item past
    its deadline (dropping it), then waits for the earliest of the rest. The
    edge's requests (:class:`Deadlines`) and in-process requests
    (:class:`svcbus.local.LocalConsumer`) keep their deadlines here.
    """

    __slots__ = ("_armed_for", "_expired", "_loop", "_timer", "pending")

    def __init__(self, expired: Callable[[K], None]) -> None:
        self._expired = expired
        self.pending: dict[K, float] = {}
        """The items whose deadline (loop time) has not passed, and has not been discarded."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._armed_for = 0.0

    def add(self, loop: asyncio.AbstractEventLoop, item: K, deadline: float) -> None:
        """Watch ``item`` until ``deadline`` (in ``loop.time()``), or until :meth:`discard`."""
        if loop is not self._loop:
            self._reset(loop)
        self.pending[item] = deadline
        if self._timer is None or deadline < self._armed_for:
            self._arm(deadline)

    def discard(self, item: K) -> None:
        """Stop watching ``item`` (its region ended, however)."""
        self.pending.pop(item, None)

    def _reset(self, loop: asyncio.AbstractEventLoop) -> None:
        # A new loop (tests, a restarted server): items of the old one are moot.
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.pending.clear()
        self._loop = loop

    def _arm(self, when: float) -> None:
        assert self._loop is not None
        if self._timer is not None:
            self._timer.cancel()
        self._armed_for = when
        self._timer = self._loop.call_at(when, self._fire)

    def _fire(self) -> None:
        """The timer: hand over every item past its deadline, then wait for the next deadline."""
        self._timer = None
        assert self._loop is not None
        now = self._loop.time()
        pending = self.pending
        earliest = None
        for item, deadline in list(pending.items()):
            if deadline <= now:
                del pending[item]
                self._expired(item)
            elif earliest is None or deadline < earliest:
                earliest = deadline
        if earliest is not None:
            self._arm(earliest)


class Watch:
    """One watched region of one task (see :meth:`Deadlines.watch`)."""

    __slots__ = ("cancelling", "fired", "task")

    def __init__(self, task: asyncio.Task[object]) -> None:
        self.task = task
        self.fired = False
        # 3.11+ counts a task's cancellations: ours must be taken back (uncancel).
        self.cancelling = 0
        if sys.version_info >= (3, 11):
            self.cancelling = task.cancelling()

    def expired(self) -> bool:
        """In an ``except CancelledError``: True if it is this deadline's doing alone.

        Then the cancellation is taken back (the task goes on); False means the
        task was cancelled from elsewhere too, and the error must propagate.
        """
        if not self.fired:
            return False
        if sys.version_info >= (3, 11):
            left: int = self.task.uncancel()
            return left <= self.cancelling
        return True


class Deadlines:
    """The deadlines of the regions being watched on one event loop, and one timer for all."""

    def __init__(self) -> None:
        self._timer: DeadlineTimer[Watch] = DeadlineTimer(self._cancel)

    def watch(self, patience: float) -> Watch:
        """Watch the current task for ``patience`` seconds, until :meth:`release`.

        If the deadline passes first, the task is cancelled where it waits;
        catch ``CancelledError`` and ask :meth:`Watch.expired`.
        """
        loop = asyncio.get_running_loop()
        task = asyncio.current_task(loop)
        assert task is not None
        watch = Watch(task)
        self._timer.add(loop, watch, loop.time() + patience)
        return watch

    def release(self, watch: Watch) -> None:
        """The region ended (however): its deadline no longer applies."""
        self._timer.discard(watch)

    @staticmethod
    def _cancel(watch: Watch) -> None:
        watch.fired = True
        watch.task.cancel()
