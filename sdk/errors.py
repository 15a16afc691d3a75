"""Every exception svcbus raises, in one small hierarchy.

Catch :class:`SvcbusError` for anything svcbus-specific; the leaves say what went
wrong and their messages say what to do about it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


class SvcbusError(Exception):
    """Base class of every svcbus error."""


class InvalidChannelName(SvcbusError, ValueError):
    """A channel or group name breaks the naming rules (see ``svcbus.names``)."""


class ChannelFull(SvcbusError):
    """The channel holds as many messages as its capacity allows.

    At-most-once delivery means svcbus never blocks or buffers without bound:
    the sender decides whether to retry later, drop, or slow down.
    """


class MessageTooLarge(SvcbusError, ValueError):
    """An encoded message is bigger than the layer's ``max_message_size``."""


class ContractError(SvcbusError, TypeError):
    """A contract or consumer is declared wrongly (found at import time)."""


class MessageInvalid(SvcbusError, ValueError):
    """A message does not fit its channel's contract, or cannot be decoded.

    ``channel`` names the channel and ``errors`` holds pydantic's error list
    (each with the field location) when validation was the cause.
    """

    def __init__(
        self,
        message: str,
        *,
        channel: str,
        errors: Sequence[Mapping[str, Any]] | None = None,
    ) -> None:
        super().__init__(message)
        self.channel = channel
        self.errors: list[Mapping[str, Any]] = list(errors or [])


class RequestTimeout(SvcbusError, TimeoutError):
    """No reply arrived within the request's timeout."""


class RemoteError(SvcbusError):
    """The consumer that handled a request failed; its error travelled back."""

    def __init__(self, message: str, *, error_type: str) -> None:
        super().__init__(message)
        self.error_type = error_type

    @classmethod
    def of(cls, channel: str, error_type: str, message: str) -> RemoteError:
        """The error a requester on ``channel`` gets for the consumer's ``error_type: message``."""
        return cls(f"{channel!r} consumer failed: {error_type}: {message}", error_type=error_type)


class LayerError(SvcbusError):
    """The transport failed: the server is unreachable or the connection broke."""


class MessagesLost(LayerError):
    """Messages whose ``send`` had returned were lost; raised by ``flush()``.

    A ``send`` raises only for its own message. What a layer learns later (a
    pipelined send refused by a full channel, publishes in flight when a
    connection broke) is counted in ``layer.lost``, logged, and reported by the
    next ``flush()`` with this error: ``count`` messages, on ``channel`` when
    they were all for one channel (else ``None``).
    """

    def __init__(self, message: str, *, count: int, channel: str | None = None) -> None:
        super().__init__(message)
        self.count = count
        self.channel = channel


class ConfigurationError(SvcbusError, ValueError):
    """A layer URL, option or service reference is wrong."""
