"""The one local group fan-out (layers/_fanout.py) that the async layers share."""

from __future__ import annotations

from collections.abc import Collection

import pytest

from svcbus import Bus
from svcbus.layer import LayerOptions
from svcbus.layers._fanout import LocalGroups
from svcbus.layers.memory import MemoryLayer


class Buffers:
    """Local buffers with a capacity, as a layer keeps them."""

    def __init__(self, capacity: int = 2) -> None:
        self.capacity = capacity
        self.items: dict[str, list[bytes]] = {}

    def put(self, channels: Collection[str], message: bytes, now: float) -> tuple[int, int]:
        delivered = dropped = 0
        for channel in channels:
            items = self.items.setdefault(channel, [])
            if len(items) >= self.capacity:
                dropped += 1
            else:
                items.append(message)
                delivered += 1
        return delivered, dropped


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


def test_every_member_gets_the_same_bytes_object() -> None:
    groups = LocalGroups()
    for name in ("a", "b", "c"):
        groups.add("room", name, 10, now=0)
    buffers = Buffers()
    message = b"hi"
    groups.deliver("room", message, buffers.put, now=1)
    assert all(items[0] is message for items in buffers.items.values())


def test_a_member_added_with_a_shorter_ttl_still_lapses_on_time() -> None:
    groups = LocalGroups()
    groups.add("room", "long", 100, now=0)
    groups.add("room", "short", 5, now=1)  # the group's soonest deadline moves earlier
    assert groups.deliver("room", b"1", Buffers().put, now=5) == (2, 0)
    assert groups.deliver("room", b"2", Buffers().put, now=6) == (1, 0)
    assert groups.members("room") == ["long"]
    groups.add("room", "long", 100, now=7)  # renewing never hides a lapse that is due
    assert groups.expire(now=101) == []
    assert groups.expire(now=107) == ["room"]


@pytest.mark.anyio
async def test_local_members_share_one_decoded_group_message() -> None:
    """One validation per group message: every member's receive returns the same envelope."""
    async with Bus(MemoryLayer()) as bus:
        channels = [await bus.new_channel("ws") for _ in range(3)]
        for channel in channels:
            await bus.group_add("room", channel)
        await bus.group_send("room", {"text": "hi"})
        envelopes = [await bus.receive(channel) for channel in channels]
        assert envelopes[0].b == {"text": "hi"}
        assert all(envelope is envelopes[0] for envelope in envelopes)
        await bus.group_send("room", {"text": "again"})  # a new message is decoded anew
        assert (await bus.receive(channels[0])).b == {"text": "again"}


@pytest.mark.anyio
async def test_full_members_still_miss_and_are_counted() -> None:
    layer = MemoryLayer(LayerOptions(capacity=1))
    async with Bus(layer) as bus:
        roomy, full = await bus.new_channel("ws"), await bus.new_channel("ws")
        await bus.group_add("room", roomy)
        await bus.group_add("room", full)
        await layer.send(full, b"{}")
        await bus.group_send("room", {"n": 1})
        assert layer.dropped == 1
        assert (await bus.receive(roomy)).b == {"n": 1}
        assert await layer.receive(full) == b"{}"
