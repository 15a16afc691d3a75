"""The embedded memory layer: every channel in one process, no server.

``memory://`` (and ``memory://NAME``) layers opened in one process share a hub
of that name, so an edge and several services in one process (``svc demo``)
talk to each other; each layer object still acts as its own "process" for
process-specific channels. Messages are stored as the immutable encoded bytes,
so isolation costs nothing beyond the encoding every layer needs anyway.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Collection, Mapping
from typing import Any
from urllib.parse import urlsplit

import anyio

from svcbus.durable import Delivery, Durability
from svcbus.errors import ChannelFull, ConfigurationError, InvalidChannelName, SvcbusError
from svcbus.layer import Layer, LayerOptions
from svcbus.layers._fanout import LocalGroups
from svcbus.local import LocalConsumer
from svcbus.names import validate_channel, validate_group
from svcbus.ratelog import RateLimitedLog

from .memory_durable import DurableQueue

log = logging.getLogger("svcbus.layers.memory")
_notes = RateLimitedLog(log, "reports of expired or dropped messages")

SWEEP_INTERVAL = 10.0
"""Longest time between two sweeps of expired messages and abandoned queues."""
YIELD_EVERY = 32
"""A loop of ``receive`` calls yields to the event loop once per this many messages."""
MAX_RECEIVABLE = 10_000
"""Channels a layer remembers as checked for receiving (process channels are unbounded)."""


class _FutureWaiter:
    """A one-shot wake-up on a bare asyncio future: what anyio.Event does, in ~200 bytes.

    An idle edge socket has one receiver waiting on its reply channel; with
    anyio.Event (which wraps an asyncio.Event and its deque) that costs ~1.5 KB
    per socket. Other backends (trio) use anyio.Event.
    """

    __slots__ = ("future",)

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.future: asyncio.Future[None] = loop.create_future()

    def set(self) -> None:
        if not self.future.done():
            self.future.set_result(None)

    def wait(self) -> asyncio.Future[None]:
        # The future itself, not a coroutine around it: one frame less per wait.
        return self.future


def _new_waiter() -> _FutureWaiter | anyio.Event:
    try:
        return _FutureWaiter(asyncio.get_running_loop())
    except RuntimeError:  # not on asyncio
        return anyio.Event()


class _Queue:
    """One channel's messages (deadline, bytes) and its waiting receivers, longest-waiting first."""

    __slots__ = ("items", "waiters")

    def __init__(self) -> None:
        self.items: deque[tuple[float, bytes]] = deque()
        # A list, not a deque: usually empty or one long (an edge socket's reader),
        # and an empty deque costs ~600 bytes, which 10,000 idle sockets notice.
        self.waiters: list[_FutureWaiter | anyio.Event] = []

    def put(self, item: tuple[float, bytes]) -> None:
        self.items.append(item)
        if self.waiters:
            # Wake one receiver per message, in arrival order: fair load balancing
            # between the receivers of a named channel, and no thundering herd.
            self.waiters.pop(0).set()

    def drop_expired(self, now: float) -> int:
        """Drop the messages whose deadline has passed; return how many."""
        items = self.items
        dropped = 0
        while items and items[0][0] <= now:
            items.popleft()
            dropped += 1
        return dropped


