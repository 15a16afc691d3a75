"""Group fan-out inside one edge process: one layer member per group, not one per socket.

When a consumer puts a connection in a group through :class:`Accept` or
:class:`Join`, the edge does not add the connection's reply channel to the
group on the layer. It adds one channel of its own per group (the first time a
local socket joins) and keeps the sockets in a local set. A ``group_send``
then costs the layer one delivery per *edge process*, and the edge decodes it
once and writes it to each local socket in a plain loop, as a hand-written
server would: no task switch, no layer call, no decode per socket.

A slow client must not stall the room: each write is started eagerly and, if
the socket's buffer is full, finished by a writer task of its own while the
loop goes on; later messages queue behind it (up to ``MAX_BACKLOG``, then they
are dropped for that client: at-most-once, like the layers). Starting the write
by hand (see :func:`queue_write` and :mod:`.stepping`) is deliberate: a task per
socket per message made a broadcast to 1,000 sockets about 1.7x slower
(``bench/bench_edge.py``).

Memberships are refreshed on the layer every half ``group_expiry`` so a
long-lived room never lapses; the last local socket leaving removes the edge's
channel from the group, and disconnects leave nothing behind.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

import anyio

from ..errors import SvcbusError
from ..names import validate_group
from . import tracing
from .replies import CLOSE, SEND, Decoded
from .stepping import coroutine_of, finish

if TYPE_CHECKING:
    from .app import EdgeApp
    from .websocket import Connection

log = logging.getLogger("svcbus.edge")

MAX_BACKLOG = 256
"""Messages that may wait for one slow socket before further ones are dropped for it."""

GROUP_BATCH = 64


class LocalGroup:
    """The sockets of this process in one group, and the channel that receives for them."""

    __slots__ = ("channel", "members", "name", "pump", "ready")

    def __init__(self, name: str) -> None:
        self.name = name
        self.channel = ""
        self.members: set[Connection] = set()
        self.ready = anyio.Event()
        self.pump: asyncio.Task[None] | None = None


class Fanout:
    """All local groups of one edge process."""

    def __init__(self, edge: EdgeApp) -> None:
        self.edge = edge
        self.groups: dict[str, LocalGroup] = {}

    async def join(self, conn: Connection, name: str) -> None:
        """Put ``conn`` in group ``name``; effective on the layer when this returns."""
        validate_group(name)
        local = self.groups.get(name)
        if local is not None:
            local.members.add(conn)
            if not local.ready.is_set():
                await local.ready.wait()
            return
        # Register before the first await so concurrent joiners share this group.
        local = self.groups[name] = LocalGroup(name)
        local.members.add(conn)
        bus = self.edge.bus
        try:
            local.channel = await bus.new_channel("edge")
            await bus.group_add(name, local.channel)
        except BaseException:
            del self.groups[name]
            local.ready.set()
            raise
        local.pump = asyncio.get_running_loop().create_task(self._pump(local))
        local.ready.set()
        if not local.members:  # everyone left while we were joining
            await self._drop(local)

    async def leave(self, conn: Connection, name: str) -> None:
        """Take ``conn`` out of group ``name``; the last one out removes the group's channel."""
        local = self.groups.get(name)
        if local is None:
            return
        local.members.discard(conn)
        if not local.members and local.ready.is_set():
            await self._drop(local)

    async def _drop(self, local: LocalGroup) -> None:
        if self.groups.get(local.name) is local:
            del self.groups[local.name]
        if local.pump is not None:
            local.pump.cancel()
            await asyncio.wait([local.pump])
            local.pump = None
        bus = self.edge.bus
        try:
            await bus.group_discard(local.name, local.channel)
        except SvcbusError as exc:
            log.warning("could not leave group %s: %s", local.name, exc)
        await drain(self.edge, local.channel)

    async def refresh(self) -> None:
        """Re-add every group's channel so memberships outlive ``group_expiry``."""
        bus = self.edge.bus
        for local in list(self.groups.values()):
            if local.ready.is_set() and local.channel:
                try:
                    await bus.group_add(local.name, local.channel)
                except SvcbusError as exc:
                    log.warning("could not refresh group %s: %s", local.name, exc)

    async def close(self) -> None:
        """Leave every group (edge shutdown)."""
        for local in list(self.groups.values()):
            local.members.clear()
            await self._drop(local)

    async def _pump(self, local: LocalGroup) -> None:
        edge = self.edge
        receive_many = edge.bus.layer.receive_many
        decode = edge.decode_reply
        members = local.members
        tracer = edge.bus.tracer  # decided once per group, not per message
        system = edge.bus.layer.system
        while True:
            try:
                batch = await receive_many(local.channel, GROUP_BATCH)
            except SvcbusError as exc:
                log.error("group %s: receiving failed: %s", local.name, exc)
                await anyio.sleep(1)
                continue
            for data in batch:
                item = decode(data)
                if item is None:
                    continue
                span = (
                    None if tracer is None else tracing.start_delivery(tracer, system, local, data)
                )
                kind, payload = item
                if kind == SEND:
                    # queue_write never awaits, so the set cannot change under the loop.
                    for conn in members:
                        if conn.accepted and not conn.closed:
                            queue_write(conn, item)
                elif kind == CLOSE:
                    for conn in list(members):
                        if conn.backlog is None:
                            await conn.apply(item)
                        else:
                            queue_write(conn, item)  # after the sends it has queued
                else:
                    log.warning(
                        "group %s got a %s message; only Send and Close make sense for a group",
                        local.name,
                        type(payload).__name__,
                    )
                if span is not None:
                    span.end()


