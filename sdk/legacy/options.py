# -*- coding: utf-8 -*-
# Python 2.7 compatible on purpose: pyupgrade (UP) and py3-only idioms must not rewrite it.
"""Layer options and layer URLs, as the main SDK reads them (``svcbus.layer``)."""

from __future__ import absolute_import, division, print_function, unicode_literals

import fnmatch

from .durable import URL_PREFIX, override, parse_url_option
from .errors import ConfigurationError, MessageTooLarge


def unquote(text):
    """Undo URL percent-encoding (UTF-8), without urllib (which moved between 2 and 3)."""
    if "%" not in text:
        return text
    raw = text.encode("utf-8")
    out = bytearray()
    i = 0
    while i < len(raw):
        if raw[i : i + 1] == b"%" and i + 3 <= len(raw):
            try:
                out.append(int(raw[i + 1 : i + 3], 16))
                i += 3
                continue
            except ValueError:
                pass
        out += raw[i : i + 1]
        i += 1
    return bytes(out).decode("utf-8")


def parse_qsl(query):
    """``a=1&b=2`` -> [("a", "1"), ("b", "2")]."""
    pairs = []
    for part in query.split("&"):
        if part:
            key, _, value = part.partition("=")
            pairs.append((unquote(key.replace("+", " ")), unquote(value.replace("+", " "))))
    return pairs


class Options(object):
    """Semantics knobs shared with the async layers; keep them equal on both sides.

    Capacity and expiry of a NATS named channel live in its stream: a sender with
    other values updates the stream, so give every process the same values.
    """

    def __init__(
        self,
        capacity=100,
        channel_capacity=None,
        expiry=60.0,
        group_expiry=86400.0,
        max_message_size=1024 * 1024,
        prefix="svcbus",
        connect_timeout=5.0,
        channel_durability=None,
    ):
        if capacity < 1:
            raise ConfigurationError("capacity must be >= 1, got {0}".format(capacity))
        if expiry <= 0 or group_expiry <= 0:
            raise ConfigurationError("expiry and group_expiry must be positive seconds")
        if not prefix or "." in prefix or prefix != prefix.lower():
            raise ConfigurationError("prefix {0!r} must be one lower-case token".format(prefix))
        self.capacity = capacity
        self.channel_capacity = dict(channel_capacity or {})
        self.expiry = float(expiry)
        self.group_expiry = float(group_expiry)
        self.max_message_size = max_message_size
        self.prefix = prefix
        self.connect_timeout = float(connect_timeout)
        self.channel_durability = dict(channel_durability or {})
        """Durable settings per channel pattern: {setting: {pattern: value}} (durable.py)."""
        self._capacities = {}

    def capacity_for(self, channel):
        """The capacity of ``channel``: the first matching pattern, else ``capacity``."""
        found = self._capacities.get(channel)
        if found is None:
            found = self.capacity
            for pattern, value in self.channel_capacity.items():
                if fnmatch.fnmatchcase(channel, pattern):
                    found = value
                    break
            if len(self._capacities) < 10000:
                self._capacities[channel] = found
        return found

    def durability_for(self, channel, settings):
        """``settings`` (a contract's) with the URL's ``durable_<setting>`` patterns applied."""
        if not self.channel_durability:
            return settings
        return override(settings, channel, self.channel_durability)

    def check_size(self, channel, message):
        """Raise MessageTooLarge above ``max_message_size``."""
        if len(message) > self.max_message_size:
            raise MessageTooLarge(
                "message for {0!r} is {1} bytes; the limit is {2} (max_message_size)".format(
                    channel, len(message), self.max_message_size
                )
            )


_NUMBERS = {
    "capacity": int,
    "max_message_size": int,
    "expiry": float,
    "group_expiry": float,
    "connect_timeout": float,
}


def split_url(url, overrides=None):
    """``scheme://netloc?query`` -> (URL without the query, Options)."""
    base, _, query = url.partition("?")
    values = {}
    for key, value in parse_qsl(query):
        if key == "channel_capacity":
            pairs = (item.rsplit(":", 1) for item in value.split(",") if item)
            try:
                values[key] = dict((p, int(n)) for p, n in pairs)
            except ValueError:
                raise ConfigurationError(
                    "bad channel_capacity {0!r}; write pattern:count,...".format(value)
                )
        elif key in _NUMBERS:
            try:
                values[key] = _NUMBERS[key](value)
            except ValueError:
                raise ConfigurationError("URL option {0}={1!r} is not a number".format(key, value))
        elif key == "prefix":
            values[key] = value
        elif key.startswith(URL_PREFIX):
            setting, patterns = parse_url_option(key, value)
            values.setdefault("channel_durability", {})[setting] = patterns
        else:
            raise ConfigurationError(
                "the legacy runtime does not understand the URL option {0!r}; it knows {1}".format(
                    key,
                    ", ".join(
                        sorted(list(_NUMBERS) + ["channel_capacity", "prefix", "durable_<setting>"])
                    ),
                )
            )
    values.update(overrides or {})
    return base, Options(**values)


def userinfo(netloc):
    """``user:password@host`` -> (user or None, password or None, host part)."""
    if "@" not in netloc:
        return None, None, netloc
    info, host = netloc.rsplit("@", 1)
    user, sep, password = info.partition(":")
    return (unquote(user) or None), (unquote(password) if sep else None), host
