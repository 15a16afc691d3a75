"""The layer interface: the small contract every transport implements.

A layer moves opaque, already-encoded messages (``bytes``) between channels.
It knows nothing of contracts; :class:`svcbus.Bus` encodes and decodes. The
semantics (from Django Channels, kept by every layer and checked by the
conformance suite in ``tests/conformance``):

* **At-most-once.** A message is delivered to at most one receiver, or lost
  (expiry, a crash); never twice.
* **FIFO** per sender and channel.
* **Named channels** (``chat.receive``) are shared: each message goes to one of
  the receivers on that channel, in any process ("not sticky").
* **Process-specific channels** (made by :meth:`Layer.new_channel`, they
  contain ``!``) are received only by the layer instance that made them.
* **Capacity**: ``send`` raises :class:`~svcbus.errors.ChannelFull` when the
  channel holds ``capacity_for(channel)`` messages. ``group_send`` never raises
  it; full members miss the message.
* **Expiry**: a message not received within ``expiry`` seconds is dropped.
  Group membership lapses ``group_expiry`` seconds after the last ``group_add``.
* **Size**: ``send`` and ``group_send`` raise
  :class:`~svcbus.errors.MessageTooLarge` above ``max_message_size`` bytes.

**Durable channels** (named channels a contract declares ``durable=True``) are
the exception to at-most-once: after :meth:`Layer.declare_durable`, ``send``
returns once the server stored the message (a repeated message id within the
duplicate window is dropped), and receivers take :class:`~svcbus.durable.Delivery`
objects from :meth:`Layer.receive_durable` that stay on the channel until
acknowledged; unacknowledged ones are redelivered after ``ack_wait``. Capacity
counts every stored, unacknowledged message; a message stored longer than
``max_age`` is dropped (and counted in ``lost`` where the server says so: memory,
Redis). ``LayerOptions.channel_durability`` (URL ``durable_<setting>=pattern:value``)
overrides settings per channel. Layers without them raise
:class:`~svcbus.errors.ConfigurationError` from ``declare_durable``.
"""

from __future__ import annotations

import fnmatch
import importlib
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import parse_qsl, urlencode, urlsplit

from .durable import (
    URL_PREFIX,
    Delivery,
    Durability,
    check_overrides,
    not_durable_here,
    override,
    parse_url_option,
)
from .errors import ConfigurationError, MessageTooLarge
from .redact import redact_url

if TYPE_CHECKING:
    from .local import LocalConsumer


@dataclass(frozen=True)
class LayerOptions:
    """Semantics knobs shared by all layers (URL query parameters of the same name)."""

    capacity: int = 100
    """Default maximum number of messages waiting on one channel."""
    channel_capacity: Mapping[str, int] = field(default_factory=dict)
    """Per-channel capacities; keys are channel names or glob patterns (``http.*``)."""
    expiry: float = 60.0
    """Seconds a message may wait on a channel before it is dropped."""
    group_expiry: float = 86400.0
    """Seconds a group membership lasts after its last ``group_add``."""
    max_message_size: int = 1024 * 1024
    """Largest encoded message, in bytes."""
    channel_durability: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """Durable settings per channel pattern, over the contracts': ``{setting: {pattern: value}}``
    (``{"max_attempts": {"orders.*": 3}}``; URL: ``durable_max_attempts=orders.*:3``)."""

    def __post_init__(self) -> None:
        if self.capacity < 1:
            raise ConfigurationError(f"capacity must be >= 1, got {self.capacity}")
        if self.expiry <= 0 or self.group_expiry <= 0:
            raise ConfigurationError("expiry and group_expiry must be positive seconds")
        if self.max_message_size < 64:
            raise ConfigurationError(f"max_message_size {self.max_message_size} is too small")
        object.__setattr__(self, "_capacity_cache", {})
        object.__setattr__(self, "channel_durability", check_overrides(self.channel_durability))
        object.__setattr__(self, "_durable_cache", {})

    def capacity_for(self, channel: str) -> int:
        """The capacity of ``channel``: the first matching pattern, else ``capacity``."""
        cache: dict[str, int] = self._capacity_cache  # type: ignore[attr-defined]  # set in __post_init__ of the frozen dataclass
        found = cache.get(channel)
        if found is None:
            found = self.capacity
            for pattern, value in self.channel_capacity.items():
                if fnmatch.fnmatchcase(channel, pattern):
                    found = value
                    break
            if len(cache) < 10_000:  # bounded: process channels are unbounded in number
                cache[channel] = found
        return found

    def durability_for(self, channel: str, settings: Durability) -> Durability:
        """``settings`` (a contract's) with what ``channel_durability`` sets for ``channel``.

        Per setting, the first pattern that matches wins, as for capacities.
        """
        if not self.channel_durability:
            return settings
        cache: dict[tuple[str, Durability], Durability] = self._durable_cache  # type: ignore[attr-defined]  # set in __post_init__ of the frozen dataclass
        found = cache.get((channel, settings))
        if found is None:
            found = override(settings, channel, self.channel_durability)
            if len(cache) < 10_000:
                cache[(channel, settings)] = found
        return found

    def check_size(self, channel: str, message: bytes | int) -> None:
        """Raise :class:`MessageTooLarge` if ``message`` (or a size in bytes) exceeds the limit."""
        size = message if isinstance(message, int) else len(message)
        if size > self.max_message_size:
            raise MessageTooLarge(
                f"message for {channel!r} is {size} bytes; the limit is "
                f"{self.max_message_size} (max_message_size). Send a reference to large data "
                "instead, or raise the limit on every layer that carries it"
            )


