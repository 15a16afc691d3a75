"""Sending to named channels: live to listening receivers, else stored in the stream.

``send`` publishes to the channel's live subject, where listening receivers share
it in a queue group, with a reply subject of ours. If nobody listens the server
answers 503 and the message is republished to the stream (a *bounce*); for
:data:`DIRECT_FOR` seconds after that, or after a listener answered that it is full,
sends go straight to the stream and wait for its acknowledgement, so a full
channel raises :class:`ChannelFull` at the refused send itself.

A live message is kept until a *marker* the sender publishes to itself comes
back: the server relays answers to one connection in order, so by then no 503 for
it can still come.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque

import nats.errors
from nats.aio.msg import Msg

from svcbus.errors import ChannelFull, LayerError
from svcbus.layer import LayerOptions

from .config import (
    ACK_TIMEOUT,
    DIRECT_FOR,
    MARK_EVERY,
    MAX_IN_FLIGHT,
    MAX_UNCONFIRMED,
    SEND_TIMEOUT,
    Subjects,
)
from .connection import Connection
from .losses import Losses
from .publisher import Outgoing, Publisher
from .streams import Streams
from .wire import FULL, STREAM_FULL_CODES, api_error, connection_error, too_large


class Sender:
    """The sending side of every named channel this process sends to."""

    def __init__(
        self,
        conn: Connection,
        options: LayerOptions,
        subjects: Subjects,
        streams: Streams,
        publisher: Publisher,
        losses: Losses,
        *,
        live: bool,
    ) -> None:
        self._conn = conn
        self._options = options
        self._subjects = subjects
        self._streams = streams
        self._publisher = publisher
        self._losses = losses
        self.live = live
        self.ack_timeout = ACK_TIMEOUT
        self.send_timeout = SEND_TIMEOUT
        self.outgoing: dict[str, Outgoing] = {}
        self._by_id: list[Outgoing] = []
        self._opening: dict[str, asyncio.Future[Outgoing]] = {}
        self.prefix = ""
        """The reply-subject prefix answers come back on (set once connected)."""
        # Live publishes not yet confirmed by a marker, oldest first: the newest has
        # sequence ``live_seq``. A bounce (no receiver listens) republishes from here.
        self.unconfirmed: deque[bytes] = deque()
        self.live_seq = 0
        self._marked = 0  # sequence of the newest marker published
        self._confirmed = 0  # sequence of the newest marker returned
        self._doubt_upto = 0  # live publishes up to this one were counted lost in doubt
        self.bounced = 0
        """Live messages that found no listening receiver and went to the stream instead."""
        self.window = asyncio.Event()  # set while the in-flight window has room
        self.window.set()
        self._acked: asyncio.Event | None = None  # set on each answer while someone flushes

    # sending ----------------------------------------------------------------------

    async def send(self, channel: str, message: bytes, out: Outgoing | None = None) -> None:
        """Send to the named channel ``channel`` (name and size already checked).

        ``out``: its sending state, when the caller already looked it up.
        """
        if out is None:
            out = await self._open(channel)
        if (
            len(self._publisher.in_flight) >= MAX_IN_FLIGHT
            or len(self.unconfirmed) >= MAX_UNCONFIRMED
        ):
            await self._wait_for_window()
        if not self.live:
            await self.store(out, message)
            return
        if out.direct_until:
            if out.full or time.monotonic() < out.direct_until:
                # Nobody listened, or a listener was full, a moment ago. Once every
                # earlier live publish is settled (its bounce, if any, already
                # republished), storing in the stream keeps the order.
                if self._confirmed < out.last_live:
                    await self.settle(out.last_live)
                await self.store(out, message)
                return
            out.direct_until = 0.0
        # Live publish, written out here rather than in a method of its own: this
        # is every send's path, and a coroutine call per message shows in a flood.
        nc = self._conn.nc or await self._conn.client()
        self.live_seq = seq = self.live_seq + 1
        self.unconfirmed.append(message)
        out.last_live = seq
        try:
            await nc.publish(out.live_subject, message, reply=out.live_reply + str(seq))
        except nats.errors.MaxPayloadError:
            raise too_large(out.channel, message, nc) from None
        except nats.errors.Error as exc:
            raise connection_error(exc) from None
        if seq - self._marked >= MARK_EVERY:
            await self.mark()

    async def store(self, out: Outgoing, message: bytes) -> None:
        """Publish to the channel's stream and wait for its acknowledgement.

        A message the stream refuses (full) raises :class:`ChannelFull` here, at its
        own ``send``: a send that returns has been stored. The sender stays on the
        stream until a message fits again, so a full channel never takes a live
        message it might have to refuse later.
        """
        nc = self._conn.nc or await self._conn.client()
        if not nc.is_connected:
            # Not into nats-py's reconnect buffer: a send that fails must not be sent.
            await self._conn.connected(self.ack_timeout, len(self._publisher.in_flight))
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
                await self._streams.ensure(out.channel, for_send=True)
                continue
            except nats.errors.TimeoutError:
                raise LayerError(
                    f"NATS did not confirm a message for {out.channel!r} within "
                    f"{self.ack_timeout:g}s (server down or overloaded); it may not be "
                    "stored: send it again if it matters"
                ) from None
            except nats.errors.MaxPayloadError:
                raise too_large(out.channel, message, nc) from None
            except nats.errors.Error as exc:
                raise connection_error(exc) from None
            self._stored(out, answer.data)
            return

    def _stored(self, out: Outgoing, data: bytes) -> None:
        """Check the stream's answer to a stored send (raise for a refusal)."""
        if data[:9] != b'{"error":':
            out.full = False
            return
        error = api_error(data)
        if error.get("err_code") in STREAM_FULL_CODES:
            out.full = True
            out.direct_until = time.monotonic() + DIRECT_FOR
            raise ChannelFull(
                f"channel {out.channel!r} holds {self._options.capacity_for(out.channel)} "
                "messages (its capacity); its consumers are behind: retry later or raise "
                "channel_capacity"
            )
        raise LayerError(
            f"NATS refused a message for {out.channel!r}: {error.get('description', error)}"
        )

    async def _open(self, channel: str) -> Outgoing:
        """The channel's sending state, made once (with its stream) for concurrent senders."""
        found = self.outgoing.get(channel)
        if found is not None:
            return found
        opening = self._opening.get(channel)
        if opening is not None:
            return await asyncio.shield(opening)
        future: asyncio.Future[Outgoing] = asyncio.get_running_loop().create_future()
        self._opening[channel] = future
        try:
            await self._streams.ensure(channel, for_send=True)
            out = Outgoing(
                channel,
                self._subjects.channel_root + channel,
                self._subjects.live_root + channel,
                f"{self.prefix}{len(self._by_id)}.",
            )
            self.outgoing[channel] = out
            self._by_id.append(out)
            future.set_result(out)
            return out
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: concurrent openers get it
            raise
        finally:
            del self._opening[channel]

    # answers ------------------------------------------------------------------------

    async def on_live_reply(self, index: int, seq: int, msg: Msg) -> None:
        """An answer to live publish ``seq`` of the channel numbered ``index``."""
        out = self._by_id[index]
        data = msg.data
        if data == FULL:
            # A listener kept the message over its capacity because the stream was
            # full too: store the next ones in the stream, where ChannelFull can say so.
            out.direct_until = time.monotonic() + DIRECT_FOR
            out.full = True
        elif not data and msg.headers and msg.headers.get("Status") == "503":
            # No live receiver: the message waits in the stream instead. Bounces
            # arrive in publish order.
            out.direct_until = time.monotonic() + DIRECT_FOR
            position = seq - (self.live_seq - len(self.unconfirmed) + 1)
            if 0 <= position < len(self.unconfirmed):
                self.bounced += 1
                await self._publisher.publish(out, self.unconfirmed[position])
            elif seq > self._doubt_upto:  # those before were counted at the disconnect
                self._losses.count(1, out.channel, "its live publish was no longer held")

    async def mark(self, *, again: bool = False) -> None:
        """Publish a marker to ourselves: when it returns, earlier live publishes are settled.

        ``again``: even if one for the newest publish is out (it may have been lost).
        """
        nc = self._conn.nc
        if nc is None or (self._marked == self.live_seq and not again):
            return
        self._marked = self.live_seq
        with contextlib.suppress(nats.errors.Error):
            await nc.publish(f"{self.prefix}m.{self._marked}", b"")

    def confirm(self, seq: int) -> None:
        """Marker ``seq`` returned: live publishes up to it can no longer bounce."""
        unconfirmed = self.unconfirmed
        settled = seq - (self.live_seq - len(unconfirmed))
        for _ in range(min(settled, len(unconfirmed))):
            unconfirmed.popleft()
        if seq > self._confirmed:
            self._confirmed = seq

    def settled(self) -> None:
        """An answer arrived: wake a flush, reopen the window once half of it is free."""
        if self._acked is not None:
            self._acked.set()
        window = self.window
        if (
            not window.is_set()
            and len(self._publisher.in_flight) < MAX_IN_FLIGHT // 2
            and len(self.unconfirmed) < MAX_UNCONFIRMED // 2
        ):
            window.set()

    async def on_disconnected(self) -> None:
        """Live publishes no marker confirmed may be lost: nobody can tell which."""
        if self.unconfirmed:
            # Count them all, so the books never hide a loss (some may still arrive).
            self._losses.count(
                len(self.unconfirmed),
                "named channels",
                "in flight when the connection to NATS broke; some may still have arrived",
            )
            self.unconfirmed.clear()
            self._doubt_upto = self._confirmed = self.live_seq

    # waiting --------------------------------------------------------------------------

    async def _wait_for_window(self) -> None:
        window = self.window
        window.clear()
        await self.mark()  # what is unconfirmed gets a marker that will settle it
        try:
            await asyncio.wait_for(window.wait(), self.send_timeout)
        except asyncio.TimeoutError:
            raise LayerError(
                f"NATS has not acknowledged {len(self._publisher.in_flight)} messages for "
                f"{self.send_timeout:g}s: the server is down or overloaded (sends are refused "
                "until it catches up)"
            ) from None

    async def settle(
        self, seq: int, deadline: float | None = None, timeout: float | None = None
    ) -> None:
        """Wait until a marker has confirmed the live publishes up to ``seq``."""
        if timeout is None or deadline is None:
            timeout = self.ack_timeout
            deadline = time.monotonic() + timeout
        if self._marked < seq:
            await self.mark()
        while self._confirmed < seq and self.unconfirmed:
            await self.wait_settled(deadline, timeout, len(self.unconfirmed))

    async def wait_settled(self, deadline: float, timeout: float, pending: int) -> None:
        """Wait for the next answer (at most 0.1 s), or fail past ``deadline``."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise LayerError(
                f"NATS did not acknowledge {pending} messages within "
                f"{timeout:g}s: the server is down or overloaded"
            )
        self._acked = acked = asyncio.Event()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(acked.wait(), min(left, 0.1))

    async def flush(self, timeout: float) -> None:
        """Wait until every live publish is settled and every stream publish answered."""
        deadline = time.monotonic() + timeout
        # Live publishes first: their bounces become stream publishes, waited for below.
        if self.unconfirmed:
            await self.settle(self.live_seq, deadline, timeout)
        publisher = self._publisher
        mark = publisher.newest
        recoveries = publisher.recoveries
        while publisher.busy_through(mark):
            if recoveries != publisher.recoveries:
                # Bounced messages were published again: wait for those too.
                recoveries, mark = publisher.recoveries, publisher.newest
            await self.wait_settled(deadline, timeout, len(publisher.in_flight))
