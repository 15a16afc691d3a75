"""Local group fan-out: which of this process's channels belong to which group, until when.

Every async layer delivers a group message to the members it holds locally: the
memory layer to all of them, the Redis and NATS layers to this process's channels
after one pub/sub message reached the process. The rules are the same everywhere
and live here once:

* a membership lasts ``ttl`` seconds from its last ``add`` (``group_expiry``);
* an expired member receives nothing and is forgotten when next seen;
* a full member misses the message (``group_send`` never raises ChannelFull);
* a group with no members left is forgotten at once.

The layer keeps its own buffers; it hands :meth:`LocalGroups.deliver` a ``put``
callback that stores one message in one channel's buffer, respecting its
capacity. Times are ``time.monotonic()`` readings passed in by the caller, so one
clock reading serves a whole fan-out and tests need no sleeping.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

Put = Callable[[str, bytes], bool]
"""Store ``message`` in ``channel``'s local buffer; False when the buffer is full (dropped)."""


class LocalGroups:
    """Group name -> {member channel: monotonic deadline}, with delivery to local buffers."""

    __slots__ = ("_groups",)

    def __init__(self) -> None:
        self._groups: dict[str, dict[str, float]] = {}

    def add(self, group: str, channel: str, ttl: float, now: float) -> None:
        """Make ``channel`` a member of ``group`` (again) until ``now + ttl``."""
        self._groups.setdefault(group, {})[channel] = now + ttl

    def discard(self, group: str, channel: str) -> None:
        """Remove ``channel`` from ``group`` if it is a member; forget an emptied group."""
        members = self._groups.get(group)
        if members is not None:
            members.pop(channel, None)
            if not members:
                del self._groups[group]

    def discard_channels(self, doomed: Callable[[str], bool]) -> None:
        """Remove every membership of the channels ``doomed`` selects (a closing process's)."""
        for group, members in list(self._groups.items()):
            for channel in [c for c in members if doomed(c)]:
                del members[channel]
            if not members:
                del self._groups[group]

    def members(self, group: str) -> list[str]:
        """The channels in ``group``, expired ones included until they are next seen."""
        return list(self._groups.get(group, ()))

    def deliver(self, group: str, message: bytes, put: Put, now: float) -> tuple[int, int]:
        """Give ``message`` to each live member of ``group`` through ``put``.

        Returns ``(delivered, dropped)``: how many members got it, and how many
        missed it because their buffer was full. Expired members are removed.
        """
        members = self._groups.get(group)
        if not members:
            return 0, 0
        delivered = dropped = 0
        expired: list[str] = []
        for channel, until in members.items():
            if until <= now:
                expired.append(channel)
            elif put(channel, message):
                delivered += 1
            else:
                dropped += 1
        if expired:
            for channel in expired:
                del members[channel]
            if not members:
                del self._groups[group]
        return delivered, dropped

    def expire(self, now: float) -> list[str]:
        """Remove memberships that lapsed by ``now``; return the groups left empty (forgotten)."""
        emptied = []
        for group, members in list(self._groups.items()):
            for channel in [c for c, until in members.items() if until <= now]:
                del members[channel]
            if not members:
                del self._groups[group]
                emptied.append(group)
        return emptied

    def clear(self) -> None:
        """Forget every group."""
        self._groups.clear()

    def __contains__(self, group: object) -> bool:
        return group in self._groups

    def __iter__(self) -> Iterator[str]:
        """The groups with at least one member (copied: safe to change while iterating)."""
        return iter(list(self._groups))

    def __len__(self) -> int:
        return len(self._groups)

    def __repr__(self) -> str:
        return f"LocalGroups({len(self._groups)} groups)"
