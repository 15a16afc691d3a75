# -*- coding: utf-8 -*-
# Python 2.7 compatible on purpose: pyupgrade (UP) and py3-only idioms must not rewrite it.
"""The blocking client and worker of the legacy runtime.

::

    from svcbus_legacy import Worker, consumes

    @consumes("stats.get")
    def get_stats(query, ctx):
        ctx.send("audit.log", {"what": "stats", "room": query["room"]})
        return {"room": query["room"], "messages": 3}

    Worker("nats://127.0.0.1:4222", schemas="contracts.json").run()

Messages are plain JSON values (dicts), checked against the contracts' JSON
Schema when a schema file is given. One thread, one connection: a Client or
Worker is not shared between threads (make one per thread).
"""

from __future__ import absolute_import, division, print_function, unicode_literals

import inspect
import logging
import signal
import threading
from collections import deque

from .compat import monotonic, now_ms
from .durable import Delivery
from .durable_worker import DurableWorking
from .envelope import decode, encode, new_message_id, peek_id
from .errors import (
    ConfigurationError,
    LayerError,
    MessageInvalid,
    RemoteError,
    RequestTimeout,
    SvcbusError,
)
from .names import is_reply_channel, validate_channel, validate_group
from .options import split_url
from .schema import ChannelSchemas, SchemaError

log = logging.getLogger("svcbus.legacy")

DEFAULT_REQUEST_TIMEOUT = 5.0
DEFAULT_PREFETCH = 16
CONSUMERS_ATTR = "__svcbus_legacy_consumers__"


def open_transport(url, options):
    """The transport for a ``nats://`` or ``redis://`` URL (no query string)."""
    scheme = url.partition("://")[0].lower()
    if scheme == "nats":
        from .nats import NatsTransport

        return NatsTransport(url, options)
    if scheme == "redis":
        from .redis import RedisTransport

        return RedisTransport(url, options)
    raise ConfigurationError(
        "the legacy runtime speaks nats://host:port and redis://host:port/db, not {0!r}".format(url)
    )


def _load_schemas(schemas):
    if schemas is None:
        return ChannelSchemas()
    if isinstance(schemas, ChannelSchemas):
        return schemas
    if isinstance(schemas, dict):
        return ChannelSchemas.from_dict(schemas)
    return ChannelSchemas.load(schemas)