class Layer(ABC):
    """A transport. Subclasses implement the abstract methods with the semantics above."""

    system: ClassVar[str]
    """The transport's name, also OpenTelemetry's ``messaging.system`` (``memory``, ``nats``...)."""

    def __init__(self, options: LayerOptions | None = None) -> None:
        self.options = options or LayerOptions()

    @classmethod
    def from_url(cls, url: str, options: LayerOptions, params: Mapping[str, Any]) -> Layer:
        """Build the layer for ``url``; ``params`` are the URL's non-common query parameters."""
        if params:
            raise ConfigurationError(
                f"{cls.system}:// layer does not understand {', '.join(sorted(params))}"
            )
        return cls(options)

    async def connect(self) -> None:  # noqa: B027 - optional hook
        """Open connections. Idempotent; ``async with layer`` calls it."""

    @abstractmethod
    async def send(self, channel: str, message: bytes) -> None:
        """Put ``message`` on ``channel``. Raises ``ChannelFull`` or ``MessageTooLarge``."""

    @abstractmethod
    async def receive(self, channel: str) -> bytes:
        """Wait for and return the next message on ``channel``.

        Cancelling a waiting ``receive`` loses no message.
        """

    async def receive_many(self, channel: str, limit: int) -> list[bytes]:
        """Wait for at least one message and return up to ``limit`` available ones.

        Layers override this to batch; the default takes one.
        """
        return [await self.receive(channel)]

    @abstractmethod
    async def new_channel(self, prefix: str = "specific") -> str:
        """Make a new process-specific channel name (``prefix.<process>!<local>``)."""

    @abstractmethod
    async def group_add(self, group: str, channel: str) -> None:
        """Add ``channel`` to ``group``; effective for any ``group_send`` after it returns."""

    @abstractmethod
    async def group_discard(self, group: str, channel: str) -> None:
        """Remove ``channel`` from ``group`` (no error if it is not a member)."""

    @abstractmethod
    async def group_send(self, group: str, message: bytes) -> None:
        """Deliver ``message`` to every member of ``group``; never raises ``ChannelFull``."""

    async def declare_durable(self, channel: str, settings: Durability) -> None:
        """Make ``channel`` durable with ``settings`` (idempotent; before its first use).

        From then on this layer's ``send`` on ``channel`` stores durably and
        :meth:`receive_durable` reads it. Layers without durable channels raise
        :class:`~svcbus.errors.ConfigurationError`.
        """
        raise not_durable_here(self.system)

    async def receive_durable(self, channel: str, limit: int) -> list[Delivery]:
        """Wait for at least one delivery on durable ``channel``; return up to ``limit``.

        Each must be settled (ack, nak, term) or it is redelivered after the
        channel's ``ack_wait``. Cancelling a waiting call loses no message (at
        worst a delivery taken meanwhile comes back after ``ack_wait``).
        """
        raise not_durable_here(self.system)

    def serve_locally(self, channel: str, consumer: LocalConsumer) -> bool:
        """Offer ``consumer`` for in-process requests on ``channel`` (:mod:`svcbus.local`).

        Only a layer whose every receiver lives in this process may take it
        (memory://); elsewhere another process may be the one to answer, so
        the default declines.
        """
        return False

    def unserve_locally(self, channel: str, consumer: LocalConsumer) -> None:  # noqa: B027
        """Withdraw ``consumer``'s offer made with :meth:`serve_locally`."""

    def local_consumer(self, channel: str) -> LocalConsumer | None:
        """The consumer serving ``channel`` in process, while nothing waits in the channel."""
        return None

    def deliver_locally(self, channel: str, message: Any) -> bool:
        """Hand ``message`` (a contract instance, unencoded) to a reader of ``channel`` in process.

        True if a reader took it (nothing is sent then); False to send it
        encoded as usual. Only a layer whose every reader lives in this
        process may take it (memory://: a listener on a process channel, see
        ``MemoryLayer.listen``), so the default declines.
        """
        return False

    async def flush(self) -> None:  # noqa: B027 - optional hook
        """Wait until every message sent so far has been handed to the server."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections and local state. The layer is unusable afterwards."""

    async def __aenter__(self) -> Layer:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


