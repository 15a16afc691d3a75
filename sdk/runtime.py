"""The async runtime: runs a service's consumers on one layer.

Each consumer gets ``concurrency`` worker tasks that pull batches straight
from the layer and handle them in order: no task or queue per message. Bad
input is logged (rate-limited), counted, optionally dead-lettered, and the
loop goes on. A failing receive (the server went away) is retried with a
capped exponential backoff; the runtime stops only when asked to.

Nothing a message carries makes the runtime create transport resources:
replies go only to process-specific channels (``…!…``), which the layers
route without creating streams or keys.
"""

from __future__ import annotations

import asyncio
import logging
import random
import signal
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import anyio
from pydantic import BaseModel, ConfigDict, ValidationError

from . import tracing
from .bus import Bus, _invalid
from .consumer import Consumer, resolve_message_type
from .context import BlockingContext, Context
from .contract import Contract, coerce
from .envelope import Envelope, ErrorInfo, body_json, envelope_type, new_message_id, now_ms
from .errors import (
    ConfigurationError,
    InvalidChannelName,
    MessageInvalid,
    MessageTooLarge,
    RemoteError,
    SvcbusError,
)
from .layer import Layer
from .local import CAN_START_NOW, Carried, LocalConsumer, LocalContext, LocalReply, LocalWorker
from .names import is_reply_channel
from .ratelog import DEFAULT_WINDOW, RateLimitedLog
from .redact import redact_text
from .runtime_durable import DurableChannel, prepare_durable, work_durable
from .service import Service, run_hooks

log = logging.getLogger("svcbus.runtime")

DEFAULT_CONCURRENCY = 10
FAST_CALL = 0.0001
"""Seconds per message under which an ``async def`` consumer's batches grow."""
FAST_SYNC_CALL = 0.0005
"""Seconds per message under which a plain ``def`` consumer's batches grow."""
DEFAULT_THREADS = 10
"""Worker threads shared by a runtime's plain ``def`` consumers."""
BATCH_SIZE = 32
"""Most messages an ``async def`` worker takes per receive."""
SYNC_BATCH_SIZE = 128
"""Most messages a plain ``def`` worker takes per receive: each batch costs a thread hop."""
RECEIVE_RETRY_FIRST = 0.1
"""Seconds before the first retry of a failed receive; doubled per failure..."""
RECEIVE_RETRY_MAX = 5.0
"""...up to this many seconds between retries."""
DEAD_LETTER_HEAD = 1024
"""Bytes of the message a dead letter keeps when the whole message would not fit."""
SHOWN_REPLY_CHANNEL = 120
"""Characters of a refused reply channel shown in the log (it is untrusted input)."""


class DeadLetter(Contract):
    """A message a consumer could not take, with the reason (sent to the dead-letter channel)."""

    channel: str
    reason: str
    message_id: str | None = None
    payload: str
    """The raw message, decoded as UTF-8 with replacement characters (its first bytes if truncated)."""
    size: int | None = None
    """Size of the raw message in bytes."""
    truncated: bool = False
    """True when the whole message would not fit in a dead letter: ``payload`` holds its start."""
    attempts: int | None = None
    """On a durable channel: how many times the consumer ran (None: rejected unread)."""
    error_type: str | None = None
    """The class name of the consumer's last exception, when it failed."""


class _IdPeek(BaseModel):
    """The id and reply channel of a message whose body did not validate."""

    model_config = ConfigDict(extra="ignore")
    id: str | None = None
    rc: str | None = None


@dataclass
class ConsumerStats:
    """Counters of one consumer; read them for metrics and tests."""

    received: int = 0
    processed: int = 0
    failed: int = 0
    invalid: int = 0
    """Messages rejected: undecodable, not fitting the contract, or too large."""
    too_large: int = 0
    """Of ``invalid``: messages above the layer's ``max_message_size``."""
    expired: int = 0
    dead_lettered: int = 0
    bad_reply_channel: int = 0
    """Messages whose reply channel is not a process-specific channel: not replied to."""
    receive_errors: int = 0
    """Receives that failed (the layer raised); each was retried after a backoff."""
    retried: int = 0
    """Durable channels: failed attempts that were given back for a retry after a backoff."""


