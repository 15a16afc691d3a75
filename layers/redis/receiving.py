"""Receiving from Redis lists: one pop task per list, local boxes, waiting receivers.

A named channel's list is popped while anyone in this process waits on it; a
process head's list all the time (direct messages then share the channel's one
box with group messages). What a pop takes waits in the box, so a cancelled
receive never loses it. Items svcbus did not write are moved aside and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Collection
from typing import TypeAlias

from redis.asyncio.connection import AbstractConnection
from redis.exceptions import NoScriptError, ResponseError

from svcbus.errors import LayerError
from svcbus.layer import LayerOptions
from svcbus.layers._waiter import Wait, Waiter, Wakeups
from svcbus.ratelog import RateLimitedLog
from svcbus.redis_wire import POP_SCRIPT, POP_SHA, quarantine_key, split_item

from .resp import now_ms, pack, write
from .shard import RETRYABLE, Backoff, Shard
from .subscriber import HOUSEKEEPING_SECONDS

log = logging.getLogger("svcbus.layers.redis")

BLOCK_SECONDS = 1
"""How long one blocking pop waits before the fetch loop looks again (whether anyone still waits)."""
MAX_FETCH = 256
"""Most messages one pop takes for a process (the sum of its waiting receivers' limits)."""
QUIET_COUNT = 2
"""Most items a blocking pop takes while its list looked empty (the last pop came back short).

Such a pop mostly waits, and if its connection breaks while it waits, everything
it may have taken counts as lost: kept small, that count stays honest. When it
comes back full the list holds more, and the next pop asks for everything wanted."""
REFUSED_RETRY_SECONDS = 5.0
"""How long the pop of a list waits before trying again after Redis refused it (WRONGTYPE)."""
READ_AHEAD = 64
"""Most messages a named channel's pop takes beyond what its waiting receivers asked for.

It grows while pops come back full (a backlog: a loop of single receives would
otherwise pay a round trip per message) and halves when one comes back short,
so a trickle is not hoarded by one process. What it took waits in the local
box for the next receive; closing the layer gives it back to the list."""


_Queued: TypeAlias = "Wait | tuple[asyncio.Future[None], int]"
"""A waiting receive: what it awaits when it takes one message, else (future, limit).

A single receive (a group member's, a socket's) is the common case: it waits on
its box's reusable :class:`Waiter` (or, if another receive uses that, a future of
its own), queued without a tuple (see :meth:`Receivers.arm`)."""


def _unpack(waiter: _Queued) -> tuple[Wait, int]:
    return waiter if isinstance(waiter, tuple) else (waiter, 1)


class _Box:
    """Messages taken from Redis for one channel of this process, and its waiting receivers."""

    __slots__ = ("capacity", "items", "signal", "source", "touched", "waiters")

    def __init__(self, source: _Source | None, capacity: int, tick: int, wakeups: Wakeups) -> None:
        self.items: deque[bytes] = deque()
        self.signal = Waiter(wakeups)  # what a single receive waits on (one at a time)
        # Each waiting receive (_Queued), longest-waiting first.
        self.waiters: deque[_Queued] = deque()
        self.source = source
        self.capacity = capacity
        self.touched = tick


class _Source:
    """One Redis list this process pops from: a named channel, or a process head."""

    __slots__ = (
        "ahead",
        "box",
        "boxes",
        "head",
        "in_flight",
        "key",
        "quiet",
        "shard",
        "split",
        "task",
        "wanted",
    )

    def __init__(self, key: bytes, shard: Shard, head: str | None) -> None:
        self.key = key
        self.shard = shard
        self.head = head  # process head ("edge.k3f9") or None for a named channel
        self.split = b"1" if head is not None else b"0"
        self.box: _Box | None = None  # named channel: its one box
        self.boxes: dict[bytes, _Box] = {}  # process head: local part -> box
        self.task: asyncio.Task[None] | None = None
        self.wanted = 0  # sum of the limits of everyone waiting on this source
        self.in_flight = 0  # most messages the pop being answered may have taken
        self.ahead = 0  # read-ahead of a named channel's next pop (READ_AHEAD)
        self.quiet = True  # the last pop came back short: the list looked empty (QUIET_COUNT)


class Receivers:
    """What this process pops from Redis lists, in local boxes until receivers take it."""

    def __init__(
        self,
        shards: list[Shard],
        options: LayerOptions,
        key_of: Callable[[str], tuple[str, int]],
        prefix: str,
        closed: Callable[[], bool],
    ) -> None:
        self._shards = shards
        self._options = options
        self._key_of = key_of
        self._prefix = prefix
        self._closed = closed
        self._boxes: dict[str, _Box] = {}
        self._wakeups = Wakeups()
        self._sources: dict[bytes, _Source] = {}
        self._tick = 0
        self._lost_pops = 0
        self._blocking_pop = True  # BLMPOP (Redis >= 7.0) until the server says it has none
        self.foreign = 0
        """Items found in this layer's lists that svcbus did not write (moved aside)."""
        self.dropped = 0
        """Messages for a full process channel of this process, dropped (and logged)."""
        self._notes = RateLimitedLog(log, "reports of dropped or foreign items")

    @property
    def lost_pops(self) -> int:
        """Messages a pop may have taken when its connection broke (counted lost)."""
        return self._lost_pops

    def boxes(self) -> dict[str, _Box]:
        """The local boxes by channel (for tests and the layer's close)."""
        return self._boxes

    def box(self, channel: str) -> _Box:
        """The local box of ``channel``, made on first use with its Redis source."""
        box = self._boxes.get(channel)
        if box is not None:
            return box
        key_text, index = self._key_of(channel)
        key = key_text.encode()
        source = self._sources.get(key)
        if source is None:
            head = channel.split("!", 1)[0] if "!" in channel else None
            source = self._sources[key] = _Source(key, self._shards[index], head)
            if head is not None and not self._closed():
                # A process head is popped all the time, not only while someone
                # waits: direct messages then join group messages in the channel's
                # one local buffer, in arrival order and under one capacity.
                source.task = asyncio.ensure_future(self._fetch(source))
        box = self._boxes[channel] = _Box(
            source, self._options.capacity_for(channel), self._tick, self._wakeups
        )
        if source.head is None:
            source.box = box
        else:
            source.boxes[channel.split("!", 1)[1].encode()] = box
        return box

    async def receive(self, channel: str, limit: int) -> list[bytes]:
        """Wait for at least one message of ``channel`` (checked by the layer); up to ``limit``."""
        box = self._boxes.get(channel) or self.box(channel)
        while not box.items:
            future = self.arm(box, limit)
            try:
                await future
            except BaseException:
                self.disarm(box, future, limit)
                raise
        return self._take(box, limit)

    def arm(self, box: _Box, limit: int) -> Wait:
        """Queue a receive of up to ``limit`` messages on the empty ``box``; await the future.

        The caller awaits it in its own coroutine and calls :meth:`disarm` if that
        await raises; a receive that wakes to an empty box arms again. Waiting
        this way costs no coroutine of its own, and a receive of one message
        waits on the box's reusable :class:`Waiter` (``layers/_waiter.py`` says
        why): a group member re-arms once per message.
        """
        future: Wait | None = box.signal.claim(box.waiters) if limit == 1 else None
        if future is None:
            future = asyncio.get_running_loop().create_future()
            box.waiters.append(future if limit == 1 else (future, limit))
        source = box.source
        assert source is not None
        source.wanted += limit
        if source.task is None:
            source.task = asyncio.ensure_future(self._fetch(source))
        return future

    def disarm(self, box: _Box, future: Wait, limit: int) -> None:
        """A receive armed with :meth:`arm` ended with an exception (cancelled, closed)."""
        if future.done() and not future.cancelled() and future.exception() is None:
            self._wake(box)  # woken, then cancelled: hand the wake-up on
        else:
            with contextlib.suppress(ValueError):
                box.waiters.remove(future if limit == 1 else (future, limit))  # type: ignore[arg-type]
                if box.source is not None:
                    box.source.wanted -= limit
        if future is box.signal:
            box.signal.reset()

    def take_one(self, box: _Box) -> bytes:
        """The next message of the non-empty ``box`` (a receive of one: no list made)."""
        items = box.items
        data = items.popleft()
        if items and box.waiters:
            self._wake(box)
        box.touched = self._tick
        return data

    def _take(self, box: _Box, limit: int) -> list[bytes]:
        items = box.items
        if len(items) <= limit:
            batch = list(items)
            items.clear()
        else:
            batch = [items.popleft() for _ in range(limit)]
            if box.waiters:
                self._wake(box)
        box.touched = self._tick
        return batch

    def _wake(self, box: _Box) -> None:
        """Wake as many waiting receivers, oldest first, as the box has messages for."""
        left = len(box.items)
        waiters = box.waiters
        source = box.source
        while left > 0 and waiters:
            future, limit = _unpack(waiters.popleft())
            if source is not None:
                source.wanted -= limit
            if not future.done():
                future.set_result(None)
                left -= limit

    async def _fetch(self, source: _Source) -> None:
        """Pop for ``source`` while anyone in this process waits on it.

        Runs as its own task so that a cancelled receive never abandons a pop in
        flight: what it pops lands in the local boxes and the next receive takes it.
        """
        shard = source.shard
        backoff = Backoff()
        try:
            while not self._closed() and (source.wanted > 0 or source.head is not None):
                if source.head is None:
                    want = min(source.wanted + source.ahead, MAX_FETCH)
                else:
                    want = MAX_FETCH
                epoch = shard.epoch
                try:
                    conn = await shard.connection()
                except RETRYABLE as exc:
                    shard.lost(exc, epoch)
                    await backoff.sleep()
                    continue
                try:
                    items, taken = await self._pop(conn, source, want)
                except RETRYABLE as exc:
                    with contextlib.suppress(Exception):
                        await conn.disconnect(nowait=True)
                    shard.lost(exc, epoch)
                    if source.in_flight:
                        # The server may have popped them before the answer was lost.
                        self._lost_pops += source.in_flight
                        self._notes.log(
                            "pop",
                            "up to %d message(s) of %s may be lost: the connection broke while "
                            "popping them (counted in lost)",
                            source.in_flight,
                            source.key.decode(errors="replace"),
                        )
                        source.in_flight = 0
                    await backoff.sleep()
                    continue
                except ResponseError as exc:
                    # Not a list (WRONGTYPE), a script error...: the receivers keep
                    # waiting and this loop keeps trying, slowly, saying what is wrong.
                    shard.release(conn, epoch)
                    log.error(
                        "redis refused to pop %s: %s; fix or delete that key (receivers "
                        "keep waiting, retrying in %gs)",
                        source.key.decode(errors="replace"),
                        exc,
                        REFUSED_RETRY_SECONDS,
                    )
                    await asyncio.sleep(REFUSED_RETRY_SECONDS)
                    continue
                except BaseException:
                    # Cancelled mid-command (close): the connection's state is unknown.
                    with contextlib.suppress(Exception):
                        await conn.disconnect(nowait=True)
                    raise
                except Exception:
                    # A bug or a reply of a shape we did not expect: never let the
                    # receivers of this list hang on a dead task.
                    with contextlib.suppress(Exception):
                        await conn.disconnect(nowait=True)
                    log.exception(
                        "popping %s failed; retrying", source.key.decode(errors="replace")
                    )
                    await backoff.sleep()
                    continue
                shard.release(conn, epoch)
                shard.back()
                backoff.reset()
                if source.head is None:
                    # A full pop means the list holds more: read further ahead next time.
                    full = taken >= want
                    source.ahead = (
                        min(READ_AHEAD, source.ahead * 2 or 1) if full else source.ahead // 2
                    )
                if items:
                    self._deliver(source, items)
                    # Let the receivers just woken run before this task writes its next
                    # pop: a reply's latency is theirs; the next pop can wait a turn.
                    await asyncio.sleep(0)
        finally:
            source.task = None

    async def _pop(
        self, conn: AbstractConnection, source: _Source, want: int
    ) -> tuple[list[bytes], int]:
        """Pop up to ``want`` messages of ``source``, waiting up to ``BLOCK_SECONDS`` for one.

        Returns the messages not delivered yet (for a process head: local part,
        message, ...) and how many items the pop took from the list.
        """
        items, taken, foreign = await self._pop_any(conn, source, want)
        if foreign:
            # Hand over the good ones first: if the connection breaks while the
            # rest is moved aside, only foreign items are lost.
            if items:
                self._deliver(source, items)
                items = []
            await self._quarantine(conn, source.key, foreign)
        return items, taken

    async def _pop_any(
        self, conn: AbstractConnection, source: _Source, want: int
    ) -> tuple[list[bytes], int, list[bytes]]:
        """The pop: (messages, items taken from the list, foreign items to move aside)."""
        if self._blocking_pop:
            try:
                return await self._block_pop(conn, source, want)
            except ResponseError as exc:
                if "unknown command" not in str(exc).lower():
                    raise
                # Redis before 7.0 (no BLMPOP): the pop script, then BLPOP.
                self._blocking_pop = False
                log.info("redis has no BLMPOP (%s); popping with a script and BLPOP", exc)
        now = now_ms()
        command = pack(b"EVALSHA", POP_SHA, b"1", source.key, now, want, source.split)
        source.in_flight = want
        await write(conn, command)
        try:
            reply = await conn.read_response()
        except NoScriptError:
            await conn.send_packed_command(pack(b"SCRIPT", b"LOAD", POP_SCRIPT), False)
            await conn.read_response()
            await conn.send_packed_command(command, check_health=False)
            reply = await conn.read_response()
        source.in_flight = 0
        items, foreign = reply
        if foreign:
            self._count_foreign(source.key, foreign)
        if items:
            items = list(items)
            return items, len(items) // (2 if source.head is not None else 1), []
        source.in_flight = 1
        await write(conn, pack(b"BLPOP", source.key, BLOCK_SECONDS))
        reply = await conn.read_response()
        source.in_flight = 0
        if not reply:
            return [], 0, []
        return self._unwrap(source, [reply[1]])

    async def _block_pop(
        self, conn: AbstractConnection, source: _Source, want: int
    ) -> tuple[list[bytes], int, list[bytes]]:
        """One ``BLMPOP``: whatever the list holds (up to ``want``), or the first item to come.

        One command per wake-up where the script and BLPOP took two round trips
        whenever the list was empty. The items come back with their headers: expired
        ones are dropped and foreign ones returned for quarantine here, as the pop
        script does on the server.
        """
        count = min(want, QUIET_COUNT) if source.quiet else want
        source.in_flight = count
        await write(
            conn, pack(b"BLMPOP", BLOCK_SECONDS, b"1", source.key, b"LEFT", b"COUNT", count)
        )
        reply = await conn.read_response()
        source.in_flight = 0
        if not reply:
            source.quiet = True
            return [], 0, []
        source.quiet = len(reply[1]) < count
        return self._unwrap(source, reply[1])

    def _unwrap(self, source: _Source, taken: list[bytes]) -> tuple[list[bytes], int, list[bytes]]:
        """Strip the headers of popped items: (messages, items taken, foreign items)."""
        split = source.head is not None
        now = now_ms()
        items: list[bytes] = []
        foreign: list[bytes] = []
        for item in taken:
            # The common case inline (a named channel's unexpired item); split_item
            # makes the same check.
            if not split and item[13:14] == b":" and item[:13].isdigit():
                if int(item[:13]) > now:
                    items.append(item[14:])
                continue
            parts = split_item(item, split)
            if parts is None:
                foreign.append(item)  # not written by svcbus: moved aside by the caller
                continue
            deadline, local, message = parts
            if deadline <= now:
                continue  # expired while queued
            if local is not None:
                items.append(local)
            items.append(message)
        return items, len(taken), foreign

    async def _quarantine(self, conn: AbstractConnection, key: bytes, foreign: list[bytes]) -> None:
        """Move items svcbus did not write to ``key``'s quarantine list (as the scripts do)."""
        aside = quarantine_key(key)
        await write(
            conn,
            [
                pack(b"RPUSH", aside, *foreign),
                pack(b"LTRIM", aside, -1000, -1),
                pack(b"PEXPIRE", aside, 604800000),
            ],
        )
        for _ in range(3):
            await conn.read_response()
        self._count_foreign(key, len(foreign))

    def _drop(self, box: _Box, why: str) -> None:
        """Count a message dropped for a full local buffer, and say so (rate-limited)."""
        self.dropped += 1
        self._notes.log(
            why,
            "dropped a message for %s (capacity %d); %d dropped so far: its receiver is behind",
            why,
            box.capacity,
            self.dropped,
        )

    def _count_foreign(self, key: bytes, count: int) -> None:
        """Count items in our lists that svcbus did not write, and say so (rate-limited)."""
        self.foreign += count
        self._notes.log(
            "foreign",
            "%d foreign item(s) in %s (not written by svcbus) were moved to %s; "
            "%d so far. Inspect them with LRANGE; only svcbus should write to its keys",
            count,
            key.decode(errors="replace"),
            quarantine_key(key).decode(errors="replace"),
            self.foreign,
        )

    def _deliver(self, source: _Source, items: list[bytes]) -> None:
        if source.head is None:
            box = source.box
            if box is None:  # dropped by housekeeping meanwhile: make it again
                box = self.box(source.key.decode()[len(self._prefix) + 3 :])
            box.items.extend(items)
            self._wake(box)
            return
        boxes = source.boxes
        woken: set[bytes] = set()
        for i in range(0, len(items), 2):
            local = items[i]
            box = boxes.get(local)
            if box is None:
                box = self.box(f"{source.head}!{local.decode()}")
            if len(box.items) >= box.capacity:
                self._drop(box, "a full process channel")
                continue
            box.items.append(items[i + 1])
            if box.waiters:
                woken.add(local)
        for local in woken:
            self._wake(boxes[local])

    def put_members(self, channels: Collection[str], message: bytes, now: float) -> tuple[int, int]:
        """The local fan-out's callback: one group message into each member's box.

        Every box gets the same bytes object, so the members' receivers can share
        one decoded message. A full member misses it (``group_send`` never raises
        ChannelFull); each miss is counted in ``dropped`` and logged.
        """
        boxes = self._boxes
        delivered = dropped = 0
        for channel in channels:
            box = boxes.get(channel) or self.box(channel)
            items = box.items
            if len(items) >= box.capacity:
                self._drop(box, "a full group member")
                dropped += 1
                continue
            items.append(message)
            delivered += 1
            waiters = box.waiters
            if waiters:
                if len(items) == 1 and waiters[0] is box.signal and box.signal.wake():
                    # The usual case (the member's receive waiting on its empty box):
                    # woken in one call, without _wake's loop.
                    waiters.popleft()
                    source = box.source
                    if source is not None:
                        source.wanted -= 1
                else:
                    self._wake(box)
        return delivered, dropped

    async def return_unreceived(self, expiry_ms: int) -> None:
        """Put messages popped for cancelled receives back at the head of their lists."""
        deadline = b"%013d:" % (now_ms() + expiry_ms)
        futures = []
        for channel, box in self._boxes.items():
            source = box.source
            if not box.items or source is None or source.head is not None:
                continue  # process channels die with this layer anyway
            items = [deadline + item for item in reversed(box.items)]
            box.items.clear()
            futures.append(source.shard.pipe.call(pack(b"LPUSH", source.key, *items)))
            log.debug("returning %d unreceived messages to %s", len(items), channel)
        if futures:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.gather(*futures), 2.0)

    def _drop_box(self, channel: str) -> None:
        box = self._boxes.pop(channel)
        source = box.source
        if source is None:
            return
        if source.head is None:
            source.box = None
        else:
            source.boxes.pop(channel.split("!", 1)[1].encode(), None)
        if source.box is None and not source.boxes and source.task is None:
            self._sources.pop(source.key, None)

    def sweep(self, expiry: float) -> None:
        """Once a second: write rate-limited summaries, drop boxes idle past ``expiry``."""
        self._tick += 1
        self._notes.flush()
        idle_ticks = max(2, int(expiry / HOUSEKEEPING_SECONDS) + 1)
        stale = [
            channel
            for channel, box in self._boxes.items()
            if not box.waiters and self._tick - box.touched > idle_ticks
        ]
        for channel in stale:
            left = len(self._boxes[channel].items)
            if left:
                # Popped (read ahead, or for a cancelled receive) and not received
                # for longer than the expiry: expired here, counted like a lost pop.
                self._lost_pops += left
                self._notes.log(
                    "expired",
                    "%d message(s) of %s expired unreceived in this process (counted in lost)",
                    left,
                    channel,
                )
            self._drop_box(channel)

    async def stop(self) -> None:
        """Cancel every pop task (the layer is closing)."""
        for source in list(self._sources.values()):
            if source.task is not None:
                source.task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await source.task

    def close(self) -> None:
        """Fail every waiting receive and forget every box."""
        for box in self._boxes.values():
            for waiter in box.waiters:
                future, _ = _unpack(waiter)
                if not future.done():
                    future.set_exception(LayerError("the redis layer was closed"))
        self._boxes.clear()
        self._sources.clear()