class Client(object):
    """A blocking connection to the bus: send, request, groups, receive.

    ``url`` is ``nats://host:4222`` or ``redis://host:6379/0``, with the layer
    options of the main SDK as query parameters (``capacity``, ``expiry``,
    ``group_expiry``, ``max_message_size``, ``channel_capacity``, ``prefix``).
    ``schemas`` is the path of a file written by ``svcbus.legacy_export`` (or its
    decoded dict): messages sent and received are checked against it.
    """

    def __init__(self, url, schemas=None, request_timeout=DEFAULT_REQUEST_TIMEOUT, **options):
        base, self.options = split_url(url, options)
        self.url = base
        self.transport = open_transport(base, self.options)
        self.schemas = _load_schemas(schemas)
        self.request_timeout = request_timeout
        self._expiry_ms = int(self.options.expiry * 1000)
        self._durable = {}  # channels declared durable here (dead-letter channels)
        self._inbox = None
        self._connected = False

    def durability(self, channel):
        """``channel``'s durable settings (its contract's, or declared here), or None.

        The URL's ``durable_<setting>`` patterns apply over them.
        """
        if "!" in channel:
            return None
        found = self._durable.get(channel) or self.schemas.durability(channel)
        return self.options.durability_for(channel, found) if found is not None else None

    # lifecycle ------------------------------------------------------------------

    def connect(self):
        """Connect to the server (idempotent); raise LayerError if it is unreachable."""
        if not self._connected:
            self.transport.connect()
            self._connected = True
        return self

    def close(self):
        """Hand unhandled messages back to their channels and disconnect."""
        self.transport.close()
        self._connected = False

    def __enter__(self):
        return self.connect()

    def __exit__(self, *exc_info):
        self.close()

    # encoding ---------------------------------------------------------------------

    def encode(
        self,
        channel,
        message,
        reply_channel=None,
        reply_to=None,
        trace=None,
        headers=None,
        contract=None,
        message_id=None,
    ):
        """Check ``message`` against ``channel``'s contract and encode the envelope."""
        if contract is None and "!" not in channel:
            contract = self.schemas.contract(channel)
        if contract is not None:
            try:
                message = contract.validate(message)
            except SchemaError as exc:
                raise MessageInvalid(
                    "message for channel {0!r} does not fit {1}: {2}".format(
                        channel, contract.name, exc
                    ),
                    channel=channel,
                )
        sent_at = now_ms()
        # A durable message lives as long as its stream keeps it (retries included).
        durable = self.durability(channel) if self.schemas.durable or self._durable else None
        lives = int(durable.max_age * 1000) if durable is not None else self._expiry_ms
        try:
            return encode(
                message,
                id=message_id or new_message_id(),
                contract=contract.name if contract is not None else None,
                version=contract.version if contract is not None else 1,
                sent_at=sent_at,
                expires_at=sent_at + lives,
                reply_channel=reply_channel,
                reply_to=reply_to,
                trace=trace or None,
                headers=headers or None,
            )
        except (TypeError, ValueError) as exc:
            raise MessageInvalid(
                "message for channel {0!r} is not JSON-compatible: {1}".format(channel, exc),
                channel=channel,
            )

    # messaging ----------------------------------------------------------------------

    def send(self, channel, message, reply_channel=None, headers=None, trace=None):
        """Validate and send ``message`` on ``channel``; returns the message id."""
        validate_channel(channel)
        self.connect()
        message_id = new_message_id()
        data = self.encode(
            channel,
            message,
            reply_channel=reply_channel,
            headers=headers,
            trace=trace,
            message_id=message_id,
        )
        durable = self.durability(channel) if self.schemas.durable or self._durable else None
        if durable is None:
            self.transport.send(channel, data)
            return message_id
        # Durable: returns once the server stored it (NATS only).
        if not hasattr(self.transport, "send_durable"):
            raise ConfigurationError(
                "{0!r} is durable: the legacy runtime sends to durable channels on nats:// "
                "only; use the main SDK on redis://".format(channel)
            )
        self.transport.declare_durable(channel, durable)
        self.transport.send_durable(channel, data, message_id)
        return message_id

    def group_send(self, group, message, trace=None):
        """Send ``message`` (untyped, as the async Bus does) to every member of ``group``."""
        validate_group(group)
        self.connect()
        sent_at = now_ms()
        data = encode(
            message,
            id=new_message_id(),
            sent_at=sent_at,
            expires_at=sent_at + self._expiry_ms,
            trace=trace or None,
        )
        self.transport.group_send(group, data)

    def group_add(self, group, channel):
        """Add ``channel`` to ``group``; returns once it is effective."""
        self.connect()
        self.transport.group_add(group, channel)

    def group_discard(self, group, channel):
        """Remove ``channel`` from ``group``."""
        self.connect()
        self.transport.group_discard(group, channel)

    def new_channel(self, prefix="specific"):
        """A new process-specific channel that only this client receives."""
        self.connect()
        return self.transport.new_channel(prefix)

    def flush(self):
        """Wait until the server has taken every message sent so far."""
        self.transport.flush_acks()

    def request(self, channel, message, timeout=None, trace=None):
        """Send a request and wait for its reply; returns the reply body.

        Raises RequestTimeout, or RemoteError when the consumer failed.
        """
        validate_channel(channel)
        self.connect()
        timeout = self.request_timeout if timeout is None else timeout
        if self._inbox is None:
            self._inbox = self.transport.new_channel("inbox")
        message_id = new_message_id()
        data = self.encode(
            channel, message, reply_channel=self._inbox, trace=trace, message_id=message_id
        )
        self.transport.send(channel, data)
        deadline = monotonic() + timeout
        while True:
            reply = self._take_reply(message_id)
            if reply is not None:
                break
            left = deadline - monotonic()
            if left <= 0:
                raise RequestTimeout(
                    "no reply on {0!r} within {1}s: is a service consuming {0!r} running on "
                    "this layer?".format(channel, timeout)
                )
            self._poll(min(left, 1.0))
        if reply.error is not None:
            raise RemoteError(
                "{0!r} consumer failed: {1}: {2}".format(channel, reply.error[0], reply.error[1]),
                error_type=reply.error[0],
            )
        contract = self.schemas.reply_contract(channel)
        if contract is None:
            return reply.body
        try:
            return contract.validate(reply.body)
        except SchemaError as exc:
            raise MessageInvalid(
                "reply on {0!r} does not fit {1}: {2}".format(channel, contract.name, exc),
                channel=channel,
            )

    def _take_reply(self, message_id):
        box = self.transport.buffers.get(self._inbox)
        while box:
            data = box.popleft()
            try:
                message = decode(data, self._inbox)
            except MessageInvalid as exc:
                log.warning("undecodable reply on %s dropped: %s", self._inbox, exc)
                continue
            if message.reply_to == message_id:
                return message
            log.debug("late or unknown reply %s on %s dropped", message.reply_to, self._inbox)
        return None

    def receive(self, channel, timeout=None):
        """The next valid, unexpired message on ``channel`` (named, or one of ours).

        Raises RequestTimeout after ``timeout`` seconds (None: wait forever).
        """
        validate_channel(channel)
        self.connect()
        transport = self.transport
        if "!" not in channel:
            transport.listen(channel)
        elif not transport.owns(channel):
            raise SvcbusError(
                "channel {0!r} belongs to another process; receive from your own "
                "new_channel()".format(channel)
            )
        deadline = None if timeout is None else monotonic() + timeout
        while True:
            box = transport.buffers.get(channel)
            while box:
                message = self._check(channel, box.popleft())
                if message is not None:
                    return message
            left = None if deadline is None else deadline - monotonic()
            if left is not None and left <= 0:
                raise RequestTimeout(
                    "nothing arrived on {0!r} within {1}s".format(channel, timeout)
                )
            transport.want(channel, 1)
            self._poll(1.0 if left is None else min(left, 1.0))

    def _check(self, channel, data):
        """Decode and validate one message; log and drop it (None) when it is bad."""
        try:
            message = decode(data, channel)
            if message.expires_at is not None and message.expires_at <= now_ms():
                return None
            contract = self.schemas.contract(channel) if "!" not in channel else None
            if contract is not None:
                try:
                    message.body = contract.validate(message.body)
                except SchemaError as exc:
                    raise MessageInvalid(
                        "message on {0!r} does not fit {1}: {2}".format(
                            channel, contract.name, exc
                        ),
                        channel=channel,
                        message_id=message.id,
                    )
            return message
        except MessageInvalid as exc:
            log.warning(
                "invalid message %s on %s dropped: %s",
                exc.message_id or peek_id(data) or "(no id)",
                channel,
                exc,
            )
            return None

    def _poll(self, timeout):
        try:
            self.transport.poll(timeout)
        except LayerError as exc:
            self._recover(exc, None)

    def _recover(self, exc, stopping):
        """The connection broke: reconnect (bounded backoff; the transport logs once)."""
        deadline = None if stopping is not None else monotonic() + self.options.connect_timeout
        self.transport.reconnect(deadline=deadline, stopping=stopping)

    # replying ----------------------------------------------------------------------

    def reply(self, request, body, channel=None):
        """Send ``body`` as the reply to ``request`` (a received Message with a reply channel)."""
        if not is_reply_channel(request.reply_channel):
            raise SvcbusError(
                "message {0} has no reply channel to answer (none, or not a process-specific "
                "channel)".format(request.id)
            )
        contract = self.schemas.reply_contract(channel) if channel else None
        data = self.encode(
            request.reply_channel, body, reply_to=request.id, trace=request.trace, contract=contract
        )
        self.transport.send(request.reply_channel, data)

    def reply_error(self, request, error):
        """Tell the requester that handling ``request`` failed with ``error``."""
        sent_at = now_ms()
        data = encode(
            None,
            id=new_message_id(),
            sent_at=sent_at,
            expires_at=sent_at + self._expiry_ms,
            reply_to=request.id,
            error=(type(error).__name__, "{0}".format(error)[:1000]),
        )
        self.transport.send(request.reply_channel, data)


