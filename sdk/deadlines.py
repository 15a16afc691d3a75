"""Deadlines for requests in flight without a cancel scope and a timer each.

A request's wait for its reply (:meth:`svcbus.Bus.request`) and an edge HTTP
request's patience (:func:`svcbus.edge.http._request`) must be bounded, but
they almost never expire. An anyio cancel scope with a deadline costs about
40k instructions (its enter/exit and a timer armed and cancelled), as much as
the edge's own share of an HTTP request. Here the requests in flight share one
timer: :meth:`Deadlines.watch` records the task and its deadline (a set
entry), :meth:`Deadlines.release` removes it, and only a deadline that
actually passes costs anything: the timer cancels that task
(``Task.cancel``), and the watcher turns the ``CancelledError`` into its own
outcome (:meth:`Watch.expired`).

asyncio only (the edge is served on asyncio; ``Bus.request`` falls back to a
cancel scope elsewhere).
"""

from __future__ import annotations

import asyncio
import sys


class Watch:
    """One watched region of one task (see :meth:`Deadlines.watch`)."""

    __slots__ = ("cancelling", "deadline", "fired", "task")

    def __init__(self, task: asyncio.Task[object], deadline: float) -> None:
        self.task = task
        self.deadline = deadline
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
        self._watches: set[Watch] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._armed_for = 0.0

    def watch(self, patience: float) -> Watch:
        """Watch the current task for ``patience`` seconds, until :meth:`release`.

        If the deadline passes first, the task is cancelled where it waits;
        catch ``CancelledError`` and ask :meth:`Watch.expired`.
        """
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._reset(loop)
        task = asyncio.current_task(loop)
        assert task is not None
        watch = Watch(task, loop.time() + patience)
        self._watches.add(watch)
        if self._timer is None or watch.deadline < self._armed_for:
            self._arm(watch.deadline)
        return watch

    def release(self, watch: Watch) -> None:
        """The region ended (however): its deadline no longer applies."""
        self._watches.discard(watch)

    def _reset(self, loop: asyncio.AbstractEventLoop) -> None:
        # A new loop (tests, a restarted server): watches of the old one are moot.
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._watches.clear()
        self._loop = loop

    def _arm(self, when: float) -> None:
        assert self._loop is not None
        if self._timer is not None:
            self._timer.cancel()
        self._armed_for = when
        self._timer = self._loop.call_at(when, self._expire)

    def _expire(self) -> None:
        """The timer: cancel every task past its deadline, then wait for the next deadline."""
        self._timer = None
        assert self._loop is not None
        now = self._loop.time()
        watches = self._watches
        earliest = None
        for watch in list(watches):
            if watch.deadline <= now:
                watches.discard(watch)
                watch.fired = True
                watch.task.cancel()
            elif earliest is None or watch.deadline < earliest:
                earliest = watch.deadline
        if earliest is not None:
            self._arm(earliest)
