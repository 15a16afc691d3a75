"""The one local group fan-out (layers/_fanout.py) that the async layers share."""

from __future__ import annotations

from svcbus.layers._fanout import LocalGroups


class Buffers:
    """Local buffers with a capacity, as a layer keeps them."""

    def __init__(self, capacity: int = 2) -> None:
        self.capacity = capacity
        self.items: dict[str, list[bytes]] = {}

    def put(self, channel: str, message: bytes) -> bool:
        items = self.items.setdefault(channel, [])
        if len(items) >= self.capacity:
            return False
        items.append(message)
        return True


def test_deliver_reaches_every_live_member() -> None:
    groups = LocalGroups()
    groups.add("room", "a", 10, now=0)
    groups.add("room", "b", 10, now=0)
    buffers = Buffers()
    assert groups.deliver("room", b"hi", buffers.put, now=1) == (2, 0)
    assert buffers.items == {"a": [b"hi"], "b": [b"hi"]}


def test_a_full_member_misses_the_message_and_stays_a_member() -> None:
    groups = LocalGroups()
    groups.add("room", "a", 10, now=0)
    buffers = Buffers(capacity=1)
    assert groups.deliver("room", b"1", buffers.put, now=1) == (1, 0)
    assert groups.deliver("room", b"2", buffers.put, now=1) == (0, 1)
    assert buffers.items == {"a": [b"1"]}
    assert groups.members("room") == ["a"]


def test_expired_members_get_nothing_and_an_emptied_group_is_forgotten() -> None:
    groups = LocalGroups()
    groups.add("room", "a", 5, now=0)
    groups.add("room", "b", 20, now=0)
    buffers = Buffers()
    assert groups.deliver("room", b"hi", buffers.put, now=5) == (1, 0)
    assert groups.members("room") == ["b"]
    assert groups.deliver("room", b"hi", buffers.put, now=20) == (0, 0)
    assert "room" not in groups and len(groups) == 0


def test_add_again_renews_the_membership() -> None:
    groups = LocalGroups()
    groups.add("room", "a", 5, now=0)
    groups.add("room", "a", 5, now=4)
    assert groups.deliver("room", b"hi", Buffers().put, now=6) == (1, 0)


def test_expire_reports_the_groups_it_emptied() -> None:
    groups = LocalGroups()
    groups.add("short", "a", 1, now=0)
    groups.add("mixed", "a", 1, now=0)
    groups.add("mixed", "b", 9, now=0)
    assert groups.expire(now=2) == ["short"]
    assert list(groups) == ["mixed"] and groups.members("mixed") == ["b"]


def test_discard_and_discard_channels_forget_emptied_groups() -> None:
    groups = LocalGroups()
    groups.add("room", "a", 9, now=0)
    groups.add("room", "x!1", 9, now=0)
    groups.add("other", "x!2", 9, now=0)
    groups.discard("room", "a")
    groups.discard("nobody", "a")  # unknown group: nothing happens
    groups.discard_channels(lambda channel: channel.startswith("x!"))
    assert not groups
    assert groups.deliver("room", b"hi", Buffers().put, now=1) == (0, 0)
