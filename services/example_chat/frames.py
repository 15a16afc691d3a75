"""The page's WebSocket protocol: JSON text frames, each with a ``type``.

Page -> chat service: ``{"text": "..."}`` (:class:`PostFrame`).

Chat service -> page: ``welcome`` (to a newcomer: history and who is there),
``message`` (a post, to the room), ``joined`` / ``left`` (to the room),
``error`` (to one socket). The stats service adds ``stats`` frames
(:class:`contracts.stats.StatsUpdated`).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_core import to_json

from contracts.chat import MAX_NICK, MAX_TEXT, ChatPosted, Nick, Room, Text
from svcbus.edge import Send


class PostFrame(BaseModel):
    """What the page sends to post a message."""

    model_config = ConfigDict(extra="forbid")

    text: Text


class Hello(BaseModel):
    """What a connection asks for: the room (from the path) and the nickname (``?nick=``)."""

    room: Room
    nick: Nick


def frame(kind: str, **fields: Any) -> Send:
    """A text frame ``{"type": kind, ...fields}`` for the edge to send."""
    return Send(text=to_json({"type": kind, **fields}).decode())


def welcome(room: str, nick: str, history: list[ChatPosted], nicks: list[str]) -> Send:
    """The first frame a newcomer gets."""
    return frame(
        "welcome",
        room=room,
        nick=nick,
        history=[m.model_dump() for m in history],
        users=nicks,
    )


def message(posted: ChatPosted) -> Send:
    """A post, as the room's sockets see it."""
    return frame("message", **posted.model_dump())


def presence(kind: str, nick: str, nicks: list[str]) -> Send:
    """``joined`` or ``left``, with who is in the room now."""
    return frame(kind, nick=nick, users=nicks)


def error(text: str) -> Send:
    """An error for one socket: what was wrong and what to do."""
    return frame("error", error=text)


def explain(exc: ValidationError) -> str:
    """One friendly line for what is wrong with a frame or a connection request."""
    errors = exc.errors(include_url=False)
    # An unknown field explains a "missing text" better than the missing field does.
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    kind, where = first["type"], ".".join(str(p) for p in first["loc"])
    if kind == "json_invalid":
        return 'not JSON: send {"text": "..."}'
    if kind in ("model_type", "dict_type") or (kind == "missing" and where == "text"):
        return 'send a JSON object like {"text": "..."}'
    if kind == "extra_forbidden":
        return f'unexpected field {where!r}: send only {{"text": "..."}}'
    if where == "text":
        if kind == "string_too_short":
            return "the message is empty"
        if kind == "string_too_long":
            return f"the message is longer than {MAX_TEXT} characters"
        return "the message must be a string"
    if where == "room":
        return "room names are 1-32 lower-case letters, digits and dashes"
    if where == "nick":
        return f"pick a nickname of 1-{MAX_NICK} characters (no control characters)"
    return f"{where or 'frame'}: {first['msg']}"
