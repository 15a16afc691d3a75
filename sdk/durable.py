"""Durable channels: the settings a contract declares and what a layer hands the runtime.

A durable channel is at least once (README, "Delivery guarantees"): ``send``
returns once the server has stored the message; a consumer's message is
acknowledged after its handler returned; a failed handler is retried after a
backoff, up to ``max_attempts`` times, then dead-lettered; a worker that dies
gets its unacknowledged messages redelivered after ``ack_wait``.

Layers store and redeliver (:meth:`svcbus.Layer.declare_durable`,
:meth:`svcbus.Layer.receive_durable`, :class:`Delivery`); the runtime decides
retries, backoff and dead letters, once for every layer.
"""

from __future__ import annotations

import fnmatch
import json
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from .errors import ConfigurationError, InvalidChannelName
from .names import validate_channel

DEFAULT_MAX_ATTEMPTS = 5
DEFAULT_ACK_WAIT = 30.0
DEFAULT_MAX_AGE = 7 * 86400.0
DEFAULT_DUPLICATE_WINDOW = 120.0
DEAD_LETTER_SUFFIX = ".dlq"


@dataclass(frozen=True)
class Durability:
    """How a durable channel delivers: attempts, backoff, ack wait, dead letters, retention.

    Give it to a contract (``durable=Durability(max_attempts=3)``) or write
    ``durable=True`` for the defaults.
    """

    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    """Handler runs before a message is dead-lettered (1 = no retry)."""
    backoff_first: float = 1.0
    """Seconds before the first retry; doubled per further attempt..."""
    backoff_max: float = 30.0
    """...up to this many seconds."""
    ack_wait: float = DEFAULT_ACK_WAIT
    """Seconds a delivered, unacknowledged message waits before it is redelivered.

    A running handler extends it (the runtime signals progress every ``ack_wait / 2``),
    so this bounds how long a dead worker's messages wait, not how long a handler may run.
    """
    dead_letter: str | None = None
    """Where exhausted messages go; None: the runtime's ``dead_letter``, else ``<channel>.dlq``."""
    max_age: float = DEFAULT_MAX_AGE
    """Seconds a stored message is kept at most (handled or not); older ones expire."""
    duplicate_window: float = DEFAULT_DUPLICATE_WINDOW
    """Seconds within which a second send of the same message id is dropped by the server."""
    replicas: int = 1
    """Copies the server keeps (NATS JetStream ``num_replicas``; 3 on a 3-node cluster)."""

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ConfigurationError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if self.backoff_first < 0 or self.backoff_max < self.backoff_first:
            raise ConfigurationError("backoff needs 0 <= backoff_first <= backoff_max seconds")
        for name in ("ack_wait", "max_age", "duplicate_window"):
            if getattr(self, name) <= 0:
                raise ConfigurationError(f"{name} must be positive seconds")
        if self.replicas < 1:
            raise ConfigurationError(f"replicas must be >= 1, got {self.replicas}")

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based) before the next one."""
        return min(self.backoff_max, self.backoff_first * 2.0 ** max(0, attempt - 1))

    def dead_letter_channel(self, channel: str, runtime_default: str | None = None) -> str:
        """Where ``channel``'s exhausted messages go."""
        return self.dead_letter or runtime_default or channel + DEAD_LETTER_SUFFIX

    @property
    def heartbeat(self) -> float:
        """Seconds between two in-progress signals of a running handler."""
        return self.ack_wait / 2


class Delivery(ABC):
    """One delivery of a durable message: its bytes, which attempt it is, and its settlement.

    Exactly one of :meth:`ack`, :meth:`nak` or :meth:`term` settles it; a delivery
    left unsettled is redelivered after the channel's ``ack_wait``.
    """

    __slots__ = ("attempt", "data")

    def __init__(self, data: bytes, attempt: int) -> None:
        self.data = data
        """The encoded message, as sent."""
        self.attempt = attempt
        """1 for the first delivery, 2 for the first redelivery..."""

    @abstractmethod
    async def ack(self) -> None:
        """Done: the message is removed from the channel."""

    @abstractmethod
    async def nak(self, delay: float) -> None:
        """Failed: deliver the message again after ``delay`` seconds."""

    @abstractmethod
    async def in_progress(self) -> None:
        """Still working: restart this delivery's ``ack_wait``."""

    @abstractmethod
    async def term(self) -> None:
        """Never deliver again (it was dead-lettered or cannot be handled)."""


