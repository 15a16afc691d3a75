"""The pub/sub connection to one server: this process's control channel and its groups."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from redis.asyncio.connection import AbstractConnection

from .resp import pack
from .shard import RETRYABLE, Backoff, Shard, Spawn

HOUSEKEEPING_SECONDS = 1.0
"""How often the layer's housekeeping runs; also the longest a pub/sub read waits."""

OnMessage = Callable[[Shard, bytes, bytes], None]
"""Called (in the reader task) with the server, the pub/sub channel and the message."""


class Subscriber:
    """The pub/sub connection to one server: this process's control channel and groups."""

    def __init__(self, shard: Shard, on_message: OnMessage, spawn: Spawn) -> None:
        self.shard = shard
        self.on_message = on_message
        self._spawn = spawn
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
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiting.setdefault(channel, []).append(future)
        if channel not in self.wanted:
            self.wanted.add(channel)
            if self.ready.is_set() and self.conn is not None:
                with contextlib.suppress(*RETRYABLE):  # the reader reconnects and resubscribes
                    await self.conn.send_packed_command(
                        pack(b"SUBSCRIBE", channel), check_health=False
                    )
        await future

    def subscribe_soon(self, channel: bytes, then: Callable[[], object]) -> None:
        """From the reader task: subscribe and call ``then()`` once confirmed."""
        if channel in self.confirmed:
            then()
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.add_done_callback(lambda f: f.cancelled() or then())
        self.waiting.setdefault(channel, []).append(future)
        if channel not in self.wanted:
            self.wanted.add(channel)
            if self.ready.is_set() and self.conn is not None:
                self._spawn(self._send_quietly(pack(b"SUBSCRIBE", channel)))

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
            with contextlib.suppress(*RETRYABLE):
                await conn.send_packed_command(command, check_health=False)

    async def run(self) -> None:
        """Stay connected and subscribed; hand every message to ``on_message``."""
        shard = self.shard
        backoff = Backoff()
        while True:
            epoch, moves = shard.epoch, shard.moves
            try:
                conn = await shard.new_connection()
            except RETRYABLE as exc:
                shard.lost(exc, epoch)
                await backoff.sleep()
                continue
            backoff.reset()
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
                await self._read(conn, moves)
            except RETRYABLE as exc:
                shard.lost(exc, epoch)
            finally:
                self.ready.clear()
                self.conn = None
                with contextlib.suppress(Exception):
                    await conn.disconnect(nowait=True)

    async def _read(self, conn: AbstractConnection, moves: int) -> None:
        """Hand on messages until the connection breaks or the Sentinels name another
        master than when it was made (``Shard.follow_master``)."""
        on_message = self.on_message
        while self.shard.moves == moves:
            reply = await conn.read_response(timeout=HOUSEKEEPING_SECONDS)
            if reply is None:
                continue
            kind = reply[0]
            if kind == b"message":
                on_message(self.shard, reply[1], reply[2])
            elif kind == b"subscribe":
                self._confirmed(reply[1])

    def _confirmed(self, channel: bytes) -> None:
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
