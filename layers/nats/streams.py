"""Named channels' waiting rooms: one JetStream stream and one shared consumer each."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid

import nats.errors
from nats.js import JetStreamContext, api
from nats.js.errors import APIError

from svcbus.errors import LayerError
from svcbus.layer import LayerOptions

from .config import CONSUMER, MAKER_WAIT, Subjects
from .connection import Connection
from .wire import CONSUMER_EXISTS, STREAM_CONFIG_DIFFERS


class Streams:
    """Makes and configures channel streams (docs/protocol.md, "The stream")."""

    def __init__(self, conn: Connection, options: LayerOptions, subjects: Subjects) -> None:
        self._conn = conn
        self._options = options
        self._subjects = subjects
        # Names this process in the streams it creates, so that of several processes
        # creating one stream at once exactly one succeeds (see _make).
        self._maker = f"svcbus: being made by {uuid.uuid4().hex}"

    def config(self, channel: str) -> api.StreamConfig:
        """The stream of ``channel``: capacity and expiry are the channel's own."""
        expiry = self._options.expiry
        return api.StreamConfig(
            name=self._subjects.stream(channel),
            subjects=[self._subjects.channel_root + channel],
            # Interest retention with one no-ack consumer: a message leaves the stream
            # when it is delivered, so the stream holds exactly the waiting messages
            # (what capacity counts) and no per-message acknowledgement is needed.
            retention=api.RetentionPolicy.INTEREST,
            storage=api.StorageType.MEMORY,
            discard=api.DiscardPolicy.NEW,
            max_msgs=self._options.capacity_for(channel),
            max_age=expiry,
            duplicate_window=min(expiry, 1.0),  # no message ids are used: keep it tiny
            num_replicas=1,
        )

    async def ensure(self, channel: str, *, for_send: bool) -> None:
        """Create the channel's stream and shared consumer; a sender applies its settings.

        Capacity and expiry are properties of the channel stored in its stream. The
        sending side decides them (it is the side that gets ``ChannelFull``), so a
        sender updates a stream made with other settings; a receiver uses it as is.
        The consumer must exist before the first message: an interest-retention
        stream keeps messages only for existing consumers.
        """
        error: BaseException | None = None
        for attempt in range(8):
            try:
                await self._make(channel, for_send=for_send)
                return
            except nats.errors.NoRespondersError:
                error = LayerError(
                    "JetStream is not enabled on the NATS server: start nats-server with -js "
                    "(named channels are JetStream streams)"
                )
            except (APIError, nats.errors.Error, asyncio.TimeoutError) as exc:
                error = exc
            # A server that just restarted may still be starting JetStream.
            await asyncio.sleep(min(2.0, 0.1 * 2**attempt))
        if isinstance(error, LayerError):
            raise error
        raise LayerError(f"cannot set up the NATS stream of {channel!r}: {error!r}")

    async def _make(self, channel: str, *, for_send: bool) -> None:
        js = (await self._conn.client()).jetstream()
        config = self.config(channel)
        # Born without its subject: an interest-retention stream drops what is
        # published while it has no consumer, so the subject is set only once the
        # consumer exists. The newborn names its maker: identical configurations
        # would let several processes "create" it at once and all set the subject,
        # and concurrent updates that add a subject can leave the server taking
        # every publish in twice (nats-server #7801). With the maker's name in it,
        # one create succeeds and the others see 10058.
        newborn = dataclasses.replace(
            config,
            subjects=[f"{self._subjects.prefix}.newch.{channel}"],
            description=self._maker,
        )
        try:
            await js.add_stream(newborn)
            created = True
        except APIError as exc:
            if exc.err_code != STREAM_CONFIG_DIFFERS:
                raise
            created = False  # it exists (or another process is making it)
        consumer = api.ConsumerConfig(
            durable_name=CONSUMER,
            ack_policy=api.AckPolicy.NONE,  # at-most-once: delivered is done
            max_waiting=512,
        )
        try:
            await js.add_consumer(self._subjects.stream(channel), consumer)
        except APIError as exc:
            if exc.err_code not in CONSUMER_EXISTS:  # made with other settings: fine
                raise
        if created:
            await js.update_stream(config)  # the subject: publishes land from now on
        elif for_send:
            await self._wait_for_subject(js, config)
            # The subject is in place, so this update changes settings only, which
            # is safe however many senders do it at once.
            await js.update_stream(config)

    async def _wait_for_subject(self, js: JetStreamContext, config: api.StreamConfig) -> None:
        """Wait until the stream's maker has given it its subject (at most MAKER_WAIT)."""
        assert config.name is not None and config.subjects is not None
        deadline = time.monotonic() + MAKER_WAIT
        while time.monotonic() < deadline:
            info = await js.stream_info(config.name)
            if info.config.subjects == config.subjects:
                return
            await asyncio.sleep(0.02)
