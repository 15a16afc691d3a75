"""Local group fan-out: which of this process's channels belong to which group, until when.

Every async layer delivers a group message to the members it holds locally: the
memory layer to all of them, the Redis and NATS layers to this process's channels
after one pub/sub message reached the process. The rules are the same everywhere
and live here once:

* a membership lasts ``ttl`` seconds from its last ``add`` (``group_expiry``);
* an expired member receives nothing and is forgotten when next seen;
* a full member misses the message (``group_send`` never raises ChannelFull);
* a group with no members left is forgotten at once.

The layer keeps its own buffers; it hands :meth:`LocalGroups.deliver` a ``put_all``
callback that stores one message in the buffers of all the live members at once,
respecting each one's capacity. One call per message, not one per member: a
1,000-member fan-out is one loop in the layer over one shared buffer entry (the
same bytes object, the same deadline), so receivers in this process can also
share one decoded message. Times are ``time.monotonic()`` readings passed in by
the caller, so one clock reading serves a whole fan-out and tests need no sleeping.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator

PutAll = Callable[[Collection[str], bytes, float], tuple[int, int]]
"""Store ``message`` in the local buffer of each of ``channels`` at time ``now``.

Returns ``(delivered, dropped)``; a member whose buffer is full misses the message
and is counted (and logged) by the layer as dropped.
"""


class _Group:
    """One group's local members and a lower bound on their deadlines."""

    __slots__ = ("members", "soonest")

    def __init__(self) -> None:
        self.members: dict[str, float] = {}
        # No member lapses before ``soonest``: until then a fan-out checks no deadline.
        self.soonest = float("inf")

    def lapse(self, now: float) -> None:
        """Remove the members whose membership ended by ``now``; recompute ``soonest``."""
        members = self.members
        for channel in [c for c, until in members.items() if until <= now]:
            del members[channel]
        self.soonest = min(members.values(), default=float("inf"))


class LocalGroups:
    """Group name -> {member channel: monotonic deadline}, with delivery to local buffers."""

    __slots__ = ("_groups",)

    def __init__(self) -> None:
        self._groups: dict[str, _Group] = {}

    def add(self, group: str, channel: str, ttl: float, now: float) -> None:
        """Make ``channel`` a member of ``group`` (again) until ``now + ttl``."""
        entry = self._groups.get(group)
        if entry is None:
            entry = self._groups[group] = _Group()
        until = now + ttl
        entry.members[channel] = until
        if until < entry.soonest:
            entry.soonest = until

    def discard(self, group: str, channel: str) -> None:
        """Remove ``channel`` from ``group`` if it is a member; forget an emptied group."""
        entry = self._groups.get(group)
        if entry is not None:
            entry.members.pop(channel, None)
            if not entry.members:
                del self._groups[group]

    def discard_channels(self, doomed: Callable[[str], bool]) -> None:
        """Remove every membership of the channels ``doomed`` selects (a closing process's)."""
        for group, entry in list(self._groups.items()):
            for channel in [c for c in entry.members if doomed(c)]:
                del entry.members[channel]
            if not entry.members:
                del self._groups[group]

    def members(self, group: str) -> list[str]:
        """The channels in ``group``, expired ones included until they are next seen."""
        entry = self._groups.get(group)
        return list(entry.members) if entry is not None else []

    def deliver(self, group: str, message: bytes, put_all: PutAll, now: float) -> tuple[int, int]:
        """Give ``message`` to every live member of ``group`` with one ``put_all`` call.

        Returns ``(delivered, dropped)``: how many members got it, and how many
        missed it because their buffer was full. Expired members are removed.
        """
        entry = self._groups.get(group)
        if entry is None:
            return 0, 0
        if entry.soonest <= now:
            entry.lapse(now)
            if not entry.members:
                del self._groups[group]
                return 0, 0
        # The live view itself, not a copy: put_all only fills buffers and schedules
        # wake-ups (asyncio runs no callback inline), so membership cannot change under it.
        return put_all(entry.members.keys(), message, now)

    def expire(self, now: float) -> list[str]:
        """Remove memberships that lapsed by ``now``; return the groups left empty (forgotten)."""
        emptied = []
        for group, entry in list(self._groups.items()):
            if entry.soonest <= now:
                entry.lapse(now)
                if not entry.members:
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
