# -*- coding: utf-8 -*-
# Python 2.7 compatible on purpose: pyupgrade (UP) and py3-only idioms must not rewrite it.
"""Channel and group names: the rules of docs/protocol.md (same as ``svcbus.names``)."""

from __future__ import absolute_import, division, print_function, unicode_literals

import re

from .compat import string_types
from .errors import InvalidChannelName

MAX_NAME_LENGTH = 100

_TOKEN = r"[a-z0-9_-]+"
_GROUP = re.compile(r"{0}(?:\.{0})*\Z".format(_TOKEN))
_CHANNEL = re.compile(r"{0}(?:\.{0})*(?:!{0}(?:\.{0})*)?\Z".format(_TOKEN))


def _check(name, pattern, kind, example):
    if not isinstance(name, string_types) or len(name) > MAX_NAME_LENGTH or not pattern.match(name):
        raise InvalidChannelName(
            "{0} name {1!r} is not valid: use lower-case tokens of a-z 0-9 _ - joined by "
            "'.', at most {2} characters, no wildcards or whitespace (like {3!r})".format(
                kind, name, MAX_NAME_LENGTH, example
            )
        )
    return name


def validate_channel(name):
    """Return ``name`` if it is a valid channel name, else raise InvalidChannelName."""
    return _check(name, _CHANNEL, "channel", "chat.receive")


def validate_group(name):
    """Return ``name`` if it is a valid group name (no '!'), else raise InvalidChannelName."""
    return _check(name, _GROUP, "group", "room.lobby")


def is_reply_channel(name):
    """True if ``name`` is a valid process-specific channel: the only place a reply may go.

    The reply channel comes from the message, so it is untrusted: a named
    channel would make the transport create a stream or key for any name.
    """
    return (
        isinstance(name, string_types)
        and "!" in name
        and len(name) <= MAX_NAME_LENGTH
        and _CHANNEL.match(name) is not None
    )


def owner_token(channel):
    """The process token of a process-specific channel: the last token before '!'."""
    return channel.split("!", 1)[0].rsplit(".", 1)[-1]
