"""Sending: each channel's pre-packed command and room, replies, and losses found late."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

from redis.exceptions import NoScriptError, ResponseError

from svcbus.errors import ChannelFull, LayerError, MessagesLost
from svcbus.layer import LayerOptions
from svcbus.redis_wire import SEND_SHA

from .pipe import Handler, Pipe, Target
from .resp import bulk, now_ms

log = logging.getLogger("svcbus.layers.redis")

MAX_QUEUED = 4096
"""Pipelined commands a server's writer may hold before ``send`` waits for it (backpressure)."""


class Sender:
    """The send path of a layer: implements :class:`~.pipe.Replies` for its servers' pipes.

    ``send`` returns as soon as its command is queued while the server's last answer
    showed room to spare in the channel; a refusal found later is counted in
    ``lost`` and reported by :meth:`raise_late` (``flush()``).
    """

    def __init__(
        self,
        options: LayerOptions,
        pipes: Sequence[Pipe],
        key_of: Callable[[str], tuple[str, int]],
    ) -> None:
        self._options = options
        self._pipes = pipes
        self._key_of = key_of
        self.expiry_ms = max(1, int(options.expiry * 1000))
        self._ttl_arg = bulk(b"%d" % (self.expiry_ms + 1000))
        self._targets: dict[str, Target] = {}
        self._refused: dict[str, int] = {}
        self._lost_sends = 0
        self.lost = 0
        """Pipelined sends refused (full) or perhaps lost after ``send`` returned."""

    def target(self, channel: str) -> Target:
        target = self._targets.get(channel)
        if target is None:
            if len(self._targets) >= 10_000:
                # Bounded: process channels are unbounded in number. Keep those in use.
                self._targets = {c: t for c, t in self._targets.items() if t.pending}
            key, index = self._key_of(channel)
            local = (channel.split("!", 1)[1] + ":").encode() if "!" in channel else b""
            prefix = (
                b"*9\r\n$7\r\nEVALSHA\r\n"
                + bulk(SEND_SHA)
                + b"$1\r\n1\r\n"
                + bulk(key.encode())
                + bulk(b"%d" % self._options.capacity_for(channel))
                + self._ttl_arg
            )
            target = self._targets[channel] = Target(channel, self._pipes[index], prefix, local)
        return target

    def chunks(self, target: Target, message: bytes) -> tuple[bytes, ...]:
        now = now_ms()
        if target.header_ms != now:
            # now_ms and the item header change once per millisecond, not per message.
            target.header_ms = now
            target.header = bulk(b"%d" % now) + bulk(
                b"%013d:%b" % (now + self.expiry_ms, target.local)
            )
        return (target.prefix, target.header, b"$%d\r\n" % len(message), message, b"\r\n")

    async def send(self, channel: str, message: bytes) -> None:
        """Queue ``message`` for ``channel``: pipelined while the channel had room, else awaited."""
        target = self._targets.get(channel) or self.target(channel)
        pipe = target.pipe
        target.pending += 1
        if target.room > 0 and not pipe.shard.down:
            # The server last reported room for this and our other pending sends:
            # pipeline without waiting for the answer. (While the server is down a
            # send waits for its own answer, so the outage fails that send itself.)
            target.room -= 1
            pipe.push(self.chunks(target, message), (target, None))
            if len(pipe.handlers) > MAX_QUEUED:
                await pipe.drained.wait()
            else:
                await asyncio.sleep(0)  # let the writer and receivers run
            return
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        pipe.push(self.chunks(target, message), (target, future))
        reply = await future
        if reply < 0:
            capacity = self._options.capacity_for(channel)
            raise ChannelFull(
                f"channel {channel!r} holds {capacity} messages (its capacity); "
                "its consumers are behind: retry later or raise channel_capacity"
            )

    def dispatch(self, handler: Handler, reply: Any) -> None:
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

    def fail(self, handlers: list[Handler], error: LayerError) -> None:
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

    def raise_late(self) -> None:
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
