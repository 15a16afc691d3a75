"""The example system's shared contracts: what the chat and stats services say to each other.

Like ``.proto`` files, these modules are imported by every service (and the
edge) that sends or receives the messages; importing one registers its
contracts, so sends and receives on their channels are validated.

* :mod:`contracts.chat`: ``chat.posted``, ``chat.joined``, ``chat.left``
  (events) and ``chat.history`` (request/reply).
* :mod:`contracts.stats`: ``stats.get`` (request/reply) and the live
  :class:`~contracts.stats.StatsUpdated` pushed to ``stats.<room>`` groups.
"""

from .chat import (
    MAX_HISTORY,
    MAX_NICK,
    MAX_TEXT,
    ROOM_PATTERN,
    ChatPosted,
    HistoryQuery,
    HistoryReply,
    Nick,
    Room,
    RoomJoined,
    RoomLeft,
    Text,
)
from .stats import RoomStats, StatsQuery, StatsUpdated, stats_group

__all__ = [
    "MAX_HISTORY",
    "MAX_NICK",
    "MAX_TEXT",
    "ROOM_PATTERN",
    "ChatPosted",
    "HistoryQuery",
    "HistoryReply",
    "Nick",
    "Room",
    "RoomJoined",
    "RoomLeft",
    "RoomStats",
    "StatsQuery",
    "StatsUpdated",
    "Text",
    "stats_group",
]
