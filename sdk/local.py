"""Requests served in process: a consumer running beside its requester, without the layer's trip.

On ``memory://`` the edge and the consumers it asks often share one process
(the embedded default, ``svc demo``, an :class:`~svcbus.edge.EdgeApp` given
``services=``). Through the layer, such a request is encoded as an envelope,
queued, decoded and validated by the consumer, answered with a second envelope
on a reply channel and decoded once more: under load that round trip costs the
edge more CPU than uvicorn spends on the whole HTTP exchange. Here the memory
layer keeps, per channel, the consumer a running :class:`~svcbus.Runtime`
serves in process (:class:`LocalConsumer`), and a requester that qualifies
hands its message over directly.

What holds as through the layer:

* the handler runs as a worker task of its runtime, not as the requester's:
  a requester that gives up (its timeout) does not cancel it, the runtime's
  stop drains it like any message in flight, and it sees the worker's
  context variables (a copy of the runtime's), not the requester's. The
  workers are long-lived, as the layer's are: under load one wake-up serves
  every request waiting, and no request pays for a task of its own;
* started at once: when a worker is idle and nothing waits, the requester
  runs the handler's first step (up to its first suspension) itself, *as*
  that worker: ``asyncio.current_task()`` is the worker's task for that step
  (anyio's cancel scopes and task groups bind to it) and the step runs in the
  worker's context; a handler that suspends is carried on by that worker (as
  Python 3.12's eager tasks start). A handler that answers without
  suspending then costs no wake-up of a worker nor of the requester: 5 % of
  the instructions of an HTTP request through the edge (see bench/README.md);
* the request and the reply are each encoded once, so the layer's size limit
  (:class:`~svcbus.errors.MessageTooLarge`) and JSON-ability apply, and the
  reply is coerced to the consumer's reply contract as ``Bus.reply`` does;
* a failing handler is counted, logged, and reported to the requester as
  :class:`~svcbus.errors.RemoteError`; ``ConsumerStats`` count every request;
* order: a request is handed over only while nothing waits in the channel
  (otherwise it queues behind what is there), and in-process requests start
  in the order they came;
* at most the consumer's ``concurrency`` in-process requests run at once
  (one per worker); the next ones wait, up to the channel's capacity, then
  ``ChannelFull``. (The consumer's layer workers may meanwhile handle as many
  messages from the channel: in mixed traffic up to twice ``concurrency``
  handlers run.) Requests already waiting when the runtime stops are handled
  during its drain.

What differs, and why that is safe for the one caller, the edge: the consumer
receives the requester's message object itself, not a copy decoded from the
bytes. Only a requester that built the message for this request and never
touches it again may do that (the edge builds a fresh, checked ``HttpRequest``
or contract per HTTP request, and copies a dict identity its authentication
hook may share between requests), and only when the message is of the
consumer's exact type. ``ctx.reply_channel`` names a channel of the runtime
that nothing reads (``ctx.reply`` answers the requester directly). A traced bus always goes through the layer (the spans are the
envelope's), and so does every other layer: on NATS or Redis another process
may be the one to answer.
"""

from __future__ import annotations

import asyncio
import contextvars
import types
from collections import deque
from collections.abc import Callable, Coroutine, Generator
from typing import TYPE_CHECKING, Any

from .context import Context
from .deadlines import DeadlineTimer
from .envelope import body_json
from .errors import ChannelFull, RequestTimeout

if TYPE_CHECKING:
    from .layer import LayerOptions

__all__ = ["LocalConsumer", "LocalContext", "LocalReply", "LocalWorker"]

# What asyncio's own eager tasks (3.12) use to make a task the current one for a step.
_enter_task = getattr(asyncio.tasks, "_enter_task", None)
_leave_task = getattr(asyncio.tasks, "_leave_task", None)
_current_task = asyncio.current_task
CAN_START_NOW = _enter_task is not None and _leave_task is not None
"""Whether this Python lets a requester run a handler's first step as a worker's task."""

Carried = tuple[Coroutine[Any, Any, Any], Any, "asyncio.Future[LocalReply]", bool]
"""A request started at once that suspended: its handler's coroutine, what that yielded,
the reply's future, and whether the coroutine's result is the reply (else it answers itself)."""


