"""The ordered, pipelined write path to one server, and the send state of each channel."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any, Protocol

from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ResponseError

from svcbus.errors import LayerError
from svcbus.redis_wire import POP_SCRIPT, SEND_SCRIPT

from .durable_wire import DURABLE_SCRIPTS
from .resp import pack, write
from .shard import RETRYABLE, Backoff, Shard, layer_error

SCRIPTS = (SEND_SCRIPT, POP_SCRIPT, *DURABLE_SCRIPTS)
"""Loaded on every new pipe connection, so EVALSHA always finds them."""

HOLD_FOR = 5.0
"""Seconds pipelined sends (whose ``send`` returned) wait for an unreachable server
before they count as lost."""


class Target:
    """Send state of one channel: its pre-packed command prefix and the room last seen."""

    __slots__ = ("channel", "header", "header_ms", "local", "pending", "pipe", "prefix", "room")

    def __init__(self, channel: str, pipe: Pipe, prefix: bytes, local: bytes) -> None:
        self.channel = channel
        self.pipe = pipe
        self.prefix = prefix
        self.local = local  # b"" for named channels, b"<local>:" for process channels
        self.header_ms = -1
        self.header = b""
        self.room = 0  # free places the server last reported, minus our sends since
        self.pending = 0  # our sends the server has not answered yet


Handler = tuple[Target | None, "asyncio.Future[Any] | None"]
"""Who gets a command's reply: (send target or None, future of the caller who waits, or None)."""


class Replies(Protocol):
    """Where a pipe hands the replies it reads, and the commands that failed."""

    def dispatch(self, handler: Handler, reply: Any) -> None:
        """Route one reply (a value or a ResponseError) to whoever waits for it."""

    def fail(self, handlers: list[Handler], error: LayerError) -> None:
        """These commands got no reply: fail their callers, count pipelined sends lost."""


class Pipe:
    """The ordered, automatically pipelined write path to one server.

    Commands queue while the previous batch is in flight, then go out in one write;
    replies come back in order. One connection per server keeps all writes of this
    layer in order (FIFO per sender, and a group_discard before a group_send).
    """

    def __init__(self, shard: Shard, replies: Replies) -> None:
        self.shard = shard
        self.replies = replies
        self.chunks: list[bytes] = []
        self.sizes: list[int] = []  # how many of ``chunks`` each queued handler has
        self.handlers: list[Handler] = []
        self.held_since = 0.0  # when commands were first held back for a reconnection
        self.wakeup = asyncio.Event()
        self.drained = asyncio.Event()
        self.drained.set()
        self.conn: AbstractConnection | None = None
        self.conn_epoch = 0
        self.task: asyncio.Task[None] | None = None
        self.retry_at = 0.0
        self.backoff = Backoff()
        self.last_error: BaseException | None = None

    def push(self, chunks: list[bytes] | tuple[bytes, ...], handler: Handler) -> None:
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
                b"".join(pack(b"SCRIPT", b"LOAD", script) for script in SCRIPTS),
                check_health=False,
            )
            for _ in SCRIPTS:
                await conn.read_response()
        except RETRYABLE as exc:
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.disconnect(nowait=True)
            self.last_error = exc
            self.retry_at = time.monotonic() + self.backoff.next()
            shard.lost(exc, epoch)
            raise
        self.backoff.reset()
        self.last_error = None
        shard.back()
        self.conn, self.conn_epoch = conn, epoch
        return conn

    async def run(self) -> None:
        """Write what is queued, one batch at a time, for as long as the layer is open."""
        while True:
            if not self.handlers:
                self.drained.set()
                self.wakeup.clear()
                await self.wakeup.wait()
                continue
            chunks, sizes, handlers = self.chunks, self.sizes, self.handlers
            self.chunks, self.sizes, self.handlers = [], [], []
            try:
                try:
                    conn = await self._connect()
                except RETRYABLE as exc:
                    # Nothing of this batch reached the server: hold it for the
                    # reconnection instead of losing sends that already returned.
                    self._hold(chunks, sizes, handlers, exc)
                    await asyncio.sleep(max(0.01, self.retry_at - time.monotonic()))
                    continue
            except asyncio.CancelledError:
                self.replies.fail(handlers, LayerError("the redis layer was closed"))
                raise
            self.held_since = 0.0
            await self._write(conn, chunks, handlers)

    async def _write(
        self, conn: AbstractConnection, chunks: list[bytes], handlers: list[Handler]
    ) -> None:
        """Send one batch and hand each reply on, in order; fail what got no answer."""
        done = 0
        try:
            await write(conn, chunks)
            read = conn.read_response
            dispatch = self.replies.dispatch
            for handler in handlers:
                try:
                    reply = await read()
                except ResponseError as exc:
                    reply = exc
                done += 1
                dispatch(handler, reply)
        except RETRYABLE as exc:
            if self.conn is not None:
                with contextlib.suppress(Exception):
                    await self.conn.disconnect(nowait=True)
                self.conn = None
                self.shard.lost(exc, self.conn_epoch)
            # Written, but no answer: the server may or may not have run them.
            self.replies.fail(
                handlers[done:], layer_error(self.shard, exc, "no answer to a command")
            )
        except asyncio.CancelledError:
            self.replies.fail(handlers[done:], LayerError("the redis layer was closed"))
            raise

    def _hold(
        self, chunks: list[bytes], sizes: list[int], handlers: list[Handler], exc: BaseException
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
        kept: list[Handler] = []
        failed: list[Handler] = []
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
            self.replies.fail(failed, layer_error(self.shard, exc, "command not sent"))

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
