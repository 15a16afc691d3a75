"""Process-specific channels: ``inbox.k3f9a1!c7d2`` on core NATS, one subscription per head.

The owner subscribes once per head (``R.p.inbox.k3f9a1.>``) and demultiplexes into
bounded per-channel buffers (:class:`Local`). Group messages for its members land in
the same buffers, so a process channel is one queue with one capacity.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable, Collection

import nats.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from svcbus.errors import InvalidChannelName
from svcbus.layer import LayerOptions
from svcbus.layers._waiter import Wait, Waiter, Wakeups
from svcbus.names import validate_group

from .config import Subjects
from .connection import Connection
from .losses import Losses
from .wire import abandon, as_error, connection_error, queue_waiter, round_trip, too_large, wake


class Local:
    """A process channel's buffer: (deadline, message) pairs and waiting receivers."""

    __slots__ = ("items", "member", "signal", "waiters")

    def __init__(self, wakeups: Wakeups) -> None:
        self.items: deque[tuple[float, bytes]] = deque()
        self.waiters: deque[Wait] = deque()
        self.signal = Waiter(wakeups)  # what a single receive waits on (one at a time)
        # Set once a group message arrived here: a group member receives again at
        # once, so its emptied buffer is kept (until the sweep) instead of made anew.
        self.member = False