class MemoryHub:
    """The shared state behind all memory layers of one name."""

    def __init__(self) -> None:
        self.queues: dict[str, _Queue] = {}
        self.durable: dict[str, DurableQueue] = {}
        """Durable channels (memory_durable.py), apart from the at-most-once queues."""
        self.groups = LocalGroups()
        self.listeners: dict[str, Callable[[bytes], bool]] = {}
        """Process channels whose messages go straight to a callback (:meth:`MemoryLayer.listen`)."""
        self.message_listeners: dict[str, Callable[[Any], bool]] = {}
        """Listeners that also take messages unencoded (:meth:`MemoryLayer.deliver_locally`)."""
        self.local: dict[str, LocalConsumer] = {}
        """Named channels a runtime in this process serves in-process requests on (svcbus.local)."""
        self.next_sweep = 0.0
        self.expired = 0
        """Messages dropped unread after ``expiry`` (counted as lost)."""
        self.dropped = 0
        """Group messages a full member missed."""

    def count_expired(self, channel: str, count: int) -> None:
        """Count (and log, rate-limited) messages that expired unread on ``channel``."""
        if count:
            self.expired += count
            _notes.log(
                channel,
                "%d message(s) on %s expired unread (%d so far)",
                count,
                channel,
                self.expired,
            )

    def sweep(self, now: float) -> None:
        """Drop expired messages everywhere, and queues left empty with nobody waiting.

        Channels nobody will ever read (the reply channel of a closed socket, a
        request whose requester gave up) would otherwise keep their queue
        forever. Called from ``send`` at most every SWEEP_INTERVAL seconds, so
        its cost is independent of the message rate.
        """
        for channel, queue in list(self.queues.items()):
            self.count_expired(channel, queue.drop_expired(now))
            if not queue.items and not queue.waiters:
                del self.queues[channel]
        for durable in self.durable.values():
            durable.expire(now)

    def has_queued(self, channel: str) -> bool:
        """Whether messages wait in ``channel``: what is handed over in process must not overtake them."""
        queue = self.queues.get(channel)
        return queue is not None and bool(queue.items)

    def clear(self) -> None:
        """Drop every message and group (tests)."""
        self.queues.clear()
        self.durable.clear()
        self.groups.clear()
        self.listeners.clear()
        self.message_listeners.clear()
        self.local.clear()


_hubs: dict[str, MemoryHub] = {}


def hub(name: str = "") -> MemoryHub:
    """The process-wide hub called ``name`` (``memory://NAME``), created on first use."""
    found = _hubs.get(name)
    if found is None:
        found = _hubs[name] = MemoryHub()
    return found


