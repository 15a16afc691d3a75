"""Receiving from named channels: live from the queue group, pulled from the stream.

A process listens on a channel's live subject while it has waiting receivers (and
:attr:`Receivers.linger` seconds after), and pulls from the stream what they asked
for plus a prefetch window. Messages wait in a local buffer (:class:`Inbox`) that a
cancelled receive leaves intact: delivered means taken, at most once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable

import nats.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from svcbus.errors import LayerError
from svcbus.layer import LayerOptions
from svcbus.layers._waiter import Wait

from .config import CONSUMER, LINGER, PREFETCH, PULL_EXPIRES, Subjects
from .connection import Connection
from .losses import Losses
from .publisher import Outgoing, Publisher
from .streams import Streams
from .wire import connection_error, unsubscribe, wait_turn, wake

log = logging.getLogger("svcbus.layers.nats")

_PULL_EXPIRES_NS = int(PULL_EXPIRES * 1e9)


class Inbox:
    """This process's receiving side of one named channel: pulled messages and waiters."""

    __slots__ = (
        "capacity",
        "channel",
        "demand",
        "idle_since",
        "inbox",
        "items",
        "listening",
        "live",
        "next_subject",
        "prefetch",
        "pull_deadline",
        "ready",
        "recovering",
        "requested",
        "returns",
        "spill",
        "sub",
        "waiters",
    )

    def __init__(self, channel: str, stream: str, inbox: str, capacity: int) -> None:
        self.channel = channel
        self.inbox = inbox  # where pulled messages arrive
        self.capacity = capacity  # of the live buffer; beyond it, arrivals spill to the stream
        self.live: Subscription | None = None  # queue subscription while receivers are around
        self.listening = False  # subscribing or subscribed to the live subject
        self.idle_since = time.monotonic()  # when the last waiting receiver left
        self.returns: Outgoing | None = None  # publishes the buffer back to the stream
        self.spill: Outgoing | None = None  # publishes live arrivals beyond capacity there
        self.next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{CONSUMER}"
        self.items: deque[bytes] = deque()
        self.waiters: deque[Wait] = deque()
        self.demand = 0  # sum of the limits of waiting receivers
        self.prefetch = PREFETCH  # ahead of demand: receivers usually come back
        self.requested = 0  # pulled for but not yet arrived
        self.pull_deadline = 0.0
        self.ready: asyncio.Future[None] | None = None
        self.recovering = False
        self.sub: Subscription | None = None

    def keep(self, message: bytes) -> None:
        """Take back a message the full stream refused (it stays this process's)."""
        self.items.append(message)
        if self.waiters:
            wake(self.waiters)


