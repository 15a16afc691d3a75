# -*- coding: utf-8 -*-
# Python 2.7 compatible on purpose: pyupgrade (UP) and py3-only idioms must not rewrite it.
"""The envelope of docs/protocol.md: encode byte for byte, decode and check.

One message is one UTF-8 JSON object, metadata first in a fixed key order, the
body last, no insignificant whitespace::

    {"v":1,"id":"...","ct":"...","cv":1,"rc":"...","re":"...","at":0,"ex":0,
     "tc":{...},"h":{...},"er":{...},"b":...}
"""

from __future__ import absolute_import, division, print_function, unicode_literals

import itertools
import json
import os
from collections import OrderedDict

from .compat import integer_types, random_hex, string_types, text_type
from .errors import MessageInvalid

PROTOCOL_VERSION = 1


def dumps(value):
    """Compact JSON text, non-ASCII kept as is (as pydantic writes it)."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    if not isinstance(text, text_type):  # Python 2 returns str when all input was ASCII
        text = text.decode("utf-8")
    return text


def _str(value):
    return dumps(text_type(value))


class _Ids(object):
    """Message ids: 12 hex digits of process randomness plus a hex counter."""

    def __init__(self):
        self.pid = None
        self.reset()

    def reset(self):
        self.pid = os.getpid()
        self.prefix = random_hex(6)
        self.counter = itertools.count(1)

    def next(self):
        if os.getpid() != self.pid:  # a forked child must not repeat its parent's ids
            self.reset()
        return "{0}{1:x}".format(self.prefix, next(self.counter))


_ids = _Ids()
new_message_id = _ids.next


def encode(
    body,
    id,
    sent_at,
    expires_at=None,
    contract=None,
    version=1,
    reply_channel=None,
    reply_to=None,
    trace=None,
    headers=None,
    error=None,
    body_json=None,
):
    """The envelope as UTF-8 bytes. ``body`` is any JSON value (``body_json``: already JSON text).

    ``error`` is ``(type, message)``; the body of an error reply is ``null``.
    """
    parts = ['{"v":1,"id":', _str(id)]
    if contract is not None:
        parts += [',"ct":', _str(contract), ',"cv":', "%d" % version]
    if reply_channel is not None:
        parts += [',"rc":', _str(reply_channel)]
    if reply_to is not None:
        parts += [',"re":', _str(reply_to)]
    parts += [',"at":', "%d" % sent_at]
    if expires_at is not None:
        parts += [',"ex":', "%d" % expires_at]
    if trace:
        parts += [',"tc":', dumps(trace)]
    if headers:
        parts += [',"h":', dumps(headers)]
    if error is not None:
        parts += [
            ',"er":{"type":',
            _str(error[0]),
            ',"message":',
            _str(error[1]),
            "}",
        ]
        body_json = "null"
    parts += [',"b":', body_json if body_json is not None else dumps(body), "}"]
    return "".join(parts).encode("utf-8")


class Message(object):
    """A decoded envelope. ``body`` is the JSON value; the rest is metadata."""

    __slots__ = (
        "body",
        "contract",
        "error",
        "expires_at",
        "headers",
        "id",
        "reply_channel",
        "reply_to",
        "sent_at",
        "trace",
        "version",
    )

    def __init__(self, fields):
        self.id = fields["id"]
        self.contract = fields.get("ct")
        self.version = fields.get("cv", 1)
        self.reply_channel = fields.get("rc")
        self.reply_to = fields.get("re")
        self.sent_at = fields["at"]
        self.expires_at = fields.get("ex")
        self.trace = fields.get("tc") or {}
        self.headers = fields.get("h") or {}
        er = fields.get("er")
        self.error = (er["type"], er["message"]) if er is not None else None
        self.body = fields["b"]

    def __repr__(self):
        return "Message(id={0!r}, contract={1!r}, body={2!r})".format(
            self.id, self.contract, self.body
        )


def _is_int(value):
    return isinstance(value, integer_types) and not isinstance(value, bool)


def _string_map(value):
    return isinstance(value, dict) and all(
        isinstance(k, string_types) and isinstance(v, string_types) for k, v in value.items()
    )


_OPTIONAL = (
    ("ct", lambda v: isinstance(v, string_types), "a string"),
    ("cv", _is_int, "an integer"),
    ("rc", lambda v: isinstance(v, string_types), "a string"),
    ("re", lambda v: isinstance(v, string_types), "a string"),
    ("ex", _is_int, "an integer"),
    ("tc", _string_map, "an object of strings"),
    ("h", _string_map, "an object of strings"),
)


def peek_id(data):
    """The ``id`` of raw message bytes if it can be read, else None (for log lines)."""
    try:
        fields = json.loads(data.decode("utf-8"))
        message_id = fields.get("id")
        return message_id if isinstance(message_id, string_types) else None
    except (ValueError, AttributeError, UnicodeDecodeError):
        return None


def decode(data, channel=None):
    """Decode raw bytes into a :class:`Message`; raise MessageInvalid with the reason.

    Unknown keys are ignored (forward compatibility). The body is not checked here:
    that is the contract's job (:mod:`schema`).
    """
    try:
        fields = json.loads(data.decode("utf-8"), object_pairs_hook=OrderedDict)
    except (ValueError, UnicodeDecodeError):
        raise MessageInvalid(
            "undecodable message on {0!r}: not JSON".format(channel), channel=channel
        )
    if not isinstance(fields, dict):
        raise MessageInvalid(
            "message on {0!r} is not a svcbus envelope: not a JSON object".format(channel),
            channel=channel,
        )
    message_id = fields.get("id")
    problems = []
    if fields.get("v") != PROTOCOL_VERSION or not _is_int(fields.get("v")):
        problems.append("v: must be 1")
    if not isinstance(message_id, string_types):
        problems.append("id: must be a string")
        message_id = None
    if not _is_int(fields.get("at")):
        problems.append("at: must be an integer")
    if "b" not in fields:
        problems.append("b: missing")
    for key, check, what in _OPTIONAL:
        value = fields.get(key)
        if value is not None and not check(value):
            problems.append("{0}: must be {1}".format(key, what))
    er = fields.get("er")
    if er is not None and not (
        isinstance(er, dict)
        and isinstance(er.get("type"), string_types)
        and isinstance(er.get("message"), string_types)
    ):
        problems.append("er: must be an object with string type and message")
    if problems:
        raise MessageInvalid(
            "message on {0!r} is not a svcbus envelope: {1}".format(channel, "; ".join(problems)),
            channel=channel,
            message_id=message_id,
        )
    return Message(fields)
