"""The Redis layer itself: lifecycle, receiving into local boxes, groups, housekeeping.

The parts it is built from live next to it: ``url`` (servers and sharding),
``shard`` (one server's connections and up/down state), ``pipe`` (the ordered
pipelined writer), ``sending`` (send state and late losses) and ``subscriber``
(pub/sub). The package docstring describes how the semantics map onto Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import time
from collections import deque
from collections.abc import Coroutine, Mapping, Sequence
from typing import Any

from redis.asyncio.connection import AbstractConnection
from redis.exceptions import NoScriptError, RedisError, ResponseError

from svcbus.errors import ConfigurationError, InvalidChannelName, LayerError
from svcbus.layer import Layer, LayerOptions
from svcbus.layers._fanout import LocalGroups
from svcbus.names import validate_channel, validate_group
from svcbus.ratelog import RateLimitedLog
from svcbus.redis_wire import POP_SCRIPT, POP_SHA, quarantine_key, split_item

from .pipe import Pipe
from .resp import bulk, now_ms, pack
from .sending import Sender
from .shard import RETRYABLE, Backoff, Shard
from .subscriber import HOUSEKEEPING_SECONDS, Subscriber
from .url import ServerSpec, parse_url, shard_of

log = logging.getLogger("svcbus.layers.redis")

BLOCK_SECONDS = 1
"""How long one BLPOP waits before the fetch loop looks again (whether anyone still waits)."""
MAX_FETCH = 256
"""Most messages one pop takes for a process (the sum of its waiting receivers' limits)."""
ACK_TIMEOUT = 5.0
"""Seconds ``group_add`` waits for another process to confirm a membership."""


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

    def __init__(self, key: bytes, shard: Shard, head: str | None) -> None:
        self.key = key
        self.shard = shard
        self.head = head  # process head ("edge.k3f9") or None for a named channel
        self.split = b"1" if head is not None else b"0"
        self.box: _Box | None = None  # named channel: its one box
        self.boxes: dict[bytes, _Box] = {}  # process head: local part -> box
        self.task: asyncio.Task[None] | None = None
        self.wanted = 0  # sum of the limits of everyone waiting on this source
        self.in_flight = 0  # most messages the pop being answered may have taken


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
        self._shards = [
            Shard(i, spec, self._spawn, lambda: self._closed) for i, spec in enumerate(servers)
        ]
        pipes: list[Pipe] = []
        self._sender = Sender(self.options, pipes, self.key_of)
        for shard in self._shards:
            shard.pipe = Pipe(shard, self._sender)
            shard.subscriber = Subscriber(shard, self._on_pubsub, self._spawn)
            pipes.append(shard.pipe)
        self._token = os.urandom(6).hex()
        self._control_channel = f"{prefix}:ctl:{self._token}".encode()
        self._boxes: dict[str, _Box] = {}
        self._sources: dict[bytes, _Source] = {}
        # Groups this process has members in, and until when.
        self._members = LocalGroups()
        self._acks: dict[str, asyncio.Future[None]] = {}
        self._ack_ids = itertools.count(1)
        self._lost_pops = 0
        self.foreign = 0
        """Items found in this layer's lists that svcbus did not write (moved aside)."""
        self.dropped = 0
        """Messages for a full process channel of this process, dropped (and logged)."""
        self._notes = RateLimitedLog(log, "reports of dropped or foreign items")
        self._tick = 0
        self._connected = False
        self._closed = False
        self._connecting: asyncio.Lock | None = None
        self._housekeeper: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()

    @property
    def lost(self) -> int:
        """Messages lost after their ``send`` returned (a pipelined send the server refused,
        or one a broken connection may have lost) or while popped; each is logged."""
        return self._sender.lost + self._lost_pops

    @property
    def reconnects(self) -> int:
        """How many outages this layer noticed, over all its servers."""
        return sum(shard.epoch for shard in self._shards)

    async def probe(self) -> str | None:
        """A PING to every server on a fresh connection: None when all answer, else why not."""
        for shard in self._shards:
            problem = await shard.probe()
            if problem is not None:
                return problem
        return None

    def _spawn(self, coroutine: Coroutine[Any, Any, Any]) -> None:
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
        self._sender.raise_late()

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
        deadline = b"%013d:" % (now_ms() + self._sender.expiry_ms)
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

    async def send(self, channel: str, message: bytes) -> None:
        if not self._connected:
            await self._ready()
        validate_channel(channel)
        if len(message) > self.options.max_message_size:
            self.options.check_size(channel, message)
        await self._sender.send(channel, message)

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
        backoff = Backoff()
        try:
            while not self._closed and (source.wanted > 0 or source.head is not None):
                want = MAX_FETCH if source.head is not None else min(source.wanted, MAX_FETCH)
                epoch = shard.epoch
                try:
                    conn = await shard.connection()
                except RETRYABLE as exc:
                    shard.lost(exc, epoch)
                    await backoff.sleep()
                    continue
                try:
                    items = await self._pop(conn, source, want)
                except RETRYABLE as exc:
                    with contextlib.suppress(Exception):
                        await conn.disconnect(nowait=True)
                    shard.lost(exc, epoch)
                    if source.in_flight:
                        # The server may have popped them before the answer was lost.
                        self._lost_pops += source.in_flight
                        self._notes.log(
                            "pop",
                            "up to %d message(s) of %s may be lost: the connection broke while "
                            "popping them (counted in lost)",
                            source.in_flight,
                            source.key.decode(errors="replace"),
                        )
                        source.in_flight = 0
                    await backoff.sleep()
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
                    await backoff.sleep()
                    continue
                shard.release(conn, epoch)
                shard.back()
                backoff.reset()
                if items:
                    self._deliver(source, items)
        finally:
            source.task = None

    async def _pop(self, conn: AbstractConnection, source: _Source, want: int) -> list[bytes]:
        now = now_ms()
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
            return list(items)
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
        if deadline <= now_ms():
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

    def _group_shard(self, group: str) -> Shard:
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
                shard.pipe.call(pack(b"ZADD", zkey, now_ms() + ttl_ms, channel)),
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

    async def _add_local(self, shard: Shard, group: str, channel: str, ttl: float) -> None:
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
        publish = b"*3\r\n$7\r\nPUBLISH\r\n" + bulk(f"{self.prefix}:g:{group}".encode())
        pipe.push((publish, b"$%d\r\n" % len(message), message, b"\r\n"), (None, None))
        pipe.push((pack(b"ZREMRANGEBYSCORE", zkey, b"-inf", now_ms()),), (None, None))
        named = await pipe.call(pack(b"ZRANGE", zkey, 0, -1))
        for member in named:
            # Named channels in a group: pushed like a send, but a full one just misses it.
            target = self._sender.target(member.decode())
            target.pipe.push(self._sender.chunks(target, message), (None, None))

    # pub/sub handlers (run in a subscriber's reader task) ----------------------------

    def _on_pubsub(self, shard: Shard, channel: bytes, data: bytes) -> None:
        if channel == self._control_channel:
            self._on_control(shard, data)
        else:
            self._on_group(channel, data)

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

    def _on_control(self, shard: Shard, data: bytes) -> None:
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


def _raise_replies(replies: Sequence[Any]) -> None:
    for reply in replies:
        if isinstance(reply, LayerError):
            raise reply
        if isinstance(reply, RedisError):
            raise LayerError(f"redis refused a command: {reply}")
