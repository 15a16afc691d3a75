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
import time
from collections import deque
from typing import Any

import nats.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import api
from nats.js.errors import APIError

from svcbus.durable import Delivery, Durability, message_id_of
from svcbus.errors import ChannelFull, ConfigurationError, InvalidChannelName, LayerError
from svcbus.layer import LayerOptions

from .connection import Connection
from .wire import STREAM_CONFIG_DIFFERS, STREAM_FULL_CODES, api_error, round_trip

WORKERS = "workers"
"""Durable name of the explicit-ack pull consumer every process shares on a durable stream."""

FETCH_WAIT = 1.0
"""Seconds one pull request waits at the server; a waiting receiver renews it."""

PULL_LOST = 1.0
"""Seconds past a pull request's expiry after which, with no answer, it counts as lost.

A request dies without a word when its server does (or we reconnect elsewhere).
"""

PREFETCH = 64
"""Most messages a process's continuous pull holds or has asked for per channel.

Receivers ask for twice their batch (one handled, one on its way), up to this:
held messages are kept alive (``+WPI``) like handled ones, but one process
holding many would keep them from idle workers elsewhere.
"""

LEADERLESS_LIMIT = 30.0
"""Seconds a receiver keeps pulling while no consumer leader answers (503) before it fails."""

PUBLISH_TRIES = 3
"""A publish waits at most ``ack_timeout / PUBLISH_TRIES`` for its answer before the next try."""

STALE_CHECK = 0.1
"""Seconds a message may be held before its age is checked against ``max_age`` at take."""

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


