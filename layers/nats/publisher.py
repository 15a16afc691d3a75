"""Pipelined publishes to channel streams, for messages whose ``send`` already returned.

Bounced live messages, spills of a full listener and a leaving receiver's give-back
go to the stream without anyone waiting: each carries a reply subject of ours,
``<ack prefix><seq>``, and :meth:`Publisher.on_ack` settles it when JetStream
answers. A refusal (the stream is full) is handed to the message's keeper when it
has one (a listener keeps it), else counted lost.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Callable

import nats.errors
from nats.aio.msg import Msg

from svcbus.errors import LayerError

from .config import DIRECT_FOR
from .connection import Connection
from .losses import Losses
from .streams import Streams
from .wire import FULL, api_error, connection_error, too_large


class Outgoing:
    """One named channel as a target of publishes: its stream subject and send mode."""

    __slots__ = (
        "channel",
        "direct_until",
        "full",
        "keep",
        "last_live",
        "live_reply",
        "live_subject",
        "recovering",
        "retry",
        "subject",
    )

    def __init__(
        self,
        channel: str,
        subject: str,
        live_subject: str = "",
        live_reply: str = "",
        keep: Callable[[bytes], None] | None = None,
    ) -> None:
        self.channel = channel
        self.subject = subject  # the stream's subject
        self.live_subject = live_subject
        self.live_reply = live_reply  # + sequence: where bounces come back
        self.last_live = 0  # sequence of the newest live publish
        self.direct_until = 0.0  # after a bounce or a full listener: use the stream until then
        self.full = False  # the stream refused the last send: stay on it until one fits
        self.retry: list[bytes] = []  # published while the stream was missing
        self.recovering = False
        self.keep = keep  # a receiver's: takes back a message the full stream refused


class Publisher:
    """Publishes to streams without waiting, and settles the answers as they come."""

    def __init__(self, conn: Connection, streams: Streams, losses: Losses) -> None:
        self._conn = conn
        self._streams = streams
        self._losses = losses
        self.prefix = ""
        """The reply-subject prefix answers come back on (set once connected)."""
        self.in_flight: dict[int, tuple[Outgoing, bytes]] = {}
        """Published, not yet answered: sequence -> (target, message)."""
        self._seq = 0
        self._spill_replies: dict[int, str] = {}  # in-flight spills -> the sender's reply
        self.recovering = 0  # streams being made again for bounced messages
        self.recoveries = 0
        self._marks: deque[tuple[float, int]] = deque()  # (time, newest seq) each sweep

    @property
    def newest(self) -> int:
        """The sequence of the newest publish."""
        return self._seq

    async def publish(self, out: Outgoing, message: bytes, spilled_from: str = "") -> None:
        """Publish ``message`` to ``out``'s stream; ``spilled_from``: the sender's reply."""
        nc = await self._conn.client()
        self._seq = seq = self._seq + 1
        self.in_flight[seq] = (out, message)
        if spilled_from:
            self._spill_replies[seq] = spilled_from
        try:
            await nc.publish(out.subject, message, reply=f"{self.prefix}{seq}")
        except nats.errors.MaxPayloadError:
            del self.in_flight[seq]
            raise too_large(out.channel, message, nc) from None
        except nats.errors.Error as exc:
            del self.in_flight[seq]
            raise connection_error(exc) from None

    async def on_ack(self, seq: int, msg: Msg) -> None:
        """JetStream's answer to publish ``seq``."""
        entry = self.in_flight.pop(seq, None)
        spilled_from = self._spill_replies.pop(seq, None) if self._spill_replies else None
        if entry is None:
            return
        out, message = entry
        data = msg.data
        if data[:9] == b'{"error":':
            await self._refused(out, message, data, spilled_from)
        elif not data and msg.headers and msg.headers.get("Status") == "503":
            # No stream listens on the subject: a restarted server lost it.
            out.retry.append(message)
            if not out.recovering:
                out.recovering = True
                self.recovering += 1  # counted now, so a flush in progress waits for it
                self._conn.spawn(self._recover(out))

    async def _refused(
        self, out: Outgoing, message: bytes, data: bytes, spilled_from: str | None
    ) -> None:
        if out.keep is not None:
            # Spilled by a full listener, or given back by a leaving receiver, and the
            # stream is full: the receiver keeps it (it was accepted) and the sender
            # is told to use the stream, which says ChannelFull at the refused send.
            out.keep(message)
            nc = self._conn.nc
            if spilled_from and nc is not None:
                with contextlib.suppress(nats.errors.Error):
                    await nc.publish(spilled_from, FULL)
            return
        # A bounced message (nobody listened) and the stream is full as well.
        out.full = True
        out.direct_until = time.monotonic() + DIRECT_FOR
        error = api_error(data)
        reason = str(error.get("description", error))
        self._losses.count(
            1, out.channel, f"no receiver listened and the stream refused it: {reason}"
        )

    async def _recover(self, out: Outgoing) -> None:
        """Make a lost stream again, then publish what the server bounced, in order.

        FIFO holds within the bounced messages; a send made while the stream is being
        made again may overtake them.
        """
        try:
            await self._streams.ensure(out.channel, for_send=True)
            while out.retry:
                retry, out.retry = out.retry, []
                for message in retry:
                    await self.publish(out, message)
        except LayerError as exc:
            lost, out.retry = out.retry, []
            self._losses.count(len(lost), out.channel, f"its stream could not be made again: {exc}")
        finally:
            out.recovering = False
            self.recovering -= 1
            self.recoveries += 1

    def busy_through(self, seq: int) -> bool:
        """Whether a publish up to ``seq`` (or a stream recovery) is still unanswered."""
        return bool(self.recovering) or bool(self.in_flight and next(iter(self.in_flight)) <= seq)

    def give_up_stale(self, now: float, ack_timeout: float, connected: bool) -> bool:
        """Count publishes unanswered for ``ack_timeout`` connected seconds as lost.

        Time only counts while connected: during an outage they wait in the buffer.
        Returns whether any were given up.
        """
        if not connected:
            self._marks.clear()
            return False
        marks = self._marks
        marks.append((now, self._seq))
        stale = 0
        while marks and marks[0][0] < now - ack_timeout:
            stale = marks.popleft()[1]
        if not stale or not self.in_flight:
            return False
        old = [seq for seq in self.in_flight if seq <= stale]
        for seq in old:
            del self.in_flight[seq]
            self._spill_replies.pop(seq, None)
        if old:
            self._losses.count(len(old), "named channels", "never acknowledged (a disconnect?)")
        return bool(old)

    def forget_marks(self) -> None:
        """A reconnection: the clock of unanswered publishes starts again."""
        self._marks.clear()
