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

* the handler runs in a worker task of its runtime, not in the requester's:
  a requester that gives up (its timeout) does not cancel it, the runtime's
  stop drains it like any message in flight, and it sees the worker's
  context variables (a copy of the runtime's), not the requester's. The
  workers are long-lived, as the layer's are: under load one wake-up serves
  every request waiting, and no request pays for a task of its own;
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
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .context import Context
from .deadlines import DeadlineTimer
from .envelope import body_json
from .errors import ChannelFull, RequestTimeout

if TYPE_CHECKING:
    from .layer import LayerOptions

__all__ = ["LocalConsumer", "LocalContext", "LocalReply"]


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
        "message_type",
        "most",
        "options",
        "pending",
        "waiting",
    )

    def __init__(self, channel: str, message_type: type, limit: int, options: LayerOptions) -> None:
        self.channel = channel
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
        self.idle: list[asyncio.Future[None]] = []
        """The wake-ups of workers waiting for a request."""
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
        loop = asyncio.get_running_loop()
        future: asyncio.Future[LocalReply] = loop.create_future()
        self.pending += 1
        self.waiting.append((message, future))
        if timeout is not None:
            # A deadline on the consumer's timer, not a task watch per request (a
            # watch was 5 % of the instructions of an HTTP request through the edge).
            self.deadlines.add(loop, future, loop.time() + timeout)
        if self.idle:
            self.wake(1)
        return future

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
            wake_up = idle.pop()  # the most recent: its memory is the warmest
            if not wake_up.done():  # not cancelled with its worker
                wake_up.set_result(None)
                count -= 1

    async def wait_for_work(self) -> None:
        """Wait, as a worker, until a request may be waiting (or the runtime stops)."""
        wake_up: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.idle.append(wake_up)
        await wake_up


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