class _Pull:
    """A channel's continuous pull: requests kept open ahead of the receivers.

    One pull request (``MSG.NEXT`` with a batch and an expiry) is asked before
    the held messages run out, so a receiver that comes back finds its next
    batch here, without a round trip per batch (nats-py's ``fetch`` made one, or
    two, per batch). The messages and statuses come to :meth:`on_message` on an
    inbox subscription of the pull's own.

    ``asked`` counts messages requested and not yet come: a 408 (expired) or
    409 (e.g. leadership change) says how many of its request never will
    (``Nats-Pending-Messages``); a request unanswered ``PULL_LOST`` past its
    expiry died with its server, and a 503 means no consumer leader: both
    forget everything asked.
    """

    __slots__ = (
        "_arrived",
        "_conn",
        "_expires_at",
        "_heartbeat",
        "_max_age",
        "_request",
        "asked",
        "held",
        "keep_alive",
        "leaderless",
        "reply",
        "sub",
        "waiting",
    )

    def __init__(self, conn: Connection, request: str, reply: str, settings: Durability) -> None:
        self._conn = conn
        self._max_age = settings.max_age
        self._request = request
        self.reply = reply
        self.sub: Subscription | None = None
        self._heartbeat = settings.heartbeat
        self._arrived = asyncio.Event()
        self._expires_at = 0.0
        self.asked = 0
        self.held: deque[tuple[float, Msg]] = deque()
        """Delivered messages no receiver took yet (their ``ack_wait`` runs), since when."""
        self.leaderless = False
        self.waiting = 0
        """Messages the receivers waiting for this pull asked for."""
        self.keep_alive: asyncio.Future[None] | None = None

    async def on_message(self, msg: Msg) -> None:
        headers = msg.headers
        status = headers.get("Status") if headers else None
        if status is None:
            self.held.append((time.monotonic(), msg))
            if self.asked:
                self.asked -= 1
        elif status == "100":
            return  # an idle heartbeat (not asked for)
        elif status == "503":
            self.leaderless = True
            self.asked = 0
        else:
            # 408 expired, 409 (leadership change, max waiting, ...), 404: the
            # request is over; what it did not deliver never comes.
            left = headers.get("Nats-Pending-Messages") if headers else None
            self.asked = max(0, self.asked - int(left)) if left and left.isdigit() else 0
        self._arrived.set()

    async def ask(self, limit: int) -> None:
        """Keep a request open for twice ``limit`` messages (up to ``PREFETCH``) ahead."""
        now = asyncio.get_running_loop().time()
        if self.asked and now > self._expires_at + PULL_LOST:
            self.asked = 0  # unanswered well past its expiry: lost with its server
        # Other receivers waiting here count too, so that concurrent workers
        # taking one message each are not served two at a time.
        want = min(PREFETCH, 2 * limit + self.waiting) - len(self.held) - self.asked
        if want <= 0 or (self.asked and want < limit):
            return  # enough on its way (small top-ups would cost a request each)
        nc = self._conn.nc or await self._conn.client()
        body = b'{"batch":%d,"expires":%d}' % (want, int(FETCH_WAIT * 1e9))
        try:
            await nc.publish(self._request, body, reply=self.reply)
        except nats.errors.Error as exc:
            raise LayerError(f"NATS connection failed: {exc!r}") from None
        self.asked += want
        self._expires_at = now + FETCH_WAIT

    def take(self, limit: int) -> list[Delivery]:
        """Up to ``limit`` held messages, less those the stream's ``max_age`` removed.

        JetStream drops a message past ``max_age`` delivered or not; one held
        here meanwhile is not handed out (only one held a while is checked).
        """
        held = self.held
        taken: list[Delivery] = []
        checked_before = time.monotonic() - STALE_CHECK
        while held and len(taken) < limit:
            since, msg = held.popleft()
            if since < checked_before and self._removed(msg):
                continue
            taken.append(NatsDelivery(msg))
        return taken

    def _removed(self, msg: Msg) -> bool:
        """Whether ``msg`` is older than ``max_age`` (its time is in the ack subject)."""
        # $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ns>.<pending>, or
        # with <domain>.<account hash> after ACK (and a token at the end).
        tokens = msg.reply.split(".")
        try:
            stored = int(tokens[7] if len(tokens) == 9 else tokens[9]) / 1e9
        except (IndexError, ValueError):
            return False  # not the usual form: hand it out, its ack says no more
        return stored + self._max_age < time.time()

    async def wait(self) -> None:
        """Wait for a message or status, at most until the open request must be renewed."""
        self._arrived.clear()
        if self.held or self.leaderless:
            return  # came while the request went out
        left = self._expires_at + PULL_LOST - asyncio.get_running_loop().time()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._arrived.wait(), max(0.01, left))

    async def keep_held_alive(self) -> None:
        """Signal progress for held messages, as the runtime does for handled ones."""
        while True:
            await asyncio.sleep(self._heartbeat)
            for _, msg in list(self.held):
                with contextlib.suppress(nats.errors.Error):
                    await msg.in_progress()

    async def close(self) -> None:
        if self.keep_alive is not None:
            self.keep_alive.cancel()
        held, self.held = self.held, deque()
        self.asked = 0
        with contextlib.suppress(nats.errors.Error, asyncio.TimeoutError):
            if self.sub is not None:
                await self.sub.unsubscribe()
            for _, msg in held:
                await msg.nak()


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
        self._pulls: dict[str, _Pull] = {}
        """Each receiving channel's continuous pull."""

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
        pull = self._pulls.get(channel) or await self._pull(channel)
        leaderless_since: float | None = None
        while True:
            if pull.held:
                taken = pull.take(limit)
                await pull.ask(limit)
                if taken:
                    return taken
                continue  # all held ones had expired
            if pull.leaderless:
                # 503 to a pull: no consumer leader answers. On a cluster that is a
                # node's death and the election after it (a few seconds), or our
                # reconnect to another node: pull again after a moment.
                pull.leaderless = False
                leaderless_since = leaderless_since or asyncio.get_running_loop().time()
                await self._wait_for_leader(channel, leaderless_since)
            await pull.ask(limit)
            pull.waiting += limit
            try:
                await pull.wait()
            finally:
                pull.waiting -= limit

    async def _wait_for_leader(self, channel: str, since: float) -> None:
        if asyncio.get_running_loop().time() - since > LEADERLESS_LIMIT:
            raise LayerError(
                f"no JetStream consumer leader for durable channel {channel!r} answered for "
                f"{LEADERLESS_LIMIT:g}s: are enough cluster nodes up for its replicas?"
            )
        await asyncio.sleep(FETCH_WAIT / 4)

    async def _pull(self, channel: str) -> _Pull:
        nc = await self._conn.client()
        pull = self._pulls.get(channel)
        if pull is None:
            pull = _Pull(
                self._conn,
                f"$JS.API.CONSUMER.MSG.NEXT.{self.stream(channel)}.{WORKERS}",
                nc.new_inbox(),
                self.settings[channel],
            )
            self._pulls[channel] = pull
            # A subscription of its own: pulled messages keep their stream subject,
            # only the subscription tells whose they are.
            pull.sub = await self._conn.subscribe(pull.reply, pull.on_message)
            await round_trip(nc)  # subscribed before the first request's answer comes
            pull.keep_alive = asyncio.ensure_future(pull.keep_held_alive())
        return pull

    async def close(self) -> None:
        """Stop pulling; give held messages back (``-NAK``) for any process to take at once.

        Handed-out, unacknowledged deliveries return after ``ack_wait``.
        """
        pulls, self._pulls = list(self._pulls.values()), {}
        for pull in pulls:
            await pull.close()
