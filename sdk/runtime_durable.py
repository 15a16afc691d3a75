"""The runtime's side of durable channels: acknowledgements, retries, dead letters.

One implementation for every layer: the layer stores and redelivers
(:meth:`~svcbus.Layer.receive_durable`), this module decides. A delivery is
acknowledged after its handler returned and its reply was sent; a handler's
exception gives it back for a retry after the channel's backoff; the last
attempt's failure sends a :class:`~svcbus.runtime.DeadLetter` (error, attempt
count, the whole original message) to the dead-letter channel, then terminates
the delivery. While handlers run, every unsettled delivery of the batch is
kept alive with in-progress signals, so a long handler is not redelivered to
another worker while it still works.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

import anyio
from pydantic import ValidationError

from . import tracing
from .bus import _invalid
from .context import Context
from .durable import Delivery, Durability
from .envelope import Envelope, now_ms
from .errors import ConfigurationError, InvalidChannelName

if TYPE_CHECKING:
    from .runtime import Runtime, _Bound, _Worker

log = logging.getLogger("svcbus.runtime")

BATCH_SIZE = 32
"""Most deliveries a durable worker takes per receive (while its handler is quick)."""
FAST_CALL = 0.001
"""Seconds per message under which a durable worker's batches grow."""
SETTLE_ERRORS = (Exception,)


class DurableChannel:
    """A durable consumer's channel: its settings and where its dead letters go."""

    __slots__ = ("dead_letter", "settings")

    def __init__(self, settings: Durability, dead_letter: str) -> None:
        self.settings = settings
        self.dead_letter = dead_letter


async def prepare_durable(runtime: Runtime, channel: str) -> DurableChannel | None:
    """Declare ``channel`` and its dead-letter channel durable, if its contract is durable."""
    settings = runtime.bus.durability(channel)
    if settings is None:
        return None
    await runtime.bus.layer.declare_durable(channel, settings)
    dead_letter = settings.dead_letter_channel(channel, runtime.dead_letter)
    # A dead letter is the last copy of a message: it must be stored as durably.
    letters = runtime.bus.durability(dead_letter) or Durability(
        max_age=settings.max_age, replicas=settings.replicas
    )
    await runtime.bus.declare_durable(dead_letter, letters)
    return DurableChannel(settings, dead_letter)


async def work_durable(
    runtime: Runtime, bound: _Bound, durable: DurableChannel, worker: _Worker
) -> None:
    """One durable worker: take deliveries and settle each, until the runtime stops."""
    receive = runtime.bus.layer.receive_durable
    channel = bound.consumer.channel
    batch_size = BATCH_SIZE if bound.concurrency == 1 else 1
    retry_in = 0.1
    # This worker's delivered, unsettled messages. One ticker per worker keeps them
    # alive (not a task per batch: that cost more than handling a quick message).
    pending: list[Delivery] = []
    # A plain asyncio task (the runtime is asyncio only), not a task group: a
    # ConfigurationError from receive must reach the runtime unwrapped.
    ticker = asyncio.ensure_future(_keep_alive(pending, durable.settings.heartbeat))
    try:
        with worker.scope:
            while not runtime._stopping:
                worker.receiving = True
                try:
                    batch = await receive(channel, batch_size)
                except (ConfigurationError, InvalidChannelName):
                    raise
                except Exception as exc:
                    retry_in = await runtime._receive_failed(bound, exc, retry_in)
                    continue
                worker.receiving = False
                if bound.receive_failing:
                    runtime._receive_recovered(bound)
                    retry_in = 0.1
                bound.stats.received += len(batch)
                started = time.perf_counter()
                await _handle_batch(runtime, bound, durable, batch, pending)
                if bound.concurrency > 1:
                    # Quick handlers: take more per receive. Slow ones: one at a time,
                    # so no batch holds messages that idle sibling workers could take.
                    quick = (time.perf_counter() - started) / len(batch) < FAST_CALL
                    batch_size = min(BATCH_SIZE, batch_size * 2) if quick else 1
    finally:
        ticker.cancel()


async def _handle_batch(
    runtime: Runtime,
    bound: _Bound,
    durable: DurableChannel,
    batch: list[Delivery],
    pending: list[Delivery],
) -> None:
    pending.extend(batch)
    try:
        for delivery in batch:
            await _handle(runtime, bound, durable, delivery)
            pending.remove(delivery)
    finally:
        pending.clear()


async def _keep_alive(pending: list[Delivery], interval: float) -> None:
    """Signal progress for every unsettled delivery each ``interval`` seconds.

    A delivery is signalled within ``interval`` (``ack_wait / 2``) of being taken,
    as it was when each batch had its own ticker; one that is settled meanwhile
    may still get a signal, which the server ignores for a settled message.
    """
    while True:
        await anyio.sleep(interval)
        for delivery in list(pending):
            try:
                await delivery.in_progress()
            except SETTLE_ERRORS as exc:  # the server is away: it redelivers later, at worst
                log.debug("in-progress signal failed: %s", exc)