class MemoryLayer(Layer):
    """In-process layer. ``MemoryLayer()`` gets a private hub; ``memory://`` URLs share one."""

    system = "memory"

    def __init__(
        self, options: LayerOptions | None = None, *, hub: MemoryHub | None = None
    ) -> None:
        super().__init__(options)
        self.hub = hub or MemoryHub()
        self._token = os.urandom(4).hex()
        self._closed = False
        self._receivable: set[str] = set()
        """Channels this layer may receive from, checked once (receive's fast path)."""
        self._unyielded = 0

    @classmethod
    def from_url(cls, url: str, options: LayerOptions, params: Mapping[str, Any]) -> MemoryLayer:
        if params:
            raise ConfigurationError(
                f"memory:// layer does not understand {', '.join(sorted(params))}"
            )
        name = urlsplit(url).netloc
        return cls(options, hub=hub(name))

    def _check_open(self) -> None:
        if self._closed:
            raise SvcbusError("this memory layer is closed; open a new one")

    async def send(self, channel: str, message: bytes) -> None:
        if self._closed:
            self._check_open()
        queues = self.hub.queues
        queue = queues.get(channel)
        if queue is None:
            # Every queue's name was checked when the queue was made (here, by a
            # receiver or by group_add): only a new one needs the check.
            validate_channel(channel)
        options = self.options
        if len(message) > options.max_message_size:
            options.check_size(channel, message)
        if self.hub.durable:
            durable = self.hub.durable.get(channel)
            if durable is not None:
                durable.put(message, options.capacity_for(channel), time.monotonic())
                return
        if self.hub.listeners and (queue is None or not queue.items):
            listener = self.hub.listeners.get(channel)
            if listener is not None and listener(message):
                return  # taken at once, in this task: no queue, no receiver to wake
        if queue is None:
            queue = queues[channel] = _Queue()
        capacity = options.capacity_for(channel)
        now = time.monotonic()
        if now >= self.hub.next_sweep:
            self.hub.next_sweep = now + min(SWEEP_INTERVAL, options.expiry)
            self.hub.sweep(now)
            queue = queues.setdefault(channel, queue)
        if len(queue.items) >= capacity:
            self.hub.count_expired(channel, queue.drop_expired(now))
            if len(queue.items) >= capacity:
                raise ChannelFull(
                    f"channel {channel!r} holds {capacity} messages (its capacity); "
                    "its consumers are behind: retry later or raise channel_capacity"
                )
        queue.put((now + self.options.expiry, message))

    def _check_receivable(self, channel: str) -> None:
        if channel in self._receivable:
            return
        validate_channel(channel)
        if "!" in channel and not channel.split("!", 1)[0].endswith("." + self._token):
            raise InvalidChannelName(
                f"channel {channel!r} belongs to another process; only the layer that made it "
                "with new_channel() can receive from it"
            )
        if len(self._receivable) >= MAX_RECEIVABLE:
            self._receivable.clear()
        self._receivable.add(channel)

    async def receive(self, channel: str) -> bytes:
        # A loop of receives must not starve other tasks (the channel's other
        # receivers, the sender): it yields once per YIELD_EVERY messages, first,
        # before anything is popped, so cancelling there loses nothing. Yielding
        # on every message cost a third of a receive loop's time.
        self._unyielded += 1
        if self._unyielded >= YIELD_EVERY:
            self._unyielded = 0
            await anyio.lowlevel.checkpoint()
        queue = self.hub.queues.get(channel)
        if queue is not None and channel in self._receivable and not self._closed:
            items = queue.items
            # The fast path: a checked channel whose oldest message is still fresh.
            if items and items[0][0] > time.monotonic():
                data = items.popleft()[1]
                if not items:
                    if not queue.waiters:
                        del self.hub.queues[channel]  # empty channels cost nothing
                elif queue.waiters:
                    queue.waiters.pop(0).set()  # more left: pass it on
                return data
        return (await self.receive_many(channel, 1))[0]

    async def receive_many(self, channel: str, limit: int) -> list[bytes]:
        if self._closed:
            self._check_open()
        if channel not in self._receivable:
            self._check_receivable(channel)
        queues = self.hub.queues
        while True:
            queue = queues.get(channel)
            if queue is None:
                queue = queues[channel] = _Queue()
            items = queue.items
            if items and items[0][0] <= time.monotonic():
                self.hub.count_expired(channel, queue.drop_expired(time.monotonic()))
            if items:
                return self._take(queue, channel, limit)
            ready = _new_waiter()
            queue.waiters.append(ready)
            try:
                # A cancelled wait has popped nothing, so it loses nothing.
                await ready.wait()
            except BaseException:
                if ready in queue.waiters:
                    queue.waiters.remove(ready)
                elif queue.items and queue.waiters:
                    # A sender popped us to take a message we will not take now:
                    # hand that wake-up to the next receiver.
                    queue.waiters.pop(0).set()
                raise
            finally:
                if not queue.items and not queue.waiters and queues.get(channel) is queue:
                    del queues[channel]

    def _take(self, queue: _Queue, channel: str, limit: int) -> list[bytes]:
        """Up to ``limit`` messages from ``queue`` (which holds some)."""
        items = queue.items
        n = min(limit, len(items))
        batch = [items.popleft()[1]] if n == 1 else [items.popleft()[1] for _ in range(n)]
        if not items and not queue.waiters:
            del self.hub.queues[channel]  # empty channels cost nothing
        elif items and queue.waiters:
            queue.waiters.pop(0).set()  # more left than we took: pass it on
        return batch

    def listen(
        self,
        channel: str,
        listener: Callable[[bytes], bool],
        message_listener: Callable[[Any], bool] | None = None,
    ) -> None:
        """Hand what is sent to ``channel`` (one of this layer's process channels) to ``listener``.

        While nothing is queued on the channel, ``send`` calls ``listener(message)``
        in the sender's task instead of queueing the message: True means the
        listener took it, False queues it as usual for the channel's receivers
        (and later messages queue behind it, so the order holds). The listener
        must not block or raise: it runs inside the sender's ``send``. The edge
        uses it to write a consumer's reply to its socket without waking the
        socket's reader task (:meth:`svcbus.edge.websocket.Connection.take`).

        ``message_listener``, if given, is offered the message object itself
        by :meth:`deliver_locally`, before anything is encoded, on the same
        terms; False sends it encoded as usual. It must take only what the
        encoded send would accept (the layer's size limit) and be done with
        the object when it returns (the sender may reuse it).
        """
        self._check_open()
        self._check_receivable(channel)  # only the layer that made it
        if "!" not in channel:
            raise InvalidChannelName(f"{channel!r}: only process channels can be listened to")
        self.hub.listeners[channel] = listener
        if message_listener is not None:
            self.hub.message_listeners[channel] = message_listener

    def unlisten(self, channel: str) -> None:
        """Stop :meth:`listen` on ``channel``: its messages queue again."""
        self.hub.listeners.pop(channel, None)
        self.hub.message_listeners.pop(channel, None)

    def deliver_locally(self, channel: str, message: Any) -> bool:
        # Only while nothing waits in the channel: a message must not overtake
        # earlier ones (group messages, replies the listener declined).
        listeners = self.hub.message_listeners
        if not listeners or self._closed:
            return False
        listener = listeners.get(channel)
        if listener is None or self.hub.has_queued(channel):
            return False
        return listener(message)

    def serve_locally(self, channel: str, consumer: LocalConsumer) -> bool:
        # Every receiver of a memory channel is in this process. The first runtime
        # to offer a channel serves its in-process requests; the others (and this
        # one, for everything else) still receive through the queue.
        self._check_open()
        return self.hub.local.setdefault(channel, consumer) is consumer

    def unserve_locally(self, channel: str, consumer: LocalConsumer) -> None:
        if self.hub.local.get(channel) is consumer:
            del self.hub.local[channel]

    def local_consumer(self, channel: str) -> LocalConsumer | None:
        hub = self.hub
        consumer = hub.local.get(channel)
        if consumer is None or self._closed:
            return None
        if hub.has_queued(channel):
            return None  # FIFO: this request must not overtake what waits
        return consumer

    async def declare_durable(self, channel: str, settings: Durability) -> None:
        self._check_open()
        validate_channel(channel)
        if "!" in channel:
            raise InvalidChannelName(f"{channel!r}: only named channels can be durable")
        settings = self.options.durability_for(channel, settings)  # the URL's, per channel
        queue = self.hub.durable.get(channel)
        if queue is None:
            self.hub.durable[channel] = DurableQueue(channel, settings, self.hub.count_expired)
        else:
            queue.settings = settings  # the last declaration wins, as on a server

    async def receive_durable(self, channel: str, limit: int) -> list[Delivery]:
        self._check_open()
        queue = self.hub.durable.get(channel)
        if queue is None:
            raise ConfigurationError(
                f"{channel!r} is not a durable channel here: declare_durable() it first"
            )
        return await queue.take(limit)

    async def new_channel(self, prefix: str = "specific") -> str:
        self._check_open()
        validate_group(prefix)
        return f"{prefix}.{self._token}!{os.urandom(6).hex()}"

    async def group_add(self, group: str, channel: str) -> None:
        self._check_open()
        validate_group(group)
        validate_channel(channel)
        self.hub.groups.add(group, channel, self.options.group_expiry, time.monotonic())

    async def group_discard(self, group: str, channel: str) -> None:
        self._check_open()
        validate_group(group)
        validate_channel(channel)
        self.hub.groups.discard(group, channel)

    async def group_send(self, group: str, message: bytes) -> None:
        self._check_open()
        validate_group(group)
        self.options.check_size(group, message)
        if group not in self.hub.groups:
            return
        self.hub.groups.deliver(group, message, self._put_members, time.monotonic())

    def _put_members(
        self, channels: Collection[str], message: bytes, now: float
    ) -> tuple[int, int]:
        """Store one group message in each member's queue; a full member misses it."""
        # One entry for every member: same bytes, same deadline, one tuple.
        entry = (now + self.options.expiry, message)
        hub = self.hub
        queues = hub.queues
        options = self.options
        fixed = None if options.channel_capacity else options.capacity
        delivered = dropped = 0
        for channel in channels:
            queue = queues.get(channel)
            if queue is None:
                queue = queues[channel] = _Queue()
            capacity = fixed if fixed is not None else options.capacity_for(channel)
            if len(queue.items) >= capacity:
                hub.count_expired(channel, queue.drop_expired(now))
                if len(queue.items) >= capacity:
                    # group_send never raises ChannelFull: this member misses it.
                    dropped += 1
                    hub.dropped += 1
                    _notes.log(
                        channel,
                        "a group message for %s was dropped: it is full (%d dropped so far)",
                        channel,
                        hub.dropped,
                    )
                    continue
            queue.put(entry)
            delivered += 1
        return delivered, dropped

    @property
    def lost(self) -> int:
        """Messages that expired in this layer's hub (shared by its ``memory://`` name): unread
        after ``expiry``, or durable ones after ``max_age``."""
        return self.hub.expired

    @property
    def dropped(self) -> int:
        """Group messages a full member of this hub missed."""
        return self.hub.dropped

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # Messages left on this layer's own process channels can never be read now.
        marker = f".{self._token}!"
        for channel in [c for c in self.hub.queues if marker in c]:
            del self.hub.queues[channel]
        for channel in [c for c in self.hub.listeners if marker in c]:
            self.unlisten(channel)
        self.hub.groups.discard_channels(lambda channel: marker in channel)