class Context(object):
    """What a consumer can do while handling one message.

    Sends made here carry the message's trace context, so a trace that passes
    through the legacy worker stays one trace.
    """

    __slots__ = ("attempt", "channel", "client", "message", "replied")

    def __init__(self, client, channel, message, attempt=1):
        self.client = client
        self.channel = channel
        """The channel the message arrived on."""
        self.message = message
        """The whole decoded envelope (:class:`Message`)."""
        self.attempt = attempt
        """Which delivery this is (1-based; above 1 only on durable channels)."""
        self.replied = False

    @property
    def message_id(self):
        """The current message's id."""
        return self.message.id

    @property
    def reply_channel(self):
        """Where the sender waits for a reply, if it does (only a process-specific channel counts)."""
        rc = self.message.reply_channel
        return rc if is_reply_channel(rc) else None

    @property
    def headers(self):
        """Application headers of the current message."""
        return self.message.headers

    @property
    def sent_at(self):
        """When the current message was sent (Unix milliseconds)."""
        return self.message.sent_at

    def send(self, channel, message, reply_channel=None):
        """Send ``message`` on ``channel`` (validated against its contract)."""
        return self.client.send(
            channel, message, reply_channel=reply_channel, trace=self.message.trace
        )

    def request(self, channel, message, timeout=None):
        """Send a request and return the reply body."""
        return self.client.request(channel, message, timeout=timeout, trace=self.message.trace)

    def reply(self, body):
        """Reply now (the consumer's return value is then not sent)."""
        self.client.reply(self.message, body, channel=self.channel)
        self.replied = True

    def group_send(self, group, message):
        """Send ``message`` to every member of ``group``."""
        self.client.group_send(group, message, trace=self.message.trace)

    def group_add(self, group, channel):
        """Add ``channel`` to ``group``."""
        self.client.group_add(group, channel)

    def group_discard(self, group, channel):
        """Remove ``channel`` from ``group``."""
        self.client.group_discard(group, channel)

    def new_channel(self, prefix="specific"):
        """A new process-specific channel of this worker."""
        return self.client.new_channel(prefix)

    def receive(self, channel, timeout=None):
        """The next message on one of this worker's process channels."""
        return self.client.receive(channel, timeout=timeout)


