"""Durable channels on Redis Streams: one stream and one shared consumer group per channel.

A durable channel ``C`` is the stream ``<prefix>:d:C`` on ``C``'s server, with the
consumer group ``workers`` every process shares (docs/protocol.md, "Durable
channels on Redis"; the scripts are in ``durable_wire.py``):

* **send**: one script checks the duplicate-window key ``<prefix>:dd:C:<id>``,
  trims entries older than ``max_age``, refuses when ``XLEN`` reaches the
  capacity (acknowledged entries are deleted, so ``XLEN`` counts exactly the
  waiting and the delivered-but-unacknowledged ones), then ``XADD``\\ s and sets
  the window key. ``send`` returns on the script's answer; with no answer (an
  outage) it repeats the same bytes, which the window key stores once.
* **receive**: ``XAUTOCLAIM`` of entries idle for ``ack_wait`` (their worker
  died, or a nak's delay ran out) first, then ``XREADGROUP ... BLOCK`` for new ones.
* **attempt** is the group's delivery count (``XPENDING``): 1 for a new entry,
  raised by one by every ``XAUTOCLAIM``; naks and in-progress signals use
  ``XCLAIM ... JUSTID``, which leaves it alone.
* **nak(delay)** leaves the entry pending and sets its idle time to
  ``ack_wait - delay``, so the claim takes it after ``delay`` seconds (a delay
  longer than ``ack_wait`` is shortened to ``ack_wait``). No re-add: the entry
  keeps its id, its place and its delivery count.
* **ack / term**: ``XACK`` and ``XDEL`` in one script; the acks of one event-loop
  turn go out together in one call of the ack script, without waiting for it.

The runtime (``svcbus/runtime_durable.py``) decides retries and dead letters.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from redis.exceptions import ResponseError

from svcbus.durable import Delivery, Durability, message_id_of
from svcbus.errors import ChannelFull, ConfigurationError, InvalidChannelName, LayerError
from svcbus.layer import LayerOptions
from svcbus.ratelog import RateLimitedLog

from .durable_wire import ACK_SHA, ADD_SHA, CLAIM_SHA, EXPIRE_SHA, GROUP, LEAVE_SHA, SETTLE_SHA
from .resp import bulk, pack
from .shard import RETRYABLE, Backoff, Shard, Unreachable
from .url import shard_of

log = logging.getLogger("svcbus.layers.redis")

READ_BLOCK_MS = 250
"""How long one XREADGROUP waits for new entries before the receiver claims again:
the precision of a nak's delay and of a dead worker's redelivery."""

CLAIM_EVERY = 0.1
"""Seconds between two XAUTOCLAIMs of one channel by one process while nothing was idle."""

SEND_PATIENCE = 10.0
"""Seconds a durable send keeps repeating while its server does not answer."""

EXPIRE_PATIENCE = 2.0
"""Seconds one expiry sweep waits for its answers (a server away is skipped)."""

log = logging.getLogger("svcbus.layers.redis")
_expiry_notes = RateLimitedLog(log, "reports of expired durable messages")


class RedisDelivery(Delivery):
    """A stream entry delivered to this process's consumer of the ``workers`` group."""

    __slots__ = ("_channel", "_entry", "_streams")

    def __init__(
        self, streams: DurableStreams, channel: str, entry: bytes, data: bytes, attempt: int
    ) -> None:
        super().__init__(data, attempt)
        self._streams = streams
        self._channel = channel
        self._entry = entry

    async def ack(self) -> None:
        # Queued on the channel's pipe, not awaited: the next message's handler need
        # not wait a round trip for this answer. The ack is still written after the
        # handler returned; the layer's flush and close wait for it.
        self._streams.settle_soon(self._channel, self._entry)

    async def nak(self, delay: float) -> None:
        ack_wait_ms = self._streams.ack_wait_ms(self._channel)
        idle = max(0, ack_wait_ms - int(delay * 1000))
        await self._streams.settle(self._channel, self._entry, idle)

    async def in_progress(self) -> None:
        await self._streams.settle(self._channel, self._entry, 0)

    async def term(self) -> None:
        await self._streams.settle(self._channel, self._entry, None)


