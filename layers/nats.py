"""The NATS layer: named channels live over core NATS with JetStream as the waiting
room, process channels and groups on core NATS.

``nats://host:4222`` (or ``tls://``) selects it; ``docs/protocol.md`` writes the
mapping out for other runtimes. In short, with the subject root ``svcbus``:

* **Named channel** ``chat.receive``, live: ``send`` publishes to
  ``svcbus.live.chat.receive``, where every process with waiting receivers
  listens in queue group ``receivers`` (each message reaches one of them). This
  is core NATS routing, no store and no acknowledgement, so it runs at close to
  raw pub/sub speed. The publish carries a reply subject: if nobody listens the
  server answers 503 (no responders) and the sender republishes the message to
  the channel's stream. Markers the sender publishes to itself tell it when no
  such answer can still come (:meth:`NatsLayer._mark`).
* **Named channel**, waiting room: a JetStream stream of its own,
  ``svcbus_ch_chat:receive`` (memory storage, subject ``svcbus.ch.chat.receive``,
  ``max_msgs`` = capacity with discard-new, ``max_age`` = expiry), read through
  one shared durable pull consumer ``receivers`` with no acknowledgements and
  interest retention: a message waits in the stream until some process pulls
  it, each pull request gets different messages (load balancing across
  processes with no coordination), and a delivered message leaves the stream,
  so the stream holds exactly the waiting messages that capacity counts. One
  stream per channel (not one for all) because capacity and expiry differ per
  channel (``channel_capacity`` patterns), which a stream-wide per-subject limit
  cannot express. (A work-queue stream requires an acknowledgement publish per
  received message; profiled, that cost the consumer more than validating it.)
  A listening process whose buffer holds the channel's capacity spills further
  arrivals into the stream; one whose receivers left returns its buffer there.
* **Sending to the stream** is pipelined: every publish carries a reply subject
  for its JetStream acknowledgement, and ``send`` returns without waiting for
  it. A refused message ("maximum messages exceeded") makes the next ``send`` to
  that channel raise :class:`ChannelFull`; ``flush()`` waits for every
  outstanding acknowledgement, so a send, flush, send sequence surfaces it at once.
* **Receiving** is demand-driven: a process listens live while it has waiting
  receivers (and :attr:`NatsLayer.linger` seconds after), and pulls from the
  stream what they asked for plus a prefetch window (:data:`PREFETCH`), topping
  up in chunks; messages wait in a local buffer that a cancelled receive leaves
  intact (delivered means taken: at-most-once).
* **Process channel** ``inbox.k3f9a1!c7d2``: core NATS subject
  ``svcbus.p.inbox.k3f9a1.c7d2``; the owner holds one subscription per head
  (``svcbus.p.inbox.k3f9a1.>``) and demuxes into bounded per-channel buffers.
* **Group** ``room.lobby``: subject ``svcbus.g.room.lobby``. Each process that owns
  a member subscribes once and delivers to its local members, so ``group_send`` is
  one publish whatever the member count. ``group_add`` of another process's
  channel is a request to the owner's control subject ``svcbus.ctl.<token>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import unquote

import nats
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import api
from nats.js.errors import APIError

from svcbus.errors import (
    ChannelFull,
    ConfigurationError,
    InvalidChannelName,
    LayerError,
    MessagesLost,
    MessageTooLarge,
)
from svcbus.layer import Layer, LayerOptions
from svcbus.names import validate_channel, validate_group
from svcbus.ratelog import RateLimitedLog
from svcbus.redact import redact_url

log = logging.getLogger("svcbus.layers.nats")

CONSUMER = "receivers"
"""Durable name of the one pull consumer every process shares on a channel stream."""

PULL_EXPIRES = 1.0
"""Seconds a pull request waits at the server; waiting receivers renew it. Short, so
that a process whose receivers left stops taking messages from the stream soon."""
_PULL_EXPIRES_NS = int(PULL_EXPIRES * 1e9)

MAX_IN_FLIGHT = 4096
"""Published messages whose JetStream acknowledgement is outstanding, per layer."""

ACK_TIMEOUT = 10.0
"""Seconds after which an unacknowledged publish is given up as lost."""

SEND_TIMEOUT = 10.0
"""Seconds ``send`` waits for room in the in-flight window before failing."""

CONTROL_TIMEOUT = 5.0
"""Seconds ``group_add``/``group_discard`` wait for the owning process to confirm."""

CONNECT_TIMEOUT = 5.0
"""Default seconds the first connection may take before ``connect`` fails."""

RECONNECT_WAIT = 0.5
"""Seconds between reconnection attempts to one server."""

LINGER = 2.0
"""Seconds a process stays subscribed to a named channel's live subject after its
last receiver left; then it unsubscribes and returns what it buffered to the stream."""

DIRECT_FOR = 1.0
"""Seconds a sender publishes straight to a channel's stream after a bounce (nobody
listened), before it tries the live subject again: a backlog costs one bounce a second."""

MARK_EVERY = 256
"""Live publishes between two markers (see :meth:`NatsLayer._mark`)."""

MAX_UNCONFIRMED = 16_384
"""Live publishes kept for a possible bounce until a marker confirms them, per layer."""

PREFETCH = 64
"""Messages a process pulls ahead of its waiting receivers, per named channel.

Runtime workers take one message each; pulling only what they wait for would
cost a pull request per message. Prefetched messages are this process's (they
are acknowledged on arrival); ``close()`` returns unread ones to the channel.
"""


DEFAULT_PENDING_MSGS = 65_536
DEFAULT_PENDING_BYTES = 64 * 1024 * 1024

_SWEEP_INTERVAL = 1.0
_STREAM_CONFIG_DIFFERS = 10058
_CONSUMER_EXISTS = (10013, 10148)
_STREAM_FULL_CODES = (10077, 10078)  # maximum messages / bytes exceeded
_OK = b'{"ok":true}'
_FULL = b"F"  # a listener's answer: kept over capacity, store the next ones in the stream

_URL_PARAMS = (
    "prefix",
    "tls_ca",
    "tls_cert",
    "tls_key",
    "tls_hostname",
    "creds",
    "connect_timeout",
    "pending_msgs",
    "pending_bytes",
    "live",
)


class _Incoming:
    """This process's receiving side of one named channel: pulled messages and waiters."""

    __slots__ = (
        "capacity",
        "channel",
        "demand",
        "idle_since",
        "inbox",
        "items",
        "listening",
        "live",
        "live_subject",
        "next_subject",
        "prefetch",
        "pull_deadline",
        "ready",
        "recovering",
        "requested",
        "returns",
        "spill",
        "stream",
        "sub",
        "subject",
        "waiters",
    )

    def __init__(
        self, channel: str, stream: str, inbox: str, subject: str, live_subject: str, capacity: int
    ) -> None:
        self.channel = channel
        self.stream = stream
        self.inbox = inbox
        self.subject = subject  # the stream's subject: spilled and returned messages go there
        self.live_subject = live_subject
        self.capacity = capacity  # of the live buffer; beyond it, arrivals spill to the stream
        self.live: Subscription | None = None  # queue subscription while receivers are around
        self.listening = False  # subscribing or subscribed to the live subject
        self.idle_since = time.monotonic()  # when the last waiting receiver left
        self.returns: _Outgoing | None = None  # publishes the buffer back to the stream
        self.spill: _Outgoing | None = None  # publishes live arrivals beyond capacity there
        self.next_subject = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{CONSUMER}"
        self.items: deque[bytes] = deque()
        self.waiters: deque[asyncio.Future[None]] = deque()
        self.demand = 0  # sum of the limits of waiting receivers
        self.prefetch = PREFETCH  # ahead of demand: receivers usually come back
        self.requested = 0  # pulled for but not yet arrived
        self.pull_deadline = 0.0
        self.ready: asyncio.Future[None] | None = None
        self.recovering = False
        self.sub: Subscription | None = None


