"""The stats service: counts what happens in the chat rooms.

It consumes the chat service's events (``chat.posted``, ``chat.joined``,
``chat.left``), answers ``stats.get`` (also ``GET /api/stats/{room}``
through the edge) and pushes every change to the room's stats group, which
the page's chat sockets join.
"""

from __future__ import annotations

import time

from contracts.chat import ChatPosted, RoomJoined, RoomLeft
from contracts.stats import RoomStats, StatsQuery, StatsUpdated, stats_group
from svcbus import Context, Service
from svcbus.context import BlockingContext
from svcbus.edge import Send

from .counters import Counters

service = Service(
    "stats",
    description="Counts messages and users per room from the chat events, answers stats.get "
    "and pushes every change live to the room's stats group.",
)
counters = Counters()
"""This process's counters (tests may replace it with a fresh ``Counters()``)."""


def update_frame(stats: RoomStats) -> Send:
    """The live update as the WebSocket frame the page receives."""
    update = StatsUpdated(stats=stats, at=int(time.time() * 1000))
    return Send(text=update.model_dump_json())


@service.consumes("chat.posted")
async def count_post(msg: ChatPosted, ctx: Context) -> None:
    """Count a message and push the room's new counts."""
    stats = counters.post(msg.room)
    await ctx.group_send(stats_group(msg.room), update_frame(stats))


# Plain `def` consumers run in worker threads with a blocking context: the
# style for code that calls blocking libraries (here only the counters' lock).
@service.consumes("chat.joined")
def count_join(msg: RoomJoined, ctx: BlockingContext) -> None:
    """Record the room's new number of sockets and push it."""
    count_presence(msg, ctx)


@service.consumes("chat.left")
def count_leave(msg: RoomLeft, ctx: BlockingContext) -> None:
    """Record the room's new number of sockets and push it."""
    count_presence(msg, ctx)


def count_presence(msg: RoomJoined | RoomLeft, ctx: BlockingContext) -> None:
    """Both presence events carry the room's socket count after them."""
    stats = counters.presence(msg.room, msg.online, msg.at)
    if stats is not None:  # None: a later join or leave was counted already
        ctx.group_send(stats_group(msg.room), update_frame(stats))


@service.consumes("stats.get")
def get_stats(query: StatsQuery) -> RoomStats:
    """A room's counts now (a room nobody used has zeros)."""
    return counters.get(query.room)