class _Commands:
    """The packed, unchanging parts of one channel's add and settle commands."""

    __slots__ = ("add_args", "add_with_id", "add_without_id", "settle", "window_key")

    def __init__(
        self,
        add_with_id: bytes,
        add_without_id: bytes,
        add_args: bytes,
        window_key: bytes,
        settle: bytes,
    ) -> None:
        self.add_with_id = add_with_id
        self.add_without_id = add_without_id
        self.add_args = add_args
        self.window_key = window_key
        self.settle = settle


def _head(count: int, *args: bytes | str | int) -> bytes:
    """The start of a command of ``count`` arguments: its header and the first ``args``."""
    packed = pack(*args)
    return b"*%d\r\n" % count + packed[len(b"*%d\r\n" % len(args)) :]


class _Claims:
    """Where this process's XAUTOCLAIM scan of one channel stands, and when it is next due."""

    __slots__ = ("cursor", "due")

    def __init__(self) -> None:
        self.cursor = b"0-0"
        self.due = 0.0


class DurableStreams:
    """The durable channels one Redis layer declared: their streams and this consumer."""

    def __init__(
        self, shards: list[Shard], options: LayerOptions, prefix: str, consumer: str
    ) -> None:
        self._shards = shards
        self._options = options
        self._prefix = prefix
        self.consumer = consumer
        """This layer's consumer name in every ``workers`` group."""
        self.settings: dict[str, Durability] = {}
        """Declared durable channels; ``send`` on one of them stores durably."""
        self._claims: dict[str, _Claims] = {}
        self.expired = 0
        """Stored messages this process dropped after ``max_age`` (handled or not), logged."""
        self._commands: dict[str, _Commands] = {}
        """Per channel: the parts of its add and settle commands that never change."""
        self._acks: dict[str, list[bytes]] = {}
        """Per channel: entries acknowledged in this turn of the event loop, not yet sent."""

    def key(self, channel: str) -> str:
        """The stream of durable ``channel``."""
        return f"{self._prefix}:d:{channel}"

    def shard(self, channel: str) -> Shard:
        """The server holding durable ``channel`` (the same routing as its list)."""
        return self._shards[shard_of(channel, len(self._shards))]

    def ack_wait_ms(self, channel: str) -> int:
        return int(self.settings[channel].ack_wait * 1000)

    async def _call(self, channel: str, command: bytes, what: str) -> Any:
        """One command on the channel's pipe; repeated while the server is unreachable."""
        shard = self.shard(channel)
        try:
            return await shard.pipe.call(command)
        except Unreachable:
            pass  # the retry loop below (the deadline and backoff only cost on this path)
        deadline = time.monotonic() + SEND_PATIENCE
        backoff = Backoff()
        while True:
            await backoff.sleep()
            try:
                return await shard.pipe.call(command)
            except Unreachable as exc:
                if time.monotonic() > deadline:
                    raise LayerError(f"{what} on {channel!r}: {exc}") from None

    async def declare(self, channel: str, settings: Durability) -> None:
        """Create ``channel``'s stream and group if missing (entries already there are kept)."""
        if "!" in channel:
            raise InvalidChannelName(f"{channel!r}: only named channels can be durable")
        await self._create_group(channel)
        self.settings[channel] = settings
        self._commands.pop(channel, None)

    async def _create_group(self, channel: str) -> None:
        command = pack(b"XGROUP", b"CREATE", self.key(channel), GROUP, b"0", b"MKSTREAM")
        try:
            await self._call(channel, command, "creating the durable stream")
        except LayerError as exc:
            if "BUSYGROUP" not in str(exc):  # the group exists: that is the goal
                raise ConfigurationError(
                    f"cannot set up the durable stream of {channel!r}: {exc}"
                ) from None

    async def send(self, channel: str, message: bytes) -> None:
        """Store ``message``; return once Redis answered that it holds it (or held it already)."""
        commands = self._commands.get(channel) or self._prepare(channel)
        message_id = message_id_of(message)
        if message_id is not None:
            # EVALSHA ADD 2 <stream> <window key of the id> <capacity> <window> <age> <message>
            command = b"".join(
                (
                    commands.add_with_id,
                    bulk(commands.window_key + message_id.encode()),
                    commands.add_args,
                    bulk(message),
                )
            )
        else:
            command = b"".join((commands.add_without_id, commands.add_args, bulk(message)))
        # Repeating the same bytes is safe: the window key stores them once.
        reply = await self._call(channel, command, "storing a durable message")
        if reply == 1 or reply == 0:
            return
        # Stored (1 + e) or full (-1 - e) after dropping e expired entries.
        self.count_expired(channel, reply - 1 if reply > 0 else -reply - 1)
        if reply < 0:
            capacity = self._options.capacity_for(channel)
            raise ChannelFull(
                f"durable channel {channel!r} holds {capacity} unacknowledged messages "
                "(its capacity); its consumers are behind: retry later or raise channel_capacity"
            )

    def count_expired(self, channel: str, count: int) -> None:
        """Count (and log, rate-limited) ``count`` messages of ``channel`` dropped after max_age."""
        if count:
            self.expired += count
            _expiry_notes.log(
                channel,
                "%d durable message(s) on %s expired after max_age (%d so far)",
                count,
                channel,
                self.expired,
            )

    async def expire(self) -> None:
        """Drop and count the expired messages of every declared channel (housekeeping).

        Sends drop them too; this reaches channels nobody sends to. A server that
        is away is skipped: the next round (or send) catches up.
        """
        channels = list(self.settings.items())
        calls = asyncio.gather(
            *(
                self.shard(channel).pipe.call(
                    pack(
                        b"EVALSHA",
                        EXPIRE_SHA,
                        1,
                        self.key(channel),
                        max(1, int(settings.max_age * 1000)),
                    )
                )
                for channel, settings in channels
            ),
            return_exceptions=True,
        )
        try:
            # Bounded: the housekeeping that calls this has other work each second.
            replies = await asyncio.wait_for(calls, EXPIRE_PATIENCE)
        except asyncio.TimeoutError:
            return
        for (channel, _), reply in zip(channels, replies, strict=True):
            if isinstance(reply, int):
                self.count_expired(channel, reply)
            else:
                log.debug("could not expire durable channel %s: %s", channel, reply)

    def _prepare(self, channel: str) -> _Commands:
        """Pack the unchanging parts of ``channel``'s commands once (not per message)."""
        settings = self.settings[channel]
        key = self.key(channel)
        args = (
            self._options.capacity_for(channel),
            max(1, int(settings.duplicate_window * 1000)),
            max(1, int(settings.max_age * 1000)),
        )
        commands = _Commands(
            add_with_id=_head(9, b"EVALSHA", ADD_SHA, 2, key),
            add_without_id=_head(8, b"EVALSHA", ADD_SHA, 1, key),
            add_args=b"".join(bulk(b"%d" % value) for value in args),
            window_key=f"{self._prefix}:dd:{channel}:".encode(),
            settle=_head(8, b"EVALSHA", SETTLE_SHA, 1, key, GROUP, self.consumer),
        )
        self._commands[channel] = commands
        return commands

    async def settle(self, channel: str, entry: bytes, idle_ms: int | None) -> None:
        """Remove ``entry`` (None) or set its idle time, if this consumer still holds it."""
        idle = b"" if idle_ms is None else b"%d" % idle_ms
        commands = self._commands.get(channel) or self._prepare(channel)
        command = b"".join((commands.settle, bulk(entry), bulk(idle)))
        await self.shard(channel).pipe.call(command)

    def settle_soon(self, channel: str, entry: bytes) -> None:
        """Acknowledge ``entry`` without waiting for Redis's answer.

        The acks a process makes in one turn of the event loop go out together,
        as one call of the ack script (``XACK`` + ``XDEL`` of every id), queued on
        the channel's pipe when the turn ends or at :meth:`push_acks`. If it fails
        (the connection dropped), the entries stay pending and are claimed again
        after ``ack_wait``: the same outcome as an awaited ack that failed.
        """
        acks = self._acks.get(channel)
        if acks is None:
            acks = self._acks[channel] = []
        if not acks:
            asyncio.get_running_loop().call_soon(self._push_acks, channel)
        acks.append(entry)

    def _push_acks(self, channel: str) -> None:
        entries = self._acks.get(channel)
        if not entries:
            return
        self._acks[channel] = []
        command = pack(b"EVALSHA", ACK_SHA, 1, self.key(channel), GROUP, *entries)
        self.shard(channel).pipe.call(command).add_done_callback(_log_failed_ack)

    def push_acks(self) -> None:
        """Queue every ack not yet on a pipe (before a flush or close waits for the pipes)."""
        for channel in list(self._acks):
            self._push_acks(channel)

    async def receive(self, channel: str, limit: int) -> list[Delivery]:
        """Wait for deliveries: entries idle past ``ack_wait`` first, then new ones."""
        if channel not in self.settings:
            raise ConfigurationError(
                f"{channel!r} is not a durable channel here: declare_durable() it first"
            )
        backoff = Backoff()
        while True:
            try:
                got = await self._claim(channel, limit)
                if not got:
                    got = await self._read(channel, limit)
            except (Unreachable, *RETRYABLE):
                # Receivers keep waiting through an outage; the connections reconnect.
                await backoff.sleep()
                continue
            except (LayerError, ResponseError) as exc:
                if "NOGROUP" not in str(exc):
                    raise
                # The stream is gone (a server restarted without persistence, a
                # deleted key): make it again and go on.
                await self._create_group(channel)
                continue
            backoff.reset()
            if got:
                return got

    async def _claim(self, channel: str, limit: int) -> list[Delivery]:
        claims = self._claims.get(channel)
        if claims is None:
            claims = self._claims[channel] = _Claims()
        now = time.monotonic()
        if now < claims.due:
            return []
        reply = await self.shard(channel).pipe.call(
            pack(
                b"EVALSHA",
                CLAIM_SHA,
                1,
                self.key(channel),
                GROUP,
                self.consumer,
                self.ack_wait_ms(channel),
                claims.cursor,
                limit,
            )
        )
        claims.cursor = reply[0]
        if claims.cursor == b"0-0":
            # Scanned the whole pending list: what is not idle now will not be for a while.
            claims.due = now + CLAIM_EVERY
        return [
            RedisDelivery(self, channel, reply[i], reply[i + 1], int(reply[i + 2]))
            for i in range(1, len(reply) - 2, 3)
        ]

    async def _read(self, channel: str, limit: int) -> list[Delivery]:
        """XREADGROUP for new entries on a connection of its own (it blocks)."""
        shard = self.shard(channel)
        epoch = shard.epoch
        conn = await shard.connection()
        try:
            await conn.send_command(
                "XREADGROUP",
                "GROUP",
                GROUP,
                self.consumer,
                "COUNT",
                limit,
                "BLOCK",
                READ_BLOCK_MS,
                "STREAMS",
                self.key(channel),
                ">",
            )
            reply = await conn.read_response()
        except ResponseError:
            shard.release(conn, epoch)
            raise
        except RETRYABLE as exc:
            shard.lost(exc, epoch)
            with contextlib.suppress(Exception):
                await conn.disconnect(nowait=True)
            raise
        except BaseException:
            # Cancelled mid-command: what the server delivered to this consumer
            # stays pending and is claimed after ack_wait; the connection's state
            # is unknown, so it is not reused.
            with contextlib.suppress(Exception):
                await conn.disconnect(nowait=True)
            raise
        shard.release(conn, epoch)
        if not reply:
            return []
        return [
            RedisDelivery(self, channel, entry, _field(fields, b"d"), 1)
            for entry, fields in reply[0][1]
        ]

    async def close(self) -> None:
        """Leave the groups where this consumer holds nothing (pending entries stay claimable)."""
        self.push_acks()  # ahead of the leave scripts on the same pipes
        calls = [
            self.shard(channel).pipe.call(
                pack(b"EVALSHA", LEAVE_SHA, 1, self.key(channel), GROUP, self.consumer)
            )
            for channel in self.settings
        ]
        if calls:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 2.0)


def _log_failed_ack(future: asyncio.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.warning(
            "could not acknowledge a durable delivery (it will be redelivered): %s",
            future.exception(),
        )


def _field(fields: list[bytes], name: bytes) -> bytes:
    """The value of ``name`` in a stream entry's flat field list (b"" if missing)."""
    for i in range(0, len(fields) - 1, 2):
        if fields[i] == name:
            return fields[i + 1]
    return b""