class _Outgoing:
    """The sending side of one named channel: its stream and refusals to report."""

    __slots__ = (
        "channel",
        "direct_until",
        "full",
        "keeps",
        "last_live",
        "live_reply",
        "live_subject",
        "recovering",
        "retry",
        "returning",
        "stream",
        "subject",
    )

    def __init__(
        self,
        channel: str,
        stream: str,
        subject: str,
        live_subject: str,
        live_reply: str,
        *,
        returning: bool = False,
        keeps: _Incoming | None = None,
    ) -> None:
        self.channel = channel
        self.stream = stream
        self.subject = subject
        self.live_subject = live_subject
        self.live_reply = live_reply  # + sequence: where bounces and spill-over acks come back
        self.last_live = 0  # sequence of the newest live publish
        self.direct_until = 0.0  # after a bounce or a full listener: use the stream until then
        self.full = False  # the stream refused the last send: stay on it until one fits
        self.retry: list[bytes] = []  # published while the stream was missing
        self.recovering = False
        self.returning = returning  # a receiver giving its buffer back, not a sender
        self.keeps = keeps  # a listener spilling: a refused message goes back into its buffer


class _Local:
    """A process channel's buffer: (deadline, message) pairs and waiting receivers."""

    __slots__ = ("items", "waiters")

    def __init__(self) -> None:
        self.items: deque[tuple[float, bytes]] = deque()
        self.waiters: deque[asyncio.Future[None]] = deque()


class _Group:
    """This process's members of one group and the subscription that feeds them."""

    __slots__ = ("members", "ready", "sub")

    def __init__(self) -> None:
        self.members: dict[str, float] = {}  # channel -> membership deadline
        self.sub: Subscription | None = None
        self.ready: asyncio.Future[None] | None = None


