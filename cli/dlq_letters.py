"""What ``svc dlq`` shows, on every layer: dead letters, their ids, and the store interface.

A letter's id is ``<dead-letter channel>:<position>`` (``:`` never appears in a
channel name), so ``svc dlq show`` needs no channel argument. The position is
the layer's own: a JetStream stream sequence on NATS (``orders.place.dlq:12``),
a stream entry id on Redis (``orders.place.dlq:1767225600000-0``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from .app import check_channel, fail

LIMIT = 1000
"""Letters ``list`` and ``replay --all`` read at most per call."""

_POSITION = re.compile(r"\d+(-\d+)?")


@dataclass
class Letter:
    """One dead letter as stored: where it waits, and what the runtime wrote into it."""

    id: str
    channel: str
    """The channel the message was sent to (where ``replay`` sends it back)."""
    reason: str
    attempts: int | None
    error_type: str | None
    time: str
    message_id: str | None
    truncated: bool
    payload: str


class DeadLetterStore(Protocol):
    """Where one layer keeps dead letters: read without consuming, replay, purge."""

    async def exists(self, channel: str) -> bool:
        """Whether durable ``channel`` exists on the server."""

    async def letters(self, dead_letter: str, limit: int = LIMIT) -> list[Letter]:
        """The letters waiting on ``dead_letter``, oldest first."""

    async def get(self, dead_letter: str, position: str) -> Letter | None:
        """The letter at ``position``, or None when it is gone."""

    async def replay(self, letter: Letter) -> None:
        """Send the letter's original message back to its channel, then delete the letter."""

    async def purge(self, dead_letter: str) -> int:
        """Delete every letter on ``dead_letter``; how many there were."""


def letter_id(dead_letter: str, position: str) -> str:
    """The id ``svc dlq show`` takes: ``<dead-letter channel>:<position>``."""
    return f"{dead_letter}:{position}"


def split_id(letter: str) -> tuple[str, str]:
    """``(dead-letter channel, position)`` of an id made by :func:`letter_id`."""
    channel, sep, position = letter.rpartition(":")
    if not sep or not _POSITION.fullmatch(position):
        fail(
            f"{letter!r} is not a dead-letter id; ids look like orders.place.dlq:12 (NATS) "
            "or orders.place.dlq:1767225600000-0 (Redis): copy one from svc dlq list"
        )
    check_channel(channel)
    return channel, position


def parse_letter(dead_letter: str, position: str, data: bytes, stored: datetime | None) -> Letter:
    """A :class:`Letter` from a stored message (a ``DeadLetter`` envelope)."""
    try:
        body: dict[str, Any] = json.loads(data)["b"]
    except (ValueError, KeyError, TypeError):
        body = {
            "channel": "?",
            "reason": "not a dead letter",
            "payload": data.decode(errors="replace"),
        }
    return Letter(
        id=letter_id(dead_letter, position),
        channel=str(body.get("channel", "?")),
        reason=str(body.get("reason", "")),
        attempts=body.get("attempts"),
        error_type=body.get("error_type"),
        time=stored.isoformat(timespec="seconds") if stored else "",
        message_id=body.get("message_id"),
        truncated=bool(body.get("truncated", False)),
        payload=str(body.get("payload", "")),
    )
