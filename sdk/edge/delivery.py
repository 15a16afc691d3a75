"""Putting client traffic on the bus so that nothing is lost without a word.

Every send the edge makes for a client goes through :class:`Delivery`:

* **Held and retried.** A frame that finds its channel full (``ChannelFull``)
  or the bus unreachable (``LayerError``) is retried with a short backoff
  until ``Limits.accept_timeout``. Meanwhile its connection reads nothing more
  (the server stops reading the socket, so TCP slows the client down).
  Only then is it given up: the caller closes the socket with 1013.
* **Confirmed.** A ``send`` raises only for its own message; what a layer
  that pipelines (Redis, NATS: they override ``Layer.flush``) learns later —
  a send refused after it returned, publishes in flight when a connection
  broke — is reported by the next ``flush`` as ``MessagesLost``. So a frame
  counts as delivered once a ``flush`` that started after its send returned
  without error. A flush error casts doubt on every frame it covered (only
  those for the channel ``MessagesLost`` names, when it names one): their
  sockets are closed (1011, or 1013 when a channel was full), since the edge
  cannot tell which of them was lost and must not deliver twice. Flushes are
  shared: one flush confirms every frame sent before it started (a group
  commit), so confirming costs one round trip per batch, not per frame.

Layers that do not override ``flush`` (``memory://``) say yes or no at once;
their frames need no confirmation.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

import anyio

from ..errors import ChannelFull, LayerError, MessagesLost, SvcbusError
from ..layer import Layer
from .logs import Quiet
from .stepping import DONE, coroutine_of, finish, first_step

if TYPE_CHECKING:
    from .app import EdgeApp

log = logging.getLogger("svcbus.edge")

DELIVERED = 0
"""The frame is on the bus."""
INTERNAL_ERROR = 1011
"""The bus failed after the frame was handed over: it may be lost."""
TRY_AGAIN_LATER = 1013
"""The bus would not take the frame within the patience (full, or down)."""

FIRST_DELAY = 0.002
"""First backoff: consumers drain a full channel in milliseconds."""
MAX_DELAY = 0.05
"""Backoff cap: a retrying socket still notices a freed place within 50 ms."""


class Delivery:
    """The edge's sends on behalf of clients: retried while the bus cannot take them, then confirmed."""

    def __init__(self, edge: EdgeApp) -> None:
        self.edge = edge
        self.quiet = Quiet(log)
        self._unconfirmed: dict[asyncio.Future[int], str] = {}
        """Every frame between the start of its send and its confirmation -> its channel."""
        self._sent: list[asyncio.Future[int]] = []
        """Frames whose send returned, waiting for the next flush."""
        self._flusher: asyncio.Task[None] | None = None

    @staticmethod
    def confirms(layer: Layer) -> bool:
        """Whether ``layer`` may report a send's failure later (it has a ``flush`` of its own)."""
        return type(layer).flush is not Layer.flush

    async def send(self, channel: str, data: bytes, patience: float) -> int:
        """Put ``data`` on ``channel``; :data:`DELIVERED`, or the close code its socket earns."""
        layer = self.edge.bus.layer
        confirm = self.confirms(layer)
        # A first attempt stepped here and not finished: (coroutine, what it waits on) or its error.
        started: Any = None
        if not confirm:
            # The common case (memory://): the send finishes at its first step. Only a
            # send that waits or fails goes on, to the timer and the retries.
            sending = coroutine_of(layer.send(channel, data))
            try:
                started = (sending, sending.send(None))
            except StopIteration:
                return DELIVERED
            except Exception as exc:  # handled as the first attempt of the retries
                started = exc
        return await self._retrying(layer, confirm, channel, data, patience, started)

    async def _retrying(
        self, layer: Layer, confirm: bool, channel: str, data: bytes, patience: float, started: Any
    ) -> int:
        """:meth:`send` past its first step: retried until ``patience``, confirmed if needed."""
        deadline = time.monotonic() + patience
        delay = FIRST_DELAY
        while True:
            ticket = self._ticket(channel) if confirm else None
            try:
                if started is None:
                    await _send_within(layer, channel, data, deadline)
                else:
                    attempt, started = started, None
                    await _go_on(attempt, deadline)
            except TimeoutError:
                if ticket is not None:
                    self._unconfirmed.pop(ticket, None)
                self.quiet.warning(
                    "bus-slow",
                    "the bus did not take a message for %s within %gs",
                    channel,
                    patience,
                )
                return TRY_AGAIN_LATER
            except (ChannelFull, LayerError) as exc:
                # About this frame only (layers report earlier losses from flush).
                if ticket is not None:
                    self._unconfirmed.pop(ticket, None)
                if isinstance(exc, LayerError):
                    self.quiet.warning(
                        "bus-send", "the bus did not take a message for %s: %s", channel, exc
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    return TRY_AGAIN_LATER
                self.edge.stats.retried += 1
                await anyio.sleep(min(delay, left))
                delay = min(delay * 2, MAX_DELAY)
                continue
            except SvcbusError as exc:
                if ticket is not None:
                    self._unconfirmed.pop(ticket, None)
                self.quiet.log(
                    logging.ERROR,
                    "bus-refused",
                    "the bus refused a message for %s: %s",
                    channel,
                    exc,
                )
                return INTERNAL_ERROR
            if ticket is None:
                return DELIVERED
            return await self._confirmed(ticket, deadline)

    def doubt(self, error: BaseException) -> None:
        """A flush (or shutdown) reported losses: settle the frames not yet confirmed.

        ``MessagesLost`` that names a channel dooms only the frames sent to it,
        with 1013 when it was a full channel; any other error all of them, 1011.
        """
        channel = error.channel if isinstance(error, MessagesLost) else None
        code = TRY_AGAIN_LATER if channel is not None else INTERNAL_ERROR
        for ticket, target in list(self._unconfirmed.items()):
            if channel is None or target == channel:
                self._settle(ticket, code)

    async def close(self) -> None:
        """Stop confirming (edge shutdown); frames still waiting are settled as failed."""
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.wait([self._flusher])
            self._flusher = None
        self.doubt(LayerError("the edge is shutting down"))

    # confirmation -------------------------------------------------------------------

    def _ticket(self, channel: str) -> asyncio.Future[int]:
        ticket: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._unconfirmed[ticket] = channel
        return ticket

    def _settle(self, ticket: asyncio.Future[int], code: int) -> None:
        self._unconfirmed.pop(ticket, None)
        if not ticket.done():
            ticket.set_result(code)

    async def _confirmed(self, ticket: asyncio.Future[int], deadline: float) -> int:
        if ticket.done():  # doubted while its send was still running
            return ticket.result()
        self._sent.append(ticket)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush_loop())
        # A flush that hangs must not hold the socket forever: past the patience
        # (at least one flush's worth) the frame counts as possibly lost.
        with anyio.move_on_after(max(deadline - time.monotonic(), 1.0)):
            return await asyncio.shield(ticket)
        self._settle(ticket, INTERNAL_ERROR)
        return ticket.result()

    async def _flush_loop(self) -> None:
        """Flush while frames wait; each flush confirms the frames sent before it started."""
        layer = self.edge.bus.layer
        while self._sent:
            batch, self._sent = self._sent, []
            try:
                await layer.flush()
            except (ChannelFull, LayerError) as exc:
                self.quiet.warning("bus-flush", "the bus reported lost messages: %s", exc)
                self.doubt(exc)
            except Exception:
                log.exception("flushing the bus failed unexpectedly; closing the affected sockets")
                self.doubt(LayerError("flush failed"))
            # What the flush did not doom, it confirmed.
            for ticket in batch:
                self._settle(ticket, DELIVERED)


async def _go_on(attempt: Any, deadline: float) -> None:
    """Finish a send :meth:`Delivery.send` started: raise its error, or drive it until ``deadline``."""
    if isinstance(attempt, Exception):
        raise attempt
    sending, waiting_on = attempt
    with anyio.fail_after(max(deadline - time.monotonic(), 0.001)):
        await finish(sending, waiting_on)


async def _send_within(layer: Layer, channel: str, data: bytes, deadline: float) -> None:
    """``layer.send``, given until ``deadline`` (``time.monotonic``) to finish.

    A send may wait on the bus itself (NATS opens a channel's stream on first
    use): it gets the patience that is left, no more. Most sends finish without
    waiting (``memory://`` always does), and those need no timer: the send is
    stepped once by hand and a timeout armed only if it suspended.
    """
    sending = coroutine_of(layer.send(channel, data))
    waiting_on = first_step(sending)
    if waiting_on is DONE:
        return
    with anyio.fail_after(max(deadline - time.monotonic(), 0.001)):
        await finish(sending, waiting_on)
