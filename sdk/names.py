"""Channel and group names: the rules every layer relies on.

A name is lower-case ``[a-z0-9_.-]`` tokens joined by ``.``; a process-specific
channel adds ``!`` and a local part (``edge.k3f9a1!c7d2``). Transport wildcards
(``*``, ``>``), whitespace and empty tokens are rejected so that no name can
ever widen a NATS subscription or a Redis key pattern.
"""

from __future__ import annotations

import re

from .errors import InvalidChannelName

MAX_NAME_LENGTH = 100

_TOKEN = r"[a-z0-9_-]+"
_NAME = re.compile(rf"{_TOKEN}(?:\.{_TOKEN})*")
_CHANNEL = re.compile(rf"({_TOKEN}(?:\.{_TOKEN})*)(?:!([a-z0-9_-]+(?:\.[a-z0-9_-]+)*))?")


def _explain(kind: str, name: object) -> str:
    if not isinstance(name, str):
        return f"{kind} name must be a str, got {type(name).__name__}"
    if not name:
        return f"{kind} name is empty"
    if len(name) > MAX_NAME_LENGTH:
        return f"{kind} name {name[:40]!r}... is {len(name)} characters; the limit is {MAX_NAME_LENGTH}"
    for bad, why in (("*", "a wildcard"), (">", "a wildcard")):
        if bad in name:
            return f"{kind} name {name!r} contains {bad!r}, {why}; names must be literal"
    if any(c.isspace() for c in name):
        return f"{kind} name {name!r} contains whitespace"
    if kind == "group" and "!" in name:
        return f"group name {name!r} contains '!', which only process-specific channels use"
    if name.count("!") > 1:
        return f"{kind} name {name!r} has more than one '!'"
    if any(not token for token in re.split(r"[.!]", name.split("!", 1)[0])) or (
        "!" in name and any(not t for t in name.split("!", 1)[1].split("."))
    ):
        return f"{kind} name {name!r} has an empty token (leading, trailing or doubled '.' or '!')"
    bad_chars = sorted(
        {c for c in name if not (c.isascii() and (c.islower() or c.isdigit() or c in "._-!"))}
    )
    if bad_chars:
        return f"{kind} name {name!r} contains {''.join(bad_chars)!r}; allowed: a-z 0-9 _ - . and one '!'"
    return f"{kind} name {name!r} is not valid"


# Names already seen valid: a set lookup is cheaper than the regex on the hot
# path. Bounded, because process-specific channel names are unbounded in number.
_known_valid: set[str] = set()
_KNOWN_LIMIT = 4096


def validate_channel(name: str) -> str:
    """Return ``name`` if it is a valid channel name, else raise :class:`InvalidChannelName`."""
    if type(name) is str and name in _known_valid:
        return name
    if type(name) is str and len(name) <= MAX_NAME_LENGTH and _CHANNEL.fullmatch(name):
        if len(_known_valid) < _KNOWN_LIMIT and "!" not in name:
            _known_valid.add(name)
        return name
    raise InvalidChannelName(
        _explain("channel", name) + " (channel names look like 'chat.receive' or 'edge.a1b2!c3d4')"
    )


def validate_group(name: str) -> str:
    """Return ``name`` if it is a valid group name, else raise :class:`InvalidChannelName`."""
    if type(name) is str and len(name) <= MAX_NAME_LENGTH and _NAME.fullmatch(name):
        return name
    raise InvalidChannelName(_explain("group", name) + " (group names look like 'room.lobby')")


def is_process_specific(channel: str) -> bool:
    """True for channels made by ``new_channel()`` (they contain ``!``)."""
    return "!" in channel


def is_reply_channel(name: object) -> bool:
    """True if ``name`` is a valid process-specific channel: the only place a reply may go.

    A reply channel arrives in a message (the envelope's ``rc``), so it is
    untrusted. Process channels are routed to their owner without creating
    anything on the server; a named channel would get a stream or a key made
    for whatever name a message carries.
    """
    return (
        type(name) is str
        and "!" in name
        and len(name) <= MAX_NAME_LENGTH
        and _CHANNEL.fullmatch(name) is not None
    )


def process_part(channel: str) -> str:
    """The part of a process-specific channel before ``!``; it names the owning process."""
    return channel.split("!", 1)[0]
