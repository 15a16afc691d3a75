"""One Redis server of the layer: its connection pool, idle connections and up/down state."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from svcbus.errors import LayerError

from .url import ServerSpec

if TYPE_CHECKING:
    from .pipe import Pipe
    from .subscriber import Subscriber

log = logging.getLogger("svcbus.layers.redis")

RETRYABLE = (RedisConnectionError, RedisTimeoutError, OSError)
"""Errors after which a connection is dropped and made again (the server may be back)."""

Spawn = Callable[[Coroutine[Any, Any, Any]], None]
"""Run a small fire-and-forget job (the layer keeps a reference until it ends)."""


class Backoff:
    """Reconnection delays: 0.05 s doubling to 2 s, and back to 0.05 s after a success.

    Every connection of the layer (pipelined writer, subscriber, each receiving
    loop) reconnects on its own with one of these.
    """

    FIRST = 0.05
    LAST = 2.0

    __slots__ = ("delay",)

    def __init__(self) -> None:
        self.delay = self.FIRST

    def next(self) -> float:
        """The delay before the next attempt; the one after will be twice as long."""
        delay = self.delay
        self.delay = min(delay * 2, self.LAST)
        return delay

    async def sleep(self) -> None:
        await asyncio.sleep(self.next())

    def reset(self) -> None:
        self.delay = self.FIRST


class Unreachable(LayerError):
    """A command that got no answer because its server could not be reached.

    The command may or may not have run; durable sends repeat it (their message
    id makes that safe), other callers see a plain LayerError.
    """


def layer_error(shard: Shard, exc: BaseException, what: str) -> LayerError:
    """The LayerError a caller sees when ``shard`` cannot be reached."""
    return Unreachable(
        f"{what}: redis at {shard.name} is unreachable ({exc}). Is redis-server running "
        "and the layer URL right? The layer reconnects by itself; retry later"
    )


class Shard:
    """One Redis server (or Sentinel-managed master) and this layer's connections to it.

    The layer attaches the server's :class:`~.pipe.Pipe` and
    :class:`~.subscriber.Subscriber` as ``pipe`` and ``subscriber``.
    """

    pipe: Pipe
    subscriber: Subscriber

    def __init__(
        self, index: int, spec: ServerSpec, spawn: Spawn, closed: Callable[[], bool]
    ) -> None:
        self.index = index
        self.name = spec.name
        self.spec = spec
        self.pool: Any = None
        self.idle: list[AbstractConnection] = []
        self.down = False
        # Bumped when a loss is noticed: connections made before it are known dead, so
        # their errors are expected and not logged again.
        self.epoch = 0
        self._spawn = spawn
        self._closed = closed
        self.master: tuple[str, int] | None = None
        """The master the Sentinels named at the last check (Sentinel-managed shards only)."""
        self.moves = 0
        """How many times the Sentinels named a new master (the subscriber then moves)."""

    def open(self) -> None:
        if self.pool is None:
            self.pool = self.spec.make_pool()

    async def new_connection(self) -> AbstractConnection:
        conn: AbstractConnection = self.pool.make_connection()
        try:
            await conn.connect()  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
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
        if self._closed() or epoch != self.epoch or len(self.idle) >= 64:
            self._spawn(conn.disconnect())
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
            self._spawn(conn.disconnect(nowait=True))
        self.idle.clear()

    async def follow_master(self) -> None:
        """Sentinel-managed shard: go with the newest master the Sentinels name.

        After a failover that leaves the old master running (``SENTINEL FAILOVER``, a
        partition that heals), connections made to it keep working until the Sentinels
        turn it into a replica, about 8 s later, and every write made there meanwhile
        is lost when it resynchronises. For a moment the Sentinels also disagree: those
        not yet told name the old master, and redis-py asks the first that answers. So
        this asks every Sentinel, puts the one with the highest config epoch (the latest
        failover) first, where new connections ask, and, when that master differs from
        the last one seen, starts a new epoch: the writer, the subscriber and the
        receivers replace their connections.
        """
        pool = self.pool
        manager = getattr(pool, "sentinel_manager", None)
        if manager is None:
            return
        sentinels = manager.sentinels
        newest: tuple[int, int, tuple[str, int]] | None = None  # config epoch, index, master
        for index, sentinel in enumerate(list(sentinels)):
            try:
                state = (await sentinel.sentinel_masters()).get(pool.service_name)
            except Exception:  # this Sentinel is away: the others decide
                continue
            if not state or not manager.check_master_state(state, pool.service_name):
                continue
            config_epoch = int(state.get("config-epoch", 0))
            if newest is None or config_epoch > newest[0]:
                newest = (config_epoch, index, (str(state["ip"]), int(state["port"])))
        if newest is None:  # no master named right now: the connections' own errors tell
            return
        _, index, master = newest
        if index < len(sentinels):
            sentinels[0], sentinels[index] = sentinels[index], sentinels[0]
        if self.master is not None and master != self.master:
            log.warning(
                "the sentinels name a new master for %s: %s:%d; reconnecting", self.name, *master
            )
            self.epoch += 1
            self.moves += 1
            for conn in self.idle:
                self._spawn(conn.disconnect(nowait=True))
            self.idle.clear()
        self.master = master

    def back(self) -> None:
        if self.down:
            self.down = False
            log.warning("reconnected to redis at %s", self.name)

    async def probe(self) -> str | None:
        """PING on a fresh connection: None when the server answers now, else why not.

        A round trip on a new connection, not the ``down`` flag alone: the layer's
        long-lived connections may not have noticed an outage yet.
        """
        if self.down:
            return f"redis at {self.name} is unreachable (reconnecting)"
        if self.pool is None:
            return "the redis layer is not connected"
        conn = self.pool.make_connection()
        try:
            await conn.connect()
            await conn.send_command("PING")
            await conn.read_response()
        except Exception as exc:
            return f"redis at {self.name} is unreachable ({exc})"
        finally:
            with contextlib.suppress(Exception):
                await conn.disconnect()
        return None

    async def close(self) -> None:
        for conn in self.idle:
            with contextlib.suppress(Exception):
                await conn.disconnect()
        self.idle.clear()
        if self.pool is not None:
            with contextlib.suppress(Exception):
                await self.pool.disconnect()
