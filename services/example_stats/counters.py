"""Per-room counters: messages, active users, messages in the last minute.

Thread-safe: the stats service's plain ``def`` consumers run in worker
threads while its ``async def`` ones run on the event loop, and both update
the same counters.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from contracts.stats import RoomStats

WINDOW = 60.0
"""Seconds of the messages-per-minute window."""
MAX_ROOMS = 1000
"""Rooms counted at most; the least recently updated go first."""
MAX_RECENT = 10_000
"""Timestamps kept per room for the rate: beyond that it saturates instead of growing."""


@dataclass
class _Room:
    messages: int = 0
    active_users: int = 0
    last_message_at: int | None = None
    presence_at: int = 0
    """``at`` of the join or leave that set ``active_users``."""
    seq: int = 0
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=MAX_RECENT))
    """Wall-clock seconds of the posts in the current window."""


class Counters:
    """Every room's counts; each update returns the room's new :class:`RoomStats`."""

    def __init__(self, max_rooms: int = MAX_ROOMS) -> None:
        self.max_rooms = max_rooms
        self._rooms: OrderedDict[str, _Room] = OrderedDict()
        self._lock = threading.Lock()

    def post(self, room: str, at: float | None = None) -> RoomStats:
        """Count one message posted in ``room`` (at ``at`` seconds, default now)."""
        now = time.time() if at is None else at
        with self._lock:
            counts = self._room(room)
            counts.messages += 1
            counts.recent.append(now)
            counts.last_message_at = int(now * 1000)
            counts.seq += 1
            return self._snapshot(room, counts, now)

    def presence(self, room: str, online: int, at: int) -> RoomStats | None:
        """Record that ``room`` had ``online`` sockets at ``at`` (Unix ms, from a join or leave).

        Joins and leaves arrive on two channels, so in any order: a count older
        than the one recorded is ignored (returns None: nothing changed).
        """
        now = time.time()
        with self._lock:
            counts = self._room(room)
            if at < counts.presence_at:
                return None
            counts.presence_at = at
            counts.active_users = online
            counts.seq += 1
            return self._snapshot(room, counts, now)

    def get(self, room: str) -> RoomStats:
        """The counts of ``room`` now; all zero for a room never seen (which is not stored)."""
        now = time.time()
        with self._lock:
            counts = self._rooms.get(room)
            return self._snapshot(room, counts or _Room(), now)

    def _room(self, room: str) -> _Room:
        counts = self._rooms.get(room)
        if counts is None:
            counts = self._rooms[room] = _Room()
            if len(self._rooms) > self.max_rooms:
                self._rooms.popitem(last=False)
        self._rooms.move_to_end(room)
        return counts

    @staticmethod
    def _snapshot(room: str, counts: _Room, now: float) -> RoomStats:
        recent = counts.recent
        while recent and recent[0] <= now - WINDOW:
            recent.popleft()
        return RoomStats(
            room=room,
            messages=counts.messages,
            active_users=counts.active_users,
            messages_per_minute=len(recent),
            last_message_at=counts.last_message_at,
            seq=counts.seq,
        )
