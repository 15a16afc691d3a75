"""The Redis layer: named channels on lists, groups on pub/sub, one hot path per server.

URLs (``docs/protocol.md`` has the full key and message layout)::

    redis://[[user]:password@]host[:port][/db]            one server
    redis://h1:6379,h2:6379/0                             sharded over several servers
    rediss://host:6380/0?ssl_ca_certs=/etc/ca.pem         TLS (ssl_certfile, ssl_keyfile,
                                                          ssl_cert_reqs, ssl_check_hostname)
    redis+sentinel://s1:26379,s2:26379/mymaster?db=0      the master a Sentinel names

Own query parameters: ``prefix`` (key prefix, default ``svcbus``), ``connect_timeout``
(seconds, default 5), the ``ssl_*`` ones above, and for Sentinel ``db``,
``sentinel_username``, ``sentinel_password``. Anything else is a ConfigurationError.

How the semantics map onto Redis:

* **Named channel** ``chat.receive``: the list ``{prefix}:c:chat.receive``. Each item is
  ``<13-digit deadline ms>:<message>``. A small Lua script pushes with an atomic
  capacity check (dropping expired items from the head first) and renews the key's
  TTL, so a channel nobody reads holds at most ``capacity`` items and vanishes when
  its newest message expires. Receivers pop with a script that skips expired items
  and returns up to N messages (the batch ``receive_many`` asks for), else BLPOP.
* **Process channels** ``edge.<token>!<local>``: one list per head ``{prefix}:p:edge.<token>``
  whose items also carry the local part; the owning layer demultiplexes into local
  buffers (bounded by each channel's capacity).
* **Groups**: one pub/sub channel per group. Each process subscribes to the groups
  its own channels belong to and fans out locally, so ``group_send`` is one PUBLISH
  whatever the member count. ``group_add`` of another process's channel sends a JSON
  control message to the owner and returns when the owner has confirmed its
  SUBSCRIBE. Named channels can be members too (a sorted set per group, pushed to by
  the sender).
* **Sending is pipelined.** All writes of a layer go through one connection per
  server in order, batched while the previous batch is in flight. ``send`` waits for
  the server's answer only while the channel might be full; when the last answer
  showed room to spare it returns at once. If another sender filled the channel in
  between, the refusal is reported by the next ``send`` to that channel or by
  ``flush()`` as ChannelFull (the NATS-style "one message late").
* **Sharding** (several hosts): a name's server is ``jump_hash(crc32(name), n)``
  (routing names: the channel, the process head, the group). Every process
  subscribes to its control channel on every server.
* **Reconnection**: every connection reconnects on its own with backoff (0.05 s
  doubling to 2 s); pub/sub resubscribes; receivers keep waiting through an
  outage; sends during it raise LayerError. Disconnect and reconnect are logged
  once each per server (logger ``svcbus.layers.redis``).

Deadlines use the wall clock (like the envelope's ``ex``), so hosts need NTP.
Requires Redis 6.2 or later (LPOP with a count).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import time
import zlib
from collections import deque
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, unquote, urlencode, urlsplit

from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import (
    ConnectionError as RedisConnectionError,
)
from redis.exceptions import (
    NoScriptError,
    RedisError,
    ResponseError,
)
from redis.exceptions import (
    TimeoutError as RedisTimeoutError,
)

from svcbus.errors import (
    ChannelFull,
    ConfigurationError,
    InvalidChannelName,
    LayerError,
    MessagesLost,
)
from svcbus.layer import Layer, LayerOptions
from svcbus.layers._fanout import LocalGroups
from svcbus.names import validate_channel, validate_group
from svcbus.ratelog import RateLimitedLog
from svcbus.redact import redact_url

log = logging.getLogger("svcbus.layers.redis")

BLOCK_SECONDS = 1
"""How long one BLPOP waits before the fetch loop looks again (whether anyone still waits)."""
MAX_FETCH = 256
"""Most messages one pop takes for a process (the sum of its waiting receivers' limits)."""
MAX_QUEUED = 4096
"""Pipelined commands a server's writer may hold before ``send`` waits for it (backpressure)."""
ACK_TIMEOUT = 5.0
"""Seconds ``group_add`` waits for another process to confirm a membership."""
SOCKET_TIMEOUT = 10.0
"""Seconds any reply may take; must exceed BLOCK_SECONDS."""
HOUSEKEEPING_SECONDS = 1.0
HOLD_FOR = 5.0
"""Seconds pipelined sends (whose ``send`` returned) wait for an unreachable server
before they count as lost."""

_OWN_PARAMS = {
    "prefix",
    "connect_timeout",
    "ssl_ca_certs",
    "ssl_ca_path",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_cert_reqs",
    "ssl_check_hostname",
}
_SENTINEL_PARAMS = {"db", "sentinel_username", "sentinel_password"}
_RETRYABLE = (RedisConnectionError, RedisTimeoutError, OSError)

# --- scripts (docs/protocol.md shows them with their arguments) ---------------------

# The scripts and item layout live in svcbus.redis_wire, shared with the legacy runtime.
from svcbus.redis_wire import (  # noqa: E402
    POP_SCRIPT,
    POP_SHA,
    SEND_SCRIPT,
    SEND_SHA,
    quarantine_key,
    split_item,
)


def _arg(value: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(value), value)


def pack(*args: bytes | str | int) -> bytes:
    """One command in RESP (arguments as bulk strings)."""
    out = [b"*%d\r\n" % len(args)]
    for value in args:
        if isinstance(value, str):
            value = value.encode()
        elif isinstance(value, int):
            value = b"%d" % value
        out.append(_arg(value))
    return b"".join(out)


def jump_hash(key: int, buckets: int) -> int:
    """Lamping & Veach's jump consistent hash: the bucket of a 64-bit ``key``.

    Adding a server at the end moves only 1/n of the names.
    """
    b, j = -1, 0
    while j < buckets:
        b = j
        key = (key * 2862933555777941757 + 1) & 0xFFFFFFFFFFFFFFFF
        j = int((b + 1) * (float(1 << 31) / float((key >> 33) + 1)))
    return b


def shard_of(name: str, shards: int) -> int:
    """Index of the server that holds ``name`` (a channel, process head or group)."""
    if shards == 1:
        return 0
    return jump_hash(zlib.crc32(name.encode()), shards)


def _now_ms() -> int:
    return int(time.time() * 1000)


# --- URL parsing -------------------------------------------------------------------


def _split_hosts(netloc: str, default_port: int) -> tuple[str, list[tuple[str, int]]]:
    """``user:pw@h1:1,h2:2`` -> (``user:pw@`` or ``""``, [(h1, 1), (h2, 2)])."""
    userinfo, _, hostlist = netloc.rpartition("@")
    hosts: list[tuple[str, int]] = []
    for item in hostlist.split(","):
        item = item.strip()
        if not item:
            continue
        if item.startswith("["):  # [ipv6]:port
            host, _, rest = item[1:].partition("]")
            port_text = rest[1:] if rest.startswith(":") else ""
        else:
            host, _, port_text = item.partition(":")
        try:
            port = int(port_text) if port_text else default_port
        except ValueError:
            raise ConfigurationError(f"bad port in redis URL host {item!r}") from None
        hosts.append((host or "localhost", port))
    if not hosts:
        hosts.append(("localhost", default_port))
    return (userinfo + "@" if userinfo else ""), hosts


class ServerSpec:
    """Where one shard lives: a Redis server, or the master a Sentinel names."""

    def __init__(self, name: str, make_pool: Any) -> None:
        self.name = name
        self.make_pool = make_pool

    def __repr__(self) -> str:
        return f"ServerSpec({self.name})"


def parse_url(url: str, params: Mapping[str, Any]) -> tuple[list[ServerSpec], str, float]:
    """Parse a redis layer URL into shards, the key prefix and the connect timeout."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    allowed = _OWN_PARAMS | (_SENTINEL_PARAMS if scheme == "redis+sentinel" else set())
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ConfigurationError(
            f"{scheme}:// layer does not understand {', '.join(unknown)}; "
            f"it knows {', '.join(sorted(allowed))} besides the common options"
        )
    prefix = str(params.get("prefix", "svcbus"))
    if not prefix or any(c in prefix for c in " *?[]{}\r\n\t"):
        raise ConfigurationError(f"bad redis key prefix {prefix!r}")
    try:
        connect_timeout = float(params.get("connect_timeout", 5.0))
    except ValueError:
        raise ConfigurationError("connect_timeout must be a number of seconds") from None
    if connect_timeout <= 0:
        raise ConfigurationError("connect_timeout must be positive")
    ssl = {k: str(v) for k, v in params.items() if k.startswith("ssl_")}
    common: dict[str, Any] = {
        "socket_timeout": SOCKET_TIMEOUT,
        "socket_connect_timeout": connect_timeout,
        "retry": Retry(NoBackoff(), 0),  # we reconnect ourselves, with backoff and logging
        "protocol": 2,
    }
    if scheme in ("redis", "rediss"):
        userinfo, hosts = _split_hosts(parts.netloc, 6379)
        db = (parts.path or "/").strip("/") or "0"
        if not db.isdigit():
            raise ConfigurationError(f"redis URL path must be a database number, got {db!r}")
        query = ("?" + urlencode(ssl)) if ssl else ""
        if ssl and scheme != "rediss":
            raise ConfigurationError("ssl_* options need a rediss:// URL")
        specs = []
        for host, port in hosts:
            shown = f"[{host}]" if ":" in host else host
            one = f"{scheme}://{userinfo}{shown}:{port}/{db}{query}"
            specs.append(
                ServerSpec(
                    f"{shown}:{port}",
                    lambda one=one: ConnectionPool.from_url(one, **common),
                )
            )
        return specs, prefix, connect_timeout
    if scheme == "redis+sentinel":
        userinfo, sentinels = _split_hosts(parts.netloc, 26379)
        services = [s for s in (parts.path or "").strip("/").split(",") if s]
        if not services:
            raise ConfigurationError(
                "redis+sentinel:// URL needs the master's service name as its path: "
                "redis+sentinel://host:26379/mymaster"
            )
        user, _, password = userinfo.rstrip("@").partition(":")
        db_text = str(params.get("db", "0"))
        if not db_text.isdigit():
            raise ConfigurationError(f"db must be a database number, got {db_text!r}")
        kwargs = dict(common, db=int(db_text))
        if user:
            kwargs["username"] = unquote(user)
        if password:
            kwargs["password"] = unquote(password)
        if ssl:
            kwargs["ssl"] = True
            kwargs.update(ssl)
        sentinel_kwargs: dict[str, Any] = {
            "socket_timeout": connect_timeout,
            "socket_connect_timeout": connect_timeout,
        }
        if params.get("sentinel_username"):
            sentinel_kwargs["username"] = str(params["sentinel_username"])
        if params.get("sentinel_password"):
            sentinel_kwargs["password"] = str(params["sentinel_password"])

        def sentinel_pool(service: str) -> Any:
            manager = Sentinel(sentinels, sentinel_kwargs=sentinel_kwargs, **kwargs)
            return manager.master_for(service).connection_pool

        where = ",".join(f"{h}:{p}" for h, p in sentinels)
        return (
            [
                ServerSpec(f"sentinel {where} master {quote(s)}", lambda s=s: sentinel_pool(s))
                for s in services
            ],
            prefix,
            connect_timeout,
        )
    raise ConfigurationError(f"not a redis layer URL: {redact_url(url)!r}")


# --- local state -------------------------------------------------------------------


class _Box:
    """Messages taken from Redis for one channel of this process, and its waiting receivers."""

    __slots__ = ("capacity", "items", "source", "touched", "waiters")

    def __init__(self, source: _Source | None, capacity: int, tick: int) -> None:
        self.items: deque[bytes] = deque()
        # (future, limit) of each waiting receive, longest-waiting first.
        self.waiters: deque[tuple[asyncio.Future[None], int]] = deque()
        self.source = source
        self.capacity = capacity
        self.touched = tick


class _Source:
    """One Redis list this process pops from: a named channel, or a process head."""

    __slots__ = ("box", "boxes", "head", "in_flight", "key", "shard", "split", "task", "wanted")

    def __init__(self, key: bytes, shard: _Shard, head: str | None) -> None:
        self.key = key
        self.shard = shard
        self.head = head  # process head ("edge.k3f9") or None for a named channel
        self.split = b"1" if head is not None else b"0"
        self.box: _Box | None = None  # named channel: its one box
        self.boxes: dict[bytes, _Box] = {}  # process head: local part -> box
        self.task: asyncio.Task[None] | None = None
        self.wanted = 0  # sum of the limits of everyone waiting on this source
        self.in_flight = 0  # most messages the pop being answered may have taken


class _Target:
    """Send state of one channel: its pre-packed command prefix and the room last seen."""

    __slots__ = ("channel", "header", "header_ms", "local", "pending", "pipe", "prefix", "room")

    def __init__(self, channel: str, pipe: _Pipe, prefix: bytes, local: bytes) -> None:
        self.channel = channel
        self.pipe = pipe
        self.prefix = prefix
        self.local = local  # b"" for named channels, b"<local>:" for process channels
        self.header_ms = -1
        self.header = b""
        self.room = 0  # free places the server last reported, minus our sends since
        self.pending = 0  # our sends the server has not answered yet


def _layer_error(shard: _Shard, exc: BaseException, what: str) -> LayerError:
    return LayerError(
        f"{what}: redis at {shard.name} is unreachable ({exc}). Is redis-server running "
        "and the layer URL right? The layer reconnects by itself; retry later"
    )


class _Shard:
    """One Redis server (or Sentinel-managed master) and this layer's connections to it."""

    def __init__(self, layer: RedisLayer, index: int, spec: ServerSpec) -> None:
        self.layer = layer
        self.index = index
        self.name = spec.name
        self.spec = spec
        self.pool: Any = None
        self.idle: list[AbstractConnection] = []
        self.down = False
        # Bumped when a loss is noticed: connections made before it are known dead, so
        # their errors are expected and not logged again.
        self.epoch = 0
        self.pipe = _Pipe(self)
        self.subscriber = _Subscriber(self)

    def open(self) -> None:
        if self.pool is None:
            self.pool = self.spec.make_pool()

    async def new_connection(self) -> AbstractConnection:
        conn = self.pool.make_connection()
        try:
            await conn.connect()
        except BaseException:
            with contextlib.suppress(Exception):
                await conn.disconnect()
            raise
        return conn

    async def connection(self) -> AbstractConnection:
        """An idle connection for a blocking pop, or a new one."""
        if self.idle:
            return self.idle.pop()
        return await self.new_connection()

    def release(self, conn: AbstractConnection, epoch: int) -> None:
        if self.layer._closed or epoch != self.epoch or len(self.idle) >= 64:
            self.layer._spawn(conn.disconnect())
        else:
            self.idle.append(conn)

    def lost(self, exc: BaseException, epoch: int) -> None:
        """Note that a connection made at ``epoch`` failed; log a lost server once.

        Every connection of the layer notices an outage at its own moment; only the
        first one after a working period logs, the rest are expected.
        """
        if self.down or epoch < self.epoch:
            return
        self.down = True
        self.epoch += 1
        log.warning("lost connection to redis at %s (%s); reconnecting", self.name, exc)
        for conn in self.idle:
            self.layer._spawn(conn.disconnect(nowait=True))
        self.idle.clear()

    def back(self) -> None:
        if self.down:
            self.down = False
            log.warning("reconnected to redis at %s", self.name)

    async def close(self) -> None:
        for conn in self.idle:
            with contextlib.suppress(Exception):
                await conn.disconnect()
        self.idle.clear()
        if self.pool is not None:
            with contextlib.suppress(Exception):
                await self.pool.disconnect()


# A reply handler: (send target or None, future of the caller who waits, or None).
_Handler = tuple[_Target | None, "asyncio.Future[Any] | None"]


class _Pipe:
    """The ordered, automatically pipelined write path to one server.

    Commands queue while the previous batch is in flight, then go out in one write;
    replies come back in order. One connection per server keeps all writes of this
    layer in order (FIFO per sender, and a group_discard before a group_send).
    """

    def __init__(self, shard: _Shard) -> None:
        self.shard = shard
        self.chunks: list[bytes] = []
        self.sizes: list[int] = []  # how many of ``chunks`` each queued handler has
        self.handlers: list[_Handler] = []
        self.held_since = 0.0  # when commands were first held back for a reconnection
        self.wakeup = asyncio.Event()
        self.drained = asyncio.Event()
        self.drained.set()
        self.conn: AbstractConnection | None = None
        self.conn_epoch = 0
        self.task: asyncio.Task[None] | None = None
        self.retry_at = 0.0
        self.backoff = 0.05
        self.last_error: BaseException | None = None

    def push(self, chunks: list[bytes] | tuple[bytes, ...], handler: _Handler) -> None:
        self.chunks.extend(chunks)
        self.sizes.append(len(chunks))
        self.handlers.append(handler)
        if not self.wakeup.is_set():
            self.wakeup.set()
        if self.drained.is_set():
            self.drained.clear()

    def call(self, command: bytes) -> asyncio.Future[Any]:
        """Queue one packed command; the future gets its reply (or a LayerError)."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.push((command,), (None, future))
        return future

    def start(self) -> None:
        if self.task is None:
            self.task = asyncio.ensure_future(self.run())

    async def _connect(self) -> AbstractConnection:
        shard = self.shard
        if self.conn is not None:
            if self.conn_epoch == shard.epoch:
                return self.conn
            # Made before an outage another connection noticed: replace it between
            # batches instead of losing the next batch on it.
            with contextlib.suppress(Exception):
                await self.conn.disconnect(nowait=True)
            self.conn = None
        if time.monotonic() < self.retry_at and self.last_error is not None:
            raise self.last_error
        epoch = shard.epoch
        conn = None
        try:
            conn = await shard.new_connection()
            # Scripts are not kept across a server restart or failover: load them on
            # every new connection (EVALSHA then always finds them).
            await conn.send_packed_command(
                pack(b"SCRIPT", b"LOAD", SEND_SCRIPT) + pack(b"SCRIPT", b"LOAD", POP_SCRIPT),
                check_health=False,
            )
            await conn.read_response()
            await conn.read_response()
        except _RETRYABLE as exc:
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.disconnect(nowait=True)
            self.last_error = exc
            self.retry_at = time.monotonic() + self.backoff
            self.backoff = min(self.backoff * 2, 2.0)
            shard.lost(exc, epoch)
            raise
        self.backoff = 0.05
        self.last_error = None
        shard.back()
        self.conn, self.conn_epoch = conn, epoch
        return conn

    async def run(self) -> None:
        layer = self.shard.layer
        while True:
            if not self.handlers:
                self.drained.set()
                self.wakeup.clear()
                await self.wakeup.wait()
                continue
            chunks, sizes, handlers = self.chunks, self.sizes, self.handlers
            self.chunks, self.sizes, self.handlers = [], [], []
            done = 0
            try:
                try:
                    conn = await self._connect()
                except _RETRYABLE as exc:
                    # Nothing of this batch reached the server: hold it for the
                    # reconnection instead of losing sends that already returned.
                    self._hold(chunks, sizes, handlers, exc)
                    await asyncio.sleep(max(0.01, self.retry_at - time.monotonic()))
                    continue
                self.held_since = 0.0
                await conn.send_packed_command(chunks, check_health=False)
                read = conn.read_response
                dispatch = layer._dispatch
                for handler in handlers:
                    try:
                        reply = await read()
                    except ResponseError as exc:
                        reply = exc
                    done += 1
                    dispatch(handler, reply)
            except _RETRYABLE as exc:
                if self.conn is not None:
                    with contextlib.suppress(Exception):
                        await self.conn.disconnect(nowait=True)
                    self.conn = None
                    self.shard.lost(exc, self.conn_epoch)
                # Written, but no answer: the server may or may not have run them.
                layer._fail(
                    handlers[done:], _layer_error(self.shard, exc, "no answer to a command")
                )
            except asyncio.CancelledError:
                layer._fail(handlers[done:], LayerError("the redis layer was closed"))
                raise

    def _hold(
        self, chunks: list[bytes], sizes: list[int], handlers: list[_Handler], exc: BaseException
    ) -> None:
        """Put an unsent batch back in front of the queue, or fail what cannot wait.

        A send waiting for its answer fails at once (its caller decides); pipelined
        commands, whose ``send`` returned, wait up to ``HOLD_FOR`` seconds for the
        server, then count as lost.
        """
        now = time.monotonic()
        if not self.held_since:
            self.held_since = now
        patient = now - self.held_since < HOLD_FOR
        kept_chunks: list[bytes] = []
        kept_sizes: list[int] = []
        kept: list[_Handler] = []
        failed: list[_Handler] = []
        start = 0
        for size, handler in zip(sizes, handlers, strict=True):
            if patient and handler[1] is None:
                kept_chunks.extend(chunks[start : start + size])
                kept_sizes.append(size)
                kept.append(handler)
            else:
                failed.append(handler)
            start += size
        self.chunks = kept_chunks + self.chunks
        self.sizes = kept_sizes + self.sizes
        self.handlers = kept + self.handlers
        if failed:
            self.shard.layer._fail(failed, _layer_error(self.shard, exc, "command not sent"))

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
            self.task = None
        if self.conn is not None:
            with contextlib.suppress(Exception):
                await self.conn.disconnect()
            self.conn = None


class _Subscriber:
    """The pub/sub connection to one server: this process's control channel and groups."""

    def __init__(self, shard: _Shard) -> None:
        self.shard = shard
        self.conn: AbstractConnection | None = None
        self.task: asyncio.Task[None] | None = None
        self.wanted: set[bytes] = set()  # channels we should be subscribed to
        self.confirmed: set[bytes] = set()  # SUBSCRIBE confirmed on the current connection
        self.waiting: dict[bytes, list[asyncio.Future[None]]] = {}
        self.ready = asyncio.Event()  # connected and resubscribed

    def start(self) -> None:
        if self.task is None:
            self.task = asyncio.ensure_future(self.run())

    async def subscribe(self, channel: bytes) -> None:
        """Subscribe (if not yet) and return once the server has confirmed it."""
        if channel in self.confirmed:
            return
        future = asyncio.get_running_loop().create_future()
        self.waiting.setdefault(channel, []).append(future)
        if channel not in self.wanted:
            self.wanted.add(channel)
            if self.ready.is_set() and self.conn is not None:
                with contextlib.suppress(*_RETRYABLE):  # the reader reconnects and resubscribes
                    await self.conn.send_packed_command(
                        pack(b"SUBSCRIBE", channel), check_health=False
                    )
        await future

    def subscribe_soon(self, channel: bytes, then: Any) -> None:
        """From the reader task: subscribe and call ``then()`` once confirmed."""
        if channel in self.confirmed:
            then()
            return
        future = asyncio.get_running_loop().create_future()
        future.add_done_callback(lambda f: f.cancelled() or then())
        self.waiting.setdefault(channel, []).append(future)
        if channel not in self.wanted:
            self.wanted.add(channel)
            if self.ready.is_set() and self.conn is not None:
                self.shard.layer._spawn(self._send_quietly(pack(b"SUBSCRIBE", channel)))

    async def unsubscribe(self, channel: bytes) -> None:
        if channel not in self.wanted or self.waiting.get(channel):
            return
        self.wanted.discard(channel)
        self.confirmed.discard(channel)
        if self.ready.is_set() and self.conn is not None:
            await self._send_quietly(pack(b"UNSUBSCRIBE", channel))

    async def _send_quietly(self, command: bytes) -> None:
        conn = self.conn
        if conn is not None:
            with contextlib.suppress(*_RETRYABLE):
                await conn.send_packed_command(command, check_health=False)

    async def run(self) -> None:
        shard = self.shard
        layer = shard.layer
        backoff = 0.05
        while True:
            epoch = shard.epoch
            try:
                conn = await shard.new_connection()
            except _RETRYABLE as exc:
                shard.lost(exc, epoch)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            backoff = 0.05
            self.conn = conn
            self.confirmed.clear()
            try:
                # ready first, then the snapshot: a channel subscribe() adds from now on
                # it sends itself, one added before is in the snapshot.
                self.ready.set()
                if self.wanted:
                    await conn.send_packed_command(
                        pack(b"SUBSCRIBE", *sorted(self.wanted)), check_health=False
                    )
                shard.back()
                await self._read(conn, layer)
            except _RETRYABLE as exc:
                shard.lost(exc, epoch)
            finally:
                self.ready.clear()
                self.conn = None
                with contextlib.suppress(Exception):
                    await conn.disconnect(nowait=True)

    async def _read(self, conn: AbstractConnection, layer: RedisLayer) -> None:
        on_group = layer._on_group
        on_control = layer._on_control
        control = layer._control_channel
        while True:
            reply = await conn.read_response(timeout=HOUSEKEEPING_SECONDS)
            if reply is None:
                continue
            kind = reply[0]
            if kind == b"message":
                if reply[1] == control:
                    on_control(self.shard, reply[2])
                else:
                    on_group(reply[1], reply[2])
            elif kind == b"subscribe":
                channel = reply[1]
                if channel in self.wanted:
                    self.confirmed.add(channel)
                for future in self.waiting.pop(channel, ()):
                    if not future.done():
                        future.set_result(None)

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
            self.task = None
        for futures in self.waiting.values():
            for future in futures:
                future.cancel()
        self.waiting.clear()


# --- the layer ---------------------------------------------------------------------


class RedisLayer(Layer):
    """The Redis transport (redis-py asyncio with hiredis). See the module docstring."""

    system = "redis"

    def __init__(
        self,
        servers: list[ServerSpec],
        options: LayerOptions | None = None,
        *,
        prefix: str = "svcbus",
        connect_timeout: float = 5.0,
    ) -> None:
        super().__init__(options)
        if not servers:
            raise ConfigurationError("the redis layer needs at least one server")
        self.prefix = prefix
        self.connect_timeout = connect_timeout
        self._shards = [_Shard(self, i, spec) for i, spec in enumerate(servers)]
        self._token = os.urandom(6).hex()
        self._control_channel = f"{prefix}:ctl:{self._token}".encode()
        self._expiry_ms = max(1, int(self.options.expiry * 1000))
        self._ttl_arg = _arg(b"%d" % (self._expiry_ms + 1000))
        self._targets: dict[str, _Target] = {}
        self._boxes: dict[str, _Box] = {}
        self._sources: dict[bytes, _Source] = {}
        # Groups this process has members in, and until when.
        self._members = LocalGroups()
        self._acks: dict[str, asyncio.Future[None]] = {}
        self._ack_ids = itertools.count(1)
        self._refused: dict[str, int] = {}
        self._lost_sends = 0
        self.foreign = 0
        """Items found in this layer's lists that svcbus did not write (moved aside)."""
        self.lost = 0
        """Messages lost after their ``send`` returned: a pipelined send the server
        refused (full) or that a broken connection may have lost; each is logged."""
        self.dropped = 0
        """Messages for a full process channel of this process, dropped (and logged)."""
        self._notes = RateLimitedLog(log, "reports of dropped or foreign items")
        self._tick = 0
        self._connected = False
        self._closed = False
        self._connecting: asyncio.Lock | None = None
        self._housekeeper: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()

    def _spawn(self, coroutine: Any) -> None:
        """Run a small fire-and-forget job, keeping a reference until it ends."""
        task = asyncio.ensure_future(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    @classmethod
    def from_url(cls, url: str, options: LayerOptions, params: Mapping[str, Any]) -> RedisLayer:
        servers, prefix, connect_timeout = parse_url(url, params)
        return cls(servers, options, prefix=prefix, connect_timeout=connect_timeout)

    @property
    def servers(self) -> list[str]:
        """The servers this layer shards over, in routing order."""
        return [shard.name for shard in self._shards]

    def key_of(self, channel: str) -> tuple[str, int]:
        """The Redis key holding ``channel``'s messages and the index of its server."""
        if "!" in channel:
            head = channel.split("!", 1)[0]
            return f"{self.prefix}:p:{head}", shard_of(head, len(self._shards))
        return f"{self.prefix}:c:{channel}", shard_of(channel, len(self._shards))

    # lifecycle ----------------------------------------------------------------------

    async def connect(self) -> None:
        if self._connected:
            return
        if self._closed:
            raise LayerError("this redis layer is closed; open a new one")
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._connected:
                return
            try:
                for shard in self._shards:
                    shard.open()
                    shard.pipe.start()
                await asyncio.wait_for(self._check_servers(), self.connect_timeout + 1)
                for shard in self._shards:
                    shard.subscriber.start()
                await asyncio.wait_for(
                    asyncio.gather(
                        *(s.subscriber.subscribe(self._control_channel) for s in self._shards)
                    ),
                    self.connect_timeout + 1,
                )
            except (TimeoutError, asyncio.TimeoutError):
                await self._stop_tasks()
                raise LayerError(
                    f"redis at {', '.join(self.servers)} did not answer within "
                    f"{self.connect_timeout + 1:g}s; check the layer URL and the server"
                ) from None
            except BaseException:
                await self._stop_tasks()
                raise
            self._housekeeper = asyncio.ensure_future(self._housekeeping())
            self._connected = True

    async def _check_servers(self) -> None:
        for shard in self._shards:
            try:
                conn = await shard.new_connection()
            except RedisError as exc:
                raise LayerError(
                    f"cannot connect to redis at {shard.name}: {exc}. Is redis-server running, "
                    "and are the layer URL's host, port and password right?"
                ) from None
            shard.release(conn, shard.epoch)

    async def flush(self) -> None:
        """Wait until the server has answered every send; report refusals found meanwhile."""
        await asyncio.gather(*(s.pipe.drained.wait() for s in self._shards))
        self._raise_late()

    async def close(self) -> None:
        if self._closed:
            return
        if self._connected:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    asyncio.gather(*(s.pipe.drained.wait() for s in self._shards)), 2.0
                )
            await self._return_unreceived()
        self._closed = True
        await self._stop_tasks()
        for box in self._boxes.values():
            for future, _ in box.waiters:
                if not future.done():
                    future.set_exception(LayerError("the redis layer was closed"))
        self._boxes.clear()
        self._sources.clear()
        self._members.clear()

    async def _stop_tasks(self) -> None:
        if self._housekeeper is not None:
            self._housekeeper.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._housekeeper
            self._housekeeper = None
        for source in list(self._sources.values()):
            if source.task is not None:
                source.task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await source.task
        for shard in self._shards:
            await shard.subscriber.close()
            await shard.pipe.close()
            await shard.close()

    async def _return_unreceived(self) -> None:
        """Put messages popped for cancelled receives back at the head of their lists."""
        deadline = b"%013d:" % (_now_ms() + self._expiry_ms)
        futures = []
        for channel, box in self._boxes.items():
            source = box.source
            if not box.items or source is None or source.head is not None:
                continue  # process channels die with this layer anyway
            items = [deadline + item for item in reversed(box.items)]
            box.items.clear()
            futures.append(source.shard.pipe.call(pack(b"LPUSH", source.key, *items)))
            log.debug("returning %d unreceived messages to %s", len(items), channel)
        if futures:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.gather(*futures), 2.0)

    async def _ready(self) -> None:
        if not self._connected:
            await self.connect()

    # sending ------------------------------------------------------------------------

    def _target(self, channel: str) -> _Target:
        target = self._targets.get(channel)
        if target is None:
            if len(self._targets) >= 10_000:
                # Bounded: process channels are unbounded in number. Keep those in use.
                self._targets = {c: t for c, t in self._targets.items() if t.pending}
            key, index = self.key_of(channel)
            local = (channel.split("!", 1)[1] + ":").encode() if "!" in channel else b""
            prefix = (
                b"*9\r\n$7\r\nEVALSHA\r\n"
                + _arg(SEND_SHA)
                + b"$1\r\n1\r\n"
                + _arg(key.encode())
                + _arg(b"%d" % self.options.capacity_for(channel))
                + self._ttl_arg
            )
            target = self._targets[channel] = _Target(
                channel, self._shards[index].pipe, prefix, local
            )
        return target

    def _send_chunks(self, target: _Target, message: bytes) -> tuple[bytes, ...]:
        now = _now_ms()
        if target.header_ms != now:
            # now_ms and the item header change once per millisecond, not per message.
            target.header_ms = now
            target.header = _arg(b"%d" % now) + _arg(
                b"%013d:%b" % (now + self._expiry_ms, target.local)
            )
        return (target.prefix, target.header, b"$%d\r\n" % len(message), message, b"\r\n")

    async def send(self, channel: str, message: bytes) -> None:
        if not self._connected:
            await self._ready()
        validate_channel(channel)
        if len(message) > self.options.max_message_size:
            self.options.check_size(channel, message)
        target = self._targets.get(channel) or self._target(channel)
        pipe = target.pipe
        target.pending += 1
        if target.room > 0 and not pipe.shard.down:
            # The server last reported room for this and our other pending sends:
            # pipeline without waiting for the answer. (While the server is down a
            # send waits for its own answer, so the outage fails that send itself.)
            target.room -= 1
            pipe.push(self._send_chunks(target, message), (target, None))
            if len(pipe.handlers) > MAX_QUEUED:
                await pipe.drained.wait()
            else:
                await asyncio.sleep(0)  # let the writer and receivers run
            return
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        pipe.push(self._send_chunks(target, message), (target, future))
        reply = await future
        if reply < 0:
            capacity = self.options.capacity_for(channel)
            raise ChannelFull(
                f"channel {channel!r} holds {capacity} messages (its capacity); "
                "its consumers are behind: retry later or raise channel_capacity"
            )

    def _dispatch(self, handler: _Handler, reply: Any) -> None:
        """Route one reply from a pipe to whoever waits for it."""
        target, future = handler
        if target is not None:
            target.pending -= 1
            if type(reply) is int:
                if reply >= 0:
                    target.room = reply - target.pending
                else:
                    target.room = 0
                    if future is None:
                        self._note_refused(target.channel)
            else:
                target.room = 0
                if future is None:
                    self._note_lost(reply)
        if future is not None and not future.done():
            if isinstance(reply, ResponseError):
                future.set_exception(
                    LayerError(f"redis refused a command: {reply}")
                    if not isinstance(reply, NoScriptError)
                    else LayerError("redis lost the layer's scripts (SCRIPT FLUSH?); retry")
                )
                if isinstance(reply, NoScriptError) and target is not None:
                    target.pipe.conn = None  # reconnect: that loads the scripts again
            else:
                future.set_result(reply)

    def _fail(self, handlers: list[_Handler], error: LayerError) -> None:
        for target, future in handlers:
            if target is not None:
                target.pending -= 1
                target.room = 0
                if future is None:
                    self._lost_sends += 1
                    self.lost += 1
            if future is not None and not future.done():
                future.set_exception(error)

    def _note_refused(self, channel: str) -> None:
        count = self._refused.get(channel, 0)
        if not count:
            log.warning(
                "channel %s was full: a pipelined message was refused (counted in lost; the "
                "next flush() raises MessagesLost)",
                channel,
            )
        self._refused[channel] = count + 1
        self.lost += 1

    def _note_lost(self, reply: Any) -> None:
        self._lost_sends += 1
        self.lost += 1
        log.error("redis refused a pipelined send: %s", reply)

    def _raise_late(self) -> None:
        """Report sends that returned before their answer and were then refused or lost."""
        if not self._lost_sends and not self._refused:
            return
        refused, self._refused = self._refused, {}
        lost, self._lost_sends = self._lost_sends, 0
        count = lost + sum(refused.values())
        channel = next(iter(refused)) if len(refused) == 1 and not lost else None
        parts = [f"{n} refused by full channel {c!r}" for c, n in refused.items()]
        if lost:
            parts.append(f"{lost} that may not have reached redis (a broken connection?)")
        raise MessagesLost(
            f"{count} message(s) sent earlier were lost: {'; '.join(parts)}. Their consumers "
            "are behind or the server failed; see the log",
            count=count,
            channel=channel,
        )

    # receiving ----------------------------------------------------------------------

    def _box(self, channel: str) -> _Box:
        """The local box of ``channel``, made on first use with its Redis source."""
        box = self._boxes.get(channel)
        if box is not None:
            return box
        key_text, index = self.key_of(channel)
        key = key_text.encode()
        source = self._sources.get(key)
        if source is None:
            head = channel.split("!", 1)[0] if "!" in channel else None
            source = self._sources[key] = _Source(key, self._shards[index], head)
            if head is not None and not self._closed:
                # A process head is popped all the time, not only while someone
                # waits: direct messages then join group messages in the channel's
                # one local buffer, in arrival order and under one capacity.
                source.task = asyncio.ensure_future(self._fetch(source))
        box = self._boxes[channel] = _Box(source, self.options.capacity_for(channel), self._tick)
        if source.head is None:
            source.box = box
        else:
            source.boxes[channel.split("!", 1)[1].encode()] = box
        return box

    def _check_receivable(self, channel: str) -> None:
        validate_channel(channel)
        if "!" in channel and channel.split("!", 1)[0].rsplit(".", 1)[-1] != self._token:
            raise InvalidChannelName(
                f"channel {channel!r} belongs to another process; only the layer that made it "
                "with new_channel() can receive from it"
            )

    async def receive(self, channel: str) -> bytes:
        return (await self.receive_many(channel, 1))[0]

    async def receive_many(self, channel: str, limit: int) -> list[bytes]:
        box = self._boxes.get(channel)
        if box is None:
            if not self._connected:
                await self._ready()
            self._check_receivable(channel)
            box = self._box(channel)
        elif self._closed:
            raise LayerError("this redis layer is closed; open a new one")
        if box.items:
            return self._take(box, limit)
        source = box.source
        assert source is not None
        loop = asyncio.get_running_loop()
        while True:
            future: asyncio.Future[None] = loop.create_future()
            waiter = (future, limit)
            box.waiters.append(waiter)
            source.wanted += limit
            if source.task is None:
                source.task = asyncio.ensure_future(self._fetch(source))
            try:
                await future
            except BaseException:
                if future.done() and not future.cancelled() and future.exception() is None:
                    self._wake(box)  # woken, then cancelled: hand the wake-up on
                else:
                    with contextlib.suppress(ValueError):
                        box.waiters.remove(waiter)
                        source.wanted -= limit
                raise
            if box.items:
                return self._take(box, limit)

    def _take(self, box: _Box, limit: int) -> list[bytes]:
        items = box.items
        if len(items) <= limit:
            batch = list(items)
            items.clear()
        else:
            batch = [items.popleft() for _ in range(limit)]
            if box.waiters:
                self._wake(box)
        box.touched = self._tick
        return batch

    def _wake(self, box: _Box) -> None:
        """Wake as many waiting receivers, oldest first, as the box has messages for."""
        left = len(box.items)
        waiters = box.waiters
        source = box.source
        while left > 0 and waiters:
            future, limit = waiters.popleft()
            if source is not None:
                source.wanted -= limit
            if not future.done():
                future.set_result(None)
                left -= limit

    async def _fetch(self, source: _Source) -> None:
        """Pop for ``source`` while anyone in this process waits on it.

        Runs as its own task so that a cancelled receive never abandons a pop in
        flight: what it pops lands in the local boxes and the next receive takes it.
        """
        shard = source.shard
        backoff = 0.05
        try:
            while not self._closed and (source.wanted > 0 or source.head is not None):
                want = MAX_FETCH if source.head is not None else min(source.wanted, MAX_FETCH)
                epoch = shard.epoch
                try:
                    conn = await shard.connection()
                except _RETRYABLE as exc:
                    shard.lost(exc, epoch)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 2.0)
                    continue
                try:
                    items = await self._pop(conn, source, want)
                except _RETRYABLE as exc:
                    with contextlib.suppress(Exception):
                        await conn.disconnect(nowait=True)
                    shard.lost(exc, epoch)
                    if source.in_flight:
                        # The server may have popped them before the answer was lost.
                        self.lost += source.in_flight
                        self._notes.log(
                            "pop",
                            "up to %d message(s) of %s may be lost: the connection broke while "
                            "popping them (counted in lost)",
                            source.in_flight,
                            source.key.decode(errors="replace"),
                        )
                        source.in_flight = 0
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 2.0)
                    continue
                except ResponseError as exc:
                    # Not a list (WRONGTYPE), a script error...: the receivers keep
                    # waiting and this loop keeps trying, slowly, saying what is wrong.
                    shard.release(conn, epoch)
                    log.error(
                        "redis refused to pop %s: %s; fix or delete that key (receivers "
                        "keep waiting, retrying in %gs)",
                        source.key.decode(errors="replace"),
                        exc,
                        5.0,
                    )
                    await asyncio.sleep(5.0)
                    continue
                except BaseException:
                    # Cancelled mid-command (close): the connection's state is unknown.
                    with contextlib.suppress(Exception):
                        await conn.disconnect(nowait=True)
                    raise
                except Exception:
                    # A bug or a reply of a shape we did not expect: never let the
                    # receivers of this list hang on a dead task.
                    with contextlib.suppress(Exception):
                        await conn.disconnect(nowait=True)
                    log.exception(
                        "popping %s failed; retrying", source.key.decode(errors="replace")
                    )
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 2.0)
                    continue
                shard.release(conn, epoch)
                shard.back()
                backoff = 0.05
                if items:
                    self._deliver(source, items)
        finally:
            source.task = None

    async def _pop(self, conn: AbstractConnection, source: _Source, want: int) -> list[bytes]:
        now = _now_ms()
        command = pack(b"EVALSHA", POP_SHA, b"1", source.key, now, want, source.split)
        source.in_flight = want
        await conn.send_packed_command(command, check_health=False)
        try:
            reply = await conn.read_response()
        except NoScriptError:
            await conn.send_packed_command(pack(b"SCRIPT", b"LOAD", POP_SCRIPT), False)
            await conn.read_response()
            await conn.send_packed_command(command, check_health=False)
            reply = await conn.read_response()
        source.in_flight = 0
        items, foreign = reply
        if foreign:
            self._count_foreign(source.key, foreign)
        if items:
            return items  # type: ignore[no-any-return]
        source.in_flight = 1
        await conn.send_packed_command(pack(b"BLPOP", source.key, BLOCK_SECONDS), False)
        reply = await conn.read_response()
        source.in_flight = 0
        if not reply:
            return []
        parts = split_item(reply[1], source.head is not None)
        if parts is None:
            # Not written by svcbus: keep it where the scripts keep theirs.
            await conn.send_packed_command(pack(b"RPUSH", quarantine_key(source.key), reply[1]))
            await conn.read_response()
            self._count_foreign(source.key, 1)
            return []
        deadline, local, message = parts
        if deadline <= _now_ms():
            return []  # expired while queued
        return [message] if local is None else [local, message]

    def _drop(self, box: _Box, why: str) -> None:
        """Count a message dropped for a full local buffer, and say so (rate-limited)."""
        self.dropped += 1
        self._notes.log(
            why,
            "dropped a message for %s (capacity %d); %d dropped so far: its receiver is behind",
            why,
            box.capacity,
            self.dropped,
        )

    def _count_foreign(self, key: bytes, count: int) -> None:
        """Count items in our lists that svcbus did not write, and say so (rate-limited)."""
        self.foreign += count
        self._notes.log(
            "foreign",
            "%d foreign item(s) in %s (not written by svcbus) were moved to %s; "
            "%d so far. Inspect them with LRANGE; only svcbus should write to its keys",
            count,
            key.decode(errors="replace"),
            quarantine_key(key).decode(errors="replace"),
            self.foreign,
        )

    def _deliver(self, source: _Source, items: list[bytes]) -> None:
        if source.head is None:
            box = source.box
            if box is None:  # dropped by housekeeping meanwhile: make it again
                box = self._box(source.key.decode()[len(self.prefix) + 3 :])
            box.items.extend(items)
            self._wake(box)
            return
        boxes = source.boxes
        woken: set[bytes] = set()
        for i in range(0, len(items), 2):
            local = items[i]
            box = boxes.get(local)
            if box is None:
                box = self._box(f"{source.head}!{local.decode()}")
            if len(box.items) >= box.capacity:
                self._drop(box, "a full process channel")
                continue
            box.items.append(items[i + 1])
            if box.waiters:
                woken.add(local)
        for local in woken:
            self._wake(boxes[local])

    async def new_channel(self, prefix: str = "specific") -> str:
        if self._closed:
            raise LayerError("this redis layer is closed; open a new one")
        validate_group(prefix)
        name = f"{prefix}.{self._token}!{os.urandom(5).hex()}"
        self._box(name)  # starts popping the head's list (see _box)
        return name

    # groups -------------------------------------------------------------------------

    def _group_shard(self, group: str) -> _Shard:
        return self._shards[shard_of(group, len(self._shards))]

    def _owner_token(self, channel: str) -> str:
        return channel.split("!", 1)[0].rsplit(".", 1)[-1]

    async def group_add(self, group: str, channel: str) -> None:
        await self._ready()
        validate_group(group)
        validate_channel(channel)
        ttl_ms = max(1, int(self.options.group_expiry * 1000))
        shard = self._group_shard(group)
        if "!" not in channel:
            zkey = f"{self.prefix}:gn:{group}"
            replies = await asyncio.gather(
                shard.pipe.call(pack(b"ZADD", zkey, _now_ms() + ttl_ms, channel)),
                shard.pipe.call(pack(b"PEXPIRE", zkey, ttl_ms)),
            )
            _raise_replies(replies)
            return
        token = self._owner_token(channel)
        if token == self._token:
            await self._add_local(shard, group, channel, ttl_ms / 1000)
            return
        ack_id = f"{self._token}.{next(self._ack_ids)}"
        future = self._acks[ack_id] = asyncio.get_running_loop().create_future()
        control = {
            "op": "add",
            "group": group,
            "channel": channel,
            "ttl": ttl_ms,
            "from": self._token,
            "id": ack_id,
        }
        try:
            receivers = await shard.pipe.call(
                pack(b"PUBLISH", f"{self.prefix}:ctl:{token}", json.dumps(control))
            )
            _raise_replies([receivers])
            if receivers == 0:
                return  # no process owns the channel any more: nobody could receive
            try:
                await asyncio.wait_for(future, ACK_TIMEOUT)
            except (TimeoutError, asyncio.TimeoutError):
                raise LayerError(
                    f"the process owning {channel!r} did not confirm joining group {group!r} "
                    f"within {ACK_TIMEOUT:g}s; it may be overloaded or disconnected"
                ) from None
        finally:
            self._acks.pop(ack_id, None)

    async def _add_local(self, shard: _Shard, group: str, channel: str, ttl: float) -> None:
        self._members.add(group, channel, ttl, time.monotonic())
        await shard.subscriber.subscribe(f"{self.prefix}:g:{group}".encode())

    async def group_discard(self, group: str, channel: str) -> None:
        await self._ready()
        validate_group(group)
        validate_channel(channel)
        shard = self._group_shard(group)
        if "!" not in channel:
            reply = await shard.pipe.call(pack(b"ZREM", f"{self.prefix}:gn:{group}", channel))
            _raise_replies([reply])
            return
        token = self._owner_token(channel)
        if token == self._token:
            self._discard_local(group, channel)
            return
        # Sent on the group's server through the same ordered pipe as group_send, so
        # the owner reads it before any group message sent after this returns.
        control = {"op": "discard", "group": group, "channel": channel}
        reply = await shard.pipe.call(
            pack(b"PUBLISH", f"{self.prefix}:ctl:{token}", json.dumps(control))
        )
        _raise_replies([reply])

    def _discard_local(self, group: str, channel: str) -> None:
        self._members.discard(group, channel)  # the housekeeper unsubscribes empty groups

    async def group_send(self, group: str, message: bytes) -> None:
        await self._ready()
        validate_group(group)
        self.options.check_size(group, message)
        pipe = self._group_shard(group).pipe
        zkey = f"{self.prefix}:gn:{group}"
        # PUBLISH first: when ZRANGE's answer arrives, the PUBLISH has been done.
        publish = b"*3\r\n$7\r\nPUBLISH\r\n" + _arg(f"{self.prefix}:g:{group}".encode())
        pipe.push((publish, b"$%d\r\n" % len(message), message, b"\r\n"), (None, None))
        pipe.push((pack(b"ZREMRANGEBYSCORE", zkey, b"-inf", _now_ms()),), (None, None))
        named = await pipe.call(pack(b"ZRANGE", zkey, 0, -1))
        for member in named:
            # Named channels in a group: pushed like a send, but a full one just misses it.
            target = self._target(member.decode())
            target.pipe.push(self._send_chunks(target, message), (None, None))

    # pub/sub handlers (run in a subscriber's reader task) ----------------------------

    def _on_group(self, pubsub: bytes, message: bytes) -> None:
        group = pubsub[len(self.prefix) + 3 :].decode()
        self._members.deliver(group, message, self._put_member, time.monotonic())

    def _put_member(self, channel: str, message: bytes) -> bool:
        box = self._boxes.get(channel) or self._box(channel)
        if len(box.items) >= box.capacity:
            # group_send never raises ChannelFull: a full member misses it.
            self._drop(box, "a full group member")
            return False
        box.items.append(message)
        if box.waiters:
            self._wake(box)
        return True

    def _on_control(self, shard: _Shard, data: bytes) -> None:
        try:
            control = json.loads(data)
            op = control["op"]
            if op == "ack":
                future = self._acks.get(control["id"])
                if future is not None and not future.done():
                    future.set_result(None)
                return
            group, channel = control["group"], control["channel"]
            validate_group(group)
            validate_channel(channel)
        except (ValueError, KeyError, TypeError, InvalidChannelName) as exc:
            log.warning("bad control message %r ignored: %s", data[:200], exc)
            return
        if self._owner_token(channel) != self._token:
            log.warning("control message for a channel of another process ignored: %r", data)
            return
        if op == "discard":
            self._discard_local(group, channel)
        elif op == "add":
            pubsub = f"{self.prefix}:g:{group}".encode()
            ttl = float(control.get("ttl", self.options.group_expiry * 1000)) / 1000
            self._members.add(group, channel, ttl, time.monotonic())
            group_shard = self._group_shard(group)
            ack = pack(
                b"PUBLISH",
                f"{self.prefix}:ctl:{control.get('from', '')}",
                json.dumps({"op": "ack", "id": control.get("id")}),
            )
            # Acknowledge only once the group's SUBSCRIBE is confirmed: from then on
            # every later group_send reaches this process.
            group_shard.subscriber.subscribe_soon(
                pubsub, lambda: shard.pipe.push((ack,), (None, None))
            )
        else:
            log.warning("unknown control op %r ignored", op)

    # housekeeping -------------------------------------------------------------------

    async def _housekeeping(self) -> None:
        """Once a second: lapse memberships, leave empty groups, drop idle local boxes."""
        idle_ticks = max(2, int(self.options.expiry / HOUSEKEEPING_SECONDS) + 1)
        while True:
            await asyncio.sleep(HOUSEKEEPING_SECONDS)
            self._tick += 1
            self._notes.flush()
            now = time.monotonic()
            self._members.expire(now)
            await self._leave_empty_groups()
            stale = [
                channel
                for channel, box in self._boxes.items()
                if not box.waiters and self._tick - box.touched > idle_ticks
            ]
            for channel in stale:
                self._drop_box(channel)

    async def _leave_empty_groups(self) -> None:
        """Unsubscribe from the groups this process no longer has members in."""
        marker = f"{self.prefix}:g:".encode()
        for shard in self._shards:
            for pubsub in [c for c in shard.subscriber.wanted if c.startswith(marker)]:
                if pubsub[len(marker) :].decode() not in self._members:
                    await shard.subscriber.unsubscribe(pubsub)

    def _drop_box(self, channel: str) -> None:
        box = self._boxes.pop(channel)
        source = box.source
        if source is None:
            return
        if source.head is None:
            source.box = None
        else:
            source.boxes.pop(channel.split("!", 1)[1].encode(), None)
        if source.box is None and not source.boxes and source.task is None:
            self._sources.pop(source.key, None)


def _raise_replies(replies: list[Any]) -> None:
    for reply in replies:
        if isinstance(reply, LayerError):
            raise reply
        if isinstance(reply, RedisError):
            raise LayerError(f"redis refused a command: {reply}")
