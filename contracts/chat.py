"""Contracts of the chat rooms: posts, joins and leaves (events) and history (request/reply).

The chat service produces all of them; the stats service consumes the events.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, StringConstraints

from svcbus import Contract

ROOM_PATTERN = r"^[a-z0-9][a-z0-9-]{0,31}$"
"""Room names: 1 to 32 lower-case letters, digits and dashes, not starting with a dash.

Narrow on purpose: a room name becomes part of group names (``stats.<room>``)
and URL paths, so it never needs escaping anywhere.
"""
MAX_NICK = 24
MAX_TEXT = 500
MAX_HISTORY = 50
"""How many of a room's latest messages the chat service keeps (and sends newcomers)."""

Room = Annotated[
    str,
    Field(
        pattern=ROOM_PATTERN,
        description="Room name: 1-32 lower-case letters, digits and dashes.",
        examples=["lobby"],
    ),
]
Nick = Annotated[
    str,
    # Surrounding blanks are trimmed; control characters would let a nickname
    # fake line breaks or terminal escapes in logs and pages.
    StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_NICK),
    Field(
        pattern=r"^[^\x00-\x1f\x7f]+$",
        description=f"Nickname chosen when connecting: 1-{MAX_NICK} characters, no control characters.",
        examples=["ada"],
    ),
]
Text = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_TEXT),
    Field(
        description=f"The message, plain text (never HTML): 1-{MAX_TEXT} characters.",
        examples=["hello, room!"],
    ),
]
Timestamp = Annotated[
    int, Field(ge=0, description="Unix time in milliseconds.", examples=[1735689600000])
]


class ChatPosted(Contract, channel="chat.posted", version=1):
    """A message was posted in a room.

    Sent by the chat service after it accepted the message, stored it in the
    room's history and sent it to the room's sockets.
    """

    id: str = Field(
        min_length=1,
        max_length=32,
        description="Message id, unique within the chat service.",
        examples=["5f1c0a9e3b7d2c41"],
    )
    room: Room
    nick: Nick
    text: Text
    at: Timestamp


class RoomJoined(Contract, channel="chat.joined", version=1):
    """Someone joined a room (their WebSocket was accepted)."""

    room: Room
    nick: Nick
    online: int = Field(ge=0, description="Sockets in the room after this join.", examples=[3])
    at: Timestamp


class RoomLeft(Contract, channel="chat.left", version=1):
    """Someone left a room (their WebSocket closed, for whatever reason)."""

    room: Room
    nick: Nick
    online: int = Field(ge=0, description="Sockets in the room after this leave.", examples=[2])
    at: Timestamp


class HistoryReply(Contract, version=1):
    """A room's latest messages, oldest first."""

    room: Room
    messages: list[ChatPosted] = Field(
        max_length=MAX_HISTORY, description="At most the last 50 messages, oldest first."
    )


class HistoryQuery(Contract, channel="chat.history", version=1, reply=HistoryReply):
    """Ask the chat service for a room's latest messages.

    The edge also serves it as ``GET /api/history/{room}?limit=20``.
    """

    room: Room
    limit: int = Field(
        MAX_HISTORY,
        ge=1,
        le=MAX_HISTORY,
        description="How many of the latest messages to return.",
        examples=[20],
    )
