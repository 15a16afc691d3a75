"""``NatsLayer``: the layer interface over the parts in this package.

Each part owns its state (docs/architecture.md has the map): :class:`Connection`
(the client), :class:`Streams` (channel streams), :class:`Sender` and
:class:`Publisher` (named channels, sending), :class:`Receivers` (named channels,
receiving), :class:`ProcessChannels`, :class:`Groups`, and :class:`Losses`
(what was lost after ``send`` returned). This class routes calls and answers to
them and runs the housekeeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import time
from collections.abc import Mapping
from typing import Any

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from svcbus.durable import Delivery, Durability
from svcbus.errors import ConfigurationError, LayerError
from svcbus.layer import Layer, LayerOptions
from svcbus.layers._waiter import Wait
from svcbus.names import validate_channel

from .config import (
    CONNECT_TIMEOUT,
    DEFAULT_PENDING_BYTES,
    DEFAULT_PENDING_MSGS,
    SWEEP_INTERVAL,
    Subjects,
    check_prefix,
    parse_url,
)
from .connection import Connection
from .durable import DurableChannels
from .groups import Groups
from .losses import Losses
from .process import ProcessChannels
from .publisher import Publisher
from .receiving import Receivers
from .sending import Sender
from .streams import Streams
from .wire import queue_waiter, round_trip

log = logging.getLogger("svcbus.layers.nats")


class NatsLayer(Layer):
    """Layer on a NATS server with JetStream (``nats-server -js``).

    Build it with :func:`svcbus.open_layer` from a URL, or directly::

        layer = NatsLayer(["nats://127.0.0.1:4222"], LayerOptions(capacity=500))
    """

    system = "nats"

    def __init__(
        self,
        servers: list[str] | str = "nats://127.0.0.1:4222",
        options: LayerOptions | None = None,
        *,
        prefix: str = "svcbus",
        user: str | None = None,
        password: str | None = None,
        token: str | None = None,
        tls: ssl.SSLContext | None = None,
        tls_hostname: str | None = None,
        creds: str | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
        pending_msgs_limit: int = DEFAULT_PENDING_MSGS,
        pending_bytes_limit: int = DEFAULT_PENDING_BYTES,
        live: bool = True,
    ) -> None:
        super().__init__(options)
        servers = [servers] if isinstance(servers, str) else list(servers)
        if not servers:
            raise ConfigurationError("the NATS layer needs at least one server URL")
        self.prefix = check_prefix(prefix)
        self.token = os.urandom(5).hex()
        """This layer's process token: the part before ``!`` of its process channels ends with it."""
        self.subjects = Subjects(prefix, self.token)
        self.losses = Losses()
        self.conn = Connection(
            servers,
            name=f"svcbus-{self.token}",
            auth={"user": user, "password": password, "token": token},
            tls=tls,
            tls_hostname=tls_hostname,
            creds=creds,
            connect_timeout=connect_timeout,
            pending_msgs_limit=pending_msgs_limit,
            pending_bytes_limit=pending_bytes_limit,
            losses=self.losses,
        )
        self.streams = Streams(self.conn, self.options, self.subjects)
        self.publisher = Publisher(self.conn, self.streams, self.losses)
        self.sender = Sender(
            self.conn,
            self.options,
            self.subjects,
            self.streams,
            self.publisher,
            self.losses,
            live=live,
        )
        self.receivers = Receivers(
            self.conn,
            self.options,
            self.subjects,
            self.streams,
            self.publisher,
            self.losses,
            live=live,
        )
        self.processes = ProcessChannels(self.conn, self.options, self.subjects, self.losses)
        self.groups = Groups(self.conn, self.options, self.subjects, self.processes, self.streams)
        self.durable = DurableChannels(self.conn, self.options, prefix, self.sender.ack_timeout)
        self.conn.setup = self._setup
        self.conn.on_disconnect.append(self.sender.on_disconnected)
        self.conn.on_reconnect.append(self._on_reconnected)
        self._ack_prefix = ""

    @classmethod
    def from_url(cls, url: str, options: LayerOptions, params: Mapping[str, Any]) -> NatsLayer:
        """Build the layer from ``nats://[user:password@|token@]host:port[,host:port...]?...``."""
        return cls(options=options, **parse_url(url, params))

    # settings and counters, for operators and tests -------------------------------------

    @property
    def servers(self) -> list[str]:
        """The seed servers."""
        return self.conn.servers

    @property
    def live(self) -> bool:
        """Deliver named-channel messages straight to live receivers, the stream as waiting room."""
        return self.sender.live

    @property
    def linger(self) -> float:
        """Seconds a named channel's live subscription outlives its last waiting receiver."""
        return self.receivers.linger

    @linger.setter
    def linger(self, seconds: float) -> None:
        self.receivers.linger = seconds

    @property
    def ack_timeout(self) -> float:
        """Seconds ``flush`` and stored sends wait for acknowledgements."""
        return self.sender.ack_timeout

    @ack_timeout.setter
    def ack_timeout(self, seconds: float) -> None:
        self.sender.ack_timeout = seconds

    @property
    def lost(self) -> int:
        """Messages lost after their ``send`` returned, each logged (rate-limited)."""
        return self.losses.lost

    @property
    def dropped(self) -> int:
        """Messages dropped because one of our process channels was at capacity."""
        return self.processes.dropped

    @property
    def slow_consumer_drops(self) -> int:
        """Messages nats-py dropped because a subscription exceeded its pending limits."""
        return self.conn.slow_consumer_drops

    @property
    def bounced(self) -> int:
        """Live messages that found no listening receiver and went to the stream instead."""
        return self.sender.bounced

    @property
    def spilled(self) -> int:
        """Live messages this process passed on to the stream because its buffer was full."""
        return self.receivers.spilled

    # connection -------------------------------------------------------------------------

    @property
    def connection(self) -> Client:
        """The nats-py client (connected), for tools and tests."""
        if self.conn.nc is None:
            raise LayerError("the NATS layer is not connected; call `await layer.connect()`")
        return self.conn.nc

    async def connect(self) -> None:
        """Connect to the first reachable server; raise :class:`LayerError` within the timeout."""
        await self.conn.open()

    async def _setup(self, nc: Client) -> None:
        self._ack_prefix = prefix = f"{self.conn.reply_root}.a."
        self.publisher.prefix = self.sender.prefix = prefix
        self.processes.dropped_reply = f"{prefix}d.0"
        self.durable.prefix = f"{prefix}j."
        await self.conn.subscribe(f"{prefix}>", self._on_answer, nc=nc)
        await nc.subscribe(self.subjects.control, cb=self.groups.on_control)
        await nc.subscribe(self.subjects.named_control, cb=self.groups.on_named_control)
        await round_trip(nc)
        self.conn.spawn(self._sweep_forever())

    async def _on_reconnected(self) -> None:
        self.publisher.forget_marks()
        await self.receivers.on_reconnected()

    async def _on_answer(self, msg: Msg) -> None:
        """Route an answer on our reply subjects to the part that asked."""
        tail = msg.subject[len(self._ack_prefix) :]
        if tail.isdigit():
            await self.publisher.on_ack(int(tail), msg)
        else:
            head, _, number = tail.partition(".")
            if head == "m":
                self.sender.confirm(int(number))
            elif head == "j":
                self.durable.on_answer(int(number), msg)
                return  # a durable send's answer: nothing a flush or the window waits for
            elif head == "d":
                self.processes.on_dropped(msg)
            else:
                await self.sender.on_live_reply(int(head), int(number), msg)
        self.sender.settled()

    # the layer interface ----------------------------------------------------------------

    async def send(self, channel: str, message: bytes) -> None:
        if self.durable.settings and channel in self.durable.settings:
            self.options.check_size(channel, message)
            await self.durable.send(channel, message)
            return
        out = self.sender.outgoing.get(channel)
        if out is None:
            validate_channel(channel)
            self.options.check_size(channel, message)
            if "!" in channel:
                await self.processes.send(channel, message)
                return
        elif len(message) > self.options.max_message_size:
            self.options.check_size(channel, message)
        await self.sender.send(channel, message, out)

    async def receive(self, channel: str) -> bytes:
        if "!" not in channel:
            data = self.receivers.take_one(channel)  # None unless one is buffered
            if data is not None:
                return data
            return (await self.receive_many(channel, 1))[0]
        processes = self.processes
        locals_ = processes.locals
        box = locals_.get(channel)
        if box is None:
            validate_channel(channel)
            processes.check_owned(channel)
            box = processes.local(channel)
        # A process channel's buffer here passed those checks when it was made (a
        # group member's is kept between messages). The wait is inlined: while
        # this receive waits it holds this one coroutine and the buffer's reusable
        # Waiter, where receive_many -> ProcessChannels.receive -> wait_turn held
        # four coroutines and a new future. Thousands of members re-arm once per
        # message, so each step here is counted: see layers/_waiter.py for what
        # allocations do to the gc, and bench/README for the calls per member.
        while True:
            if box.items:
                data = processes.take_one(channel, box)
                if data is not None:
                    return data
            waiter: Wait | None = box.signal.claim(box.waiters)  # ProcessChannels.arm, inlined
            if waiter is None:
                waiter = queue_waiter(box.waiters)
            try:
                await waiter
            except BaseException:
                processes.disarm(box, waiter)
                processes.settle(channel, box)
                raise
            # The sweep forgets a buffer left empty while its receiver was being
            # woken: then wait on the channel's buffer as it is now.
            if locals_.get(channel) is not box:
                box = processes.local(channel)

    async def receive_many(self, channel: str, limit: int) -> list[bytes]:
        if channel not in self.receivers.inboxes:
            validate_channel(channel)
            if "!" in channel:
                return await self.processes.receive(channel, limit)
        return await self.receivers.receive(channel, limit)

    async def declare_durable(self, channel: str, settings: Durability) -> None:
        """Create or update ``channel``'s JetStream stream and consumer (durable.py)."""
        validate_channel(channel)
        # The layer URL's per-channel durable settings (durable_ack_wait=...) over the contract's.
        await self.durable.declare(channel, self.options.durability_for(channel, settings))

    async def receive_durable(self, channel: str, limit: int) -> list[Delivery]:
        return await self.durable.receive(channel, limit)

    async def new_channel(self, prefix: str = "specific") -> str:
        return await self.processes.new_channel(prefix)

    async def group_add(self, group: str, channel: str) -> None:
        await self.groups.add(group, channel)

    async def group_discard(self, group: str, channel: str) -> None:
        await self.groups.discard(group, channel)

    async def group_send(self, group: str, message: bytes) -> None:
        await self.groups.send(group, message)

    async def flush(self) -> None:
        """Hand everything to the server and wait for JetStream's acknowledgements.

        While the connection is down this waits for the reconnection, up to
        ``ack_timeout`` seconds in all, then raises :class:`LayerError`. Messages
        found lost since the last flush (their ``send`` had returned) raise
        :class:`~svcbus.errors.MessagesLost`.
        """
        await self._flush(self.ack_timeout)
        lost = self.losses.report()
        if lost is not None:
            raise lost

    async def _flush(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        nc = await self.conn.connected(timeout, len(self.publisher.in_flight))
        try:
            await round_trip(nc, max(0.1, deadline - time.monotonic()))
        except (nats.errors.Error, asyncio.TimeoutError) as exc:
            raise LayerError(f"NATS connection failed: {exc!r}") from None
        await self.sender.flush(max(0.1, deadline - time.monotonic()))

    async def close(self) -> None:
        """Wait for outstanding acknowledgements, return unread pulled messages, disconnect."""
        if self.conn.closed:
            return
        nc = self.conn.nc
        if nc is None:
            self.conn.closed = True
            return
        try:
            if nc.is_connected:
                await self.durable.close()
                await self.receivers.close()
                with contextlib.suppress(LayerError):
                    await self._flush(3.0)
                self.receivers.count_left()
        except (nats.errors.Error, asyncio.TimeoutError):
            pass
        finally:
            self.receivers.cancel_waiters()
            self.processes.cancel_waiters()
            await self.conn.close()

    # housekeeping -----------------------------------------------------------------------

    async def _sweep_forever(self) -> None:
        while not self.conn.closed:
            await asyncio.sleep(SWEEP_INTERVAL)
            try:
                await self._sweep()
            except Exception:
                log.exception("NATS layer housekeeping failed")

    async def _sweep(self) -> None:
        now = time.monotonic()
        nc = self.conn.nc
        connected = nc is not None and nc.is_connected
        # While disconnected there is nothing to ask: the reconnect handler resumes.
        if connected:
            await self.receivers.sweep(now)
        self.processes.sweep(now)
        await self.groups.sweep(now)
        self.losses.flush_log()
        if connected and self.sender.unconfirmed:
            # A quiet sender's last live publishes, or a marker lost in a disconnect.
            await self.sender.mark(again=True)
        if self.publisher.give_up_stale(now, self.ack_timeout, connected):
            self.sender.window.set()
