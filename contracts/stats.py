"""Contracts of the room statistics: ``stats.get`` (request/reply) and live updates.

The stats service answers ``stats.get`` (also ``GET /api/stats/{room}``
through the edge) and pushes a :class:`StatsUpdated` to the room's stats
group whenever the counts change.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from svcbus import Contract

from .chat import Room, Timestamp


class RoomStats(Contract, version=1):
    """A room's counts at one moment."""

    room: Room
    messages: int = Field(
        ge=0, description="Messages posted since the stats service started.", examples=[42]
    )
    active_users: int = Field(ge=0, description="Sockets in the room now.", examples=[3])
    messages_per_minute: int = Field(
        ge=0, description="Messages posted in the last 60 seconds.", examples=[7]
    )
    last_message_at: int | None = Field(
        None, ge=0, description="When the latest message was counted (Unix ms).", examples=[None]
    )
    seq: int = Field(
        ge=0,
        description="Grows with every change of this room's counts: of two snapshots, "
        "the one with the higher seq is newer.",
        examples=[12],
    )


class StatsQuery(Contract, channel="stats.get", version=1, reply=RoomStats):
    """Ask for a room's counts. A room nobody used yet has all counts zero."""

    room: Room


class StatsUpdated(Contract, version=1):
    """A room's counts changed: pushed live to the sockets in the room's stats group.

    It travels by ``group_send`` to :func:`stats_group` (as the JSON text of an
    edge ``Send`` frame), not on a named channel: every socket watching the room
    wants every update, and a named channel that nobody consumes would fill up.
    """

    type: Literal["stats"] = Field(
        default="stats", description="Frame type for the page: always 'stats'."
    )
    stats: RoomStats
    at: Timestamp


def stats_group(room: str) -> str:
    """The group whose members (sockets) receive ``room``'s live :class:`StatsUpdated`."""
    return f"stats.{room}"
