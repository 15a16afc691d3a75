"""The bus: typed send, receive, groups and request/reply over any layer.

``Bus`` is what consumers (through their context), the edge, the CLI and
scripts use. It turns contracts into envelopes and back; the layer below only
moves bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncIterator
from typing import Any

import anyio
from pydantic import ValidationError

from . import tracing
from .contract import Contract, ContractRegistry, coerce, contract_named, describe_errors, registry
from .deadlines import Deadlines
from .durable import Durability
from .envelope import (
    Decoder,
    Envelope,
    ErrorInfo,
    body_json,
    encode,
    encode_plain,
    envelope_decoder,
    new_message_id,
    now_ms,
    peek_contract,
)
from .errors import MessageInvalid, RemoteError, RequestTimeout
from .layer import Layer, open_layer
from .names import validate_channel
from .route import MAX_ROUTES, Route

log = logging.getLogger("svcbus.bus")

_NO_ROUTE: tuple[Route | None, type[Contract] | None] = (None, None)

DEFAULT_REQUEST_TIMEOUT = 5.0
MAX_IDLE_REPLY_CHANNELS = 256
"""Reply channels a bus keeps for its next requests (as many as were in flight at once)."""
FAST_DEADLINES = sys.version_info >= (3, 11)
"""Whether request deadlines use the shared timer: it needs ``Task.uncancel`` (3.11) to
tell its own cancellation from another one that came at the same moment."""


class Bus:
    """A connection to the message bus through one layer.

    Use it as an async context manager (it connects and closes the layer)::

        async with Bus("nats://localhost:4222") as bus:
            reply = await bus.request("stats.get", StatsQuery(room="lobby"))
    """

    def __init__(
        self,
        layer: Layer | str,
        *,
        contracts: ContractRegistry = registry,
        tracer: Any = None,
    ) -> None:
        self.layer = open_layer(layer) if isinstance(layer, str) else layer
        self.contracts = contracts
        self._expiry_ms = int(self.layer.options.expiry * 1000)
        self._given_tracer = tracer
        self.tracer = tracer or tracing.tracer()
        """OpenTelemetry tracer, or None when tracing is off (then nothing is traced)."""
        self._durable: dict[str, Durability] = {}
        """Durable channels declared on purpose (dead-letter channels), beyond contracts'."""
        self._prepared: set[str] = set()
        """Named channels whose durability was looked up (and declared to the layer)."""
        self._routes: dict[str, Route] = {}
        """Named channels sent on before, with their contract: ``send``'s fast path."""
        self._process_routes: dict[type[Contract], Route] = {}
        """Per contract class, the route of its instances sent on process channels (replies)."""
        self._last_decoded: tuple[bytes | None, Any, Envelope[Any] | None] = (None, None, None)
        """(bytes, body type, envelope) of the last :meth:`decode`, shared by a group's members."""
        self._request_routes: dict[str, tuple[Route | None, type[Contract] | None]] = {}
        """Per channel requested before, the route of its contract instances (``request``)."""
        self._reply_channels: list[str] = []
        """Reply channels whose request got its reply, for the next requests (see request)."""
        self._reply_decoders: dict[Any, Decoder] = {}
        """Per reply type, the decoder of its replies (``T | None``, made once)."""
        self._deadlines = Deadlines()
        """The deadlines of requests waiting for replies, on one timer (asyncio)."""

    # lifecycle -----------------------------------------------------------

    async def __aenter__(self) -> Bus:
        self._reply_channels.clear()  # a reopened layer may name its channels anew
        await self.layer.connect()
        # A tracer provider installed after construction still takes effect.
        self.tracer = self._given_tracer or tracing.tracer()
        return self

    async def flush(self) -> None:
        """Wait until everything sent so far is accepted by its channel.

        Raises :class:`~svcbus.errors.MessagesLost` (with the count) when messages
        whose ``send`` had returned were lost since the last flush, and
        :class:`~svcbus.errors.LayerError` when the server stays unreachable.
        """
        await self.layer.flush()

    async def __aexit__(self, *exc_info: Any) -> None:
        self._reply_channels.clear()
        await self.layer.close()

    # durable channels ----------------------------------------------------

    def durability(self, channel: str) -> Durability | None:
        """``channel``'s durable settings, or None.

        Its contract's (or those declared here), with what the layer URL's per-channel
        durable settings (``durable_max_attempts=orders.*:3``...) change for it.
        """
        if "!" in channel:
            return None
        found = self._durable.get(channel)
        if found is None:
            found = self.contracts.durability(channel)
        if found is not None and self.layer.options.channel_durability:
            return self.layer.options.durability_for(channel, found)
        return found

    def expiry_ms(self, channel: str) -> int:
        """How long a contract's message sent on ``channel`` lives, in ms (as :meth:`encode` sets it)."""
        durable = self.durability(channel)
        return int(durable.max_age * 1000) if durable is not None else self._expiry_ms

    async def declare_durable(self, channel: str, settings: Durability) -> None:
        """Make ``channel`` durable on this bus and its layer (for channels without a contract).

        The layer URL's per-channel durable settings apply over ``settings``.
        """
        validate_channel(channel)
        self._durable[channel] = settings
        self._routes.pop(channel, None)  # its expiry changes
        self._request_routes.pop(channel, None)
        await self.layer.declare_durable(
            channel, self.layer.options.durability_for(channel, settings)
        )
        self._prepared.add(channel)

    async def _prepare(self, channel: str) -> None:
        """Before the first send on a named channel: tell the layer if it is durable."""
        settings = self.durability(channel)
        if settings is not None:
            await self.layer.declare_durable(channel, settings)
        self._prepared.add(channel)

    # encoding ------------------------------------------------------------

    def encode(
        self,
        channel: str,
        message: Any,
        *,
        reply_channel: str | None = None,
        reply_to: str | None = None,
        trace: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        message_id: str | None = None,
        contract: type[Contract] | None = None,
    ) -> bytes:
        """Validate ``message`` for ``channel`` and encode it as an envelope."""
        if contract is None and "!" not in channel:
            contract = self.contracts.get(channel)
        if contract is not None and type(message) is contract:
            body = message  # already validated when it was built
            name, version = contract.__contract_name__, contract.__version__
        else:
            body = coerce(channel, message, contract)
            name, version = _contract_of(body)
        sent_at = now_ms()
        # A durable message lives as long as its stream keeps it: retries and
        # redeliveries must not find it expired after the short at-most-once expiry.
        durable = self.durability(channel) if self._durable or contract is not None else None
        expires_at = sent_at + (
            int(durable.max_age * 1000) if durable is not None else self._expiry_ms
        )
        if reply_channel is None and reply_to is None and not trace and not headers:
            return encode_plain(
                body_json(body),
                message_id or new_message_id(),
                name,
                version,
                sent_at,
                expires_at,
            )
        return encode(
            body_json(body),
            id=message_id or new_message_id(),
            contract=name,
            version=version,
            sent_at=sent_at,
            expires_at=expires_at,
            reply_channel=reply_channel,
            reply_to=reply_to,
            trace=trace,
            headers=headers,
        )

    def decode(self, channel: str, data: bytes, body_type: Any = None) -> Envelope[Any]:
        """Decode and validate raw bytes received on ``channel`` in one pass.

        ``body_type`` defaults to the channel's contract (or any JSON value for
        untyped channels). Raises :class:`MessageInvalid` with the reason.
        """
        if body_type is None:
            contract = self.contracts.get(channel) if "!" not in channel else None
            body_type = contract if contract is not None else Any
        return self._decode_received(channel, data, body_type)

    def _decode_received(self, channel: str, data: bytes, body_type: Any) -> Envelope[Any]:
        """The one decode+validate of received bytes (shared by a group's local members).

        ``body_type`` None (a process channel's receive) types the body as the
        contract the envelope names, when this process knows it, else any JSON
        value; callers resolve a named channel's contract first.
        """
        last_data, last_type, last_envelope = self._last_decoded
        if last_data is data and last_type is body_type and last_envelope is not None:
            # A group fan-out hands every local member the same bytes object, one
            # receive after another: decode it once and share the (frozen) envelope.
            # Checked before reading the contract name, which would be a pass per member.
            return last_envelope
        decoded_as = body_type
        if body_type is None:
            named = peek_contract(data)
            decoded_as = contract_named(*named) if named is not None else None
        try:
            envelope = envelope_decoder(decoded_as if decoded_as is not None else Any)(data)
        except ValidationError as exc:
            raise _invalid(channel, exc, decoded_as) from None
        # One tuple, replaced whole: safe when worker threads decode too. It keeps the
        # last message alive, which is what makes the identity check sound.
        self._last_decoded = (data, body_type, envelope)
        return envelope

    # messaging -------------------------------------------------------------

    async def send(
        self,
        channel: str,
        message: Any,
        *,
        reply_channel: str | None = None,
        trace: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> str:
        """Validate and send ``message`` on ``channel``; returns the message id.

        Raises ``MessageInvalid`` (before anything is sent), ``ChannelFull``,
        ``MessageTooLarge`` or ``InvalidChannelName``.
        """
        route = self._routes.get(channel)
        if (
            route is not None
            and type(message) is route.contract
            and reply_channel is None
            and trace is None
            and headers is None
            and self.tracer is None
        ):
            # The common send: an instance of the channel's contract (validated when
            # it was built) on a channel sent on before. Name, contract, durability
            # and expiry were settled by the first send; only the envelope is new.
            message_id = new_message_id()
            await self.layer.send(channel, route.envelope(message_id, message))
            return message_id
        if (
            route is None
            and "!" in channel
            and isinstance(message, Contract)
            and reply_channel is None
            and trace is None
            and headers is None
            and self.tracer is None
        ):
            # A contract instance on a process channel (a consumer answering a socket).
            # A reader in this process may take it as it is (memory://: the edge
            # writing a Send to its socket): no envelope, no second decode. The
            # channel's name was checked when that reader started listening.
            if self.layer.deliver_locally(channel, message):
                return new_message_id()
            validate_channel(channel)
            # Else: no contract lookup, no durability, the bus's expiry; what encode() writes.
            route = self._process_route(type(message))
            message_id = new_message_id()
            await self.layer.send(channel, route.envelope(message_id, message))
            return message_id
        validate_channel(channel)
        if self.tracer is not None and trace is None:
            with tracing.send_span(self.tracer, self.layer.system, channel) as span:
                return await self._send(
                    channel, message, reply_channel, tracing.inject(), headers, span
                )
        return await self._send(channel, message, reply_channel, trace, headers, None)

    async def _send(
        self,
        channel: str,
        message: Any,
        reply_channel: str | None,
        trace: dict[str, str] | None,
        headers: dict[str, str] | None,
        span: Any,
    ) -> str:
        message_id = new_message_id()
        data = self.encode(
            channel,
            message,
            reply_channel=reply_channel,
            trace=trace,
            headers=headers,
            message_id=message_id,
        )
        if span is not None:
            span.set_attribute("messaging.message.id", message_id)
            span.set_attribute("messaging.message.body.size", len(data))
        if channel not in self._prepared and "!" not in channel:
            await self._prepare(channel)
        await self.layer.send(channel, data)
        if "!" not in channel:
            route = self._routes.get(channel)
            # A reloaded module makes a new contract class for the channel: follow it.
            if route is None or route.contract is not self.contracts.get(channel):
                self._add_route(channel)
        return message_id

    def _process_route(self, contract: type[Contract]) -> Route:
        """The route of ``contract``'s instances on process channels (no durability, the bus's expiry)."""
        route = self._process_routes.get(contract)
        if route is None:
            route = Route(contract, self._expiry_ms)
            if len(self._process_routes) < MAX_ROUTES:
                self._process_routes[contract] = route
        return route

    def _add_route(self, channel: str) -> None:
        """Remember a named channel's contract and expiry for ``send``'s fast path."""
        contract = self.contracts.get(channel)
        if contract is None or (len(self._routes) >= MAX_ROUTES and channel not in self._routes):
            return
        durable = self.durability(channel)
        # A durable message lives as long as its stream keeps it (see encode).
        expiry_ms = int(durable.max_age * 1000) if durable is not None else self._expiry_ms
        self._routes[channel] = Route(contract, expiry_ms)

    async def receive(self, channel: str, body_type: Any = None) -> Envelope[Any]:
        """Wait for the next valid, unexpired message on ``channel``.

        The body is validated as ``body_type``, else the channel's contract; on a
        process-specific channel (``new_channel()``), as the contract the message
        names (``ct``/``cv``) when this process has that contract class, else as
        any JSON value. One decoding pass per message; a loop of receives takes
        messages from the layer's local buffer, which the layer fills in batches.
        Raises :class:`MessageInvalid` for a message that does not decode.
        """
        receive = self.layer.receive
        if body_type is None and "!" not in channel:
            # A named channel: its contract's decoder, looked up once per call.
            body_type = self.contracts.get(channel)
            if body_type is None:
                body_type = Any
        while True:
            envelope = self._decode_received(channel, await receive(channel), body_type)
            if envelope.ex is None or envelope.ex > now_ms():
                return envelope

    async def messages(self, channel: str, body_type: Any = None) -> AsyncIterator[Envelope[Any]]:
        """Every valid, unexpired message of ``channel``, as they come (``async for``).

        The same as calling :meth:`receive` in a loop, without its per-call
        set-up. Each message is taken from the layer only when the loop asks for
        it, so leaving the loop (``break``, cancellation) leaves the rest on the
        channel: nothing is held here.
        """
        validate_channel(channel)
        receive = self.layer.receive
        if body_type is None and "!" not in channel:
            contract = self.contracts.get(channel)
            body_type = contract if contract is not None else Any
        # A named channel (or a given type) has one decoder for the whole loop;
        # a process channel's messages are typed each by the contract it names.
        decode = envelope_decoder(body_type) if body_type is not None else None
        while True:
            data = await receive(channel)
            if decode is None:
                envelope = self._decode_received(channel, data, None)
            else:
                try:
                    envelope = decode(data)
                except ValidationError as exc:
                    raise _invalid(channel, exc, body_type) from None
            if envelope.ex is None or envelope.ex > now_ms():
                yield envelope

    async def group_send(
        self, group: str, message: Any, *, trace: dict[str, str] | None = None
    ) -> None:
        """Send ``message`` to every channel in ``group`` (never raises ``ChannelFull``)."""
        if self.tracer is not None and trace is None:
            with tracing.send_span(self.tracer, self.layer.system, group) as span:
                span.set_attribute("svcbus.group", True)
                await self.group_send(group, message, trace=tracing.inject())
            return
        body = coerce(group, message, None)
        name, version = _contract_of(body)
        sent_at = now_ms()
        data = encode(
            body_json(body),
            id=new_message_id(),
            contract=name,
            version=version,
            sent_at=sent_at,
            expires_at=sent_at + self._expiry_ms,
            trace=trace,
        )
        await self.layer.group_send(group, data)

    async def group_add(self, group: str, channel: str) -> None:
        """Add ``channel`` to ``group``."""
        await self.layer.group_add(group, channel)

    async def group_discard(self, group: str, channel: str) -> None:
        """Remove ``channel`` from ``group``."""
        await self.layer.group_discard(group, channel)

    async def new_channel(self, prefix: str = "specific") -> str:
        """A new process-specific channel that only this process receives."""
        return await self.layer.new_channel(prefix)

    async def reply(
        self,
        reply_channel: str,
        request_id: str,
        message: Any,
        *,
        contract: type[Contract] | None = None,
        trace: dict[str, str] | None = None,
    ) -> None:
        """Send ``message`` as the reply to request ``request_id``."""
        if self.tracer is not None and trace is None:
            trace = tracing.inject()
        elif trace is None and (contract is None or type(message) is contract):
            # The common reply (a consumer's return value, no tracing): what encode
            # writes, without its contract lookups (a process channel has none).
            message_id = new_message_id()
            if isinstance(message, Contract):
                route = self._process_route(type(message))
                data = route.reply_envelope(message_id, request_id, message)
            else:
                sent_at = now_ms()
                data = encode(
                    body_json(message),
                    id=message_id,
                    contract=None,
                    version=1,
                    sent_at=sent_at,
                    expires_at=sent_at + self._expiry_ms,
                    reply_to=request_id,
                )
            await self.layer.send(reply_channel, data)
            return
        data = self.encode(
            reply_channel, message, reply_to=request_id, contract=contract, trace=trace
        )
        await self.layer.send(reply_channel, data)

    async def reply_error(self, reply_channel: str, request_id: str, error: BaseException) -> None:
        """Tell the requester that handling its request failed."""
        sent_at = now_ms()
        data = encode(
            b"null",
            id=new_message_id(),
            contract=None,
            version=1,
            sent_at=sent_at,
            expires_at=sent_at + self._expiry_ms,
            reply_to=request_id,
            error=ErrorInfo.of(error),
        )
        await self.layer.send(reply_channel, data)

    async def request(
        self,
        channel: str,
        message: Any,
        *,
        timeout: float = DEFAULT_REQUEST_TIMEOUT,
        reply_type: Any = None,
        trace: dict[str, str] | None = None,
    ) -> Any:
        """Send a request and wait for its reply; returns the validated reply body.

        The reply type is the channel contract's ``reply=`` unless given.
        Raises :class:`RequestTimeout` or :class:`RemoteError`.
        """
        validate_channel(channel)
        if self.tracer is not None and trace is None:
            with tracing.send_span(
                self.tracer, self.layer.system, channel, operation="request"
            ) as span:
                span.set_attribute("messaging.message.body.size", 0)
                return await self.request(
                    channel, message, timeout=timeout, reply_type=reply_type, trace=tracing.inject()
                )
        if reply_type is None:
            contract = self.contracts.get(channel)
            reply_type = contract.__reply__ if contract is not None else None
        decode_reply = self._reply_decoders.get(reply_type)
        if decode_reply is None:
            decode_reply = envelope_decoder(reply_type | None if reply_type is not None else Any)
            if len(self._reply_decoders) < MAX_ROUTES:
                self._reply_decoders[reply_type] = decode_reply
        # A reply channel of its own for each request in flight, so the reply wakes
        # this task directly (no reader task in between). A channel whose request
        # got its reply is used again; one whose request gave up is not: a late
        # reply lands on a channel nobody reads, which the layer expires (and counts).
        idle = self._reply_channels
        reply_channel = idle.pop() if idle else await self.layer.new_channel("reply")
        message_id = new_message_id()
        route, registered = self._request_routes.get(channel, _NO_ROUTE)
        if (
            route is not None
            and type(message) is route.contract
            and trace is None
            and self.contracts.get(channel) is registered
        ):
            # A contract instance on a channel asked before (the edge's HttpRequests):
            # what encode writes, in one formatting step.
            data = route.request_envelope(message_id, reply_channel, message)
        else:
            data = self.encode(
                channel, message, reply_channel=reply_channel, message_id=message_id, trace=trace
            )
            if trace is None:
                self._add_request_route(channel, message)
        try:
            if channel not in self._prepared and "!" not in channel:
                await self._prepare(channel)
            await self.layer.send(channel, data)
            envelope = await self._wait_reply(
                reply_channel, message_id, decode_reply, reply_type, timeout
            )
        except TimeoutError:
            raise RequestTimeout(
                f"no reply on {channel!r} within {timeout:g}s: is a service consuming "
                f"{channel!r} running on this layer?"
            ) from None
        if len(idle) < MAX_IDLE_REPLY_CHANNELS:
            idle.append(reply_channel)
        if envelope.er is not None:
            raise RemoteError.of(channel, envelope.er.type, envelope.er.message)
        if envelope.b is None and reply_type is not None:
            raise MessageInvalid(
                f"the reply on {channel!r} has no body; {getattr(reply_type, '__name__', reply_type)} "
                "was expected (did the consumer return None?)",
                channel=channel,
            )
        return envelope.b

    def _add_request_route(self, channel: str, message: Any) -> None:
        """Remember how ``message``'s kind is encoded on ``channel`` for ``request``'s fast path."""
        if not isinstance(message, Contract) or len(self._request_routes) >= MAX_ROUTES:
            return
        registered = self.contracts.get(channel)
        if registered is not None and type(message) is not registered:
            return
        route = Route(type(message), self.expiry_ms(channel))
        self._request_routes[channel] = (route, registered)

    async def _wait_reply(
        self,
        reply_channel: str,
        message_id: str,
        decode: Decoder,
        reply_type: Any,
        timeout: float,
    ) -> Envelope[Any]:
        """The reply to ``message_id`` on ``reply_channel``; raises ``TimeoutError`` after ``timeout``.

        Other messages there (a reply that came after its request gave up, before
        the channel was used again) are dropped. On asyncio (3.11+) the deadline is
        one entry on the bus's shared timer (:mod:`svcbus.deadlines`): a cancel
        scope costs about 40k instructions per request, an eighth of a request.
        """
        watch = None
        if FAST_DEADLINES:
            with contextlib.suppress(RuntimeError):  # not on asyncio: a cancel scope
                watch = self._deadlines.watch(timeout)
        if watch is None:
            # A bare CancelScope with a deadline: what fail_after does, without its
            # generator-based wrapper (as costly as the scope itself).
            with anyio.CancelScope(deadline=anyio.current_time() + timeout):
                return await self._read_reply(reply_channel, message_id, decode, reply_type)
            raise TimeoutError  # only the deadline ends the wait without a reply
        try:
            return await self._read_reply(reply_channel, message_id, decode, reply_type)
        except asyncio.CancelledError:
            if watch.expired():
                raise TimeoutError from None
            raise
        finally:
            self._deadlines.release(watch)

    async def _read_reply(
        self, reply_channel: str, message_id: str, decode: Decoder, reply_type: Any
    ) -> Envelope[Any]:
        """Receive on ``reply_channel`` until the reply to ``message_id`` comes (no deadline)."""
        receive_many = self.layer.receive_many
        while True:
            (raw,) = await receive_many(reply_channel, 1)
            envelope = self._reply_for(reply_channel, raw, message_id, decode, reply_type)
            if envelope is not None:
                return envelope

    def _reply_for(
        self, reply_channel: str, raw: bytes, message_id: str, decode: Decoder, reply_type: Any
    ) -> Envelope[Any] | None:
        """``raw`` decoded if it is the reply to ``message_id``; None for another message."""
        try:
            envelope = decode(raw)
        except ValidationError as exc:
            try:
                other = envelope_decoder(Any)(raw).re != message_id
            except ValidationError:
                other = False
            if other:
                log.debug("stray message on %s dropped", reply_channel)
                return None
            raise _invalid(reply_channel, exc, reply_type) from None
        if envelope.re == message_id:
            return envelope
        log.debug("stray message on %s dropped", reply_channel)
        return None


def _contract_of(body: Any) -> tuple[str | None, int]:
    if isinstance(body, Contract):
        cls = type(body)
        return cls.__contract_name__, cls.__version__
    return None, 1


def _invalid(channel: str, exc: ValidationError, body_type: Any) -> MessageInvalid:
    errors = exc.errors(include_url=False)
    if any(err["type"] == "json_invalid" for err in errors):
        return MessageInvalid(f"undecodable message on {channel!r}: not JSON", channel=channel)
    body_errors = [e for e in errors if e["loc"][:1] == ("b",)]
    what = getattr(body_type, "__contract_name__", None) or "the envelope"
    if body_errors:
        return MessageInvalid(
            f"message on {channel!r} does not fit {what}: {describe_errors(exc)}",
            channel=channel,
            errors=errors,
        )
    return MessageInvalid(
        f"message on {channel!r} is not a svcbus envelope: {describe_errors(exc)}",
        channel=channel,
        errors=errors,
    )


def connect(url: str, **options: Any) -> Bus:
    """A :class:`Bus` on the layer ``url`` selects; use it with ``async with``."""
    return Bus(open_layer(url, **options))
