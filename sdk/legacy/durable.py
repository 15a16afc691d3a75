# -*- coding: utf-8 -*-
# Python 2.7 compatible on purpose: pyupgrade (UP) and py3-only idioms must not rewrite it.
"""Durable (at-least-once) channels in the legacy worker: settings and deliveries.

The same settings as the main SDK's ``svcbus.Durability`` (the schema file
written by ``svcbus.legacy_export`` carries each durable contract's), the same
per-channel overrides from the URL (``durable_max_attempts=orders.*:3``), and
the same algorithm as ``svcbus/runtime_durable.py``: acknowledge after the
handler returned and its reply was sent, retry a failure after the backoff,
dead-letter after the last attempt, then terminate. NATS only (JetStream).
"""

from __future__ import absolute_import, division, print_function, unicode_literals

import fnmatch

from .errors import ConfigurationError

DEFAULTS = (
    ("max_attempts", 5, int),
    ("backoff_first", 1.0, float),
    ("backoff_max", 30.0, float),
    ("ack_wait", 30.0, float),
    ("dead_letter", None, type("")),
    ("max_age", 7 * 86400.0, float),
    ("duplicate_window", 120.0, float),
    ("replicas", 1, int),
)
_TYPES = dict((name, kind) for name, _, kind in DEFAULTS)
DEAD_LETTER_SUFFIX = ".dlq"
URL_PREFIX = "durable_"


class Durability(object):
    """A durable channel's settings; ``Durability(max_attempts=3)``, the rest default."""

    __slots__ = tuple(name for name, _, _ in DEFAULTS)

    def __init__(self, **settings):
        for name, default, _ in DEFAULTS:
            setattr(self, name, default)
        for name, value in settings.items():
            setattr(self, name, convert(name, value))
        if self.max_attempts < 1:
            raise ConfigurationError("max_attempts must be >= 1, got {0}".format(self.max_attempts))
        if self.backoff_first < 0 or self.backoff_max < self.backoff_first:
            raise ConfigurationError("backoff needs 0 <= backoff_first <= backoff_max seconds")
        if min(self.ack_wait, self.max_age, self.duplicate_window) <= 0:
            raise ConfigurationError("ack_wait, max_age and duplicate_window must be positive")
        if self.replicas < 1:
            raise ConfigurationError("replicas must be >= 1, got {0}".format(self.replicas))

    def as_dict(self):
        """The settings by name."""
        return dict((name, getattr(self, name)) for name in self.__slots__)

    def replaced(self, changes):
        """A copy with ``changes`` (a dict of settings) applied."""
        settings = self.as_dict()
        settings.update(changes)
        return Durability(**settings)

    def backoff(self, attempt):
        """Seconds to wait after failed attempt ``attempt`` (1-based) before the next one."""
        return min(self.backoff_max, self.backoff_first * 2.0 ** max(0, attempt - 1))

    def dead_letter_channel(self, channel, default=None):
        """Where ``channel``'s exhausted messages go."""
        return self.dead_letter or default or channel + DEAD_LETTER_SUFFIX

    def __eq__(self, other):
        return isinstance(other, Durability) and self.as_dict() == other.as_dict()

    def __ne__(self, other):
        return not self == other

    def __repr__(self):
        return "Durability({0})".format(
            ", ".join("{0}={1!r}".format(k, getattr(self, k)) for k in self.__slots__)
        )


def convert(name, value):
    """``value`` as setting ``name``'s type; ConfigurationError for unknown names or bad values."""
    kind = _TYPES.get(name)
    if kind is None:
        raise ConfigurationError(
            "unknown durable setting {0!r}; the settings are {1}".format(
                name, ", ".join(n for n, _, _ in DEFAULTS)
            )
        )
    if value is None and name == "dead_letter":
        return None
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigurationError("durable setting {0}={1!r} is not valid".format(name, value))


def parse_url_option(key, value):
    """``durable_<setting>=pattern:value,...`` -> (setting, {pattern: value})."""
    setting = key[len(URL_PREFIX) :]
    patterns = {}
    for item in value.split(","):
        if not item:
            continue
        pattern, sep, found = item.rpartition(":")
        if not sep or not pattern:
            raise ConfigurationError(
                "bad {0} {1!r} in the URL; write pattern:value,pattern:value".format(key, value)
            )
        patterns[pattern] = convert(setting, found)
    return setting, patterns


def override(settings, channel, overrides):
    """``settings`` with what ``overrides`` ({setting: {pattern: value}}) sets for ``channel``."""
    changes = {}
    for setting, patterns in overrides.items():
        for pattern, value in patterns.items():
            if fnmatch.fnmatchcase(channel, pattern):
                changes[setting] = value
                break
    return settings.replaced(changes) if changes else settings


class Delivery(object):
    """One delivery of a durable message: its bytes, attempt and where to settle it."""

    __slots__ = ("attempt", "data", "reply")

    def __init__(self, data, attempt, reply):
        self.data = data
        self.attempt = attempt
        self.reply = reply


def attempt_of(reply):
    """The delivery count in a ``$JS.ACK`` reply subject (either token layout)."""
    tokens = reply.split(b".") if isinstance(reply, bytes) else reply.split(".")
    index = 4 if len(tokens) == 9 else 6  # $JS.ACK.<stream>.<consumer>.<delivered>... or v2
    try:
        return int(tokens[index])
    except (IndexError, ValueError):
        return 1