async def _handle(
    runtime: Runtime, bound: _Bound, durable: DurableChannel, delivery: Delivery
) -> None:
    data = delivery.data
    consumer = bound.consumer
    if len(data) > runtime._max_size:
        reason = (
            f"message on {consumer.channel!r} is {len(data)} bytes; this service's limit "
            f"is {runtime._max_size} (max_message_size): not processed"
        )
        bound.stats.too_large += 1
        await runtime._reject(bound, data, reason, durable.dead_letter)
        await _settle(delivery.term())
        return
    try:
        envelope: Envelope[Any] = bound.decode(data)
    except ValidationError as exc:
        reason = str(_invalid(consumer.channel, exc, consumer.message_type))
        await runtime._reject(bound, data, reason, durable.dead_letter)
        await _settle(delivery.term())
        return
    if envelope.ex is not None and envelope.ex <= now_ms():
        bound.stats.expired += 1
        await _settle(delivery.term())
        return
    settings = durable.settings
    if delivery.attempt > settings.max_attempts:
        # The last attempt's worker died without settling: do not run it again.
        await _exhausted(
            runtime, bound, durable, delivery, envelope, None, "its last attempt never finished"
        )
        return
    ctx = (
        Context(runtime.bus, consumer.channel, envelope, runtime.service, delivery.attempt)
        if consumer.takes_context
        else None
    )
    tracer = runtime.bus.tracer
    if tracer is None:
        outcome = await _call(runtime, bound, envelope, ctx)
    else:
        with tracing.process_span(
            tracer, runtime.bus.layer.system, consumer.channel, envelope.id, len(data), envelope.tc
        ) as span:
            span.set_attribute("svcbus.service", runtime.service.name)
            span.set_attribute("svcbus.attempt", delivery.attempt)
            outcome = await _call(runtime, bound, envelope, ctx)
            if isinstance(outcome, Exception):
                tracing.mark_failed(span, outcome)
    if isinstance(outcome, Exception):
        bound.stats.failed += 1
        if delivery.attempt >= settings.max_attempts:
            await _exhausted(runtime, bound, durable, delivery, envelope, outcome, None)
            return
        delay = settings.backoff(delivery.attempt)
        bound.stats.retried += 1
        log.warning(
            "consumer %s failed on message %s (attempt %d of %d): %s: %s; retrying in %gs",
            consumer.name,
            envelope.id,
            delivery.attempt,
            settings.max_attempts,
            type(outcome).__name__,
            outcome,
            delay,
        )
        await _settle(delivery.nak(delay))
        return
    result = outcome[0]
    if envelope.rc is not None and (ctx is None or not ctx._replied):
        await runtime._reply(bound, envelope, result)
    bound.stats.processed += 1
    for observer in runtime.observers:
        observer(consumer.channel, envelope, result)
    # Acknowledged last: a worker dying before this line gets the message redelivered.
    await _settle(delivery.ack())


async def _call(
    runtime: Runtime, bound: _Bound, envelope: Envelope[Any], ctx: Context | None
) -> tuple[Any] | Exception:
    """Run the consumer (a plain ``def`` one in a worker thread): ``(result,)`` or its error."""
    consumer = bound.consumer
    if not consumer.is_async:
        returned = await anyio.to_thread.run_sync(
            runtime._call_sync, consumer, envelope, ctx, limiter=runtime._threads
        )
        return returned if isinstance(returned, Exception) else (returned.value,)
    try:
        if ctx is not None:
            return (await consumer.func(envelope.b, ctx),)
        return (await consumer.func(envelope.b),)
    except Exception as exc:
        return exc


async def _exhausted(
    runtime: Runtime,
    bound: _Bound,
    durable: DurableChannel,
    delivery: Delivery,
    envelope: Envelope[Any],
    error: Exception | None,
    why: str | None,
) -> None:
    """Dead-letter a message out of attempts, tell a waiting requester, terminate it."""
    consumer = bound.consumer
    attempts = min(delivery.attempt, durable.settings.max_attempts)
    reason = f"{type(error).__name__}: {error}" if error is not None else (why or "")
    log.error(
        "consumer %s failed on message %s after %d attempts: dead-lettered to %s",
        consumer.name,
        envelope.id,
        attempts,
        durable.dead_letter,
        exc_info=(type(error), error, error.__traceback__) if error is not None else None,
    )
    stored = await runtime._dead_letter(
        durable.dead_letter,
        bound,
        delivery.data,
        reason,
        envelope.id,
        attempts=attempts,
        error_type=type(error).__name__ if error is not None else None,
    )
    if not stored:
        # Not dead-lettered (its channel is full or away): keep the message and
        # try again later rather than lose it.
        await _settle(delivery.nak(durable.settings.backoff_max))
        return
    if envelope.rc is not None and runtime._may_reply(bound, envelope.rc):
        await runtime._reply_error(envelope, error or RuntimeError(reason))
    await _settle(delivery.term())


async def _settle(settlement: Any) -> None:
    """Await an ack/nak/term; a failure only means a redelivery later, so it is logged."""
    try:
        await settlement
    except SETTLE_ERRORS as exc:
        log.warning("could not settle a durable delivery (it will be redelivered): %s", exc)
