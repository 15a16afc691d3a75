"""The chat service's state: who is in which room, and each room's latest messages.

Plain data, no I/O, so the consumers stay short and the rules are easy to test.
The state lives in the chat service's memory: run one chat service per system
(its rooms would otherwise be split between instances).
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from contracts.chat import MAX_HISTORY, ChatPosted

MAX_ROOMS = 1000
"""Rooms kept at most; the least recently used empty rooms (and their history) go first."""


@dataclass(frozen=True)
class Member:
    """One socket in a room: its reply channel, room and nickname."""

    reply_channel: str
    room: str
    nick: str


@dataclass
class Room:
    """A room: its sockets and its last :data:`MAX_HISTORY` messages."""

    name: str
    members: dict[str, Member] = field(default_factory=dict)
    """Reply channel -> member."""
    history: deque[ChatPosted] = field(default_factory=lambda: deque(maxlen=MAX_HISTORY))

    @property
    def nicks(self) -> list[str]:
        """The nicknames in the room, sorted (one entry per socket)."""
        return sorted(m.nick for m in self.members.values())


class Rooms:
    """Every room of the chat service, and which socket is in which."""

    def __init__(self, max_rooms: int = MAX_ROOMS) -> None:
        self.max_rooms = max_rooms
        self._rooms: OrderedDict[str, Room] = OrderedDict()
        self._members: dict[str, Member] = {}
        self._last_stamp = 0

    def stamp(self) -> int:
        """Now in Unix milliseconds, strictly later than any earlier stamp.

        Joins and leaves travel on different channels, so consumers may see them
        out of order; a strictly growing ``at`` lets them keep the latest.
        """
        self._last_stamp = max(int(time.time() * 1000), self._last_stamp + 1)
        return self._last_stamp

    def room(self, name: str) -> Room:
        """The room ``name``, created if new (and marked as recently used)."""
        room = self._rooms.get(name)
        if room is None:
            room = self._rooms[name] = Room(name)
            self._evict()
        self._rooms.move_to_end(name)
        return room

    def join(self, reply_channel: str, room: str, nick: str) -> Room:
        """Put the socket ``reply_channel`` in ``room`` as ``nick``."""
        self.leave(reply_channel)  # a socket is in one room at most
        member = Member(reply_channel, room, nick)
        found = self.room(room)
        found.members[reply_channel] = member
        self._members[reply_channel] = member
        return found

    def leave(self, reply_channel: str) -> Member | None:
        """Take the socket out of its room; returns who left, or None if it was in none."""
        member = self._members.pop(reply_channel, None)
        if member is not None:
            room = self._rooms.get(member.room)
            if room is not None:
                room.members.pop(reply_channel, None)
        return member

    def member(self, reply_channel: str) -> Member | None:
        """Who the socket ``reply_channel`` is, if it is in a room."""
        return self._members.get(reply_channel)

    def post(self, member: Member, text: str) -> ChatPosted:
        """Store ``text`` from ``member`` in its room's history and return the event."""
        posted = ChatPosted(
            id=secrets.token_hex(8),
            room=member.room,
            nick=member.nick,
            text=text,
            at=self.stamp(),
        )
        self.room(member.room).history.append(posted)
        return posted

    def history(self, room: str, limit: int = MAX_HISTORY) -> list[ChatPosted]:
        """The latest ``limit`` messages of ``room``, oldest first (empty for unknown rooms)."""
        found = self._rooms.get(room)
        if found is None:
            return []
        return list(found.history)[-limit:]

    def _evict(self) -> None:
        # Anyone may name a new room; without a cap the history of abandoned
        # rooms would grow without bound. Occupied rooms are never evicted.
        excess = len(self._rooms) - self.max_rooms
        if excess <= 0:
            return
        for name in [n for n, r in self._rooms.items() if not r.members][:excess]:
            del self._rooms[name]