class LocalWorker:
    """One of a runtime's workers of in-process requests: its task, its context, its wake-up.

    Made by the worker itself, in its task. A requester may run a handler's
    first step as this worker (:meth:`first_step`); the worker carries on a
    handler that suspended (:meth:`resume`).
    """

    __slots__ = ("context", "loop", "task", "wake_up")

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        task = asyncio.current_task(self.loop)
        assert task is not None, "a LocalWorker is made in its worker's task"
        self.task = task
        self.context = contextvars.copy_context()
        """The context every handler step started at once runs in (a copy of the worker's)."""
        self.wake_up: asyncio.Future[Carried | None] | None = None
        """While the worker waits for work: set to wake it, with a request to carry on or None."""

    def wake(self, carried: Carried | None) -> None:
        """Wake the worker from :meth:`LocalConsumer.wait_for_work`, with a request to carry on."""
        assert self.wake_up is not None, "only an idle worker is woken"
        self.wake_up.set_result(carried)

    def first_step(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Run ``coro`` up to its first suspension as this worker's task and in its context.

        Returns what it yielded to the event loop; raises ``StopIteration``
        (with its result) if it finished, or what it raised.
        """
        assert _enter_task is not None and _leave_task is not None
        loop = self.loop
        requester = _current_task(loop)
        if requester is not None:
            _leave_task(loop, requester)
        _enter_task(loop, self.task)
        try:
            return self.context.run(coro.send, None)
        finally:
            _leave_task(loop, self.task)
            if requester is not None:
                _enter_task(loop, requester)

    @types.coroutine
    def resume(self, coro: Coroutine[Any, Any, Any], yielded: Any) -> Generator[Any, Any, Any]:
        """Carry on ``coro`` after :meth:`first_step` yielded ``yielded``, in the worker's task.

        Awaited by the worker: it hands ``yielded`` to its task as if ``coro``
        were awaited there from the start, and runs each further step in the
        same context as the first. Its result is ``coro``'s.
        """
        context = self.context
        while True:
            try:
                sent = yield yielded
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # thrown into the worker's task: a cancellation
                try:
                    yielded = context.run(coro.throw, exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    yielded = context.run(coro.send, sent)
                except StopIteration as stop:
                    return stop.value


class LocalReply:
    """A consumer's reply to an in-process request: the value and its JSON."""

    __slots__ = ("body", "value")

    def __init__(self, value: Any, body: bytes) -> None:
        self.value = value
        """The reply as the consumer gave it, coerced to its reply contract."""
        self.body = body
        """``value`` encoded as JSON (what a reply envelope would carry)."""


class LocalConsumer:
    """One consumer a running runtime serves in process (see the module's docstring).

    Requests wait in :attr:`waiting`, oldest first; the runtime's local
    workers (one per unit of the consumer's concurrency) take them from there
    and wait in :meth:`wait_for_work` while there are none.
    """

    __slots__ = (
        "channel",
        "deadlines",
        "idle",
        "limit",
        "loop",
        "message_type",
        "most",
        "options",
        "pending",
        "start_now",
        "stopping",
        "waiting",
    )

    def __init__(self, channel: str, message_type: type, limit: int, options: LayerOptions) -> None:
        self.channel = channel
        self.loop = asyncio.get_running_loop()
        """The loop of the runtime that serves it, and of its requesters. Kept: on CPython
        3.11 each ``asyncio.get_running_loop()`` costs a ``getpid`` system call."""
        self.message_type = message_type
        """The consumer's message type: only messages of exactly this type are handed over."""
        self.limit = limit
        """Most in-process requests handled at once (the consumer's concurrency)."""
        self.options = options
        """The layer's options: its size limit and the channel's capacity apply here too."""
        self.most = limit + options.capacity_for(channel)
        """Most requests taken at once: as many as the workers handle, and the channel's
        capacity waiting."""
        self.pending = 0
        """Requests taken and not yet finished: waiting or being handled."""
        self.waiting: deque[tuple[Any, asyncio.Future[LocalReply]]] = deque()
        """Requests no worker has taken yet, oldest first."""
        self.idle: list[LocalWorker] = []
        """The workers waiting for a request, the one that waited least last."""
        self.start_now: Callable[[Any, LocalWorker, asyncio.Future[LocalReply]], bool] | None = None
        """Set by the runtime for a consumer whose requests an idle worker may start at once
        (see the module's docstring): ``start_now(message, worker, reply)`` runs the
        handler's first step as ``worker``, taken from :attr:`idle`; then either answers
        ``reply`` and returns False, or wakes ``worker`` to carry on and returns True."""
        self.stopping = False
        """Set by :meth:`stop`: the runtime stops; idle workers are woken to see it."""
        self.deadlines: DeadlineTimer[asyncio.Future[LocalReply]] = DeadlineTimer(self._timed_out)
        """Requests given a timeout and not yet finished (waiting or being handled),
        on one timer for all: past its deadline a request fails (:meth:`_timed_out`)."""

    def call(
        self, message: Any, timeout: float | None = None, size_bound: int | None = None
    ) -> asyncio.Future[LocalReply] | None:
        """Hand ``message`` over; its reply's future, or None if it must go through the layer.

        The caller must own ``message`` (see the module's docstring). Raises
        :class:`~svcbus.errors.MessageTooLarge` and
        :class:`~svcbus.errors.ChannelFull` as the layer's ``send`` would.
        With ``timeout``, the future fails with
        :class:`~svcbus.errors.RequestTimeout` if no reply came within that many
        seconds. Giving up on the future (that timeout, a cancellation) leaves
        the handler running, or to run; its reply is then dropped.

        ``size_bound``: an upper bound of the message's JSON size that the
        caller knows from its inputs, for a message that always encodes
        (strings, bytes, numbers). Within the layer's size limit the message
        is not encoded just to check it: for an HTTP request through the
        edge, that encoding was a twentieth of its cost.
        """
        if type(message) is not self.message_type:
            return None
        options = self.options
        if size_bound is None or size_bound > options.max_message_size:
            # Encoded once, as for the layer: JSON-able, not too large.
            size = len(body_json(message))
            if size > options.max_message_size:
                options.check_size(self.channel, size)
        if self.pending >= self.most:
            raise ChannelFull(
                f"channel {self.channel!r} holds {self.most - self.limit} requests (its "
                "capacity); its consumers are behind: retry later or raise channel_capacity"
            )
        loop = self.loop
        future: asyncio.Future[LocalReply] = loop.create_future()
        start_now = self.start_now
        if start_now is not None and self.idle and not self.waiting:
            worker = self.idle.pop()  # the most recent: its memory is the warmest
            try:
                carried_on = start_now(message, worker, future)
            except BaseException:
                self._rest(worker)  # the step raised past the runtime (a cancellation, say)
                raise
            if not carried_on:  # answered in its first step
                self._rest(worker)
                return future
        else:
            self.waiting.append((message, future))
            if self.idle:
                self.wake(1)
        self.pending += 1
        if timeout is not None:
            # A deadline on the consumer's timer, not a task watch per request (a
            # watch was 5 % of the instructions of an HTTP request through the edge).
            self.deadlines.add(loop, future, loop.time() + timeout)
        return future

    def _rest(self, worker: LocalWorker) -> None:
        """``worker``, taken from the idle for a request that ended in its first step, is idle again."""
        if self.stopping:
            worker.wake(None)  # the runtime stopped meanwhile: the worker ends
        else:
            self.idle.append(worker)

    def stop(self) -> None:
        """The runtime stops: wake every idle worker to see it, and start nothing more at once."""
        self.stopping = True
        self.start_now = None
        self.wake(len(self.idle))

    def finished(self, reply: asyncio.Future[LocalReply]) -> None:
        """A worker is done with the request of ``reply`` (answered or not)."""
        self.pending -= 1
        self.deadlines.discard(reply)

    def _timed_out(self, reply: asyncio.Future[LocalReply]) -> None:
        """Past its deadline: the requester stops waiting; the handler goes on (or still starts)."""
        if not reply.done():  # not answered, nor given up by a cancelled requester
            reply.set_exception(
                RequestTimeout(f"no reply on {self.channel!r} within the request's timeout")
            )

    def wake(self, count: int) -> None:
        """Wake up to ``count`` idle workers, the most recent first (its memory is the warmest)."""
        idle = self.idle
        while count and idle:
            idle.pop().wake(None)
            count -= 1

    async def wait_for_work(self, worker: LocalWorker) -> Carried | None:
        """Wait, as ``worker``, until a request may be waiting (or the runtime stops).

        Returns a request started at once that the worker is to carry on, if
        that is what woke it. A worker is in :attr:`idle` exactly while it can
        be woken: a cancelled one leaves it.
        """
        wake_up: asyncio.Future[Carried | None] = worker.loop.create_future()
        worker.wake_up = wake_up
        self.idle.append(worker)
        try:
            return await wake_up
        except BaseException:
            if worker in self.idle:  # cancelled while idle
                self.idle.remove(worker)
            raise
        finally:
            worker.wake_up = None


class LocalContext(Context):
    """A consumer's context for an in-process request: ``reply`` settles the requester's future."""

    __slots__ = ("_answer",)

    def __init__(self, *args: Any, answer: Callable[[Any], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._answer = answer

    async def reply(self, message: Any) -> None:
        """Reply to the current request now (the consumer's return value is then not sent).

        As through the layer, only the first reply reaches the requester.
        """
        self._answer(message)
        self._replied = True
