"""Groups on core NATS: one subject per group, fanned out by each member's process.

``group_send`` is one publish to ``R.g.<group>`` whatever the member count. Each
process that owns a member subscribes once and delivers to its local members
(:class:`ProcessChannels`). ``group_add`` of another process's channel is a
request to the owner's control subject; a named channel as a member is served by
the adding process, which forwards the group's messages into the channel's stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable

import nats.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from svcbus.errors import LayerError
from svcbus.layer import LayerOptions
from svcbus.names import validate_channel, validate_group

from .._fanout import LocalGroups
from .config import CONTROL_TIMEOUT, Subjects
from .connection import Connection
from .process import ProcessChannels
from .streams import Streams
from .wire import OK, as_error, connection_error, round_trip, too_large

log = logging.getLogger("svcbus.layers.nats")


class Feed:
    """The subscription that brings one group's messages to this process."""

    __slots__ = ("ready", "sub")

    def __init__(self) -> None:
        self.sub: Subscription | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()


class Groups:
    """Membership, fan-out and control of the groups this process takes part in."""

    def __init__(
        self,
        conn: Connection,
        options: LayerOptions,
        subjects: Subjects,
        processes: ProcessChannels,
        streams: Streams,
    ) -> None:
        self._conn = conn
        self._streams = streams
        self._options = options
        self._subjects = subjects
        self._processes = processes
        self.members = LocalGroups()
        """This process's member channels of each group (the shared local fan-out)."""
        self.feeds: dict[str, Feed] = {}
        self._held: dict[tuple[str, str], tuple[Subscription, float]] = {}

    # the layer's operations -------------------------------------------------------------

    async def add(self, group: str, channel: str) -> None:
        """``group_add``: effective for any ``group_send`` after it returns."""
        validate_group(group)
        validate_channel(channel)
        if "!" not in channel:
            await self._hold_named(group, channel)
        elif self._processes.owns(channel):
            await self._add_member(group, channel, confirm=True)
        else:
            await self._control(channel, "add", group)

    async def discard(self, group: str, channel: str) -> None:
        """``group_discard``: no error if ``channel`` is not a member."""
        validate_group(group)
        validate_channel(channel)
        if "!" not in channel:
            await self._drop_named(group, channel)
            nc = await self._conn.client()
            payload = json.dumps({"op": "discard", "group": group, "channel": channel})
            await nc.publish(self._subjects.named_control, payload.encode())
            await round_trip(nc)
        elif self._processes.owns(channel):
            await self._remove_member(group, channel)
        else:
            await self._control(channel, "discard", group)

    async def send(self, group: str, message: bytes) -> None:
        """``group_send``: one publish; full members miss it (never ChannelFull)."""
        validate_group(group)
        self._options.check_size(group, message)
        nc = await self._conn.client()
        try:
            await nc.publish(self._subjects.group_root + group, message)
        except nats.errors.MaxPayloadError:
            raise too_large(f"group {group}", message, nc) from None
        except nats.errors.Error as exc:
            raise connection_error(exc) from None

    # our own members --------------------------------------------------------------------

    async def _add_member(self, group: str, channel: str, *, confirm: bool) -> None:
        """Make ``channel`` (ours) a member; with ``confirm``, wait until the server knows."""
        self.members.add(group, channel, self._options.group_expiry, time.monotonic())
        feed = self.feeds.get(group)
        if feed is not None:
            if not feed.ready.done():
                await asyncio.shield(feed.ready)
            return
        feed = self.feeds[group] = Feed()
        try:
            nc = await self._conn.client()
            feed.sub = await self._conn.subscribe(
                self._subjects.group_root + group, self._fan_out(group), nc=nc
            )
            if confirm:
                await round_trip(nc)
        except BaseException as exc:
            if self.feeds.get(group) is feed:
                del self.feeds[group]
            self.members.discard(group, channel)
            feed.ready.set_exception(as_error(exc))
            feed.ready.exception()
            raise
        feed.ready.set_result(None)

    async def _remove_member(self, group: str, channel: str) -> None:
        self.members.discard(group, channel)
        if group not in self.members:
            await self._unsubscribe(group)

    async def _unsubscribe(self, group: str) -> None:
        feed = self.feeds.get(group)
        if feed is None or not feed.ready.done():
            return  # still subscribing: the sweep leaves it once it is done
        del self.feeds[group]
        if feed.sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await feed.sub.unsubscribe()

    def _fan_out(self, group: str) -> Callable[[Msg], Awaitable[None]]:
        members = self.members
        processes = self._processes

        async def on_message(msg: Msg) -> None:
            # Full members miss it (never ChannelFull); one clock reading for all.
            members.deliver(group, msg.data, processes.put_members, time.monotonic())

        return on_message

    # other processes' members: control requests -------------------------------------------

    async def _control(self, channel: str, op: str, group: str) -> None:
        """Ask the process owning ``channel`` to apply ``op`` and confirm it."""
        nc = await self._conn.client()
        payload = json.dumps({"op": op, "group": group, "channel": channel}).encode()
        try:
            reply = await nc.request(
                self._subjects.control_of(channel), payload, timeout=CONTROL_TIMEOUT
            )
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
            raise connection_error(exc) from None
        if reply.data != OK:
            raise LayerError(f"group_{op}({group!r}, {channel!r}) failed: {reply.data[:300]!r}")

    async def on_control(self, msg: Msg) -> None:
        """Another process asks us to add or discard one of our channels."""
        try:
            request = json.loads(msg.data)
            op, group, channel = request["op"], request["group"], request["channel"]
            validate_group(group)
            validate_channel(channel)
            if not self._processes.owns(channel):
                raise ValueError(f"{channel!r} is not a channel of this process")
            if op == "add":
                # Subscribing before replying on the same connection means the server
                # knows the subscription before the requester sees the reply.
                await self._add_member(group, channel, confirm=False)
            elif op == "discard":
                await self._remove_member(group, channel)
            else:
                raise ValueError(f"unknown op {op!r}")
            answer = OK
        except Exception as exc:  # a bad request must not break the control loop
            answer = json.dumps({"ok": False, "error": str(exc)}).encode()
        nc = self._conn.nc
        if msg.reply and nc is not None:
            with contextlib.suppress(nats.errors.Error):
                await nc.publish(msg.reply, answer)

    # named channels as members: the adding process forwards ------------------------------

    async def _hold_named(self, group: str, channel: str) -> None:
        """Forward the group's messages into ``channel``'s stream from this process.

        Every process holding the same membership subscribes in one queue group named
        after the channel, so each group message is forwarded exactly once.
        """
        until = time.monotonic() + self._options.group_expiry
        key = (group, channel)
        held = self._held.get(key)
        if held is not None:
            self._held[key] = (held[0], until)
            return
        nc = await self._conn.client()
        await self._streams.ensure(channel, for_send=True)
        subject = self._subjects.channel_root + channel

        async def forward(msg: Msg) -> None:
            entry = self._held.get(key)
            if entry is None or entry[1] <= time.monotonic():
                return
            # No acknowledgement asked: a full channel just misses it, as groups do.
            with contextlib.suppress(nats.errors.Error):
                await nc.publish(subject, msg.data)

        sub = await nc.subscribe(
            self._subjects.group_root + group, queue=f"fwd:{channel}", cb=forward
        )
        self._held[key] = (sub, until)
        await round_trip(nc)

    async def _drop_named(self, group: str, channel: str) -> None:
        held = self._held.pop((group, channel), None)
        if held is not None:
            with contextlib.suppress(nats.errors.Error):
                await held[0].unsubscribe()

    async def on_named_control(self, msg: Msg) -> None:
        """Another process discarded a named member: stop forwarding to it."""
        try:
            request = json.loads(msg.data)
            if request.get("op") == "discard":
                await self._drop_named(str(request["group"]), str(request["channel"]))
        except (ValueError, KeyError, TypeError):
            log.warning("bad message on %s ignored", self._subjects.named_control)

    async def sweep(self, now: float) -> None:
        """Lapse memberships past ``group_expiry``; leave groups with no member left."""
        self.members.expire(now)
        for group in [g for g in self.feeds if g not in self.members]:
            await self._unsubscribe(group)
        for key in [k for k, (_, until) in self._held.items() if until <= now]:
            await self._drop_named(*key)