class Consumer(object):
    """A function bound to the channel it consumes."""

    __slots__ = ("channel", "func", "takes_context")

    def __init__(self, channel, func):
        validate_channel(channel)
        if "!" in channel:
            raise ConfigurationError(
                "cannot consume process-specific channel {0!r}: they are made at run time".format(
                    channel
                )
            )
        self.channel = channel
        self.func = func
        self.takes_context = _positional_count(func) >= 2

    @property
    def name(self):
        """``module.function`` of the consumer."""
        return "{0}.{1}".format(
            getattr(self.func, "__module__", "?"), getattr(self.func, "__name__", self.func)
        )


def _positional_count(func):
    # getargspec through getattr: Python 2 has no getfullargspec, Python 3.11 no getargspec.
    spec = getattr(inspect, "getfullargspec", None) or getattr(inspect, "getargspec")  # noqa: B009
    target = func if inspect.isfunction(func) or inspect.ismethod(func) else func.__call__
    args = spec(target).args
    if inspect.ismethod(target):
        args = args[1:]
    return len(args)


registered = []
"""Every consumer ``@consumes`` made, in order: a Worker without ``consumers`` runs them."""


def consumes(channel):
    """Mark a plain function as the consumer of ``channel``: ``f(message)`` or ``f(message, ctx)``.

    The message is the JSON body (a dict for object contracts); the return value
    is the reply to a request.
    """

    def mark(func):
        consumer = Consumer(channel, func)
        setattr(func, CONSUMERS_ATTR, tuple(getattr(func, CONSUMERS_ATTR, ())) + (consumer,))
        registered.append(consumer)
        return func

    return mark