def queue_write(conn: Connection, item: Decoded) -> None:
    """Write a group item to ``conn``'s socket now if it can take it, else queue it.

    ASGI ``send`` is a coroutine that, on a writable socket, finishes without
    ever suspending. Stepping it once by hand does that write with no task; only
    a socket whose buffer is full gets a writer task, which finishes the write
    and then acts on what queued behind it, in order. A queue longer than
    ``MAX_BACKLOG`` drops further sends for that socket; a Close always queues.
    """
    backlog = conn.backlog
    if backlog is not None:
        if len(backlog) < MAX_BACKLOG or item[0] == CLOSE:
            backlog.append(item)
        else:
            conn.edge.stats.dropped += 1
        return
    if item[0] != SEND:
        conn.backlog = [item]
        conn.writer = asyncio.get_running_loop().create_task(_write(conn, None, None))
        return
    # coroutine_of and first_step (.stepping) inlined: this runs once per socket per
    # group message, and a broadcast to 10,000 sockets pays every call twice over.
    sending = conn.send(item[1])
    coro = sending if isinstance(sending, Coroutine) else coroutine_of(sending)
    try:
        waiting_on = coro.send(None)
    except StopIteration:
        return
    except (OSError, RuntimeError):
        return  # the client is gone; its connection task cleans up
    conn.backlog = []
    conn.writer = asyncio.get_running_loop().create_task(_write(conn, coro, waiting_on))


async def _write(conn: Connection, coro: Coroutine[Any, Any, None] | None, waiting_on: Any) -> None:
    """Finish a write that had to wait (if any), then act on the queued items in order."""
    try:
        if coro is not None:
            await finish(coro, waiting_on)
        backlog = conn.backlog
        while backlog and await conn.apply(backlog.pop(0)):
            pass
    except (OSError, RuntimeError):
        pass  # the client is gone; its connection task cleans up
    finally:
        conn.backlog = None
        conn.writer = None


async def drain(edge: EdgeApp, channel: str) -> None:
    """Take what is left on a channel nobody will read again, so the layer can free it.

    ``receive_many`` returns queued messages without waiting; the already
    expired scope then cancels the wait on the empty channel.
    """
    with anyio.move_on_after(0):
        for _ in range(64):
            await edge.bus.layer.receive_many(channel, 256)