def _wake(waiters: deque[asyncio.Future[None]]) -> None:
    while waiters:
        waiter = waiters.popleft()
        if not waiter.done():
            waiter.set_result(None)
            return


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
        self.servers = [servers] if isinstance(servers, str) else list(servers)
        if not self.servers:
            raise ConfigurationError("the NATS layer needs at least one server URL")
        if not prefix or "." in prefix or prefix != prefix.lower():
            raise ConfigurationError(
                f"NATS prefix {prefix!r} must be one lower-case token like 'svcbus' "
                "(letters, digits, '_' or '-')"
            )
        validate_group(prefix)
        self.prefix = prefix
        self.connect_timeout = connect_timeout
        self.pending_msgs_limit = pending_msgs_limit
        self.pending_bytes_limit = pending_bytes_limit
        self.live = live
        """Deliver named-channel messages straight to live receivers (core NATS queue group),
        using the stream only when none listens or they fall behind. ``False``: always the stream."""
        self._auth = {"user": user, "password": password, "token": token}
        self._tls = tls
        self._tls_hostname = tls_hostname
        self._creds = creds
        self.token = os.urandom(5).hex()
        """This layer's process token: the part before ``!`` of its process channels ends with it."""

        self._nc: Client | None = None
        self._connect_lock: asyncio.Lock | None = None
        self._closed = False
        self._tasks: set[asyncio.Task[Any]] = set()
        # Subject roots.
        self._ch_root = f"{prefix}.ch."
        self._live_root = f"{prefix}.live."
        self._p_root = f"{prefix}.p."
        self._g_root = f"{prefix}.g."
        self._control_subject = f"{prefix}.ctl.{self.token}"
        self._named_control = f"{prefix}.ctl.named"
        self._reply_root = ""
        self._ack_prefix = ""
        # Sending: per-message acknowledgements, matched by the sequence in the reply subject.
        self._outgoing: dict[str, _Outgoing] = {}
        self._outgoing_by_id: list[_Outgoing] = []
        self._opening_out: dict[str, asyncio.Future[_Outgoing]] = {}
        self._in_flight: dict[int, tuple[_Outgoing, bytes]] = {}
        self._spill_replies: dict[int, str] = {}  # in-flight spills -> the sender's reply
        self._dropped_reply = ""  # where owners of process channels report drops
        self._seq = 0
        self._window: asyncio.Event | None = None  # set when the window has room
        self._acked: asyncio.Event | None = None  # set on each ack while someone flushes
        self._seq_marks: deque[tuple[float, int]] = deque()
        # Live publishes not yet confirmed by a marker, oldest first: the newest has
        # sequence ``_live_seq``. A bounce (no receiver listens) republishes from here.
        self._unconfirmed: deque[bytes] = deque()
        self._live_seq = 0
        self._marked = 0  # sequence of the newest marker published
        self._confirmed = 0  # sequence of the newest marker returned
        self._recovering = 0  # streams being recreated for bounced messages
        self._recoveries = 0
        self.ack_timeout = ACK_TIMEOUT
        """Seconds ``flush`` waits for acknowledgements; unacknowledged publishes are lost after it."""
        self.send_timeout = SEND_TIMEOUT
        """Seconds ``send`` waits for room in the in-flight window."""
        self.linger = LINGER
        """Seconds a named channel's live subscription outlives its last waiting receiver."""
        # Receiving.
        self._incoming: dict[str, _Incoming] = {}
        self._locals: dict[str, _Local] = {}
        self._heads: dict[str, Subscription] = {}
        self._head_ready: dict[str, asyncio.Future[None]] = {}
        self._groups: dict[str, _Group] = {}
        self._held: dict[tuple[str, str], tuple[Subscription, float]] = {}
        self._next_inbox = 0
        # Counters for operators and tests.
        self.dropped = 0
        """Messages dropped because a process channel's buffer was at capacity."""
        self.lost = 0
        """Messages lost after their ``send`` returned, each logged (rate-limited) with its
        reason: never acknowledged (a disconnect), bounced or given back into a full
        stream, dropped by a full process channel's owner (counted at the sender), or
        dropped by nats-py's pending limits (counted at the receiver)."""
        self._lost_log = RateLimitedLog(log, "reports of lost messages")
        self._sent_lost = 0  # lost after this process's sends returned ...
        self._reported_lost = 0  # ... of which flush() has raised MessagesLost
        self._lost_channels: set[str] = set()
        self._doubt_upto = 0  # live publishes up to this one were counted lost in doubt
        self.slow_consumer_drops = 0
        """Messages nats-py dropped because a subscription exceeded its pending limits."""
        self.bounced = 0
        """Live messages that found no listening receiver and went to the stream instead."""
        self.spilled = 0
        """Live messages this process passed on to the stream because its buffer was full."""
        self._disconnected = False

    # construction -----------------------------------------------------------

    @classmethod
    def from_url(cls, url: str, options: LayerOptions, params: Mapping[str, Any]) -> NatsLayer:
        """Build the layer from ``nats://[user:password@|token@]host:port[,host:port...]?...``."""
        unknown = sorted(set(params) - set(_URL_PARAMS))
        if unknown:
            raise ConfigurationError(
                f"nats:// layer does not understand {', '.join(unknown)}; it knows "
                f"{', '.join(_URL_PARAMS)} and the common capacity, channel_capacity, expiry, "
                "group_expiry, max_message_size"
            )
        scheme, _, rest = url.partition("://")
        scheme = scheme.lower()
        netloc = rest.split("/", 1)[0].split("?", 1)[0]
        user = password = token = None
        if "@" in netloc:
            auth, netloc = netloc.rsplit("@", 1)
            if ":" in auth:
                user, password = (unquote(part) for part in auth.split(":", 1))
            else:
                token = unquote(auth)
        servers = []
        for seed in netloc.split(","):
            seed = seed.strip().split("://", 1)[-1]
            if not seed:
                continue
            host, sep, port = seed.rpartition(":") if not seed.endswith("]") else (seed, "", "")
            if not sep:
                host, port = seed, "4222"
            if not host or not port.isdigit():
                raise ConfigurationError(
                    f"bad NATS server {seed!r} in {redact_url(url)!r}; write nats://host:port"
                )
            servers.append(f"{'tls' if scheme == 'tls' else 'nats'}://{host}:{port}")
        if not servers:
            raise ConfigurationError(
                f"no NATS server in {redact_url(url)!r}; write nats://host:port[,host:port]"
            )
        tls = None
        if scheme == "tls" or any(k in params for k in ("tls_ca", "tls_cert", "tls_key")):
            tls = _tls_context(params)
        creds = params.get("creds")
        if creds is not None and not os.path.isfile(creds):
            raise ConfigurationError(
                "the NATS credentials file given with creds= does not exist (the path is not "
                "shown: it may name a secret); check the layer URL's creds= parameter"
            )
        return cls(
            servers,
            options,
            prefix=params.get("prefix", "svcbus"),
            user=user,
            password=password,
            token=token,
            tls=tls,
            tls_hostname=params.get("tls_hostname"),
            creds=creds,
            connect_timeout=_positive(params, "connect_timeout", CONNECT_TIMEOUT, float),
            pending_msgs_limit=_positive(params, "pending_msgs", DEFAULT_PENDING_MSGS, int),
            pending_bytes_limit=_positive(params, "pending_bytes", DEFAULT_PENDING_BYTES, int),
            live=_flag(params, "live", True),
        )

    # connection -------------------------------------------------------------

    @property
    def connection(self) -> Client:
        """The nats-py client (connected), for tools and tests."""
        if self._nc is None:
            raise LayerError("the NATS layer is not connected; call `await layer.connect()`")
        return self._nc

    async def connect(self) -> None:
        """Connect to the first reachable server; raise :class:`LayerError` within the timeout."""
        if self._nc is not None:
            return
        if self._closed:
            raise LayerError("this NATS layer is closed; open a new one")
        if self._connect_lock is None:
            self._connect_lock = asyncio.Lock()
        async with self._connect_lock:
            if self._nc is None:
                await self._connect()

    async def _connect(self) -> None:
        nc = nats.NATS()
        errors: list[BaseException] = []

        async def on_error(exc: Exception) -> None:
            if isinstance(exc, nats.errors.SlowConsumerError):
                # The pending limits bound memory; say so once in a while, not per message.
                self.slow_consumer_drops += 1
                self.lost += 1
                if self.slow_consumer_drops % 10_000 == 1:
                    log.warning(
                        "NATS slow consumer: dropping messages on %s (pending limits %d msgs, "
                        "%d bytes; %d dropped so far)",
                        exc.subject,
                        self.pending_msgs_limit,
                        self.pending_bytes_limit,
                        self.slow_consumer_drops,
                    )
            else:
                errors.append(exc)
                log.debug("NATS connection error: %r", exc)

        kwargs: dict[str, Any] = {
            "servers": self.servers,
            "name": f"svcbus-{self.token}",
            "error_cb": on_error,
            "disconnected_cb": self._on_disconnected,
            "reconnected_cb": self._on_reconnected,
            "allow_reconnect": True,
            # Two tries per seed for the first connection, then unlimited (set below).
            "max_reconnect_attempts": 1,
            "reconnect_time_wait": RECONNECT_WAIT,
            "connect_timeout": max(0.2, min(2.0, self.connect_timeout)),
            # Our names are validated (no whitespace, no wildcards) before they
            # become subjects, so nats-py's per-publish check is redundant.
            "skip_subject_validation": True,
            "drain_timeout": 2,
        }
        if self._tls is not None:
            kwargs["tls"] = self._tls
            if self._tls_hostname:
                kwargs["tls_hostname"] = self._tls_hostname
        if self._creds:
            kwargs["user_credentials"] = self._creds
        kwargs.update({k: v for k, v in self._auth.items() if v is not None})
        where = ", ".join(redact_url(s) for s in self.servers)
        try:
            await asyncio.wait_for(nc.connect(**kwargs), self.connect_timeout)
        except (asyncio.TimeoutError, OSError, nats.errors.Error, ssl.SSLError) as exc:
            with contextlib.suppress(Exception):
                await nc.close()
            cause = errors[-1] if errors else exc
            if isinstance(cause, nats.errors.AuthorizationError) or "uthoriz" in str(cause):
                raise LayerError(
                    f"NATS at {where} refused the credentials ({cause!r}): check the "
                    "user:password@, token@ or creds= part of the layer URL"
                ) from None
            raise LayerError(
                f"cannot reach NATS at {where}: is nats-server running? ({cause!r}). "
                "Start one with `nats-server -js`, or pass the right nats://host:port "
                "(SVCBUS_LAYER or --layer)"
            ) from None
        nc.options["max_reconnect_attempts"] = -1  # from now on: reconnect forever
        self._reply_root = nc.new_inbox()
        self._ack_prefix = f"{self._reply_root}.a."
        self._dropped_reply = f"{self._ack_prefix}d.0"
        self._window = asyncio.Event()
        self._window.set()
        await nc.subscribe(f"{self._reply_root}.a.>", cb=self._on_ack, **self._limits())
        await nc.subscribe(self._control_subject, cb=self._on_control)
        await nc.subscribe(self._named_control, cb=self._on_named_control)
        await _round_trip(nc)
        self._nc = nc
        self._spawn(self._sweep_forever())

    def _limits(self) -> dict[str, int]:
        return {
            "pending_msgs_limit": self.pending_msgs_limit,
            "pending_bytes_limit": self.pending_bytes_limit,
        }

    async def _client(self) -> Client:
        if self._nc is None:
            await self.connect()
        assert self._nc is not None
        return self._nc

    def _spawn(self, coroutine: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("NATS layer background task failed", exc_info=task.exception())

    async def _on_disconnected(self) -> None:
        if not self._closed and not self._disconnected:
            self._disconnected = True
            log.warning("disconnected from NATS; reconnecting (sends are buffered meanwhile)")
        if self._unconfirmed:
            # Live publishes no marker confirmed: the broken connection (or the server)
            # may have lost them, and nobody can tell which. Count them all, so the
            # books never hide a loss (some may still arrive).
            self._count_lost(
                len(self._unconfirmed),
                "named channels",
                "in flight when the connection to NATS broke; some may still have arrived",
            )
            self._unconfirmed.clear()
            self._doubt_upto = self._confirmed = self._live_seq

    async def _on_reconnected(self) -> None:
        self._disconnected = False
        self._seq_marks.clear()
        nc = self._nc
        url = nc.connected_url.netloc if nc is not None and nc.connected_url else "?"
        log.info("reconnected to NATS at %s", url.rsplit("@", 1)[-1])
        # A restarted server has lost its memory-storage streams and every pull
        # request: recreate them for the channels this process receives from.
        for box in self._incoming.values():
            box.requested = 0
            if box.ready is not None and box.ready.done():
                self._recover_incoming(box)

    # sending ----------------------------------------------------------------

    async def send(self, channel: str, message: bytes) -> None:
        out = self._outgoing.get(channel)
        if out is None:
            validate_channel(channel)
            self.options.check_size(channel, message)
            if "!" in channel:
                await self._send_process(channel, message)
                return
            out = await self._open_outgoing(channel)
        elif len(message) > self.options.max_message_size:
            self.options.check_size(channel, message)
        if len(self._in_flight) >= MAX_IN_FLIGHT or len(self._unconfirmed) >= MAX_UNCONFIRMED:
            await self._wait_for_window()
        if not self.live:
            await self._store(out, message)
            return
        if out.direct_until:
            if out.full or time.monotonic() < out.direct_until:
                # Nobody listened, or a listener was full, a moment ago. Once every
                # earlier live publish is settled (its bounce, if any, already
                # republished), storing in the stream keeps the order.
                if self._confirmed < out.last_live:
                    await self._settle(out.last_live)
                await self._store(out, message)
                return
            out.direct_until = 0.0
        # Live: publish to the channel's live subject, where listening receivers share
        # it in a queue group. The message stays in ``_unconfirmed`` until a later
        # marker returns: a publish that reached no subscriber is answered with a 503
        # status on its reply subject, and the server relays that before the marker.
        nc = self._nc or await self._client()
        self._live_seq = seq = self._live_seq + 1
        self._unconfirmed.append(message)
        out.last_live = seq
        try:
            await nc.publish(out.live_subject, message, reply=out.live_reply + str(seq))
        except nats.errors.MaxPayloadError:
            raise _too_large(out.channel, message, nc) from None
        except nats.errors.Error as exc:
            raise _connection_error(exc) from None
        if seq - self._marked >= MARK_EVERY:
            await self._mark()

    async def _store(self, out: _Outgoing, message: bytes) -> None:
        """Publish to the channel's stream and wait for its acknowledgement.

        A message the stream refuses (full) raises :class:`ChannelFull` here, at its
        own ``send``: a send that returns has been stored. The sender stays on the
        stream until a message fits again, so a full channel never takes a live
        message it might have to refuse later.
        """
        nc = self._nc or await self._client()
        if not nc.is_connected:
            # Not into nats-py's reconnect buffer: a send that fails must not be sent.
            await self._connected(self.ack_timeout)
        for attempt in range(2):
            try:
                answer = await nc.request(out.subject, message, timeout=self.ack_timeout)
            except nats.errors.NoRespondersError:
                if attempt:
                    raise LayerError(
                        f"the NATS stream of {out.channel!r} is missing and could not be "
                        "made again; is JetStream enabled (nats-server -js)?"
                    ) from None
                # A restarted server lost the (memory-storage) stream: make it again.
                await self._ensure_channel(out.channel, out.stream, out.subject, for_send=True)
                continue
            except nats.errors.TimeoutError:
                raise LayerError(
                    f"NATS did not confirm a message for {out.channel!r} within "
                    f"{self.ack_timeout:g}s (server down or overloaded); it may not be "
                    "stored: send it again if it matters"
                ) from None
            except nats.errors.MaxPayloadError:
                raise _too_large(out.channel, message, nc) from None
            except nats.errors.Error as exc:
                raise _connection_error(exc) from None
            data = answer.data
            if data[:9] != b'{"error":':
                out.full = False
                return
            error = _api_error(data)
            if error.get("err_code") in _STREAM_FULL_CODES:
                out.full = True
                out.direct_until = time.monotonic() + DIRECT_FOR
                raise ChannelFull(
                    f"channel {out.channel!r} holds {self.options.capacity_for(out.channel)} "
                    "messages (its capacity); its consumers are behind: retry later or raise "
                    "channel_capacity"
                )
            raise LayerError(
                f"NATS refused a message for {out.channel!r}: {error.get('description', error)}"
            )

    async def _mark(self, *, again: bool = False) -> None:
        """Publish a marker to ourselves: when it returns, earlier live publishes are settled.

        ``again``: even if one for the newest publish is out (it may have been lost).
        """
        if self._nc is None or (self._marked == self._live_seq and not again):
            return
        self._marked = self._live_seq
        with contextlib.suppress(nats.errors.Error):
            await self._nc.publish(f"{self._ack_prefix}m.{self._marked}", b"")

    def _confirm(self, seq: int) -> None:
        unconfirmed = self._unconfirmed
        settled = seq - (self._live_seq - len(unconfirmed))
        for _ in range(min(settled, len(unconfirmed))):
            unconfirmed.popleft()
        if seq > self._confirmed:
            self._confirmed = seq

    async def _on_live_reply(self, out: _Outgoing, seq: int, msg: Msg) -> None:
        data = msg.data
        if data == _FULL:
            # A listener kept the message over its capacity because the stream was
            # full too: store the next ones in the stream, where ChannelFull can say so.
            out.direct_until = time.monotonic() + DIRECT_FOR
            out.full = True
        elif not data and msg.headers and msg.headers.get("Status") == "503":
            # No live receiver: the message waits in the stream instead. Bounces
            # arrive in publish order.
            out.direct_until = time.monotonic() + DIRECT_FOR
            index = seq - (self._live_seq - len(self._unconfirmed) + 1)
            if 0 <= index < len(self._unconfirmed):
                self.bounced += 1
                await self._publish(out, self._unconfirmed[index])
            elif seq > self._doubt_upto:  # those before were counted at the disconnect
                self._count_lost(1, out.channel, "its live publish was no longer held")

    async def _publish(self, out: _Outgoing, message: bytes, spilled_from: str = "") -> None:
        """Publish to the stream without waiting: for messages whose ``send`` returned
        (bounced, spilled or given back). ``_on_ack`` settles them."""
        nc = await self._client()
        self._seq = seq = self._seq + 1
        self._in_flight[seq] = (out, message)
        if spilled_from:
            self._spill_replies[seq] = spilled_from
        try:
            await nc.publish(out.subject, message, reply=f"{self._ack_prefix}{seq}")
        except nats.errors.MaxPayloadError:
            del self._in_flight[seq]
            raise _too_large(out.channel, message, nc) from None
        except nats.errors.Error as exc:
            del self._in_flight[seq]
            raise _connection_error(exc) from None

    async def _send_process(self, channel: str, message: bytes) -> None:
        nc = await self._client()
        head, _, local = channel.partition("!")
        try:
            # The owner answers on the reply subject only if its buffer was full.
            await nc.publish(f"{self._p_root}{head}.{local}", message, reply=self._dropped_reply)
        except nats.errors.MaxPayloadError:
            raise _too_large(channel, message, nc) from None
        except nats.errors.Error as exc:
            raise _connection_error(exc) from None

    async def _wait_for_window(self) -> None:
        window = self._window
        assert window is not None
        window.clear()
        await self._mark()  # what is unconfirmed gets a marker that will settle it
        try:
            await asyncio.wait_for(window.wait(), self.send_timeout)
        except asyncio.TimeoutError:
            raise LayerError(
                f"NATS has not acknowledged {len(self._in_flight)} messages for "
                f"{self.send_timeout:g}s: the server is down or overloaded (sends are refused "
                "until it catches up)"
            ) from None

    async def _on_ack(self, msg: Msg) -> None:
        tail = msg.subject[len(self._ack_prefix) :]
        if not tail.isdigit():
            head, _, number = tail.partition(".")
            if head == "m":
                self._confirm(int(number))
            elif head == "d":
                # A process channel's owner dropped one of our messages: it was full.
                channel = msg.data[:200].decode("utf-8", "replace")
                self._count_lost(1, channel, "the process channel was full")
            else:
                await self._on_live_reply(self._outgoing_by_id[int(head)], int(number), msg)
            self._settled()
            return
        seq = int(tail)
        entry = self._in_flight.pop(seq, None)
        spilled_from = self._spill_replies.pop(seq, None) if self._spill_replies else None
        if entry is not None:
            data = msg.data
            if data[:9] == b'{"error":':
                await self._refused(entry[0], entry[1], data, spilled_from)
            elif not data and msg.headers and msg.headers.get("Status") == "503":
                # No stream listens on the subject: a restarted server lost it.
                out = entry[0]
                out.retry.append(entry[1])
                if not out.recovering:
                    out.recovering = True
                    self._recovering += 1  # counted now, so a flush in progress waits for it
                    self._spawn(self._recover_outgoing(out))
        self._settled()

    def _settled(self) -> None:
        if self._acked is not None:
            self._acked.set()
        window = self._window
        if (
            window is not None
            and not window.is_set()
            and len(self._in_flight) < MAX_IN_FLIGHT // 2
            and len(self._unconfirmed) < MAX_UNCONFIRMED // 2
        ):
            window.set()

    async def _refused(
        self, out: _Outgoing, message: bytes, data: bytes, spilled_from: str | None
    ) -> None:
        """The stream refused a message whose ``send`` had already returned."""
        error = _api_error(data)
        box = out.keeps
        if box is not None:
            # Spilled by a full listener, or given back by a leaving receiver, and the
            # stream is full: keep it here (it was accepted; a later give-back or a
            # receiver takes it) and tell the sender to use the stream, which says
            # ChannelFull at the send it refuses.
            box.items.append(message)
            if box.waiters:
                _wake(box.waiters)
            if spilled_from and self._nc is not None:
                with contextlib.suppress(nats.errors.Error):
                    await self._nc.publish(spilled_from, _FULL)
            return
        # A bounced message (nobody listened) and the stream is full as well.
        out.full = True
        out.direct_until = time.monotonic() + DIRECT_FOR
        reason = str(error.get("description", error))
        self._count_lost(
            1, out.channel, f"no receiver listened and the stream refused it: {reason}"
        )

    def _count_lost(self, count: int, channel: str, reason: str, *, sent: bool = True) -> None:
        """Count messages lost after their ``send`` returned, and say so (rate-limited).

        ``sent``: this process sent them, so the next ``flush()`` reports them.
        """
        self.lost += count
        if sent:
            self._sent_lost += count
            self._lost_channels.add(channel)
        self._lost_log.log(
            channel,
            "%d message(s) for %s lost: %s (%d lost by this process so far)",
            count,
            channel,
            reason,
            self.lost,
        )

    async def _recover_outgoing(self, out: _Outgoing) -> None:
        """Recreate a lost stream, then publish what the server bounced, in order.

        FIFO holds within the bounced messages; a send made while the stream is being
        recreated may overtake them.
        """
        try:
            await self._ensure_channel(out.channel, out.stream, out.subject, for_send=True)
            while out.retry:
                retry, out.retry = out.retry, []
                for message in retry:
                    await self._publish(out, message)
        except LayerError as exc:
            lost, out.retry = out.retry, []
            self._count_lost(len(lost), out.channel, f"its stream could not be made again: {exc}")
        finally:
            out.recovering = False
            self._recovering -= 1
            self._recoveries += 1

    async def flush(self) -> None:
        """Hand everything to the server and wait for JetStream's acknowledgements.

        While the connection is down this waits for the reconnection, up to
        ``ack_timeout`` seconds in all, then raises :class:`LayerError`. Messages
        found lost since the last flush (their ``send`` had returned) raise
        :class:`MessagesLost`.
        """
        await self._flush(self.ack_timeout)
        count = self._sent_lost - self._reported_lost
        if count:
            self._reported_lost = self._sent_lost
            channels, self._lost_channels = self._lost_channels, set()
            channel = next(iter(channels)) if len(channels) == 1 else None
            raise MessagesLost(
                f"{count} message(s) sent earlier were lost (in flight when the connection "
                "broke, or refused by a full channel after a bounce); see the log",
                count=count,
                channel=None if channel == "named channels" else channel,
            )

    async def _connected(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the connection to be up."""
        nc = await self._client()
        deadline = time.monotonic() + timeout
        while not nc.is_connected:
            if nc.is_closed:
                raise LayerError("the NATS connection is closed; open a new layer")
            if time.monotonic() >= deadline:
                raise LayerError(
                    f"the NATS connection has been down for over {timeout:g}s; "
                    f"{len(self._in_flight)} messages wait in the reconnect buffer and go out "
                    "when the server is back (is nats-server running?)"
                )
            await asyncio.sleep(0.05)

    async def _flush(self, timeout: float) -> None:
        nc = await self._client()
        deadline = time.monotonic() + timeout
        await self._connected(timeout)
        try:
            await _round_trip(nc, max(0.1, deadline - time.monotonic()))
        except (nats.errors.Error, asyncio.TimeoutError) as exc:
            raise _connection_error(exc) from None
        # Live publishes first: their bounces become stream publishes, waited for below.
        if self._unconfirmed:
            await self._settle(self._live_seq, deadline, timeout)
        mark = self._seq
        recoveries = self._recoveries
        while self._recovering or (self._in_flight and next(iter(self._in_flight)) <= mark):
            if recoveries != self._recoveries:
                # Bounced messages were published again: wait for those too.
                recoveries, mark = self._recoveries, self._seq
            await self._wait_settled(deadline, timeout, len(self._in_flight))

    async def _settle(
        self, seq: int, deadline: float | None = None, timeout: float | None = None
    ) -> None:
        """Wait until a marker has confirmed the live publishes up to ``seq``."""
        if timeout is None or deadline is None:
            timeout = self.ack_timeout
            deadline = time.monotonic() + timeout
        if self._marked < seq:
            await self._mark()
        while self._confirmed < seq and self._unconfirmed:
            await self._wait_settled(deadline, timeout, len(self._unconfirmed))

    async def _wait_settled(self, deadline: float, timeout: float, pending: int) -> None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise LayerError(
                f"NATS did not acknowledge {pending} messages within "
                f"{timeout:g}s: the server is down or overloaded"
            )
        self._acked = acked = asyncio.Event()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(acked.wait(), min(left, 0.1))

    # named channels: streams and consumers --------------------------------------

    def _stream_name(self, channel: str) -> str:
        # Stream names cannot contain '.', and ':' never occurs in channel names.
        return f"{self.prefix}_ch_{channel.replace('.', ':')}"

    def _stream_config(self, channel: str, stream: str, subject: str) -> api.StreamConfig:
        expiry = self.options.expiry
        return api.StreamConfig(
            name=stream,
            subjects=[subject],
            # Interest retention with one no-ack consumer: a message leaves the stream
            # when it is delivered, so the stream holds exactly the waiting messages
            # (what capacity counts) and no per-message acknowledgement is needed.
            retention=api.RetentionPolicy.INTEREST,
            storage=api.StorageType.MEMORY,
            discard=api.DiscardPolicy.NEW,
            max_msgs=self.options.capacity_for(channel),
            max_age=expiry,
            duplicate_window=min(expiry, 1.0),  # no message ids are used: keep it tiny
            num_replicas=1,
        )

    async def _ensure_channel(
        self, channel: str, stream: str, subject: str, *, for_send: bool
    ) -> None:
        """Create the channel's stream and shared consumer; a sender applies its settings.

        Capacity and expiry are properties of the channel stored in its stream. The
        sending side decides them (it is the side that gets ``ChannelFull``), so a
        sender updates a stream made with other settings; a receiver uses it as is.
        The consumer must exist before the first message: an interest-retention
        stream keeps messages only for existing consumers.
        """
        nc = await self._client()
        js = nc.jetstream()
        config = self._stream_config(channel, stream, subject)
        consumer = api.ConsumerConfig(
            durable_name=CONSUMER,
            ack_policy=api.AckPolicy.NONE,  # at-most-once: delivered is done
            max_waiting=512,
        )
        # Born without its subject: an interest-retention stream drops what is
        # published while it has no consumer, so the subject is set only once the
        # consumer exists (by whoever sets it).
        newborn = dataclasses.replace(config, subjects=[f"{self.prefix}.newch.{channel}"])
        for attempt in range(8):
            try:
                try:
                    await js.add_stream(newborn)
                    created = True
                except APIError as exc:
                    if exc.err_code != _STREAM_CONFIG_DIFFERS:
                        raise
                    created = False  # it exists (or another process is making it)
                try:
                    await js.add_consumer(stream, consumer)
                except APIError as exc:
                    if exc.err_code not in _CONSUMER_EXISTS:  # made with other settings: fine
                        raise
                if created or for_send:
                    await js.update_stream(config)
                return
            except nats.errors.NoRespondersError:
                error: BaseException = LayerError(
                    "JetStream is not enabled on the NATS server: start nats-server with -js "
                    "(named channels are JetStream streams)"
                )
            except (APIError, nats.errors.Error, asyncio.TimeoutError) as exc:
                error = exc
            # A server that just restarted may still be starting JetStream.
            await asyncio.sleep(min(2.0, 0.1 * 2**attempt))
        if isinstance(error, LayerError):
            raise error
        raise LayerError(f"cannot set up the NATS stream of {channel!r}: {error!r}")

    async def _open_outgoing(self, channel: str) -> _Outgoing:
        opening = self._opening_out.get(channel)
        if opening is not None:
            return await asyncio.shield(opening)
        future: asyncio.Future[_Outgoing] = asyncio.get_running_loop().create_future()
        self._opening_out[channel] = future
        try:
            stream, subject = self._stream_name(channel), f"{self._ch_root}{channel}"
            await self._ensure_channel(channel, stream, subject, for_send=True)
            live_reply = f"{self._ack_prefix}{len(self._outgoing_by_id)}."
            out = _Outgoing(channel, stream, subject, self._live_root + channel, live_reply)
            self._outgoing[channel] = out
            self._outgoing_by_id.append(out)
            future.set_result(out)
            return out
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: concurrent openers get it
            raise
        finally:
            del self._opening_out[channel]

    async def _open_incoming(self, channel: str) -> _Incoming:
        box = self._incoming.get(channel)
        if box is None:
            validate_channel(channel)
            nc = await self._client()
            self._next_inbox += 1
            box = _Incoming(
                channel,
                self._stream_name(channel),
                f"{self._reply_root}.p{self._next_inbox}",
                f"{self._ch_root}{channel}",
                self._live_root + channel,
                self.options.capacity_for(channel),
            )
            self._incoming[channel] = box
            box.ready = asyncio.get_running_loop().create_future()
            try:
                box.sub = await nc.subscribe(
                    box.inbox, cb=self._pull_handler(box), **self._limits()
                )
                await self._ensure_channel(channel, box.stream, box.subject, for_send=False)
            except BaseException as exc:
                del self._incoming[channel]
                if box.sub is not None:
                    with contextlib.suppress(Exception):
                        await box.sub.unsubscribe()
                box.ready.set_exception(
                    exc if isinstance(exc, Exception) else LayerError("cancelled")
                )
                box.ready.exception()
                raise
            box.ready.set_result(None)
        elif box.ready is not None and not box.ready.done():
            await asyncio.shield(box.ready)
        return box

    def _recover_incoming(self, box: _Incoming) -> None:
        if not box.recovering:
            box.recovering = True
            self._spawn(self._recover_incoming_task(box))

    async def _recover_incoming_task(self, box: _Incoming) -> None:
        try:
            while not self._closed:
                try:
                    subject = f"{self._ch_root}{box.channel}"
                    await self._ensure_channel(box.channel, box.stream, subject, for_send=False)
                    break
                except LayerError as exc:
                    log.warning("receiving from %s is paused: %s", box.channel, exc)
                    await asyncio.sleep(1.0)
        finally:
            box.recovering = False
        box.requested = 0
        if box.waiters:
            await self._pull(box)

    # named channels: receiving ----------------------------------------------------

    async def _listen(self, box: _Incoming) -> None:
        """Join the channel's live queue group: senders' messages then come straight here."""
        box.listening = True
        try:
            nc = await self._client()
            box.live = await nc.subscribe(
                box.live_subject, queue=CONSUMER, cb=self._live_handler(box), **self._limits()
            )
        except nats.errors.Error as exc:
            # Pulling from the stream still works; the next receive tries again.
            box.listening = False
            log.debug("cannot listen on %s yet: %r", box.live_subject, exc)
        except BaseException:
            box.listening = False
            raise

    def _live_handler(self, box: _Incoming) -> Callable[[Msg], Awaitable[None]]:
        items = box.items
        waiters = box.waiters
        capacity = box.capacity

        async def on_message(msg: Msg) -> None:
            if len(items) < capacity:
                items.append(msg.data)
                if waiters:
                    _wake(waiters)
                return
            # Full: the stream is the waiting room, where any process can pull it. If
            # the stream refuses it too, ``_refused`` keeps it here and tells the sender.
            self.spilled += 1
            spill = box.spill
            if spill is None:
                spill = box.spill = _Outgoing(
                    box.channel, box.stream, box.subject, box.live_subject, "", keeps=box
                )
            try:
                await self._publish(spill, msg.data, msg.reply or "")
            except LayerError:
                items.append(msg.data)  # no connection: keep it rather than lose it

        return on_message

    async def _unlisten(self, box: _Incoming) -> None:
        """Leave the live queue group without losing what the server already sent us.

        Unsubscribe, then a round trip: every message routed to us before the server
        processed the unsubscribe has then arrived and sits in the subscription's queue,
        which ``drain`` empties into the buffer. A buffer no receiver will read goes
        back to the stream.
        """
        sub, box.live = box.live, None
        box.listening = False
        nc = self._nc
        if sub is None or nc is None:
            return
        with contextlib.suppress(nats.errors.Error, asyncio.TimeoutError):
            send_unsubscribe = getattr(nc, "_send_unsubscribe", None)
            if send_unsubscribe is not None and nc.is_connected:
                await send_unsubscribe(sub._id)
                await _round_trip(nc, 2.0)
            await sub.drain()
        await self._give_back(box)

    async def _give_back(self, box: _Incoming) -> None:
        """Return the buffer of a channel nobody here receives from to its stream.

        Only once no pull is outstanding: the stream would hand them straight back.
        """
        nc = self._nc
        if box.listening or box.waiters or box.requested or not box.items or nc is None:
            return
        if nc.is_connected:
            await self._return_items(box)

    async def _return_items(self, box: _Incoming) -> None:
        """Publish the buffer back to the stream, acknowledged like any send.

        A refusal (the stream is full) is counted in ``lost`` and logged.
        """
        out = box.returns
        if out is None:
            out = box.returns = _Outgoing(
                box.channel,
                box.stream,
                box.subject,
                box.live_subject,
                "",
                returning=True,
                keeps=box,
            )
        returned = list(box.items)
        box.items.clear()  # the same deque: the handlers hold it
        for data in returned:
            try:
                await self._publish(out, data)
            except LayerError as exc:
                self._count_lost(1, box.channel, f"giving it back failed: {exc}")

    def _pull_handler(self, box: _Incoming) -> Callable[[Msg], Awaitable[None]]:
        items = box.items
        waiters = box.waiters

        async def on_message(msg: Msg) -> None:
            if msg.headers is not None and not msg.data and "Status" in msg.headers:
                await self._pull_status(box, msg.headers)
                return
            box.requested -= 1
            items.append(msg.data)
            if waiters:
                _wake(waiters)

        return on_message

    async def _pull_status(self, box: _Incoming, headers: dict[str, str]) -> None:
        status = headers.get("Status")
        if status == "100":  # idle heartbeat
            return
        pending = headers.get("Nats-Pending-Messages")
        if pending is not None and pending.isdigit():
            box.requested = max(0, box.requested - int(pending))
        else:
            box.requested = 0
        if status in ("408", "404"):
            if box.waiters:
                await self._pull(box)
            return
        description = headers.get("Description", "")
        log.debug("pull status %s %s on %s", status, description, box.channel)
        if status == "503" or "Deleted" in description:
            self._recover_incoming(box)
        elif box.waiters:
            await self._pull(box)

    async def _pull(self, box: _Incoming, taking: int = 0) -> None:
        """Ask the server for what waiting receivers (plus one batch ahead) still lack.

        ``taking`` is how many buffered messages the caller is about to take.
        """
        target = box.demand + box.prefetch
        have = len(box.items) - taking + box.requested
        # A process holds at most the channel's capacity, live deliveries included.
        want = min(target, box.capacity) - have
        if want <= 0 or box.recovering:
            return
        if have > 0 and want * 2 < target:
            # Top up in chunks of at least half the target: a steady trickle must not
            # become one pull request per message. With nothing in hand, always pull.
            return
        box.requested += want
        box.pull_deadline = time.monotonic() + PULL_EXPIRES + 3.0
        try:
            await self._nc.publish(  # type: ignore[union-attr]
                box.next_subject,
                b'{"batch":%d,"expires":%d}' % (want, _PULL_EXPIRES_NS),
                reply=box.inbox,
            )
        except nats.errors.Error as exc:
            box.requested -= want
            raise _connection_error(exc) from None

    async def receive(self, channel: str) -> bytes:
        return (await self.receive_many(channel, 1))[0]

    async def receive_many(self, channel: str, limit: int) -> list[bytes]:
        box = self._incoming.get(channel)
        if box is not None and (box.ready is None or box.ready.done()):
            return await self._receive_named(box, limit)
        validate_channel(channel)
        if "!" in channel:
            return await self._receive_local(channel, limit)
        return await self._receive_named(await self._open_incoming(channel), limit)

    async def _receive_named(self, box: _Incoming, limit: int) -> list[bytes]:
        items = box.items
        if limit > box.prefetch:
            box.prefetch = limit
        while True:
            if items:
                # Top up before taking: no await may come between taking messages and
                # returning them, or a cancellation there would lose them.
                taking = min(limit, len(items))
                if box.requested + len(items) - taking < box.demand + box.prefetch:
                    before = box.requested
                    await self._pull(box, taking)
                    if box.requested != before:
                        continue
                if len(items) <= limit:
                    batch = list(items)
                    items.clear()
                else:
                    batch = [items.popleft() for _ in range(limit)]
                    if box.waiters:
                        _wake(box.waiters)  # more left than we took: pass it on
                # Receivers that never wait (the buffer is never empty) are active too:
                # the sweep must not take them for gone and give their buffer away.
                box.idle_since = time.monotonic()
                return batch
            await self._wait(box, limit, pull=True)

    async def _wait(self, box: _Incoming | _Local, limit: int, *, pull: bool = False) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        box.waiters.append(waiter)
        named = box if isinstance(box, _Incoming) else None
        if named is not None:
            named.demand += limit
        try:
            if named is not None:
                if not named.listening and self.live:
                    await self._listen(named)
                if pull:
                    await self._pull(named)
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                if box.items:
                    _wake(box.waiters)  # hand our wake-up to the next receiver
            else:
                with contextlib.suppress(ValueError):
                    box.waiters.remove(waiter)
            raise
        finally:
            if named is not None:
                named.demand -= limit
                if not named.demand:
                    named.idle_since = time.monotonic()

    # process-specific channels ------------------------------------------------------

    def _owns(self, channel: str) -> bool:
        return channel.partition("!")[0].endswith("." + self.token)

    async def new_channel(self, prefix: str = "specific") -> str:
        validate_group(prefix)
        head = f"{prefix}.{self.token}"
        if head not in self._heads:
            ready = self._head_ready.get(head)
            if ready is None:
                ready = self._head_ready[head] = asyncio.get_running_loop().create_future()
                try:
                    nc = await self._client()
                    subject = f"{self._p_root}{head}."
                    self._heads[head] = await nc.subscribe(
                        subject + ">", cb=self._head_handler(head, len(subject)), **self._limits()
                    )
                    # The server knows the subscription before anyone learns the name.
                    await _round_trip(nc)
                    ready.set_result(None)
                except BaseException as exc:
                    self._heads.pop(head, None)
                    del self._head_ready[head]
                    ready.set_exception(_as_error(exc))
                    ready.exception()
                    raise
            else:
                await asyncio.shield(ready)
        return f"{head}!{os.urandom(6).hex()}"

    def _head_handler(self, head: str, offset: int) -> Callable[[Msg], Awaitable[None]]:
        bang = head + "!"

        async def on_message(msg: Msg) -> None:
            channel = bang + msg.subject[offset:]
            if not self._deliver_local(channel, msg.data, time.monotonic()) and msg.reply:
                # Full: tell the sender, which counts it as lost and logs it.
                with contextlib.suppress(nats.errors.Error):
                    await self._nc.publish(msg.reply, channel.encode())  # type: ignore[union-attr]

        return on_message

    def _deliver_local(self, channel: str, data: bytes, now: float) -> bool:
        box = self._locals.get(channel)
        if box is None:
            box = self._locals[channel] = _Local()
        items = box.items
        if len(items) >= self.options.capacity_for(channel):
            while items and items[0][0] <= now:
                items.popleft()
            if len(items) >= self.options.capacity_for(channel):
                self.dropped += 1  # bounded memory: a full process channel drops
                return False
        items.append((now + self.options.expiry, data))
        if box.waiters:
            _wake(box.waiters)
        return True

    async def _receive_local(self, channel: str, limit: int) -> list[bytes]:
        if not self._owns(channel):
            raise InvalidChannelName(
                f"channel {channel!r} belongs to another process; only the layer that made it "
                "with new_channel() can receive from it"
            )
        locals_ = self._locals
        while True:
            box = locals_.get(channel)
            if box is None:
                box = locals_[channel] = _Local()
            items = box.items
            if items:
                now = time.monotonic()
                batch: list[bytes] = []
                while items and len(batch) < limit:
                    deadline, data = items.popleft()
                    if deadline > now:
                        batch.append(data)
                if batch:
                    if items and box.waiters:
                        _wake(box.waiters)
                    elif not items and not box.waiters:
                        del locals_[channel]
                    return batch
            try:
                await self._wait(box, limit)
            finally:
                if not box.items and not box.waiters and locals_.get(channel) is box:
                    del locals_[channel]

    # groups ----------------------------------------------------------------------------

    async def group_add(self, group: str, channel: str) -> None:
        validate_group(group)
        validate_channel(channel)
        if "!" not in channel:
            await self._hold_named(group, channel)
        elif self._owns(channel):
            await self._add_member(group, channel, confirm=True)
        else:
            await self._control(channel, "add", group)

    async def group_discard(self, group: str, channel: str) -> None:
        validate_group(group)
        validate_channel(channel)
        if "!" not in channel:
            await self._drop_named(group, channel)
            nc = await self._client()
            payload = json.dumps({"op": "discard", "group": group, "channel": channel})
            await nc.publish(self._named_control, payload.encode())
            await _round_trip(nc)
        elif self._owns(channel):
            await self._remove_member(group, channel)
        else:
            await self._control(channel, "discard", group)

    async def group_send(self, group: str, message: bytes) -> None:
        validate_group(group)
        self.options.check_size(group, message)
        nc = await self._client()
        try:
            await nc.publish(self._g_root + group, message)
        except nats.errors.MaxPayloadError:
            raise _too_large(f"group {group}", message, nc) from None
        except nats.errors.Error as exc:
            raise _connection_error(exc) from None

    async def _add_member(self, group: str, channel: str, *, confirm: bool) -> None:
        """Make ``channel`` (ours) a member; with ``confirm``, wait until the server knows."""
        entry = self._groups.get(group)
        if entry is None:
            entry = self._groups[group] = _Group()
            entry.ready = asyncio.get_running_loop().create_future()
            entry.members[channel] = time.monotonic() + self.options.group_expiry
            try:
                nc = await self._client()
                entry.sub = await nc.subscribe(
                    self._g_root + group, cb=self._group_handler(entry), **self._limits()
                )
                if confirm:
                    await _round_trip(nc)
            except BaseException as exc:
                if self._groups.get(group) is entry:
                    del self._groups[group]
                entry.ready.set_exception(_as_error(exc))
                entry.ready.exception()
                raise
            entry.ready.set_result(None)
            return
        entry.members[channel] = time.monotonic() + self.options.group_expiry
        if entry.ready is not None and not entry.ready.done():
            await asyncio.shield(entry.ready)

    async def _remove_member(self, group: str, channel: str) -> None:
        entry = self._groups.get(group)
        if entry is None:
            return
        entry.members.pop(channel, None)
        if not entry.members and entry.ready is not None and entry.ready.done():
            await self._unsubscribe_group(group, entry)

    async def _unsubscribe_group(self, group: str, entry: _Group) -> None:
        if self._groups.get(group) is entry:
            del self._groups[group]
        if entry.sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await entry.sub.unsubscribe()

    def _group_handler(self, entry: _Group) -> Callable[[Msg], Awaitable[None]]:
        members = entry.members

        async def on_message(msg: Msg) -> None:
            data = msg.data
            now = time.monotonic()
            expired = None
            deliver = self._deliver_local
            for channel, until in members.items():
                if until <= now:
                    expired = expired or []
                    expired.append(channel)
                else:
                    deliver(channel, data, now)  # full members miss it: never ChannelFull
            if expired:
                for channel in expired:
                    del members[channel]

        return on_message

    async def _control(self, channel: str, op: str, group: str) -> None:
        """Ask the process owning ``channel`` to apply ``op`` and confirm it."""
        nc = await self._client()
        token = channel.partition("!")[0].rpartition(".")[2]
        payload = json.dumps({"op": op, "group": group, "channel": channel}).encode()
        try:
            reply = await nc.request(f"{self.prefix}.ctl.{token}", payload, timeout=CONTROL_TIMEOUT)
        except nats.errors.NoRespondersError:
            # No process owns the channel any more: there is nothing to add or remove.
            log.debug("group_%s(%s, %s): its process is gone", op, group, channel)
            return
        except (nats.errors.TimeoutError, asyncio.TimeoutError):
            raise LayerError(
                f"group_{op}({group!r}, {channel!r}): the process owning the channel did not "
                f"confirm within {CONTROL_TIMEOUT:g}s; it may be overloaded or stuck"
            ) from None
        except nats.errors.Error as exc:
            raise _connection_error(exc) from None
        if reply.data != _OK:
            raise LayerError(f"group_{op}({group!r}, {channel!r}) failed: {reply.data[:300]!r}")

    async def _on_control(self, msg: Msg) -> None:
        try:
            request = json.loads(msg.data)
            op, group, channel = request["op"], request["group"], request["channel"]
            validate_group(group)
            validate_channel(channel)
            if not self._owns(channel):
                raise ValueError(f"{channel!r} is not a channel of this process")
            if op == "add":
                # Subscribing before replying on the same connection means the server
                # knows the subscription before the requester sees the reply.
                await self._add_member(group, channel, confirm=False)
            elif op == "discard":
                await self._remove_member(group, channel)
            else:
                raise ValueError(f"unknown op {op!r}")
            answer = _OK
        except Exception as exc:  # a bad request must not break the control loop
            answer = json.dumps({"ok": False, "error": str(exc)}).encode()
        if msg.reply:
            with contextlib.suppress(nats.errors.Error):
                await self._nc.publish(msg.reply, answer)  # type: ignore[union-attr]

    # named channels as group members: the adding process forwards --------------------

    async def _hold_named(self, group: str, channel: str) -> None:
        """Forward the group's messages into ``channel``'s stream from this process.

        Every process holding the same membership subscribes in one queue group named
        after the channel, so each group message is forwarded exactly once.
        """
        until = time.monotonic() + self.options.group_expiry
        key = (group, channel)
        held = self._held.get(key)
        if held is not None:
            self._held[key] = (held[0], until)
            return
        nc = await self._client()
        out = self._outgoing.get(channel) or await self._open_outgoing(channel)
        subject = out.subject

        async def forward(msg: Msg) -> None:
            entry = self._held.get(key)
            if entry is None or entry[1] <= time.monotonic():
                return
            # No acknowledgement asked: a full channel just misses it, as groups do.
            with contextlib.suppress(nats.errors.Error):
                await nc.publish(subject, msg.data)

        sub = await nc.subscribe(self._g_root + group, queue=f"fwd:{channel}", cb=forward)
        self._held[key] = (sub, until)
        await _round_trip(nc)

    async def _drop_named(self, group: str, channel: str) -> None:
        held = self._held.pop((group, channel), None)
        if held is not None:
            with contextlib.suppress(nats.errors.Error):
                await held[0].unsubscribe()

    async def _on_named_control(self, msg: Msg) -> None:
        try:
            request = json.loads(msg.data)
            if request.get("op") == "discard":
                await self._drop_named(str(request["group"]), str(request["channel"]))
        except (ValueError, KeyError, TypeError):
            log.warning("bad message on %s ignored", self._named_control)

    # housekeeping -----------------------------------------------------------------------

    async def _sweep_forever(self) -> None:
        while not self._closed:
            await asyncio.sleep(_SWEEP_INTERVAL)
            try:
                await self._sweep()
            except Exception:
                log.exception("NATS layer housekeeping failed")

    async def _sweep(self) -> None:
        now = time.monotonic()
        connected = self._nc is not None and self._nc.is_connected
        # Pull requests the server never answered (a restarted server forgot them).
        # While disconnected there is nothing to ask: the reconnect handler resumes.
        for box in list(self._incoming.values()) if connected else ():
            if not box.demand and now - box.idle_since > self.linger:
                # Its receivers are gone: others should get the messages.
                if box.live is not None:
                    await self._unlisten(box)
                else:
                    await self._give_back(box)
            if box.recovering:
                continue
            if box.requested > 0 and now > box.pull_deadline:
                box.requested = 0
                if box.waiters:
                    self._recover_incoming(box)
            elif box.waiters and box.requested == 0 and not box.items:
                await self._pull(box)  # a safety net: waiting receivers always have a pull
        # Expired messages and idle buffers of process channels.
        for channel, box in list(self._locals.items()):
            items = box.items
            while items and items[0][0] <= now:
                items.popleft()
            if not items and not box.waiters:
                del self._locals[channel]
        # Group memberships past group_expiry.
        for group, entry in list(self._groups.items()):
            for channel in [c for c, until in entry.members.items() if until <= now]:
                del entry.members[channel]
            if not entry.members and entry.ready is not None and entry.ready.done():
                await self._unsubscribe_group(group, entry)
        for key in [k for k, (_, until) in self._held.items() if until <= now]:
            await self._drop_named(*key)
        self._lost_log.flush()
        # Publishes never acknowledged (written just before the connection broke).
        # Time only counts while connected: during an outage they wait in the buffer.
        if not connected:
            self._seq_marks.clear()
            return
        if self._unconfirmed:
            # A quiet sender's last live publishes, or a marker lost in a disconnect.
            await self._mark(again=True)
        marks = self._seq_marks
        marks.append((now, self._seq))
        stale = 0
        while marks and marks[0][0] < now - self.ack_timeout:
            stale = marks.popleft()[1]
        if stale and self._in_flight:
            old = [seq for seq in self._in_flight if seq <= stale]
            for seq in old:
                del self._in_flight[seq]
            if old:
                for seq in old:
                    self._spill_replies.pop(seq, None)
                self._count_lost(len(old), "named channels", "never acknowledged (a disconnect?)")
                if self._window is not None:
                    self._window.set()

    async def close(self) -> None:
        """Wait for outstanding acknowledgements, return unread pulled messages, disconnect."""
        if self._closed:
            return
        nc = self._nc
        if nc is None:
            self._closed = True
            return
        try:
            if nc.is_connected:
                for box in self._incoming.values():
                    for waiter in box.waiters:
                        waiter.cancel()
                    box.waiters.clear()
                    if box.live is not None:
                        await self._unlisten(box)
                # Messages taken from the channel but never received go back to it,
                # so closing a receiver loses nothing it had taken.
                for box in self._incoming.values():
                    if box.items:
                        await self._return_items(box)
                with contextlib.suppress(LayerError):
                    await self._flush(3.0)
                for box in self._incoming.values():
                    if box.items:  # the stream refused them back: it is full
                        self._count_lost(
                            len(box.items),
                            box.channel,
                            "taken, then closed with the channel full",
                            sent=False,
                        )
        except (nats.errors.Error, asyncio.TimeoutError):
            pass
        finally:
            self._closed = True
            for task in list(self._tasks):
                task.cancel()
            for box in self._incoming.values():
                for waiter in box.waiters:
                    waiter.cancel()
            with contextlib.suppress(Exception):
                await nc.close()
            self._nc = None


# helpers -----------------------------------------------------------------------------------


async def _round_trip(nc: Client, timeout: float = 5.0) -> None:
    """Return once the server has processed everything written so far.

    nats-py 2.16's ``flush()`` writes its PING straight to the socket, ahead of
    commands still waiting in its pending buffer, so its PONG can come back before
    a just-made SUB reaches the server. Writing the pending buffer first (what the
    flusher task does) restores the order.
    """
    flush_pending = getattr(nc, "_flush_pending", None)
    if flush_pending is not None:
        await flush_pending(force_flush=True)
    else:  # a future nats-py without the private hook: a second PING orders after the first
        await nc.flush(timeout)  # type: ignore[arg-type]
    await nc.flush(timeout)  # type: ignore[arg-type]


def _too_large(target: str, message: bytes, nc: Client) -> MessageTooLarge:
    return MessageTooLarge(
        f"message for {target!r} is {len(message)} bytes, more than the NATS server's "
        f"max_payload ({nc.max_payload}); lower max_message_size or raise max_payload in "
        "the server configuration"
    )


def _api_error(data: bytes) -> dict[str, Any]:
    """The ``error`` object of a JetStream API answer."""
    try:
        error = json.loads(data)["error"]
        if isinstance(error, dict):
            return error
    except (ValueError, KeyError, TypeError):
        pass
    return {"description": data[:200].decode("utf-8", "replace")}


def _connection_error(exc: BaseException) -> LayerError:
    if isinstance(exc, nats.errors.OutboundBufferLimitError):
        return LayerError(
            "the NATS connection is down and its reconnect buffer is full: the message was "
            "not sent; retry once the server is back"
        )
    if isinstance(exc, nats.errors.ConnectionClosedError):
        return LayerError("the NATS connection is closed; open a new layer")
    return LayerError(f"NATS connection failed: {exc!r}")


def _as_error(exc: BaseException) -> Exception:
    return exc if isinstance(exc, Exception) else LayerError("cancelled")


def _positive(params: Mapping[str, Any], key: str, default: Any, kind: type) -> Any:
    value = params.get(key)
    if value is None:
        return default
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise ConfigurationError(f"nats:// option {key}={value!r} is not a number") from None
    if number <= 0:
        raise ConfigurationError(f"nats:// option {key}={value!r} must be positive")
    return number


def _flag(params: Mapping[str, Any], key: str, default: bool) -> bool:
    value = params.get(key)
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigurationError(f"nats:// option {key}={value!r}: write {key}=true or {key}=false")


def _tls_context(params: Mapping[str, Any]) -> ssl.SSLContext:
    ca, cert, key = params.get("tls_ca"), params.get("tls_cert"), params.get("tls_key")
    for name, path in (("tls_ca", ca), ("tls_cert", cert), ("tls_key", key)):
        if path is not None and not os.path.isfile(path):
            raise ConfigurationError(f"NATS {name} file {path!r} does not exist")
    if (cert is None) != (key is None):
        raise ConfigurationError("NATS client TLS needs both tls_cert and tls_key")
    try:
        context = ssl.create_default_context(cafile=ca)
        if cert is not None:
            context.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigurationError(f"cannot load NATS TLS files: {exc}") from None
    return context
