"""Durable channels of the memory layer: JetStream's work-queue semantics, in process.

A stored message stays until it is acknowledged or terminated. Delivering it
makes it invisible for ``ack_wait`` seconds (extended by ``in_progress``); a
delivery not settled by then (its worker "died") makes it deliverable again.
A negative acknowledgement makes it deliverable after its delay. Deliveries are
counted per message, so ``attempt`` means what it means on NATS. There is no
delivery limit: the runtime dead-letters a delivery beyond ``max_attempts``
(its last attempt's worker died) without running the handler.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable

import anyio

from svcbus.durable import Delivery, Durability, message_id_of
from svcbus.errors import ChannelFull


class _Stored:
    """One stored message: its bytes, deliveries so far, and when it may be delivered."""

    __slots__ = ("arrived", "data", "deliveries", "ready_at", "seq")

    def __init__(self, seq: int, data: bytes, now: float) -> None:
        self.seq = seq
        self.data = data
        self.deliveries = 0
        self.arrived = now
        self.ready_at = now


class DurableQueue:
    """One durable channel of a memory hub."""

    def __init__(
        self,
        channel: str,
        settings: Durability,
        on_expired: Callable[[str, int], None] | None = None,
    ) -> None:
        self.channel = channel
        self.settings = settings
        self.stored: dict[int, _Stored] = {}  # by sequence: insertion order is FIFO
        self._seq = itertools.count(1)
        self._seen: dict[str, float] = {}  # message id -> end of its duplicate window
        self._changed = anyio.Event()
        self.expired = 0
        """Messages dropped after ``max_age`` (handled or not, like a JetStream stream)."""
        self._on_expired = on_expired
        """Told each drop, so the hub counts and logs it with its other losses."""

    def _wake(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    def put(self, data: bytes, capacity: int, now: float) -> None:
        """Store ``data`` unless its id was stored within the duplicate window; or ChannelFull."""
        message_id = message_id_of(data)
        if message_id is not None:
            self._forget_ids(now)
            if message_id in self._seen:
                return  # a republished message: stored once (JetStream's Nats-Msg-Id)
        self.expire(now)
        if len(self.stored) >= capacity:
            raise ChannelFull(
                f"durable channel {self.channel!r} holds {capacity} unacknowledged messages "
                "(its capacity); its consumers are behind: retry later or raise channel_capacity"
            )
        if message_id is not None:
            self._seen[message_id] = now + self.settings.duplicate_window
        seq = next(self._seq)
        self.stored[seq] = _Stored(seq, data, now)
        self._wake()

    def _forget_ids(self, now: float) -> None:
        # Ids are kept in arrival order, so expired ones are at the front.
        seen = self._seen
        for message_id, until in list(seen.items()):
            if until > now:
                break
            del seen[message_id]

    def expire(self, now: float) -> None:
        """Drop (and count) the messages older than ``max_age``, handled or not."""
        too_old = now - self.settings.max_age
        stored = self.stored
        dropped = 0
        # Stored in arrival order: the expired ones are in front.
        while stored:
            seq, item = next(iter(stored.items()))
            if item.arrived > too_old:
                break
            del stored[seq]
            dropped += 1
        if dropped:
            self.expired += dropped
            if self._on_expired is not None:
                self._on_expired(self.channel, dropped)

    async def take(self, limit: int) -> list[Delivery]:
        """Wait for deliverable messages and deliver up to ``limit`` of them."""
        while True:
            now = time.monotonic()
            self.expire(now)
            taken: list[Delivery] = []
            next_ready = None
            for item in self.stored.values():
                if item.ready_at > now:
                    if next_ready is None or item.ready_at < next_ready:
                        next_ready = item.ready_at
                    continue
                item.deliveries += 1
                item.ready_at = now + self.settings.ack_wait
                taken.append(MemoryDelivery(self, item))
                if len(taken) >= limit:
                    break
            if taken:
                return taken
            changed = self._changed
            # Cancelled here, nothing was taken: nothing is lost.
            with anyio.move_on_after(None if next_ready is None else next_ready - now):
                await changed.wait()

    def settle(self, item: _Stored, ready_in: float | None) -> None:
        """Remove ``item`` (None) or make it deliverable in ``ready_in`` seconds."""
        if self.stored.get(item.seq) is not item:
            return  # already settled by another delivery of it
        if ready_in is None:
            del self.stored[item.seq]
        else:
            item.ready_at = time.monotonic() + ready_in
        self._wake()


class MemoryDelivery(Delivery):
    """A delivery from a memory durable channel."""

    __slots__ = ("_item", "_queue")

    def __init__(self, queue: DurableQueue, item: _Stored) -> None:
        super().__init__(item.data, item.deliveries)
        self._queue = queue
        self._item = item

    async def ack(self) -> None:
        self._queue.settle(self._item, None)

    async def nak(self, delay: float) -> None:
        self._queue.settle(self._item, max(0.0, delay))

    async def in_progress(self) -> None:
        if self._queue.stored.get(self._item.seq) is self._item:
            self._item.ready_at = time.monotonic() + self._queue.settings.ack_wait

    async def term(self) -> None:
        self._queue.settle(self._item, None)
