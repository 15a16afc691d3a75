# -*- coding: utf-8 -*-
# Python 2.7 compatible on purpose: pyupgrade (UP) and py3-only idioms must not rewrite it.
"""The legacy runtime's errors; the names match the main SDK's (``svcbus.errors``)."""

from __future__ import absolute_import, division, print_function, unicode_literals


class SvcbusError(Exception):
    """Base class of every error of the legacy runtime."""


class InvalidChannelName(SvcbusError, ValueError):
    """A channel or group name breaks the naming rules."""


class ChannelFull(SvcbusError):
    """The channel holds its capacity of messages; retry later."""


class MessageTooLarge(SvcbusError, ValueError):
    """The encoded message exceeds the size limit."""


class MessageInvalid(SvcbusError, ValueError):
    """A message does not decode, is not an envelope, or does not fit its contract."""

    def __init__(self, message, channel=None, message_id=None):
        SvcbusError.__init__(self, message)
        self.channel = channel
        self.message_id = message_id


class RequestTimeout(SvcbusError):
    """No reply arrived within the timeout."""


class RemoteError(SvcbusError):
    """The consumer of a request failed; ``error_type`` is its exception's name."""

    def __init__(self, message, error_type=""):
        SvcbusError.__init__(self, message)
        self.error_type = error_type


class LayerError(SvcbusError):
    """The transport failed (server unreachable, refused a command)."""


class ConfigurationError(SvcbusError, ValueError):
    """A bad URL, option or schema file."""