@dataclass
class _Bound:
    consumer: Consumer
    decode: Callable[[bytes], Envelope[Any]]
    concurrency: int
    stats: ConsumerStats = field(default_factory=ConsumerStats)
    receive_failing: bool = False
    """Set by the first failed receive, cleared by the next good one (log once each)."""
    durable: DurableChannel | None = None
    """Set at start when the channel's contract is durable (runtime_durable.py handles it)."""


_TOO_LARGE = object()
"""A sync worker's outcome for a message above the size limit (it was not decoded)."""


class _Returned:
    """A sync consumer's return value (wrapped so it cannot be mistaken for an error)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


class _Worker:
    """A worker task's cancel scope, and whether it is waiting in receive (cancellable)."""

    __slots__ = ("receiving", "scope")

    def __init__(self) -> None:
        self.scope = anyio.CancelScope()
        self.receiving = False


Observer = Callable[[str, Envelope[Any], Any], None]


class Runtime:
    """Runs ``service`` on ``layer`` until stopped (SIGINT/SIGTERM or :meth:`stop`).

    On memory://, the edge's requests to this runtime's ``async def`` consumers
    are handed over in process, without the layer's round trip
    (:mod:`svcbus.local`); ``in_process=False`` sends them through the layer
    like any other message.
    """

    def __init__(
        self,
        service: Service,
        layer: Layer | str | Bus,
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        dead_letter: str | None = None,
        shutdown_timeout: float = 10.0,
        threads: int = DEFAULT_THREADS,
        in_process: bool = True,
    ) -> None:
        if concurrency < 1:
            raise SvcbusError(f"concurrency must be >= 1, got {concurrency}")
        self.service = service
        self.bus = layer if isinstance(layer, Bus) else Bus(layer)
        self._owns_bus = not isinstance(layer, Bus)
        self.dead_letter = dead_letter
        self.shutdown_timeout = shutdown_timeout
        self.observers: list[Observer] = []
        self._threads = anyio.CapacityLimiter(threads)
        self._bound = [self._bind(c, concurrency) for c in service.consumers]
        self._stopping = False
        self._stop_requested = anyio.Event()
        self._workers: set[_Worker] = set()
        self._max_size = self.bus.layer.options.max_message_size
        # A flood of bad input must not flood the log: a few lines, then a count.
        self._invalid_log = RateLimitedLog(log, "invalid messages")
        self._bad_reply_log = RateLimitedLog(
            log, "messages asking for a reply on a channel that is not a process channel"
        )
        self.started = anyio.Event()
        """Set once every consumer is receiving."""
        self.in_process = in_process
        self._local: list[LocalConsumer] = []
        """Consumers offered for in-process requests (svcbus.local), while running."""
        self._local_reply_channel = ""

    @staticmethod
    def _bind(consumer: Consumer, default_concurrency: int) -> _Bound:
        message_type = consumer.message_type
        if message_type is Any:
            # The contract may have been imported after the consumer was declared.
            message_type = resolve_message_type(consumer.channel, Any, consumer.name)
        model = envelope_type(message_type)
        # The validator itself: model_validate_json adds a Python call per message.
        decode = model.__pydantic_validator__.validate_json
        return _Bound(consumer, decode, consumer.concurrency or default_concurrency)

    @property
    def stats(self) -> dict[str, ConsumerStats]:
        """Per-channel counters."""
        return {b.consumer.channel: b.stats for b in self._bound}

    def stop(self) -> None:
        """Stop taking messages now; in-flight ones finish (within ``shutdown_timeout``)."""
        self._stopping = True
        self._unserve_locally()
        for worker in list(self._workers):
            if worker.receiving:
                worker.scope.cancel()
        self._stop_requested.set()

    async def run(self, *, handle_signals: bool = True) -> None:
        """Run until stopped; with ``handle_signals``, SIGINT/SIGTERM stop gracefully."""
        bus_context = self.bus if self._owns_bus else _borrowed(self.bus)
        async with bus_context, anyio.create_task_group() as outer:
            if handle_signals:
                outer.start_soon(self._watch_signals)
            outer.start_soon(self._summarize_logs)
            await run_hooks(self.service.startup_hooks, self.bus)
            for bound in self._bound:
                bound.durable = await prepare_durable(self, bound.consumer.channel)
            try:
                async with anyio.create_task_group() as workers:
                    for bound in self._bound:
                        for _ in range(bound.concurrency):
                            work = self._work if bound.durable is None else self._work_durable
                            workers.start_soon(work, bound)
                    outer.start_soon(self._drain_on_stop, workers.cancel_scope)
                    await self._serve_locally(workers)
                    self.started.set()
                log.info(
                    "service %s stopped (%s)",
                    self.service.name,
                    ", ".join(f"{c}: {s.processed} processed" for c, s in self.stats.items()),
                )
            finally:
                self._unserve_locally()
                outer.cancel_scope.cancel()
                self._flush_logs(force=True)
                with anyio.CancelScope(shield=True):
                    await run_hooks(self.service.shutdown_hooks, self.bus)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Runtime]:
        """Run in the background for the body of an ``async with`` block (tests, embedding)."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: self.run(handle_signals=False))
            await self.started.wait()
            try:
                yield self
            finally:
                self.stop()

    async def _watch_signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                log.info("%s: finishing in-flight messages", signal.Signals(signum).name)
                self.stop()
                return

    async def _summarize_logs(self) -> None:
        """Write the rate-limited logs' summaries once per window, even if input stops."""
        while True:
            await anyio.sleep(DEFAULT_WINDOW)
            self._flush_logs()

    def _flush_logs(self, *, force: bool = False) -> None:
        self._invalid_log.flush(force=force)
        self._bad_reply_log.flush(force=force)

    async def _drain_on_stop(self, workers: anyio.CancelScope) -> None:
        await self._stop_requested.wait()
        await anyio.sleep(self.shutdown_timeout)
        log.warning(
            "in-flight messages did not finish within %ss; cancelling", self.shutdown_timeout
        )
        workers.cancel()

    async def _work(self, bound: _Bound) -> None:
        """One worker: take messages from the channel and handle them, until stopped.

        Batches adapt: while handling is quick (a handler that never waits),
        the worker takes up to BATCH_SIZE messages per receive, saving a
        wake-up (and, for plain ``def`` consumers, a thread hop) per message;
        as soon as handling is slow it takes one at a time, so no batch holds
        messages that idle sibling workers could be handling.
        """
        receive_many = self.bus.layer.receive_many
        channel = bound.consumer.channel
        if bound.consumer.is_async:
            handle_batch, fast, most = self._handle_batch, FAST_CALL, BATCH_SIZE
        else:
            handle_batch, fast, most = self._handle_batch_in_thread, FAST_SYNC_CALL, SYNC_BATCH_SIZE
        batch_size = most if bound.concurrency == 1 else 1
        worker = _Worker()
        self._workers.add(worker)
        unyielded = 0
        retry_in = RECEIVE_RETRY_FIRST
        try:
            # One cancel scope per worker, not per receive: stop() cancels only
            # workers that are waiting in receive, so handlers always finish.
            with worker.scope:
                while not self._stopping:
                    worker.receiving = True
                    try:
                        batch = await receive_many(channel, batch_size)
                    except (ConfigurationError, InvalidChannelName):
                        raise  # wrong settings: retrying cannot help
                    except Exception as exc:
                        # Still "receiving": stop() may cancel the backoff sleep.
                        retry_in = await self._receive_failed(bound, exc, retry_in)
                        continue
                    worker.receiving = False
                    if bound.receive_failing:
                        self._receive_recovered(bound)
                        retry_in = RECEIVE_RETRY_FIRST
                    # Messages already taken are handled even while stopping.
                    bound.stats.received += len(batch)
                    busy = await handle_batch(bound, batch)
                    if bound.concurrency > 1:
                        grow = busy / len(batch) < fast
                        batch_size = min(most, batch_size * 2) if grow else 1
                    # Handlers that never suspend on a channel that is never empty
                    # must not starve other tasks: yield every BATCH_SIZE messages.
                    unyielded += len(batch)
                    if unyielded >= BATCH_SIZE:
                        unyielded = 0
                        await anyio.lowlevel.checkpoint()
        finally:
            self._workers.discard(worker)

    # In-process requests (svcbus.local) -------------------------------------------

    async def _serve_locally(self, workers: anyio.abc.TaskGroup) -> None:
        """Offer the async consumers for in-process requests, where the layer allows it.

        asyncio only (the edge, their one requester, is served on asyncio), and
        not on a traced bus: its spans travel in the envelope.
        """
        self._local.clear()
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        if self.bus.tracer is not None or not self.in_process:
            return
        offered: list[tuple[_Bound, LocalConsumer]] = []
        for bound in self._bound:
            consumer = bound.consumer
            if not consumer.is_async or bound.durable is not None:
                continue
            if not isinstance(consumer.message_type, type):
                continue  # untyped: the message is whatever the bytes decode to
            local = LocalConsumer(
                consumer.channel, consumer.message_type, bound.concurrency, self.bus.layer.options
            )
            if self.bus.layer.serve_locally(consumer.channel, local):
                offered.append((bound, local))
                self._local.append(local)
        if not offered:
            return
        # What a consumer's context shows as the request's reply channel (its reply
        # goes straight to the requester); nothing reads it, so a message sent there
        # expires like any unread one. Requests handed over meanwhile wait for the
        # workers, which start once it exists.
        self._local_reply_channel = await self.bus.layer.new_channel("local")
        for bound, local in offered:
            if CAN_START_NOW:
                local.start_now = partial(self._start_local, bound)
            # Each worker task runs in its own copy of the runtime's context, as a
            # layer worker does, not in the requester's.
            for _ in range(local.limit):
                workers.start_soon(self._work_local, bound, local)

    def _unserve_locally(self) -> None:
        """New requests go through the layer; those handed over already are still handled."""
        for local in self._local:
            self.bus.layer.unserve_locally(local.channel, local)
            local.stop()  # idle workers see that the runtime stops

    async def _work_local(self, bound: _Bound, local: LocalConsumer) -> None:
        """One worker of in-process requests: handle them as they come, until stopped.

        After stop() it handles what still waits (the drain), then ends. If the
        drain runs out of time the workers are cancelled: what still waits is
        never started and its requesters time out, as for messages left in a
        channel.
        """
        waiting = local.waiting
        consumer = bound.consumer
        stats = bound.stats
        worker = LocalWorker()
        unyielded = 0
        try:
            while True:
                if waiting:
                    message, reply = waiting.popleft()
                    try:
                        if consumer.takes_context or self.observers:
                            await self._serve_local(bound, message, reply)
                        else:
                            # Nothing sees an envelope or an id: the handler, its answer,
                            # the counts, without a coroutine around them.
                            stats.received += 1
                            try:
                                result = await consumer.func(message)
                            except Exception as exc:
                                self._local_failed(bound, "", reply, exc)
                            else:
                                self._local_answered(bound, reply, result)
                    finally:
                        local.finished(reply)
                    # Handlers that never suspend must not starve the requesters'
                    # tasks while requests keep coming: yield every BATCH_SIZE.
                    unyielded += 1
                    if unyielded >= BATCH_SIZE:
                        unyielded = 0
                        await asyncio.sleep(0)
                elif self._stopping:
                    return
                else:
                    unyielded = 0
                    carried = await local.wait_for_work(worker)
                    if carried is not None:
                        await self._carry_on(bound, local, worker, carried)
        except BaseException:
            waiting.clear()  # cancelled (the drain ran out of time): see above
            raise

    def _start_local(
        self, bound: _Bound, message: Any, worker: LocalWorker, reply: asyncio.Future[LocalReply]
    ) -> bool:
        """Start an in-process request at once, as ``worker`` (idle until now): see svcbus.local.

        The handler's first step runs here, within the requester's call. True
        if it suspended: ``worker`` carries it on (:meth:`_carry_on`). The same
        counts and answers as :meth:`_work_local`'s.
        """
        consumer = bound.consumer
        answers = not (consumer.takes_context or self.observers)
        if answers:
            bound.stats.received += 1
            coro = consumer.func(message)
        else:
            coro = self._serve_local(bound, message, reply)  # answers itself
        try:
            yielded = worker.first_step(coro)
        except StopIteration as stop:
            if answers:
                self._local_answered(bound, reply, stop.value)
            return False
        except Exception as exc:
            self._local_failed(bound, "", reply, exc)
            return False
        worker.wake((coro, yielded, reply, answers))
        return True

    async def _carry_on(
        self, bound: _Bound, local: LocalConsumer, worker: LocalWorker, carried: Carried
    ) -> None:
        """Carry on, as ``worker``, a request started at once whose handler suspended."""
        coro, yielded, reply, answers = carried
        try:
            try:
                result = await worker.resume(coro, yielded)
            except Exception as exc:
                self._local_failed(bound, "", reply, exc)
            else:
                if answers:
                    self._local_answered(bound, reply, result)
        finally:
            local.finished(reply)

    async def _serve_local(
        self, bound: _Bound, message: Any, reply: asyncio.Future[LocalReply]
    ) -> None:
        """Handle one in-process request for a consumer with a context or observers.

        :meth:`_invoke` for a message that came without an envelope: the same
        counts, log lines and errors, the reply handed over instead of sent.
        (:meth:`_work_local` handles the others itself: no envelope, no id.)
        """
        consumer = bound.consumer
        stats = bound.stats
        stats.received += 1
        # An id only where it is seen: the context's envelope, observers, a log line.
        message_id = new_message_id()
        envelope = envelope_type(consumer.message_type).model_construct(
            v=1, id=message_id, rc=self._local_reply_channel, at=now_ms(), b=message
        )
        ctx = None
        try:
            if consumer.takes_context:
                ctx = LocalContext(
                    self.bus,
                    consumer.channel,
                    envelope,
                    self.service,
                    answer=lambda value: self._answer_local(bound, message_id, reply, value),
                )
                result = await consumer.func(message, ctx)
            else:
                result = await consumer.func(message)
        except Exception as exc:
            self._local_failed(bound, message_id, reply, exc)
            return
        if ctx is None or not ctx._replied:
            self._answer_local(bound, message_id, reply, result)
        stats.processed += 1
        for observer in self.observers:
            observer(consumer.channel, envelope, result)

    def _local_answered(
        self, bound: _Bound, reply: asyncio.Future[LocalReply], result: Any
    ) -> None:
        """A handler without a context or observers returned ``result``: answered, counted."""
        self._answer_local(bound, "", reply, result)
        bound.stats.processed += 1

    def _local_failed(
        self, bound: _Bound, message_id: str, reply: asyncio.Future[LocalReply], exc: Exception
    ) -> None:
        """An in-process request's handler failed: counted, logged, the requester told."""
        consumer = bound.consumer
        bound.stats.failed += 1
        log.exception(
            "consumer %s failed on message %s", consumer.name, message_id or new_message_id()
        )
        if not reply.done():
            reply.set_exception(_remote_error(consumer.channel, exc))

    def _answer_local(
        self, bound: _Bound, message_id: str, reply: asyncio.Future[LocalReply], value: Any
    ) -> None:
        """Settle ``reply`` with ``value`` as ``Bus.reply`` would send it (coerced, encoded)."""
        if reply.done():
            return  # answered already, or the requester gave up
        consumer = bound.consumer
        try:
            if consumer.reply_type is not None:
                value = coerce(consumer.channel, value, consumer.reply_type)
            body = body_json(value)
            if len(body) > self._max_size:
                self.bus.layer.options.check_size(consumer.channel, len(body))
        except Exception as exc:
            message_id = message_id or new_message_id()
            log.error("reply of %s to message %s failed: %s", consumer.name, message_id, exc)
            reply.set_exception(_remote_error(consumer.channel, exc))
            return
        reply.set_result(LocalReply(value, body))

    async def _work_durable(self, bound: _Bound) -> None:
        """One worker of a durable channel (acks, retries, dead letters: runtime_durable.py)."""
        assert bound.durable is not None
        worker = _Worker()
        self._workers.add(worker)
        try:
            await work_durable(self, bound, bound.durable, worker)
        finally:
            self._workers.discard(worker)

    async def _receive_failed(self, bound: _Bound, exc: Exception, retry_in: float) -> float:
        """Count and log (once per outage) a failed receive, sleep, return the next delay."""
        bound.stats.receive_errors += 1
        if not bound.receive_failing:
            bound.receive_failing = True
            # A layer error says what happened; anything else is a bug worth one traceback.
            log.warning(
                "receiving from %s failed: %s; retrying every %g-%gs until it works",
                bound.consumer.channel,
                redact_text(f"{type(exc).__name__}: {exc}"),
                RECEIVE_RETRY_FIRST,
                RECEIVE_RETRY_MAX,
                exc_info=None if isinstance(exc, SvcbusError) else exc,
            )
        # Jitter keeps a channel's workers (and other processes) from retrying in step.
        await anyio.sleep(retry_in * random.uniform(0.5, 1.0))
        return min(retry_in * 2, RECEIVE_RETRY_MAX)

    def _receive_recovered(self, bound: _Bound) -> None:
        bound.receive_failing = False
        log.warning(
            "receiving from %s works again (%d failed receives so far)",
            bound.consumer.channel,
            bound.stats.receive_errors,
        )

    async def _handle_batch(self, bound: _Bound, batch: list[bytes]) -> float:
        """Handle messages with an ``async def`` consumer; returns the seconds it took."""
        started = time.perf_counter()
        now = now_ms()
        decode = bound.decode
        plain = self.bus.tracer is None
        max_size = self._max_size
        for data in batch:
            if plain and len(data) <= max_size:
                # _handle's common case written out (no span, a message that fits):
                # one coroutine call per message less.
                try:
                    envelope = decode(data)
                except ValidationError:
                    pass  # rare: _handle decodes it again to say why, and rejects it
                else:
                    if envelope.ex is None or envelope.ex > now:
                        await self._invoke(bound, envelope)
                    else:
                        bound.stats.expired += 1
                    continue
            await self._handle(bound, data, now)
        return time.perf_counter() - started

    async def _handle_batch_in_thread(self, bound: _Bound, batch: list[bytes]) -> float:
        """Handle messages with a plain ``def`` consumer in one worker-thread hop.

        Busy threads stop the worker from taking more messages: backpressure,
        not a growing queue. Returns the seconds spent in the thread (waiting
        for a thread or for the GIL is not the handler being slow).
        """
        outcomes, busy = await anyio.to_thread.run_sync(
            self._handle_in_thread, bound, batch, now_ms(), limiter=self._threads
        )
        stats = bound.stats
        for outcome in outcomes:
            if type(outcome) is not tuple:
                # An envelope: handled, nothing to reply to, nobody observing.
                stats.processed += 1
            else:
                await self._finish(bound, *outcome)
        return busy

    def _handle_in_thread(
        self, bound: _Bound, batch: list[bytes], now: int
    ) -> tuple[list[Any], float]:
        started = time.perf_counter()
        consumer = bound.consumer
        quiet = not self.observers
        max_size = self._max_size
        outcomes: list[Any] = []  # an Envelope (handled, nothing more to do) or _finish's args
        for data in batch:
            if len(data) > max_size:
                outcomes.append((data, None, None, None, _TOO_LARGE))
                continue
            try:
                envelope = bound.decode(data)
            except ValidationError as exc:
                outcomes.append((data, exc, None, None, None))
                continue
            if envelope.ex is not None and envelope.ex <= now:
                bound.stats.expired += 1
                continue
            # Without a context parameter the consumer cannot reply itself: no Context.
            ctx = (
                Context(self.bus, consumer.channel, envelope, self.service)
                if consumer.takes_context
                else None
            )
            tracer = self.bus.tracer
            if tracer is None:
                outcome = self._call_sync(consumer, envelope, ctx)
                if quiet and envelope.rc is None and type(outcome) is _Returned:
                    # The common case: no reply, no span, no observer. Report the
                    # envelope alone and count it on the loop.
                    outcomes.append(envelope)
                    continue
            else:
                with tracing.process_span(
                    tracer,
                    self.bus.layer.system,
                    consumer.channel,
                    envelope.id,
                    len(data),
                    envelope.tc,
                ) as span:
                    span.set_attribute("svcbus.service", self.service.name)
                    outcome = self._call_sync(consumer, envelope, ctx)
                    if isinstance(outcome, Exception):
                        tracing.mark_failed(span, outcome)
            outcomes.append((data, None, envelope, ctx, outcome))
        return outcomes, time.perf_counter() - started

    @staticmethod
    def _call_sync(consumer: Consumer, envelope: Envelope[Any], ctx: Context | None) -> Any:
        try:
            if ctx is not None:
                return _Returned(consumer.func(envelope.b, BlockingContext(ctx)))
            return _Returned(consumer.func(envelope.b))
        except Exception as exc:
            return exc

    async def _finish(
        self,
        bound: _Bound,
        data: bytes,
        invalid: ValidationError | None,
        envelope: Envelope[Any] | None,
        ctx: Context | None,
        outcome: Any,
    ) -> None:
        """Back on the loop: reply, count, report what a sync consumer did."""
        consumer = bound.consumer
        if envelope is None:
            if invalid is None:  # outcome is _TOO_LARGE
                await self._reject_too_large(bound, data)
                return
            reason = str(_invalid(consumer.channel, invalid, consumer.message_type))
            await self._reject(bound, data, reason)
            return
        if isinstance(outcome, Exception):
            bound.stats.failed += 1
            log.error(
                "consumer %s failed on message %s",
                consumer.name,
                envelope.id,
                exc_info=(type(outcome), outcome, outcome.__traceback__),
            )
            if envelope.rc is not None and self._may_reply(bound, envelope.rc):
                await self._reply_error(envelope, outcome)
            return
        result = outcome.value
        if envelope.rc is not None and (ctx is None or not ctx._replied):
            await self._reply(bound, envelope, result)
        bound.stats.processed += 1
        for observer in self.observers:
            observer(consumer.channel, envelope, result)

    async def _handle(self, bound: _Bound, data: bytes, now: int) -> None:
        if len(data) > self._max_size:
            await self._reject_too_large(bound, data)
            return
        try:
            envelope = bound.decode(data)
        except ValidationError as exc:
            consumer = bound.consumer
            await self._reject(
                bound, data, str(_invalid(consumer.channel, exc, consumer.message_type))
            )
            return
        if envelope.ex is not None and envelope.ex <= now:
            bound.stats.expired += 1
            return
        tracer = self.bus.tracer
        if tracer is None:
            await self._invoke(bound, envelope)
            return
        with tracing.process_span(
            tracer,
            self.bus.layer.system,
            bound.consumer.channel,
            envelope.id,
            len(data),
            envelope.tc,
        ) as span:
            span.set_attribute("svcbus.service", self.service.name)
            error = await self._invoke(bound, envelope)
            if error is not None:
                tracing.mark_failed(span, error)

    async def _invoke(self, bound: _Bound, envelope: Envelope[Any]) -> Exception | None:
        """Call the consumer, reply, count; returns the consumer's exception, if any."""
        consumer = bound.consumer
        ctx = None
        try:
            if consumer.takes_context:
                ctx = Context(self.bus, consumer.channel, envelope, self.service)
                result = await consumer.func(envelope.b, ctx)
            else:
                result = await consumer.func(envelope.b)
        except Exception as exc:
            bound.stats.failed += 1
            log.exception("consumer %s failed on message %s", consumer.name, envelope.id)
            if envelope.rc is not None and self._may_reply(bound, envelope.rc):
                await self._reply_error(envelope, exc)
            return exc
        if envelope.rc is not None and (ctx is None or not ctx._replied):
            await self._reply(bound, envelope, result)
        bound.stats.processed += 1
        if self.observers:
            for observer in self.observers:
                observer(consumer.channel, envelope, result)
        return None

    def _may_reply(self, bound: _Bound, reply_channel: str) -> bool:
        """Whether ``reply_channel`` may be answered: only process-specific channels may.

        A reply to a named channel would make the layer create a stream or key
        for whatever name a message carries; such a request is counted and
        logged (rate-limited) instead, and handled without a reply.
        """
        if is_reply_channel(reply_channel):
            return True
        bound.stats.bad_reply_channel += 1
        channel = bound.consumer.channel
        self._bad_reply_log.log(
            channel,
            "message on %s asks for a reply on %r, which is not a process-specific channel "
            "(name!local, made by new_channel()): not replied to",
            channel,
            reply_channel[:SHOWN_REPLY_CHANNEL],
        )
        return False

    async def _reply(self, bound: _Bound, envelope: Envelope[Any], result: Any) -> None:
        assert envelope.rc is not None
        if not self._may_reply(bound, envelope.rc):
            return
        try:
            await self.bus.reply(
                envelope.rc, envelope.id, result, contract=bound.consumer.reply_type
            )
        except SvcbusError as exc:
            log.error("reply of %s to %s failed: %s", bound.consumer.name, envelope.rc, exc)
            await self._reply_error(envelope, exc)

    async def _reply_error(self, envelope: Envelope[Any], exc: BaseException) -> None:
        assert envelope.rc is not None
        try:
            await self.bus.reply_error(envelope.rc, envelope.id, exc)
        except SvcbusError as send_error:
            log.error("could not report failure to %s: %s", envelope.rc, send_error)

    async def _reject_too_large(self, bound: _Bound, data: bytes) -> None:
        """Refuse a message above ``max_message_size`` (a sender with a higher limit sent it)."""
        bound.stats.too_large += 1
        reason = (
            f"message on {bound.consumer.channel!r} is {len(data)} bytes; this service's limit "
            f"is {self._max_size} (max_message_size): not processed"
        )
        await self._reject(bound, data, reason)

    async def _reject(
        self, bound: _Bound, data: bytes, reason: str, dead_letter: str | None = None
    ) -> None:
        """Count, log (rate-limited), answer a waiting requester, dead-letter.

        ``dead_letter`` overrides the runtime's dead-letter channel (a durable
        channel's own).
        """
        channel = bound.consumer.channel
        bound.stats.invalid += 1
        try:
            peek = _IdPeek.model_validate_json(data)
        except ValidationError:
            peek = _IdPeek()
        message_id = peek.id
        self._invalid_log.log(
            channel,
            "invalid message %s on %s dropped: %s",
            message_id or "(no id)",
            channel,
            reason,
        )
        if peek.rc is not None and message_id is not None and self._may_reply(bound, peek.rc):
            # A requester would otherwise wait for its timeout: tell it why now.
            try:
                await self.bus.reply_error(
                    peek.rc, message_id, MessageInvalid(reason, channel=channel)
                )
            except SvcbusError as exc:
                log.error("could not report the invalid request to %s: %s", peek.rc, exc)
        to = dead_letter or self.dead_letter
        if to is not None:
            await self._dead_letter(to, bound, data, reason, message_id)

    async def _dead_letter(
        self,
        to: str,
        bound: _Bound,
        data: bytes,
        reason: str,
        message_id: str | None,
        *,
        attempts: int | None = None,
        error_type: str | None = None,
    ) -> bool:
        """Send a DeadLetter; one that would be too large keeps the message's first bytes.

        Returns whether the dead-letter channel took it.
        """
        channel = bound.consumer.channel
        whole = len(data) <= self._max_size

        def letter_of(truncate: bool) -> DeadLetter:
            return _letter(
                channel,
                reason,
                message_id,
                data,
                truncate=truncate,
                attempts=attempts,
                error_type=error_type,
            )

        letter = letter_of(not whole)
        try:
            try:
                await self.bus.send(to, letter)
            except MessageTooLarge:
                if not whole:
                    raise
                # JSON escaping made the letter bigger than the message: send its start.
                letter = letter_of(True)
                await self.bus.send(to, letter)
            bound.stats.dead_lettered += 1
            return True
        except SvcbusError as exc:
            log.error("dead-letter channel %s refused a message: %s", to, exc)
            return False


def _remote_error(channel: str, exc: BaseException) -> RemoteError:
    """What a requester on ``channel`` gets for the consumer's ``exc`` (as through the layer)."""
    info = ErrorInfo.of(exc)
    return RemoteError.of(channel, info.type, info.message)


def _letter(
    channel: str,
    reason: str,
    message_id: str | None,
    data: bytes,
    *,
    truncate: bool,
    attempts: int | None = None,
    error_type: str | None = None,
) -> DeadLetter:
    raw = data[:DEAD_LETTER_HEAD] if truncate else data
    return DeadLetter(
        channel=channel,
        reason=reason,
        message_id=message_id,
        payload=raw.decode("utf-8", "replace"),
        size=len(data),
        truncated=truncate,
        attempts=attempts,
        error_type=error_type,
    )


@asynccontextmanager
async def _borrowed(bus: Bus) -> AsyncIterator[Bus]:
    yield bus
