"""The context a consumer receives with each message."""

from __future__ import annotations

from typing import Any

from anyio import from_thread

from .bus import DEFAULT_REQUEST_TIMEOUT, Bus
from .envelope import Envelope
from .errors import SvcbusError
from .names import is_reply_channel
from .undeclared import warn_if_undeclared


class Context:
    """What a consumer can do while handling one message, and what it knows about it.

    ``ctx.send``, ``ctx.request``, ``ctx.group_*`` and ``ctx.new_channel`` act on
    the bus; ``ctx.reply`` answers the current message (a consumer may also
    just return its reply).
    """

    __slots__ = ("_replied", "attempt", "bus", "channel", "envelope", "service")

    def __init__(
        self, bus: Bus, channel: str, envelope: Envelope[Any], service: Any = None, attempt: int = 1
    ) -> None:
        self.bus = bus
        self.service = service
        """The service whose consumer is running (None outside a runtime)."""
        self.channel = channel
        """The channel the message arrived on."""
        self.envelope = envelope
        """The whole decoded message (metadata and body)."""
        self.attempt = attempt
        """Which delivery of the message this is: 1, or 2+ when a durable channel redelivers it
        (a failed or interrupted earlier attempt; see README "Delivery guarantees")."""
        self._replied = False

    # metadata of the current message ----------------------------------------

    @property
    def message_id(self) -> str:
        """The current message's id."""
        return self.envelope.id

    @property
    def reply_channel(self) -> str | None:
        """Where the sender waits for a reply, if it does.

        Only a process-specific channel (``name!local``) counts: any other
        ``rc`` in the envelope is untrusted input that must not make this
        service create streams or keys, so it reads as None here.
        """
        rc = self.envelope.rc
        return rc if rc is not None and is_reply_channel(rc) else None

    @property
    def headers(self) -> dict[str, str]:
        """Application headers the sender attached."""
        return self.envelope.h or {}

    @property
    def sent_at(self) -> int:
        """When the message was sent (Unix milliseconds)."""
        return self.envelope.at

    @property
    def trace(self) -> dict[str, str]:
        """The W3C trace context the message carried."""
        return self.envelope.tc or {}

    # acting on the bus -----------------------------------------------------

    async def send(self, channel: str, message: Any, *, reply_channel: str | None = None) -> str:
        """Send ``message`` on ``channel`` (validated against its contract)."""
        warn_if_undeclared(self.service, channel)
        return await self.bus.send(channel, message, reply_channel=reply_channel)

    async def request(
        self, channel: str, message: Any, *, timeout: float = DEFAULT_REQUEST_TIMEOUT
    ) -> Any:
        """Send a request and return its typed reply."""
        warn_if_undeclared(self.service, channel)
        return await self.bus.request(channel, message, timeout=timeout)

    async def reply(self, message: Any) -> None:
        """Reply to the current message now (the consumer's return value is then not sent)."""
        reply_channel = self.reply_channel
        if reply_channel is None:
            raise SvcbusError(
                f"the message on {self.channel!r} has no reply channel to answer "
                "(none, or not a process-specific channel)"
            )
        await self.bus.reply(reply_channel, self.envelope.id, message)
        self._replied = True

    async def group_add(self, group: str, channel: str) -> None:
        """Add ``channel`` (for example a connection's reply channel) to ``group``."""
        await self.bus.group_add(group, channel)

    async def group_discard(self, group: str, channel: str) -> None:
        """Remove ``channel`` from ``group``."""
        await self.bus.group_discard(group, channel)

    async def group_send(self, group: str, message: Any) -> None:
        """Send ``message`` to every member of ``group``."""
        await self.bus.group_send(group, message)

    async def new_channel(self, prefix: str = "specific") -> str:
        """A new process-specific channel."""
        return await self.bus.new_channel(prefix)


class BlockingContext:
    """The context of a plain ``def`` consumer: the same API, blocking.

    Each call hops to the event loop (``anyio.from_thread``), so a sync
    consumer running in a worker thread can send, request and manage groups.
    """

    __slots__ = ("_context",)

    def __init__(self, context: Context) -> None:
        self._context = context

    @property
    def channel(self) -> str:
        """The channel the message arrived on."""
        return self._context.channel

    @property
    def envelope(self) -> Envelope[Any]:
        """The whole decoded message."""
        return self._context.envelope

    @property
    def attempt(self) -> int:
        """Which delivery of the message this is (1-based; see :attr:`Context.attempt`)."""
        return self._context.attempt

    message_id = property(lambda self: self._context.message_id, doc="The message's id.")
    reply_channel = property(lambda self: self._context.reply_channel, doc="Reply channel.")
    headers = property(lambda self: self._context.headers, doc="Application headers.")
    sent_at = property(lambda self: self._context.sent_at, doc="Sent at (Unix ms).")
    trace = property(lambda self: self._context.trace, doc="W3C trace context.")

    def send(self, channel: str, message: Any, *, reply_channel: str | None = None) -> str:
        """Send ``message`` on ``channel``."""
        return from_thread.run(
            lambda: self._context.send(channel, message, reply_channel=reply_channel)
        )

    def request(
        self, channel: str, message: Any, *, timeout: float = DEFAULT_REQUEST_TIMEOUT
    ) -> Any:
        """Send a request and return its typed reply."""
        return from_thread.run(lambda: self._context.request(channel, message, timeout=timeout))

    def reply(self, message: Any) -> None:
        """Reply to the current message now."""
        from_thread.run(self._context.reply, message)

    def group_add(self, group: str, channel: str) -> None:
        """Add ``channel`` to ``group``."""
        from_thread.run(self._context.group_add, group, channel)

    def group_discard(self, group: str, channel: str) -> None:
        """Remove ``channel`` from ``group``."""
        from_thread.run(self._context.group_discard, group, channel)

    def group_send(self, group: str, message: Any) -> None:
        """Send ``message`` to every member of ``group``."""
        from_thread.run(self._context.group_send, group, message)

    def new_channel(self, prefix: str = "specific") -> str:
        """A new process-specific channel."""
        return from_thread.run(self._context.new_channel, prefix)