class Stats(object):
    """Counters of one consumer."""

    __slots__ = (
        "bad_reply_channel",
        "dead_lettered",
        "expired",
        "failed",
        "invalid",
        "processed",
        "received",
        "retried",
    )

    def __init__(self):
        self.received = self.processed = self.failed = self.retried = 0
        self.invalid = self.expired = self.dead_lettered = 0
        self.bad_reply_channel = 0

    def __repr__(self):
        return "Stats({0})".format(
            ", ".join("{0}={1}".format(k, getattr(self, k)) for k in self.__slots__)
        )


class Worker(DurableWorking, Client):
    """Runs consumers in a blocking loop, one message at a time, until stopped.

    ``consumers`` are functions marked with ``@consumes`` (default: all of them).
    ``prefetch`` is how many messages per channel are taken from the server ahead
    of handling (at-most-once: taken messages belong to this worker).
    ``dead_letter`` names a channel that gets a DeadLetter for every invalid message.
    """

    def __init__(
        self,
        url,
        consumers=None,
        schemas=None,
        dead_letter=None,
        prefetch=DEFAULT_PREFETCH,
        **options,
    ):
        Client.__init__(self, url, schemas=schemas, **options)
        if consumers is None:
            found = list(registered)
        else:
            found = []
            for item in consumers:
                found.extend(
                    [item] if isinstance(item, Consumer) else getattr(item, CONSUMERS_ATTR, ())
                )
        if not found:
            raise ConfigurationError("no consumers: mark functions with @consumes(channel)")
        self.consumers = dict((c.channel, c) for c in found)
        self.dead_letter = dead_letter
        self.prefetch = max(1, int(prefetch))
        self.stats = dict((channel, Stats()) for channel in self.consumers)
        self._stopping = False
        self._order = deque(self.consumers)
        self._durable_channels = {}  # durable channel -> (settings, dead-letter channel)

    def stop(self):
        """Stop after the message being handled (safe from signal handlers and threads)."""
        self._stopping = True

    def run(self, handle_signals=True):
        """Connect, then handle messages until :meth:`stop` (or SIGINT/SIGTERM)."""
        restore = self._install_signals() if handle_signals else {}
        try:
            self.connect()
            for channel in self.consumers:
                settings = self.durability(channel)
                if settings is None:
                    self.transport.listen(channel)
                else:
                    self._listen_durable(channel, settings)
            log.info("legacy worker consuming %s on %s", ", ".join(self.consumers), self.url)
            while not self._stopping:
                try:
                    item = self._next(1.0)
                except LayerError as exc:
                    if self._stopping:
                        break
                    self._recover(exc, lambda: self._stopping)
                    continue
                if item is None:
                    continue
                try:
                    self._handle(item[0], item[1])
                except LayerError as exc:
                    log.error(
                        "message on %s: the connection failed while handling it: %s", item[0], exc
                    )
                except Exception:  # the last safety net: the loop never dies of one message
                    log.exception("unexpected error while handling a message on %s", item[0])
        finally:
            for signum, previous in restore.items():
                signal.signal(signum, previous)
            self.close()
            log.info(
                "legacy worker stopped (%s)",
                ", ".join(
                    "{0}: {1} processed".format(c, s.processed) for c, s in self.stats.items()
                ),
            )

    def _install_signals(self):
        if threading.current_thread().name != "MainThread":
            return {}  # signal handlers can only be set in the main thread
        restore = {}
        for signum in (signal.SIGINT, signal.SIGTERM):
            restore[signum] = signal.getsignal(signum)
            signal.signal(signum, lambda *args: self.stop())
        return restore

    def _next(self, timeout):
        """The next (channel, raw message), fairly over the consumers' channels, or None."""
        buffers = self.transport.buffers
        order = self._order
        for _ in range(2):
            for _ in range(len(order)):
                channel = order[0]
                order.rotate(-1)
                box = buffers.get(channel)
                if box:
                    return channel, box.popleft()
            if self._stopping:
                return None
            for channel in order:
                self.transport.want(channel, self.prefetch)
            self.transport.poll(timeout)
        return None

    def _context(self, channel, message, attempt):
        return Context(self, channel, message, attempt)

    def _handle(self, channel, data):
        if isinstance(data, Delivery):
            self._handle_delivery(channel, data)  # durable_worker.py
            return
        stats = self.stats[channel]
        stats.received += 1
        try:
            message = decode(data, channel)
        except MessageInvalid as exc:
            self._reject(channel, data, exc.message_id, "{0}".format(exc))
            return
        if message.expires_at is not None and message.expires_at <= now_ms():
            stats.expired += 1
            return
        contract = self.schemas.contract(channel)
        body = message.body
        if contract is not None:
            try:
                body = message.body = contract.validate(body)
            except SchemaError as exc:
                reason = "message on {0!r} does not fit {1}: {2}".format(
                    channel, contract.name, exc
                )
                self._reject(channel, data, message.id, reason)
                return
        consumer = self.consumers[channel]
        ctx = Context(self, channel, message)
        try:
            result = consumer.func(body, ctx) if consumer.takes_context else consumer.func(body)
        except Exception as exc:  # a failing consumer never stops the loop
            stats.failed += 1
            log.exception("consumer %s failed on message %s", consumer.name, message.id)
            if message.reply_channel is not None and self._may_reply(channel, message):
                self._send_quietly(message, exc)
            return
        if (
            message.reply_channel is not None
            and not ctx.replied
            and self._may_reply(channel, message)
        ):
            try:
                self.reply(message, result, channel=channel)
            except SvcbusError as exc:
                log.error("reply of %s to %s failed: %s", consumer.name, message.reply_channel, exc)
                self._send_quietly(message, exc)
        stats.processed += 1

    def _may_reply(self, channel, message):
        """Whether the message's reply channel may be answered: only process channels may.

        Anything else is counted (``bad_reply_channel``) and not answered; the
        first of each channel is logged, the rest only counted.
        """
        if is_reply_channel(message.reply_channel):
            return True
        stats = self.stats[channel]
        stats.bad_reply_channel += 1
        if stats.bad_reply_channel == 1:
            log.warning(
                "message on %s asks for a reply on %r, which is not a process-specific channel: "
                "not replied to (further ones are only counted in stats.bad_reply_channel)",
                channel,
                message.reply_channel[:120],
            )
        return False

    def _send_quietly(self, message, error):
        try:
            self.reply_error(message, error)
        except SvcbusError as exc:
            log.error("could not send a failure report: %s", exc)

    def _reject(self, channel, data, message_id, reason):
        self.stats[channel].invalid += 1
        message_id = message_id or peek_id(data)
        log.warning(
            "invalid message %s on %s dropped: %s", message_id or "(no id)", channel, reason
        )
        if self.dead_letter is None:
            return
        letter = {
            "channel": channel,
            "reason": reason,
            "message_id": message_id,
            "payload": data.decode("utf-8", "replace"),
        }
        try:
            sent_at = now_ms()
            encoded = encode(
                letter,
                id=new_message_id(),
                contract="DeadLetter",
                version=1,
                sent_at=sent_at,
                expires_at=sent_at + self._expiry_ms,
            )
            self.transport.send(self.dead_letter, encoded)
            self.stats[channel].dead_lettered += 1
        except SvcbusError as exc:
            log.error("dead-letter channel %s refused a message: %s", self.dead_letter, exc)
