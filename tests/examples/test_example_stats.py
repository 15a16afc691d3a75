"""The stats service under the test harness: counts, live updates, requests."""

from __future__ import annotations

import inspect
import time
from collections.abc import AsyncIterator

import anyio
import pytest

from contracts.chat import ChatPosted, RoomJoined, RoomLeft
from contracts.stats import RoomStats, StatsQuery, StatsUpdated, stats_group
from services.example_stats import consumers
from services.example_stats.counters import Counters
from svcbus import MessageInvalid
from svcbus.edge import Send
from svcbus.testing import Harness, harness

pytestmark = pytest.mark.anyio


@pytest.fixture
async def stats(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Harness]:
    """The stats service with no counts, on a private memory hub."""
    monkeypatch.setattr(consumers, "counters", Counters())
    async with harness(consumers.service) as h:
        yield h


def posted(room: str, n: int) -> ChatPosted:
    return ChatPosted(
        id=f"m{n}", room=room, nick="ada", text=f"text {n}", at=int(time.time() * 1000)
    )


async def watch(h: Harness, room: str) -> str:
    """A channel in the room's stats group, as a page's socket would be."""
    channel = await h.bus.new_channel("edge")
    await h.bus.group_add(stats_group(room), channel)
    return channel


async def next_update(h: Harness, channel: str) -> RoomStats:
    with anyio.fail_after(3):
        frame = (await h.bus.receive(channel, Send)).b
    return StatsUpdated.model_validate_json(frame.text).stats


async def test_posts_are_counted_per_room_and_pushed_live(stats: Harness) -> None:
    lobby = await watch(stats, "lobby")
    other = await watch(stats, "other")
    for n in range(3):
        await stats.send("chat.posted", posted("lobby", n))
    updates = [await next_update(stats, lobby) for _ in range(3)]
    assert [u.messages for u in updates] == [1, 2, 3]
    assert [u.seq for u in updates] == [1, 2, 3]
    assert updates[-1].messages_per_minute == 3
    assert updates[-1].last_message_at is not None

    reply = await stats.request("stats.get", StatsQuery(room="lobby"))
    assert isinstance(reply, RoomStats)
    assert (reply.messages, reply.messages_per_minute, reply.seq) == (3, 3, 3)
    assert (await stats.request("stats.get", StatsQuery(room="other"))).messages == 0
    with anyio.move_on_after(0.2):
        await stats.bus.receive(other)
        pytest.fail("a room's update reached another room's group")


async def test_joins_and_leaves_set_active_users_in_the_sync_consumers(stats: Harness) -> None:
    lobby = await watch(stats, "lobby")
    now = int(time.time() * 1000)
    await stats.send("chat.joined", RoomJoined(room="lobby", nick="ada", online=1, at=now))
    first = await next_update(stats, lobby)
    assert (first.active_users, first.seq) == (1, 1)
    # Joins and leaves travel on two channels and may be handled in either
    # order: the count with the latest `at` wins whatever the order.
    await stats.send("chat.left", RoomLeft(room="lobby", nick="ada", online=1, at=now + 2))
    await stats.send("chat.joined", RoomJoined(room="lobby", nick="bob", online=2, at=now + 1))
    await stats.next_call("chat.left")
    for _ in range(2):  # ada's join (already pushed) and bob's
        await stats.next_call("chat.joined")
    reply = await stats.request("stats.get", StatsQuery(room="lobby"))
    assert reply.active_users == 1
    assert not inspect.iscoroutinefunction(consumers.count_join)  # runs in a worker thread


def test_an_older_presence_count_is_ignored() -> None:
    counters = Counters()
    assert counters.presence("lobby", 2, at=20) is not None
    assert counters.presence("lobby", 5, at=10) is None
    assert counters.get("lobby").active_users == 2


async def test_an_unknown_room_has_zeros_and_a_bad_room_is_refused(stats: Harness) -> None:
    reply = await stats.request("stats.get", {"room": "never-used"})
    assert reply == RoomStats(
        room="never-used", messages=0, active_users=0, messages_per_minute=0, seq=0
    )
    with pytest.raises(MessageInvalid, match="room"):
        await stats.request("stats.get", {"room": "../etc"})


def test_messages_per_minute_counts_the_last_60_seconds_only() -> None:
    counters = Counters()
    now = time.time()
    counters.post("lobby", at=now - 90)
    counters.post("lobby", at=now - 30)
    counters.post("lobby", at=now - 1)
    snapshot = counters.get("lobby")
    assert (snapshot.messages, snapshot.messages_per_minute) == (3, 2)


def test_counters_are_bounded_and_reads_store_nothing() -> None:
    counters = Counters(max_rooms=2)
    for room in ("a", "b", "c"):
        counters.post(room)
    counters.get("never")
    assert counters.get("a").messages == 0  # evicted, least recently updated
    assert counters.get("c").messages == 1
    assert len(counters._rooms) == 2
