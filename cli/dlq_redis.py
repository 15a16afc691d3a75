"""``svc dlq`` on Redis: a dead-letter channel's stream, read by entry id, changed by script.

A durable channel ``C``'s letters wait on ``C.dlq`` (by default), itself durable:
the stream ``<prefix>:d:C.dlq`` (docs/protocol.md, "Durable channels on Redis
Streams"). ``XRANGE`` reads them without touching the consumer group, so
listing twice shows the same letters; a letter's position in its id is its
entry id (``orders.place.dlq:1767225600000-0``). Removing a letter is the
layer's settle script (``XACK`` + ``XDEL``), so a letter a worker of the
dead-letter channel holds is not redelivered after it was replayed.
"""

from __future__ import annotations

import asyncio
import re
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from svcbus.durable import DEFAULT_DUPLICATE_WINDOW
from svcbus.errors import ChannelFull, LayerError

from .app import fail
from .dlq_letters import LIMIT, Letter, parse_letter, split_id

if TYPE_CHECKING:
    from svcbus.layers.redis import RedisLayer

_ENTRY = re.compile(rb"\d+-\d+")


class RedisDeadLetters:
    """The dead-letter streams of one Redis layer."""

    def __init__(self, layer: RedisLayer) -> None:
        self.layer = layer

    async def _call(self, channel: str, *args: Any) -> Any:
        from svcbus.layers.redis import pack

        return await self.layer.durable.shard(channel).pipe.call(pack(*args))

    async def exists(self, channel: str) -> bool:
        """Whether durable ``channel``'s stream exists (an empty one still does)."""
        return bool(await self._call(channel, b"EXISTS", self.layer.durable.key(channel)))

    async def letters(self, dead_letter: str, limit: int = LIMIT) -> list[Letter]:
        """The letters waiting on ``dead_letter``, oldest first, without consuming them."""
        key = self.layer.durable.key(dead_letter)
        entries = await self._call(dead_letter, b"XRANGE", key, b"-", b"+", b"COUNT", limit)
        return [_letter(dead_letter, entry, fields) for entry, fields in entries]

    async def get(self, dead_letter: str, position: str) -> Letter | None:
        """The letter with entry id ``position``, or None (replayed, purged, deleted)."""
        if not _ENTRY.fullmatch(position.encode()):
            fail(
                f"{dead_letter}:{position} is not a Redis dead-letter id; they end in the "
                "letter's stream entry id, like orders.place.dlq:1767225600000-0"
            )
        key = self.layer.durable.key(dead_letter)
        entries = await self._call(dead_letter, b"XRANGE", key, position, position)
        return _letter(dead_letter, *entries[0]) if entries else None

    async def replay(self, letter: Letter) -> None:
        """Send the letter's original message back to its channel, then delete the letter."""
        data = letter.payload.encode()
        if await self.exists(letter.channel):
            await self._store(letter.channel, data, f"replay:{letter.id}")
        else:
            await self.layer.send(letter.channel, data)
        dead_letter, position = split_id(letter.id)
        await self._remove(dead_letter, [position.encode()])

    async def _store(self, channel: str, data: bytes, replay_id: str) -> None:
        """The layer's add script, deduplicated by a replay id of its own.

        The original's id may still be in the duplicate window (then the add would
        be a no-op); a replay retried after a lost answer is still stored once.
        """
        from svcbus.layers.redis.durable_wire import ADD_SHA

        durable = self.layer.durable
        capacity = self.layer.options.capacity_for(channel)
        reply = await self._call(
            channel,
            b"EVALSHA",
            ADD_SHA,
            2,
            durable.key(channel),
            f"{self.layer.prefix}:dd:{channel}:{replay_id}",
            capacity,
            int(DEFAULT_DUPLICATE_WINDOW * 1000),
            # This command does not know the channel's max_age: a max age of half the
            # time since 1970 trims nothing; the channel's own sends trim by theirs.
            int(time.time() * 1000) // 2,
            data,
        )
        if reply < 0:
            raise ChannelFull(
                f"durable channel {channel!r} holds {capacity} unacknowledged messages (its "
                "capacity): the letter stays; replay it when its consumers have caught up"
            )

    async def _remove(self, dead_letter: str, entries: list[bytes]) -> None:
        """``XACK`` + ``XDEL`` in one script (plain ``XDEL`` when nobody made the group)."""
        from svcbus.layers.redis.durable_wire import GROUP, SETTLE_SHA

        key = self.layer.durable.key(dead_letter)

        async def remove(entry: bytes) -> None:
            try:
                await self._call(
                    dead_letter, b"EVALSHA", SETTLE_SHA, 1, key, GROUP, b"svc-dlq", entry, b""
                )
            except LayerError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                await self._call(dead_letter, b"XDEL", key, entry)

        # One pipelined batch, not a round trip per letter.
        await asyncio.gather(*(remove(entry) for entry in entries))

    async def purge(self, dead_letter: str) -> int:
        """Delete every letter on ``dead_letter``; how many there were."""
        key = self.layer.durable.key(dead_letter)
        purged = 0
        while True:
            entries = await self._call(dead_letter, b"XRANGE", key, b"-", b"+", b"COUNT", LIMIT)
            if not entries:
                return purged
            await self._remove(dead_letter, [entry for entry, _ in entries])
            purged += len(entries)


def _letter(dead_letter: str, entry: bytes, fields: list[bytes]) -> Letter:
    """A :class:`Letter` from a stream entry (its id's first part is its time, in ms)."""
    data = b""
    for i in range(0, len(fields) - 1, 2):
        if fields[i] == b"d":
            data = fields[i + 1]
    stored = datetime.fromtimestamp(int(entry.split(b"-")[0]) / 1000, timezone.utc)
    return parse_letter(dead_letter, entry.decode(), data, stored)
