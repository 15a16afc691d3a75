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
from collections.abc import Coroutine, Mapping, Sequence
from typing import Any

from redis.exceptions import RedisError

from svcbus.durable import Delivery, Durability
from svcbus.errors import ConfigurationError, InvalidChannelName, LayerError
from svcbus.layer import Layer, LayerOptions
from svcbus.layers._fanout import LocalGroups
from svcbus.names import validate_channel, validate_group

from .durable import DurableStreams
from .pipe import Pipe
from .receiving import Receivers
from .resp import bulk, now_ms, pack
from .sending import Sender
from .shard import Shard
from .subscriber import HOUSEKEEPING_SECONDS, Subscriber
from .url import ServerSpec, parse_url, shard_of

log = logging.getLogger("svcbus.layers.redis")

ACK_TIMEOUT = 5.0
"""Seconds ``group_add`` waits for another process to confirm a membership."""


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
        self._receivers = Receivers(
            self._shards, self.options, self.key_of, prefix, lambda: self._closed
        )
        self.durable = DurableStreams(self._shards, self.options, prefix, self._token)
        """Durable channels (``durable.py``): streams, apart from the at-most-once lists."""
        # Groups this process has members in, and until when.
        self._members = LocalGroups()
        self._acks: dict[str, asyncio.Future[None]] = {}
        self._ack_ids = itertools.count(1)
        self._connected = False
        self._closed = False
        self._connecting: asyncio.Lock | None = None
        self._housekeeper: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()

    @property
    def lost(self) -> int:
        """Messages lost after their ``send`` returned (a pipelined send the server refused,
        or one a broken connection may have lost), while popped, or durable ones dropped
        after ``max_age`` by this process's sends and housekeeping; each is logged."""
        return self._sender.lost + self._receivers.lost_pops + self.durable.expired

    @property
    def foreign(self) -> int:
        """Items found in this layer's lists that svcbus did not write (moved aside)."""
        return self._receivers.foreign

    @property
    def dropped(self) -> int:
        """Messages for a full process channel of this process, dropped (and logged)."""
        return self._receivers.dropped

    @property
    def connected(self) -> bool:
        """Whether :meth:`connect` has succeeded (and the layer is not closed)."""
        return self._connected and not self._closed

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
            if self.connected:  # another task connected while this one waited for the lock
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
            for shard in self._shards:
                with contextlib.suppress(Exception):  # the master the connections went to
                    await asyncio.wait_for(shard.follow_master(), self.connect_timeout)
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
        self.durable.push_acks()
        await asyncio.gather(*(s.pipe.drained.wait() for s in self._shards))
        self._sender.raise_late()

    async def close(self) -> None:
        if self._closed:
            return
        if self._connected:
            self.durable.push_acks()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    asyncio.gather(*(s.pipe.drained.wait() for s in self._shards)), 2.0
                )
            await self._receivers.return_unreceived(self._sender.expiry_ms)
            await self.durable.close()
        self._closed = True
        await self._stop_tasks()
        self._receivers.close()
        self._members.clear()

    async def _stop_tasks(self) -> None:
        if self._housekeeper is not None:
            self._housekeeper.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._housekeeper
            self._housekeeper = None
        await self._receivers.stop()
        for shard in self._shards:
            await shard.subscriber.close()
            await shard.pipe.close()
            await shard.close()

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
        if self.durable.settings and channel in self.durable.settings:
            await self.durable.send(channel, message)
            return
        await self._sender.send(channel, message)

    # durable channels ---------------------------------------------------------------

    async def declare_durable(self, channel: str, settings: Durability) -> None:
        """Create ``channel``'s stream and consumer group if missing (``durable.py``)."""
        await self._ready()
        validate_channel(channel)
        # The layer URL's per-channel durable settings (durable_ack_wait=...) over the contract's.
        await self.durable.declare(channel, self.options.durability_for(channel, settings))

    async def receive_durable(self, channel: str, limit: int) -> list[Delivery]:
        if self._closed:
            raise LayerError("this redis layer is closed; open a new one")
        return await self.durable.receive(channel, limit)

    # receiving ----------------------------------------------------------------------

    def _check_receivable(self, channel: str) -> None:
        validate_channel(channel)
        if "!" in channel and channel.split("!", 1)[0].rsplit(".", 1)[-1] != self._token:
            raise InvalidChannelName(
                f"channel {channel!r} belongs to another process; only the layer that made it "
                "with new_channel() can receive from it"
            )

    async def receive(self, channel: str) -> bytes:
        receivers = self._receivers
        box = receivers.boxes().get(channel)
        if box is None or self._closed:
            return (await self.receive_many(channel, 1))[0]
        # A channel with a box here passed the checks when the box was made. The
        # wait is inlined (Receivers.arm): while a receive waits it holds this one
        # coroutine and the box's reusable Waiter, not a chain of coroutines, a
        # new future and a list per message. Thousands of group members re-arm
        # once per message; see layers/_waiter.py for what that does to the gc.
        while not box.items:
            future = receivers.arm(box, 1)
            try:
                await future
            except BaseException:
                receivers.disarm(box, future, 1)
                raise
        return receivers.take_one(box)

    async def receive_many(self, channel: str, limit: int) -> list[bytes]:
        if self._closed:
            raise LayerError("this redis layer is closed; open a new one")
        if channel not in self._receivers.boxes():
            if not self._connected:
                await self._ready()
            self._check_receivable(channel)
        return await self._receivers.receive(channel, limit)

    async def new_channel(self, prefix: str = "specific") -> str:
        if self._closed:
            raise LayerError("this redis layer is closed; open a new one")
        validate_group(prefix)
        name = f"{prefix}.{self._token}!{os.urandom(5).hex()}"
        self._receivers.box(name)  # starts popping the head's list (see Receivers.box)
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
        self._members.deliver(group, message, self._receivers.put_members, time.monotonic())

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
        """Once a second: follow a Sentinel failover, lapse memberships, leave empty groups,
        drop idle local boxes."""
        while True:
            await asyncio.sleep(HOUSEKEEPING_SECONDS)
            for shard in self._shards:
                # Sentinel only: leave a replaced master at once, not when it is demoted.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(shard.follow_master(), HOUSEKEEPING_SECONDS)
            self._receivers.sweep(self.options.expiry)
            self._members.expire(time.monotonic())
            await self._leave_empty_groups()
            if self.durable.settings:
                await self.durable.expire()

    async def _leave_empty_groups(self) -> None:
        """Unsubscribe from the groups this process no longer has members in."""
        marker = f"{self.prefix}:g:".encode()
        for shard in self._shards:
            for pubsub in [c for c in shard.subscriber.wanted if c.startswith(marker)]:
                if pubsub[len(marker) :].decode() not in self._members:
                    await shard.subscriber.unsubscribe(pubsub)


def _raise_replies(replies: Sequence[Any]) -> None:
    for reply in replies:
        if isinstance(reply, LayerError):
            raise reply
        if isinstance(reply, RedisError):
            raise LayerError(f"redis refused a command: {reply}")
