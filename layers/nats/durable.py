"""Durable channels on JetStream: a file-stored work queue and one shared explicit-ack consumer.

Apart from the at-most-once channel streams (``streams.py``): a durable channel
``C`` is the stream ``<prefix>_dur_C`` on subject ``<prefix>.dur.C``
(docs/protocol.md, "Durable channels"):

* file storage, ``num_replicas`` from the channel's settings (R1 by default);
* work-queue retention, so an acknowledged message leaves the stream and
  ``max_msgs`` (the channel's capacity, discard-new) counts exactly the
  messages not yet acknowledged;
* ``duplicate_window``: a publish carries ``Nats-Msg-Id`` = the envelope id, so
  a publish retried after a lost answer is stored once;
* the pull consumer ``workers`` with explicit acks and ``ack_wait``, shared by
  every process. ``max_deliver`` is unlimited on purpose: the runtime counts
  attempts and dead-letters a delivery beyond ``max_attempts`` without running
  its handler, so no message is ever stuck in the stream undelivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import nats.errors
from nats.aio.msg import Msg
from nats.js import api
from nats.js.client import JetStreamContext
from nats.js.errors import APIError, ServiceUnavailableError

from svcbus.durable import Delivery, Durability, message_id_of
from svcbus.errors import ChannelFull, ConfigurationError, InvalidChannelName, LayerError
from svcbus.layer import LayerOptions

from .connection import Connection
from .wire import STREAM_CONFIG_DIFFERS, STREAM_FULL_CODES, api_error

WORKERS = "workers"
"""Durable name of the explicit-ack pull consumer every process shares on a durable stream."""

FETCH_WAIT = 1.0
"""Seconds one pull request waits at the server; a waiting receiver renews it."""

LEADERLESS_LIMIT = 30.0
"""Seconds a receiver keeps pulling while no consumer leader answers (503) before it fails."""

PUBLISH_TRIES = 3
"""A publish waits at most ``ack_timeout / PUBLISH_TRIES`` for its answer before the next try."""

RETRY_PAUSE = 0.1
"""Seconds between two publishes of one message that no stream answered (same id)."""


def _no_answer(answer: asyncio.Future[Msg]) -> None:
    if not answer.done():
        answer.set_exception(nats.errors.TimeoutError())


def _pub_ack_start(stream: str) -> bytes:
    """How a PubAck from ``stream`` starts: the server writes ``stream`` first, compactly.

    A publish carries no ``Nats-Expected-Stream`` (the server would parse and
    check it per message); comparing these bytes with the answer's start keeps
    that protection (a stream other than ours stored the message) for free.
    """
    return b'{"stream":' + json.dumps(stream).encode() + b","


def _delivered(msg: Msg) -> int:
    """The delivery count in a JetStream message's ack subject (1 for the first delivery).

    Read straight from the subject (``$JS.ACK.<stream>.<consumer>.<delivered>...``,
    or with ``<domain>.<account hash>`` after ``ACK`` in the newer form) instead of
    nats-py's ``msg.metadata``, which also builds sequence pairs and a datetime.
    """
    tokens = msg.reply.split(".")
    try:
        return int(tokens[4] if len(tokens) == 9 else tokens[6]) or 1
    except (IndexError, ValueError):
        return msg.metadata.num_delivered or 1  # not the usual form: nats-py decides


class NatsDelivery(Delivery):
    """A JetStream message delivered by the ``workers`` consumer."""

    __slots__ = ("_msg",)

    def __init__(self, msg: Msg) -> None:
        super().__init__(msg.data, _delivered(msg))
        self._msg = msg

    async def ack(self) -> None:
        await self._msg.ack()

    async def nak(self, delay: float) -> None:
        await self._msg.nak(delay=delay)

    async def in_progress(self) -> None:
        await self._msg.in_progress()  # +WPI: restarts the delivery's ack_wait

    async def term(self) -> None:
        await self._msg.term()  # +TERM: never redelivered


class DurableChannels:
    """The durable channels one layer declared, their streams and pull subscriptions."""

    def __init__(
        self, conn: Connection, options: LayerOptions, prefix: str, ack_timeout: float
    ) -> None:
        self._conn = conn
        self._options = options
        self._prefix = prefix
        self.ack_timeout = ack_timeout
        """Seconds a publish waits for JetStream's storage confirmation."""
        self.settings: dict[str, Durability] = {}
        """Declared durable channels; ``send`` on one of them stores durably."""
        self.prefix = ""
        """Reply-subject prefix of durable publishes' answers (the layer routes them here)."""
        self._seq = 0
        self._waiting: dict[int, asyncio.Future[Msg]] = {}
        """Durable publishes waiting for JetStream's answer, by reply sequence."""
        self._stored_here: dict[str, bytes] = {}
        """The start of a PubAck from each durable channel's own stream, by channel."""
        self._pulls: dict[str, JetStreamContext.PullSubscription] = {}
        self._fetching: dict[str, asyncio.Lock] = {}

    def stream(self, channel: str) -> str:
        """The stream of durable ``channel`` ('.' is not allowed in stream names)."""
        return f"{self._prefix}_dur_{channel.replace('.', ':')}"

    def subject(self, channel: str) -> str:
        """The subject durable ``channel``'s messages are published on."""
        return f"{self._prefix}.dur.{channel}"

    def config(self, channel: str, settings: Durability) -> api.StreamConfig:
        """The stream of durable ``channel``."""
        return api.StreamConfig(
            name=self.stream(channel),
            subjects=[self.subject(channel)],
            retention=api.RetentionPolicy.WORK_QUEUE,
            storage=api.StorageType.FILE,
            discard=api.DiscardPolicy.NEW,
            max_msgs=self._options.capacity_for(channel),
            max_age=settings.max_age,
            duplicate_window=settings.duplicate_window,
            num_replicas=settings.replicas,
        )

    async def declare(self, channel: str, settings: Durability) -> None:
        """Create or update ``channel``'s stream and consumer with ``settings``."""
        if "!" in channel:
            raise InvalidChannelName(f"{channel!r}: only named channels can be durable")
        js = (await self._conn.client()).jetstream()
        config = self.config(channel, settings)
        consumer = api.ConsumerConfig(
            durable_name=WORKERS,
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=settings.ack_wait,
            max_deliver=-1,
            max_waiting=512,
        )
        try:
            try:
                await js.add_stream(config)
            except APIError as exc:
                if exc.err_code != STREAM_CONFIG_DIFFERS:
                    raise
                # Made with other settings (capacity, replicas): the declaring side's win.
                await js.update_stream(config)
            await js.add_consumer(self.stream(channel), consumer)  # creates or updates
        except nats.errors.NoRespondersError:
            raise LayerError(
                "JetStream is not enabled on the NATS server: start nats-server with -js "
                "(durable channels are JetStream streams)"
            ) from None
        except APIError as exc:
            raise ConfigurationError(
                f"cannot set up the durable stream of {channel!r}: {exc.description} "
                f"(JetStream error {exc.err_code})"
            ) from None
        except (nats.errors.Error, asyncio.TimeoutError) as exc:
            raise LayerError(f"cannot set up the durable stream of {channel!r}: {exc!r}") from None
        self.settings[channel] = settings

    async def send(self, channel: str, message: bytes) -> None:
        """Publish and return once JetStream confirmed it stored ``message``.

        The publish carries a reply subject of this layer's (``<prefix><n>``), and
        :meth:`on_answer` hands JetStream's answer to the waiting send: concurrent
        sends are in flight together on the one connection, with a future each
        and no JetStream request machinery per message (nats-py's ``js.publish``
        cost about as much as the rest of a send).

        Without an answer (a reconnect, a stream leader election: a 503 or a
        timeout) it publishes again with the same id until ``ack_timeout`` has
        passed; the duplicate window stores the message once.
        """
        nc = self._conn.nc or await self._conn.client()
        message_id = message_id_of(message)
        # The id for the duplicate window; no ``Nats-Expected-Stream``: the server
        # parsed and checked it per message (about a fifth of a send's cost), and
        # the PubAck names the storing stream anyway (checked below).
        headers = {"Nats-Msg-Id": message_id} if message_id is not None else None
        subject = self.subject(channel)
        stored_here = self._stored_here.get(channel)
        if stored_here is None:
            stored_here = self._stored_here[channel] = _pub_ack_start(self.stream(channel))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.ack_timeout
        error: BaseException | None = None
        while (left := deadline - loop.time()) > 0:
            tried = loop.time()
            self._seq = seq = self._seq + 1
            answer: asyncio.Future[Msg] = loop.create_future()
            self._waiting[seq] = answer
            timer = loop.call_later(min(left, self.ack_timeout / PUBLISH_TRIES), _no_answer, answer)
            try:
                await nc.publish(subject, message, reply=f"{self.prefix}{seq}", headers=headers)
                msg = await answer
            except nats.errors.TimeoutError as exc:
                error = exc
            except nats.errors.Error as exc:
                raise LayerError(f"NATS connection failed: {exc!r}") from None
            else:
                data = msg.data
                if data[:9] == b'{"error":':
                    raise self._refused(channel, api_error(data))
                if data.startswith(stored_here):
                    return  # a PubAck (``"duplicate": true`` too: stored before)
                if data:
                    self._check_stream(channel, data)
                    return  # our stream's PubAck in another form (spaces, field order)
                # An empty answer is a status: 503, no stream (leader) listens yet.
                error = nats.errors.NoRespondersError()
            finally:
                timer.cancel()
                del self._waiting[seq]
            # A 503 comes back at once: give the election a moment before the next try.
            await asyncio.sleep(max(0.0, min(RETRY_PAUSE - (loop.time() - tried), left)))
        raise LayerError(
            f"JetStream did not confirm storing a message for {channel!r} within "
            f"{self.ack_timeout:g}s ({error!r}); it may be stored: sending the same message id "
            "again is safe within the duplicate window"
        )

    def on_answer(self, seq: int, msg: Msg) -> None:
        """JetStream's answer to durable publish ``seq`` (late answers are dropped)."""
        waiting = self._waiting.get(seq)
        if waiting is not None and not waiting.done():
            waiting.set_result(msg)

    def _check_stream(self, channel: str, data: bytes) -> None:
        """Raise unless PubAck ``data`` names ``channel``'s stream.

        Only reached when the PubAck does not start as the server writes ours
        (``{"stream":"<stream>",``), so the JSON parse is off the usual path.
        """
        expected = self.stream(channel)
        try:
            stream = json.loads(data).get("stream")
        except (ValueError, AttributeError):
            raise LayerError(
                f"JetStream answered a message for {channel!r} with {data[:200]!r}, not a "
                "PubAck: is something else listening on the durable subjects?"
            ) from None
        if stream != expected:
            raise LayerError(
                f"a message for durable channel {channel!r} was stored by stream {stream!r}, "
                f"not by svcbus's stream {expected!r} (deleted, or another stream captures "
                f"subject {self.subject(channel)!r}); it will not reach the channel's "
                "consumers: remove or change that stream, then declare the channel again "
                "(restart the service or call declare_durable)"
            )

    def _refused(self, channel: str, error: dict[str, Any]) -> ChannelFull | LayerError:
        if error.get("err_code") in STREAM_FULL_CODES:
            return ChannelFull(
                f"durable channel {channel!r} holds {self._options.capacity_for(channel)} "
                "unacknowledged messages (its capacity); its consumers are behind: retry "
                "later or raise channel_capacity"
            )
        description = error.get("description", error)
        return LayerError(f"JetStream refused a message for {channel!r}: {description}")

    async def receive(self, channel: str, limit: int) -> list[Delivery]:
        """Wait for deliveries from the shared ``workers`` consumer; up to ``limit``."""
        if channel not in self.settings:
            raise ConfigurationError(
                f"{channel!r} is not a durable channel here: declare_durable() it first"
            )
        pull = await self._pull(channel)
        lock = self._fetching[channel]
        leaderless_since: float | None = None
        while True:
            # One pull subscription per channel and process: its fetches share an
            # inbox, so the process's workers take turns (handling stays concurrent).
            async with lock:
                try:
                    msgs = await pull.fetch(limit, timeout=FETCH_WAIT)
                except (nats.errors.TimeoutError, asyncio.TimeoutError):
                    # nats-py raises the plain asyncio one when the wait ran out
                    # before the request went out (seen on a cluster): nothing came,
                    # pull again.
                    continue
                except ServiceUnavailableError:
                    msgs = None
                except nats.errors.Error as exc:
                    raise LayerError(f"NATS connection failed: {exc!r}") from None
            if msgs is None:
                # 503 to a pull: no consumer leader answers. On a cluster that is a
                # node's death and the election after it (a few seconds), or our
                # reconnect to another node: pull again, outside the lock.
                leaderless_since = leaderless_since or asyncio.get_running_loop().time()
                await self._wait_for_leader(channel, leaderless_since)
                continue
            # A message fetched after a cancelled wait stays in the subscription's
            # queue: the next fetch returns it first.
            return [NatsDelivery(msg) for msg in msgs]

    async def _wait_for_leader(self, channel: str, since: float) -> None:
        if asyncio.get_running_loop().time() - since > LEADERLESS_LIMIT:
            raise LayerError(
                f"no JetStream consumer leader for durable channel {channel!r} answered for "
                f"{LEADERLESS_LIMIT:g}s: are enough cluster nodes up for its replicas?"
            )
        await asyncio.sleep(FETCH_WAIT / 4)

    async def _pull(self, channel: str) -> JetStreamContext.PullSubscription:
        pull = self._pulls.get(channel)
        if pull is None:
            self._fetching.setdefault(channel, asyncio.Lock())
            js = (await self._conn.client()).jetstream()
            pull = await js.pull_subscribe_bind(durable=WORKERS, stream=self.stream(channel))
            self._pulls[channel] = pull
        return pull

    async def close(self) -> None:
        """Leave the pull subscriptions; unacknowledged deliveries return after ``ack_wait``."""
        pulls, self._pulls = list(self._pulls.values()), {}
        for pull in pulls:
            with contextlib.suppress(nats.errors.Error, asyncio.TimeoutError):
                await pull.unsubscribe()