class Receivers:
    """Every named channel this process receives from."""

    def __init__(
        self,
        conn: Connection,
        options: LayerOptions,
        subjects: Subjects,
        streams: Streams,
        publisher: Publisher,
        losses: Losses,
        *,
        live: bool,
    ) -> None:
        self._conn = conn
        self._options = options
        self._subjects = subjects
        self._streams = streams
        self._publisher = publisher
        self._losses = losses
        self.live = live
        self.linger = LINGER
        """Seconds a named channel's live subscription outlives its last waiting receiver."""
        self.inboxes: dict[str, Inbox] = {}
        self._next = 0
        self.spilled = 0
        """Live messages this process passed on to the stream because its buffer was full."""

    # receiving ------------------------------------------------------------------------

    async def receive(self, channel: str, limit: int) -> list[bytes]:
        """Wait for at least one message of ``channel`` and return up to ``limit``."""
        box = self.inboxes.get(channel)
        if box is None or (box.ready is not None and not box.ready.done()):
            box = await self._open(channel)
        items = box.items
        if limit > box.prefetch:
            box.prefetch = limit
        while True:
            if items:
                # Top up before taking: no await may come between taking messages and
                # returning them, or a cancellation there would lose them.
                taking = min(limit, len(items))
                if box.requested + len(items) - taking < box.demand + box.prefetch:
                    before = box.requested
                    await self._pull(box, taking)
                    if box.requested != before:
                        continue
                return self._take(box, limit)
            await self._wait(box, limit)

    def take_one(self, channel: str) -> bytes | None:
        """The next buffered message of ``channel`` if one can be taken without a pull.

        A loop of single receives (``Bus.receive``) mostly finds its message in the
        buffer with a pull still outstanding: then nothing is asked of the server
        and no list is made. Otherwise None: :meth:`receive` tops up and waits.
        """
        box = self.inboxes.get(channel)
        if box is None or not box.items or (box.ready is not None and not box.ready.done()):
            return None
        items = box.items
        if box.requested + len(items) - 1 < box.demand + box.prefetch:
            return None  # running low: receive() pulls before taking
        data = items.popleft()
        if items and box.waiters:
            wake(box.waiters)  # more left than we took: pass it on
        box.idle_since = time.monotonic()  # see _take
        return data

    @staticmethod
    def _take(box: Inbox, limit: int) -> list[bytes]:
        items = box.items
        if len(items) <= limit:
            batch = list(items)
            items.clear()
        else:
            batch = [items.popleft() for _ in range(limit)]
            if box.waiters:
                wake(box.waiters)  # more left than we took: pass it on
        # Receivers that never wait (the buffer is never empty) are active too:
        # the sweep must not take them for gone and give their buffer away.
        box.idle_since = time.monotonic()
        return batch

    async def _wait(self, box: Inbox, limit: int) -> None:
        box.demand += limit
        try:
            await wait_turn(box.waiters, box.items, lambda: self._ask(box))
        finally:
            box.demand -= limit
            if not box.demand:
                box.idle_since = time.monotonic()

    async def _ask(self, box: Inbox) -> None:
        """A receiver is about to wait: listen live (if not yet) and pull from the stream."""
        if not box.listening and self.live:
            await self._listen(box)
        await self._pull(box)

    async def _open(self, channel: str) -> Inbox:
        box = self.inboxes.get(channel)
        if box is not None:
            if box.ready is not None and not box.ready.done():
                await asyncio.shield(box.ready)
            return box
        nc = await self._conn.client()
        self._next += 1
        box = Inbox(
            channel,
            self._subjects.stream(channel),
            f"{self._conn.reply_root}.p{self._next}",
            self._options.capacity_for(channel),
        )
        self.inboxes[channel] = box
        box.ready = asyncio.get_running_loop().create_future()
        try:
            box.sub = await self._conn.subscribe(box.inbox, self._pull_handler(box), nc=nc)
            await self._streams.ensure(channel, for_send=False)
        except BaseException as exc:
            del self.inboxes[channel]
            if box.sub is not None:
                with contextlib.suppress(Exception):
                    await box.sub.unsubscribe()
            box.ready.set_exception(exc if isinstance(exc, Exception) else LayerError("cancelled"))
            box.ready.exception()
            raise
        box.ready.set_result(None)
        return box

    # the live path ------------------------------------------------------------------

    async def _listen(self, box: Inbox) -> None:
        """Join the channel's live queue group: senders' messages then come straight here."""
        box.listening = True
        try:
            nc = await self._conn.client()
            box.live = await self._conn.subscribe(
                self._subjects.live_root + box.channel, self._live_handler(box), CONSUMER, nc
            )
        except nats.errors.Error as exc:
            # Pulling from the stream still works; the next receive tries again.
            box.listening = False
            log.debug("cannot listen on %s yet: %r", box.channel, exc)
        except BaseException:
            box.listening = False
            raise

    def _live_handler(self, box: Inbox) -> Callable[[Msg], Awaitable[None]]:
        items = box.items
        waiters = box.waiters
        capacity = box.capacity

        async def on_message(msg: Msg) -> None:
            if len(items) < capacity:
                items.append(msg.data)
                if waiters:
                    wake(waiters)
                return
            await self._spill(box, msg)

        return on_message

    async def _spill(self, box: Inbox, msg: Msg) -> None:
        """Full: the stream is the waiting room, where any process can pull it.

        If the stream refuses it too, the box keeps it and the sender is told.
        """
        self.spilled += 1
        spill = box.spill
        if spill is None:
            spill = box.spill = self._outgoing(box)
        try:
            await self._publisher.publish(spill, msg.data, msg.reply or "")
        except LayerError:
            box.items.append(msg.data)  # no connection: keep it rather than lose it

    def _outgoing(self, box: Inbox) -> Outgoing:
        return Outgoing(box.channel, self._subjects.channel_root + box.channel, keep=box.keep)

    async def _unlisten(self, box: Inbox) -> None:
        """Leave the live queue group without losing what the server already sent us.

        Unsubscribe, then a round trip: every message routed to us before the server
        processed the unsubscribe has then arrived and sits in the subscription's queue,
        which ``drain`` empties into the buffer. A buffer no receiver will read goes
        back to the stream.
        """
        sub, box.live = box.live, None
        box.listening = False
        nc = self._conn.nc
        if sub is None or nc is None:
            return
        with contextlib.suppress(nats.errors.Error, asyncio.TimeoutError):
            await unsubscribe(nc, sub)
            await sub.drain()  # type: ignore[no-untyped-call]  # nats-py leaves it unannotated
        await self._give_back(box)

    async def _give_back(self, box: Inbox) -> None:
        """Return the buffer of a channel nobody here receives from to its stream.

        Only once no pull is outstanding: the stream would hand them straight back.
        """
        nc = self._conn.nc
        if box.listening or box.waiters or box.requested or not box.items or nc is None:
            return
        if nc.is_connected:
            await self.return_items(box)

    async def return_items(self, box: Inbox) -> None:
        """Publish the buffer back to the stream, acknowledged like any send.

        What a full stream refuses comes back into the buffer (:meth:`Inbox.keep`).
        """
        out = box.returns
        if out is None:
            out = box.returns = self._outgoing(box)
        returned = list(box.items)
        box.items.clear()  # the same deque: the handlers hold it
        for data in returned:
            try:
                await self._publisher.publish(out, data)
            except LayerError as exc:
                self._losses.count(1, box.channel, f"giving it back failed: {exc}")

    # the stream path ------------------------------------------------------------------

    def _pull_handler(self, box: Inbox) -> Callable[[Msg], Awaitable[None]]:
        items = box.items
        waiters = box.waiters

        async def on_message(msg: Msg) -> None:
            if msg.headers is not None and not msg.data and "Status" in msg.headers:
                await self._pull_status(box, msg.headers)
                return
            box.requested -= 1
            items.append(msg.data)
            if waiters:
                wake(waiters)

        return on_message

    async def _pull_status(self, box: Inbox, headers: dict[str, str]) -> None:
        status = headers.get("Status")
        if status == "100":  # idle heartbeat
            return
        pending = headers.get("Nats-Pending-Messages")
        if pending is not None and pending.isdigit():
            box.requested = max(0, box.requested - int(pending))
        else:
            box.requested = 0
        if status in ("408", "404"):
            if box.waiters:
                await self._pull(box)
            return
        description = headers.get("Description", "")
        log.debug("pull status %s %s on %s", status, description, box.channel)
        if status == "503" or "Deleted" in description:
            self.recover(box)
        elif box.waiters:
            await self._pull(box)

    async def _pull(self, box: Inbox, taking: int = 0) -> None:
        """Ask the server for what waiting receivers (plus one batch ahead) still lack.

        ``taking`` is how many buffered messages the caller is about to take.
        """
        target = box.demand + box.prefetch
        have = len(box.items) - taking + box.requested
        # A process holds at most the channel's capacity, live deliveries included.
        want = min(target, box.capacity) - have
        if want <= 0 or box.recovering:
            return
        if have > 0 and want * 2 < target:
            # Top up in chunks of at least half the target: a steady trickle must not
            # become one pull request per message. With nothing in hand, always pull.
            return
        box.requested += want
        box.pull_deadline = time.monotonic() + PULL_EXPIRES + 3.0
        nc = self._conn.nc
        assert nc is not None
        try:
            await nc.publish(
                box.next_subject,
                b'{"batch":%d,"expires":%d}' % (want, _PULL_EXPIRES_NS),
                reply=box.inbox,
            )
        except nats.errors.Error as exc:
            box.requested -= want
            raise connection_error(exc) from None

    def recover(self, box: Inbox) -> None:
        """The channel's stream or our pull requests are gone: make them again."""
        if not box.recovering:
            box.recovering = True
            self._conn.spawn(self._recover(box))

    async def _recover(self, box: Inbox) -> None:
        try:
            while not self._conn.closed:
                try:
                    await self._streams.ensure(box.channel, for_send=False)
                    break
                except LayerError as exc:
                    log.warning("receiving from %s is paused: %s", box.channel, exc)
                    await asyncio.sleep(1.0)
        finally:
            box.recovering = False
        box.requested = 0
        if box.waiters:
            await self._pull(box)

    # housekeeping ---------------------------------------------------------------------

    async def on_reconnected(self) -> None:
        """A restarted server lost memory-storage streams and every pull request."""
        for box in self.inboxes.values():
            box.requested = 0
            if box.ready is not None and box.ready.done():
                self.recover(box)

    async def sweep(self, now: float) -> None:
        """Leave channels nobody here receives from; renew pull requests the server forgot."""
        for box in list(self.inboxes.values()):
            if not box.demand and now - box.idle_since > self.linger:
                # Its receivers are gone: others should get the messages.
                if box.live is not None:
                    await self._unlisten(box)
                else:
                    await self._give_back(box)
            if box.recovering:
                continue
            if box.requested > 0 and now > box.pull_deadline:
                box.requested = 0
                if box.waiters:
                    self.recover(box)
            elif box.waiters and box.requested == 0 and not box.items:
                await self._pull(box)  # a safety net: waiting receivers always have a pull

    async def close(self) -> None:
        """Stop receiving; give what was taken but never received back to the channels."""
        for box in self.inboxes.values():
            for waiter in box.waiters:
                waiter.cancel()
            box.waiters.clear()
            if box.live is not None:
                await self._unlisten(box)
        # Messages taken from the channel but never received go back to it, so
        # closing a receiver loses nothing it had taken.
        for box in self.inboxes.values():
            if box.items:
                await self.return_items(box)

    def count_left(self) -> None:
        """After the last answers: what the full streams refused back is lost."""
        for box in self.inboxes.values():
            if box.items:
                self._losses.count(
                    len(box.items),
                    box.channel,
                    "taken, then closed with the channel full",
                    sent=False,
                )

    def cancel_waiters(self) -> None:
        """The layer is closing: wake every waiting receiver with a cancellation."""
        for box in self.inboxes.values():
            for waiter in box.waiters:
                waiter.cancel()