# scheme -> "module:Class"; modules are imported on first use so that
# `memory://` users never import nats-py or redis-py.
LAYER_SCHEMES: dict[str, str] = {
    "memory": "svcbus.layers.memory:MemoryLayer",
    "nats": "svcbus.layers.nats:NatsLayer",
    "tls": "svcbus.layers.nats:NatsLayer",
    "redis": "svcbus.layers.redis:RedisLayer",
    "rediss": "svcbus.layers.redis:RedisLayer",
    "redis+sentinel": "svcbus.layers.redis:RedisLayer",
}

_OPTION_TYPES = {f.name: f.type for f in fields(LayerOptions)}


def keep_options(url: str, base: str) -> str:
    """``url`` plus the common options (``capacity``, ``channel_capacity``...) of ``base``
    that ``url`` does not set itself.

    A layer URL given on the command line replaces an application's layer, but the
    channel settings the application chose (capacities, expiry) belong to it, not to
    the server address: they carry over unless the command line sets them too.
    """
    given = {key for key, _ in parse_qsl(urlsplit(url).query, keep_blank_values=True)}
    kept = [
        (key, value)
        for key, value in parse_qsl(urlsplit(base).query, keep_blank_values=True)
        if (key in _OPTION_TYPES or key.startswith(URL_PREFIX)) and key not in given
    ]
    if not kept:
        return url
    extra = urlencode(kept, safe=":,*.")
    return f"{url}{'&' if '?' in url else '?'}{extra}"


def split_options(
    url: str, overrides: Mapping[str, Any] | None = None
) -> tuple[LayerOptions, dict[str, str]]:
    """Split a URL's query into :class:`LayerOptions` and the layer's own parameters."""
    common: dict[str, Any] = {}
    rest: dict[str, str] = {}
    durable: dict[str, dict[str, Any]] = {}
    for key, value in parse_qsl(urlsplit(url).query, keep_blank_values=True):
        if key.startswith(URL_PREFIX):
            # durable_max_attempts=orders.*:3,payments.*:10
            setting, patterns = parse_url_option(key, value)
            durable[setting] = patterns
            continue
        if key == "channel_capacity":
            # channel_capacity=http.*:200,chat.receive:50
            try:
                pairs = (item.rsplit(":", 1) for item in value.split(",") if item)
                common[key] = {p: int(n) for p, n in pairs}
            except ValueError:
                raise ConfigurationError(
                    f"bad channel_capacity {value!r} in layer URL; write pattern:count,pattern:count"
                ) from None
        elif key in ("capacity", "max_message_size"):
            common[key] = _number(key, value, int)
        elif key in ("expiry", "group_expiry"):
            common[key] = _number(key, value, float)
        else:
            rest[key] = value
    if durable:
        common["channel_durability"] = durable
    common.update(overrides or {})
    return LayerOptions(**common), rest


def _number(key: str, value: str, kind: type) -> Any:
    try:
        return kind(value)
    except ValueError:
        raise ConfigurationError(f"layer URL option {key}={value!r} is not a number") from None


def open_layer(url: str, **options: Any) -> Layer:
    """Make the layer a URL selects: ``memory://``, ``nats://host:4222``, ``redis://host:6379/0``.

    Common options (``capacity``, ``expiry``...) come from the URL query or
    keyword arguments; the layer is returned unconnected (``await layer.connect()``
    or ``async with``).
    """
    scheme = urlsplit(url).scheme.lower() if "://" in url else ""
    target = LAYER_SCHEMES.get(scheme)
    if target is None:
        known = ", ".join(f"{s}://" for s in LAYER_SCHEMES)
        raise ConfigurationError(f"unknown layer URL {redact_url(url)!r}: use one of {known}")
    module_name, class_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        extra = "nats" if "nats" in module_name else "redis"
        raise ConfigurationError(
            f"the {scheme}:// layer needs an optional dependency ({exc.name}): "
            f"pip install 'svcbus[{extra}]'"
        ) from None
    layer_class: type[Layer] = getattr(module, class_name)
    common = {k: v for k, v in options.items() if k in _OPTION_TYPES}
    own = {k: v for k, v in options.items() if k not in _OPTION_TYPES}
    layer_options, params = split_options(url, common)
    return layer_class.from_url(url, layer_options, {**params, **own})