class ProcessChannels:
    """This process's own channels, and sends to other processes' channels."""

    def __init__(
        self, conn: Connection, options: LayerOptions, subjects: Subjects, losses: Losses
    ) -> None:
        self._conn = conn
        self._options = options
        self._subjects = subjects
        self._losses = losses
        self.locals: dict[str, Local] = {}
        self._wakeups = Wakeups()
        self.heads: dict[str, Subscription] = {}
        self._head_ready: dict[str, asyncio.Future[None]] = {}
        self.dropped_reply = ""
        """Where owners report our messages they dropped (set once connected)."""
        self.dropped = 0
        """Messages dropped because a process channel's buffer was at capacity."""

    def owns(self, channel: str) -> bool:
        """Whether ``channel`` is one of this process's channels."""
        return channel.partition("!")[0].endswith("." + self._subjects.token)

    async def new_channel(self, prefix: str) -> str:
        """A new channel of this process; its head is subscribed before the name is out."""
        validate_group(prefix)
        head = f"{prefix}.{self._subjects.token}"
        if head not in self.heads:
            ready = self._head_ready.get(head)
            if ready is None:
                await self._subscribe_head(head)
            else:
                await asyncio.shield(ready)
        return f"{head}!{os.urandom(6).hex()}"

    async def _subscribe_head(self, head: str) -> None:
        ready = self._head_ready[head] = asyncio.get_running_loop().create_future()
        try:
            nc = await self._conn.client()
            subject = f"{self._subjects.process_root}{head}."
            self.heads[head] = await self._conn.subscribe(
                subject + ">", self._head_handler(head, len(subject)), nc=nc
            )
            # The server knows the subscription before anyone learns the name.
            await round_trip(nc)
            ready.set_result(None)
        except BaseException as exc:
            self.heads.pop(head, None)
            del self._head_ready[head]
            ready.set_exception(as_error(exc))
            ready.exception()
            raise

    def _head_handler(self, head: str, offset: int) -> Callable[[Msg], Awaitable[None]]:
        bang = head + "!"

        async def on_message(msg: Msg) -> None:
            channel = bang + msg.subject[offset:]
            if not self.deliver(channel, msg.data, time.monotonic()) and msg.reply:
                # Full: tell the sender, which counts it as lost and logs it.
                nc = self._conn.nc
                if nc is not None:
                    with contextlib.suppress(nats.errors.Error):
                        await nc.publish(msg.reply, channel.encode())

        return on_message

    def put_members(self, channels: Collection[str], data: bytes, now: float) -> tuple[int, int]:
        """The local fan-out's callback: one group message into each member's buffer.

        Every buffer gets the same entry (one deadline, the same bytes), so a
        fan-out allocates nothing per member and the members' receivers can share
        one decoded message. A full member misses it, counted in ``dropped``.
        """
        entry = (now + self._options.expiry, data)
        locals_ = self.locals
        options = self._options
        fixed = None if options.channel_capacity else options.capacity
        delivered = dropped = 0
        for channel in channels:
            box = locals_.get(channel)
            if box is None:
                box = locals_[channel] = Local(self._wakeups)
            items = box.items
            capacity = fixed if fixed is not None else options.capacity_for(channel)
            if len(items) >= capacity:
                while items and items[0][0] <= now:
                    items.popleft()
                if len(items) >= capacity:
                    dropped += 1
                    continue
            items.append(entry)
            box.member = True
            delivered += 1
            waiters = box.waiters
            if waiters:
                # The member's receive waits on its box's Waiter: woken in one call.
                if waiters[0] is box.signal and box.signal.wake():
                    waiters.popleft()
                else:
                    wake(waiters)
        self.dropped += dropped
        return delivered, dropped

    def deliver(self, channel: str, data: bytes, now: float) -> bool:
        """Put ``data`` into our channel's buffer; False if it is full (dropped)."""
        box = self.locals.get(channel)
        if box is None:
            box = self.locals[channel] = Local(self._wakeups)
        items = box.items
        capacity = self._options.capacity_for(channel)
        if len(items) >= capacity:
            while items and items[0][0] <= now:
                items.popleft()
            if len(items) >= capacity:
                self.dropped += 1  # bounded memory: a full process channel drops
                return False
        items.append((now + self._options.expiry, data))
        if box.waiters:
            wake(box.waiters)
        return True

    async def send(self, channel: str, message: bytes) -> None:
        """Publish to another (or this) process's channel; its owner reports a drop."""
        nc = await self._conn.client()
        head, _, local = channel.partition("!")
        try:
            # The owner answers on the reply subject only if its buffer was full.
            await nc.publish(
                f"{self._subjects.process_root}{head}.{local}", message, reply=self.dropped_reply
            )
        except nats.errors.MaxPayloadError:
            raise too_large(channel, message, nc) from None
        except nats.errors.Error as exc:
            raise connection_error(exc) from None

    def on_dropped(self, msg: Msg) -> None:
        """An owner dropped one of our messages: its channel was full."""
        channel = msg.data[:200].decode("utf-8", "replace")
        self._losses.count(1, channel, "the process channel was full")

    async def receive(self, channel: str, limit: int) -> list[bytes]:
        """Wait for at least one message on our channel ``channel``; up to ``limit``."""
        self.check_owned(channel)
        while True:
            box = self.local(channel)
            batch = self._take(channel, box, limit)
            if batch:
                return batch
            waiter = self.arm(box)
            try:
                await waiter
            except BaseException:
                self.disarm(box, waiter)
                raise
            finally:
                self.settle(channel, box)

    def check_owned(self, channel: str) -> None:
        """Raise :class:`InvalidChannelName` unless ``channel`` is this process's to receive."""
        if not self.owns(channel):
            raise InvalidChannelName(
                f"channel {channel!r} belongs to another process; only the layer that made it "
                "with new_channel() can receive from it"
            )

    def local(self, channel: str) -> Local:
        """The buffer of our channel ``channel`` (checked by the caller), made if missing."""
        box = self.locals.get(channel)
        if box is None:
            box = self.locals[channel] = Local(self._wakeups)
        return box

    @staticmethod
    def arm(box: Local) -> Wait:
        """Queue a receive of one message on the empty ``box``: what it awaits.

        The box's reusable :class:`Waiter` if no other receive uses it
        (``layers/_waiter.py`` says why), else a future of its own. If the
        await raises, the caller calls :meth:`disarm`.
        """
        signal = box.signal.claim(box.waiters)
        return signal if signal is not None else queue_waiter(box.waiters)

    @staticmethod
    def disarm(box: Local, waiter: Wait) -> None:
        """A wait armed with :meth:`arm` ended with an exception: leave, passing a wake-up on."""
        abandon(box.waiters, waiter, box.items)
        if waiter is box.signal:
            box.signal.reset()

    def settle(self, channel: str, box: Local) -> None:
        """After a wait on ``box``: forget it if nothing is left in it and nobody waits."""
        if not box.items and not box.waiters and self.locals.get(channel) is box:
            del self.locals[channel]

    def take_one(self, channel: str, box: Local) -> bytes | None:
        """The next unexpired message in our channel's ``box``, or None (no list made)."""
        items = box.items
        if not items:
            return None
        now = time.monotonic()
        while items:
            deadline, data = items.popleft()
            if deadline > now:
                if items and box.waiters:
                    wake(box.waiters)
                elif not items and not box.waiters and not box.member:
                    del self.locals[channel]  # see _take
                return data
        return None

    def _take(self, channel: str, box: Local, limit: int) -> list[bytes]:
        items = box.items
        if not items:
            return []
        now = time.monotonic()
        batch: list[bytes] = []
        while items and len(batch) < limit:
            deadline, data = items.popleft()
            if deadline > now:
                batch.append(data)
        if batch:
            if items and box.waiters:
                wake(box.waiters)
            elif not items and not box.waiters and not box.member:
                # A reply channel is read once: forget its buffer now. A group
                # member's stays until the sweep (at most SWEEP_INTERVAL).
                del self.locals[channel]
        return batch

    def sweep(self, now: float) -> None:
        """Drop expired messages, and buffers nobody uses."""
        for channel, box in list(self.locals.items()):
            items = box.items
            while items and items[0][0] <= now:
                items.popleft()
            if not items and not box.waiters:
                del self.locals[channel]

    def cancel_waiters(self) -> None:
        """The layer is closing: wake every waiting receiver with a cancellation."""
        for box in self.locals.values():
            for waiter in box.waiters:
                waiter.cancel()