def message_id_of(data: bytes) -> str | None:
    """The envelope id of an encoded message (for deduplication), or None if it has none.

    Envelopes start with ``{"v":1,"id":"...``, so the common case is a slice,
    not a JSON parse.
    """
    head = b'{"v":1,"id":"'
    if data.startswith(head):
        end = data.find(b'"', len(head))
        if end > 0 and b"\\" not in data[len(head) : end]:
            return data[len(head) : end].decode("utf-8", "replace")
    try:
        found = json.loads(data).get("id")
    except (ValueError, AttributeError):
        return None
    return found if isinstance(found, str) else None


SETTING_TYPES: dict[str, type] = {
    "max_attempts": int,
    "backoff_first": float,
    "backoff_max": float,
    "ack_wait": float,
    "dead_letter": str,
    "max_age": float,
    "duplicate_window": float,
    "replicas": int,
}
"""The :class:`Durability` settings a layer URL may set per channel pattern, and their types."""

URL_PREFIX = "durable_"
"""Layer URL options ``durable_<setting>=pattern:value,...`` (``durable_max_attempts=orders.*:3``)."""


def check_overrides(overrides: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """``{setting: {pattern: value}}`` with known settings and values of the right type."""
    checked: dict[str, dict[str, Any]] = {}
    for setting, patterns in overrides.items():
        kind = SETTING_TYPES.get(setting)
        if kind is None:
            raise ConfigurationError(
                f"unknown durable setting {setting!r} in the layer options; per-channel durable "
                f"settings are {', '.join(SETTING_TYPES)}"
            )
        checked[setting] = {p: _setting_value(setting, kind, v) for p, v in patterns.items()}
    return checked


def _setting_value(setting: str, kind: type, value: Any) -> Any:
    try:
        converted = kind(value)
    except (TypeError, ValueError):
        raise ConfigurationError(
            f"durable setting {setting}={value!r} is not {'a number' if kind is not str else 'text'}"
        ) from None
    if setting == "dead_letter":
        try:
            validate_channel(converted)
        except InvalidChannelName as exc:
            raise ConfigurationError(f"durable setting dead_letter: {exc}") from None
        if "!" in converted:
            raise ConfigurationError("durable setting dead_letter must be a named channel")
    return converted


def parse_url_option(key: str, value: str) -> tuple[str, dict[str, Any]]:
    """The setting and ``{pattern: value}`` of one ``durable_<setting>=pattern:value,...`` option."""
    setting = key[len(URL_PREFIX) :]
    try:
        pairs = [item.rsplit(":", 1) for item in value.split(",") if item]
        patterns = {pattern: found for pattern, found in pairs}
    except ValueError:
        raise ConfigurationError(
            f"bad {key} {value!r} in layer URL; write pattern:value,pattern:value "
            f"({key}=orders.*:3)"
        ) from None
    return setting, check_overrides({setting: patterns})[setting]


def override(
    settings: Durability, channel: str, overrides: Mapping[str, Mapping[str, Any]]
) -> Durability:
    """``settings`` with each setting ``overrides`` sets for ``channel``'s first matching pattern."""
    changes: dict[str, Any] = {}
    for setting, patterns in overrides.items():
        for pattern, value in patterns.items():
            if fnmatch.fnmatchcase(channel, pattern):
                changes[setting] = value
                break
    if not changes:
        return settings
    try:
        return replace(settings, **changes)
    except ConfigurationError as exc:
        raise ConfigurationError(
            f"the layer's durable settings for {channel!r} ({changes}) do not fit its contract's: "
            f"{exc}"
        ) from None


def not_durable_here(system: str) -> ConfigurationError:
    """The error of a layer that has no durable channels yet."""
    return ConfigurationError(
        f"durable channels are not available on {system}:// yet; use memory://, nats:// or redis:// "
        "for contracts declared durable=True"
    )
