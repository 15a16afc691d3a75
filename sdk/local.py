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

* the handler runs as a worker task of its runtime, not as the requester:
  a requester that gives up (its timeout) does not cancel it, the runtime's
  stop drains it like any message in flight, and it sees the worker's
  context variables (a copy of the runtime's), not the requester's. The
  workers are long-lived, as the layer's are: under load one wake-up serves
  every request waiting, and no request pays for a task of its own. A
  request that finds a worker idle and nothing waiting starts at once, in
  the requester's call but in that worker's name (its task is the current
  task, its context the current context: what ``asyncio.current_task()``,
  anyio's cancel scopes and ``asyncio.timeout`` see), up to the handler's
  first suspension; the worker carries on from there. A handler that never
  suspends (most HTTP handlers) so costs no task switch, and its reply is
  there when the call returns;
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
from asyncio.tasks import _enter_task, _leave_task
from collections import deque
from collections.abc import Callable, Coroutine, Generator
from typing import TYPE_CHECKING, Any

from .context import Context
from .deadlines import DeadlineTimer
from .envelope import body_json
from .errors import ChannelFull, RequestTimeout

if TYPE_CHECKING:
    from .layer import LayerOptions

__all__ = ["Handler", "LocalConsumer", "LocalContext", "LocalReply", "LocalWorker"]


class LocalReply:
    """A consumer's reply to an in-process request: the value and its JSON."""

    __slots__ = ("body", "value")

    def __init__(self, value: Any, body: bytes) -> None:
        self.value = value
        """The reply as the consumer gave it, coerced to its reply contract."""
        self.body = body
        """``value`` encoded as JSON (what a reply envelope would carry)."""


class LocalWorker:
    """One worker task of a :class:`LocalConsumer`: the task and context its handlers run in."""

    __slots__ = ("context", "handler", "task", "wake_up")

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self.task = task
        self.context = contextvars.copy_context()
        """The worker's context variables (a copy of its task's): every handler it runs sees them."""
        self.handler: Handler | None = None
        """A handler started in this worker's name that suspended: the worker carries it on."""
        self.wake_up: asyncio.Future[None] | None = None


class Handler:
    """One handler's coroutine, driven step by step in a worker's context.

    Awaiting it in the worker's task runs the coroutine there, as if the
    worker had awaited it, from its first step or from where :meth:`start`
    left it: what the coroutine yields (the futures it waits for) goes to the
    worker's task, and a cancellation of that task goes into the coroutine.
    """

    __slots__ = ("context", "coro", "reply", "step", "thrown")

    def __init__(
        self,
        coro: Coroutine[Any, Any, None],
        context: contextvars.Context,
        reply: asyncio.Future[LocalReply],
    ) -> None:
        self.coro = coro
        self.context = context
        self.reply = reply
        self.step: Any = _UNSTARTED
        """What the coroutine last yielded, unseen by any task yet."""
        self.thrown: BaseException | None = None
        """A cancellation of the worker that came while it had not yet taken the handler on."""

    def start(self) -> bool:
        """Run the coroutine up to its first suspension; whether it finished."""
        try:
            self.step = self.context.run(self.coro.send, None)
        except StopIteration:
            return True
        return False

    def __await__(self) -> Generator[Any, None, None]:
        coro = self.coro
        run = self.context.run
        try:
            if self.thrown is not None:
                step = run(coro.throw, self.thrown)
            elif self.step is _UNSTARTED:
                step = run(coro.send, None)
            else:
                step = self.step
            while True:
                try:
                    yield step
                except GeneratorExit:
                    coro.close()
                    raise
                except BaseException as exc:  # the worker's task cancelled: the handler's too
                    step = run(coro.throw, exc)
                else:
                    step = run(coro.send, None)
        except StopIteration:
            return


_UNSTARTED = object()


class LocalConsumer:
    """One consumer a running runtime serves in process (see the module's docstring).

    Requests wait in :attr:`waiting`, oldest first; the runtime's local
    workers (one per unit of the consumer's concurrency) take them from there
    and wait in :meth:`wait_for_work` while there are none. A request that
    finds nothing waiting and a worker idle starts at once (:meth:`call`).
    """

    __slots__ = (
        "capacity",
        "channel",
        "deadlines",
        "idle",
        "limit",
        "message_type",
        "options",
        "pending",
        "serve",
        "waiting",
    )

    def __init__(
        self,
        channel: str,
        message_type: type,
        limit: int,
        options: LayerOptions,
        serve: Callable[[Any, asyncio.Future[LocalReply]], Coroutine[Any, Any, None]],
    ) -> None:
        self.channel = channel
        self.message_type = message_type
        """The consumer's message type: only messages of exactly this type are handed over."""
        self.limit = limit
        """Most in-process requests handled at once (the consumer's concurrency)."""
        self.options = options
        """The layer's options: its size limit and the channel's capacity apply here too."""
        self.capacity = options.capacity_for(channel)
        """Most requests waiting for a worker (the channel's capacity)."""
        self.serve = serve
        """The runtime's handling of one request: a coroutine that settles the reply's future."""
        self.pending = 0
        """Requests taken and not yet finished: waiting or being handled."""
        self.waiting: deque[tuple[Any, asyncio.Future[LocalReply]]] = deque()
        """Requests no worker has taken yet, oldest first."""
        self.idle: list[LocalWorker] = []
        """Workers waiting for a request."""
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
        the handler running, or to run; its reply is then dropped. A handler
        that a free worker starts here and that never suspends has settled
        the future when this returns.

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
        # As many as the workers handle at once, and the channel's capacity waiting.
        capacity = self.capacity
        if self.pending >= self.limit + capacity:
            raise ChannelFull(
                f"channel {self.channel!r} holds {capacity} requests (its capacity); "
                "its consumers are behind: retry later or raise channel_capacity"
            )
        loop = asyncio.get_running_loop()
        future: asyncio.Future[LocalReply] = loop.create_future()
        self.pending += 1
        if not self.waiting:
            worker = self._free_worker()
            if worker is not None:
                if self._start(loop, worker, message, future):
                    self.pending -= 1  # the handler is done with it
                    if future.done():
                        return future
                    # Unsettled only if the handler ended with a cancellation: as
                    # for a handler cancelled in its worker, the requester times out.
                if timeout is not None:
                    self.deadlines.add(loop, future, loop.time() + timeout)
                return future
        self.waiting.append((message, future))
        if timeout is not None:
            # A deadline on the consumer's timer, not a task watch per request (a
            # watch was 5 % of the instructions of an HTTP request through the edge).
            self.deadlines.add(loop, future, loop.time() + timeout)
        self.wake(1)
        return future

    def _free_worker(self) -> LocalWorker | None:
        """An idle worker to start a request in, taken off the idle list; None if none is."""
        idle = self.idle
        while idle:
            worker = idle.pop()  # the most recent: its memory is the warmest
            wake_up = worker.wake_up
            if wake_up is not None and not wake_up.done():  # not cancelled with its task
                return worker
        return None

    def _start(
        self,
        loop: asyncio.AbstractEventLoop,
        worker: LocalWorker,
        message: Any,
        reply: asyncio.Future[LocalReply],
    ) -> bool:
        """Run the request's handler as ``worker`` up to its first suspension; whether it finished.

        Most handlers of HTTP requests never suspend: answered here, in the
        requester's call, they cost no task switch and no wake-up. For that
        first step the worker's task is the current task (what
        ``asyncio.current_task()``, anyio's cancel scopes and ``asyncio.timeout``
        see) and its context is current, as if the worker ran it; a handler
        that suspends is carried on by the worker, woken for it.
        """
        handler = Handler(self.serve(message, reply), worker.context, reply)
        requester = asyncio.current_task(loop)
        if requester is not None:
            _leave_task(loop, requester)
        _enter_task(loop, worker.task)
        try:
            finished = handler.start()
        except asyncio.CancelledError:
            finished = True  # the handler raised it: it ends the request, not the requester
        except BaseException:  # KeyboardInterrupt, SystemExit: for the requester's loop to stop on
            self.pending -= 1
            if worker.wake_up is not None and not worker.wake_up.done():
                self.idle.append(worker)
            raise
        finally:
            _leave_task(loop, worker.task)
            if requester is not None:
                _enter_task(loop, requester)
        wake_up = worker.wake_up
        assert wake_up is not None
        if finished:
            if not wake_up.done():
                self.idle.append(worker)  # still idle
            # Else the handler cancelled the worker's task: it wakes up to that.
            return True
        worker.handler = handler
        if not wake_up.done():
            wake_up.set_result(None)
        # Else cancelled meanwhile: the worker hands the cancellation to the handler.
        return False

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
        """Wake up to ``count`` idle workers."""
        idle = self.idle
        while count and idle:
            wake_up = idle.pop().wake_up  # the most recent: its memory is the warmest
            if wake_up is not None and not wake_up.done():  # not cancelled with its worker
                wake_up.set_result(None)
                count -= 1

    async def wait_for_work(self, worker: LocalWorker) -> None:
        """Wait, as ``worker``, until a request may be waiting (or the runtime stops).

        A cancellation of the worker's task that came while a handler was being
        started in its name goes to that handler (see :meth:`_start`).
        """
        wake_up: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        worker.wake_up = wake_up
        self.idle.append(worker)
        try:
            await wake_up
        except asyncio.CancelledError as exc:
            if worker.handler is not None:
                worker.handler.thrown = exc
                return
            cancelling = getattr(worker.task, "cancelling", None)  # Python 3.11+
            if cancelling is not None and cancelling() == 0:
                # A handler started here cancelled its worker's task and took the
                # cancellation back (an anyio scope with a past deadline): not for us.
                return
            raise


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
