"""A small system for the docs tests: two services, request/reply, enums,
nested models, bytes, examples, and a description that tries to inject HTML.

Channels are prefixed ``docsample.`` so they cannot clash with contracts other
tests register in the process-wide registry.
"""

from __future__ import annotations

import enum
from types import SimpleNamespace
from typing import Literal

from pydantic import ConfigDict, Field

from svcbus import Contract, Service


class Mood(str, enum.Enum):
    """How a post feels."""

    happy = "happy"
    sad = "sad"


class Author(Contract):
    """Who wrote a post."""

    name: str = Field(max_length=40, description="Display name.", examples=["ada"])
    id: int = Field(ge=1, description="User id.", examples=[7])


class Posted(Contract, channel="docsample.posted", version=2):
    """A message was posted in a room. <script>alert("x")</script>

    Sent by the chat service after it stored the post.
    """

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "room": "lobby",
                    "text": "hi",
                    "author": {"name": "ada", "id": 7},
                    "mood": "happy",
                }
            ]
        }
    )

    room: str = Field(pattern=r"^[a-z0-9-]+$", max_length=32, description="Room slug.")
    text: str = Field(max_length=500, description="The post <b>text</b>.")
    author: Author
    mood: Mood = Mood.happy
    tags: list[str] = Field(default_factory=list, max_length=5)
    attachment: bytes | None = Field(default=None, description="Raw bytes, base64 on the wire.")


class StatsReply(Contract):
    """Counts for one room."""

    room: str
    posts: int = Field(ge=0)
    top: list[Author] = []


class StatsQuery(Contract, channel="docsample.stats", reply=StatsReply):
    """Ask for a room's statistics."""

    room: str = Field(description="Room slug.", examples=["lobby"])
    window: Literal["hour", "day", "week"] = Field(default="day", examples=["day"])


class Receive(Contract, channel="docsample.receive"):
    """A browser sent a chat line over the WebSocket."""

    room: str
    text: str


chat = Service("chat", description="Chat rooms <em>and</em> posts.")


@chat.consumes("docsample.receive", produces=["docsample.posted"])
async def on_receive(msg: Receive) -> None:
    """Store the line and announce it."""


chat.produces("docsample.audit")

stats = Service("stats", description="Counts posts; answers stats queries.")


@stats.consumes("docsample.posted")
async def count(msg: Posted) -> None:
    """Count a post."""


@stats.consumes("docsample.stats")
async def get_stats(query: StatsQuery) -> StatsReply:
    """Answer a stats query."""
    return StatsReply(room=query.room, posts=0)


class Routes:
    """Shaped like ``svcbus.edge.Routes`` (``websocket`` and ``http`` lists), without the edge."""

    def __init__(self) -> None:
        self.websocket = [
            SimpleNamespace(
                path="/ws/chat", connect=None, receive="docsample.receive", disconnect=None
            )
        ]
        self.http = [
            SimpleNamespace(path="/stats/{room}", channel="docsample.stats", methods=("GET",))
        ]
        self.static = [SimpleNamespace(prefix="/", directory="web")]


routes = Routes()
SERVICES = [chat, stats]
