# -*- coding: utf-8 -*-
# Python 2.7 compatible on purpose: pyupgrade (UP) and py3-only idioms must not rewrite it.
"""The legacy worker's side of durable channels: acknowledgements, retries, dead letters.

The algorithm of ``svcbus/runtime_durable.py``, blocking: a delivery is
acknowledged after its handler returned and its reply was sent; a handler's
exception gives it back (``-NAK`` with the backoff) while attempts are left;
the last attempt's failure stores a ``DeadLetter`` (error, attempts, the whole
original message) on the dead-letter channel, tells a waiting requester, then
terminates the delivery. A dead letter the channel refuses keeps the message
(``-NAK`` after ``backoff_max``). One thread: there are no in-progress signals
while a handler runs, so a handler must finish within the channel's
``ack_wait`` (or another worker gets the message too).
"""

from __future__ import absolute_import, division, print_function, unicode_literals

import logging

from .compat import now_ms
from .durable import Durability
from .envelope import decode, encode, new_message_id, peek_id
from .errors import ConfigurationError, MessageInvalid, MessageTooLarge, SvcbusError
from .schema import SchemaError

log = logging.getLogger("svcbus.legacy")

TRUNCATED_PAYLOAD = 1024
"""Bytes of the original message a dead letter keeps when the whole would not fit."""

_NO_DURABLE = (
    "durable channels are available to the legacy worker on nats:// only; on redis:// "
    "run {0!r}'s consumer with the main SDK (svc run), or make its contract not durable"
)


class DurableWorking(object):
    """Mixed into ``Worker``: consuming durable channels (see the module docstring)."""

    def _listen_durable(self, channel, settings):
        transport = self.transport
        if not hasattr(transport, "listen_durable"):
            raise ConfigurationError(_NO_DURABLE.format(channel))
        transport.listen_durable(channel, settings)
        dead = settings.dead_letter_channel(channel, self.dead_letter)
        # A dead letter is the last copy of a message: it is stored as durably.
        if self.durability(dead) is None:
            self._durable[dead] = Durability(max_age=settings.max_age, replicas=settings.replicas)
        transport.declare_durable(dead, self.durability(dead))
        self._durable_channels[channel] = (settings, dead)

    def _handle_delivery(self, channel, delivery):
        stats = self.stats[channel]
        stats.received += 1
        settings, dead = self._durable_channels[channel]
        try:
            message = decode(delivery.data, channel)
            contract = self.schemas.contract(channel)
            if contract is not None:
                message.body = contract.validate(message.body)
        except (MessageInvalid, SchemaError) as exc:
            stats.invalid += 1
            log.warning("invalid message on %s dead-lettered: %s", channel, exc)
            self._store_letter(channel, dead, delivery, "{0}".format(exc), None, None)
            self.transport.settle(delivery, b"+TERM")
            return
        if message.expires_at is not None and message.expires_at <= now_ms():
            stats.expired += 1
            self.transport.settle(delivery, b"+TERM")
            return
        if delivery.attempt > settings.max_attempts:
            # The last attempt's worker died without settling: do not run it again.
            self._exhausted(channel, delivery, message, None, "its last attempt never finished")
            return
        self._run_delivery(channel, delivery, message, settings)

    def _run_delivery(self, channel, delivery, message, settings):
        stats = self.stats[channel]
        consumer = self.consumers[channel]
        ctx = self._context(channel, message, delivery.attempt)
        try:
            body = message.body
            result = consumer.func(body, ctx) if consumer.takes_context else consumer.func(body)
        except Exception as exc:  # a failing consumer never stops the loop
            stats.failed += 1
            if delivery.attempt >= settings.max_attempts:
                self._exhausted(channel, delivery, message, exc, None)
                return
            delay = settings.backoff(delivery.attempt)
            stats.retried += 1
            log.warning(
                "consumer %s failed on message %s (attempt %d of %d): %s: %s; retrying in %gs",
                consumer.name,
                message.id,
                delivery.attempt,
                settings.max_attempts,
                type(exc).__name__,
                exc,
                delay,
            )
            self.transport.settle(delivery, b"-NAK", delay)
            return
        wants_reply = message.reply_channel is not None and not ctx.replied
        if wants_reply and self._may_reply(channel, message):
            try:
                self.reply(message, result, channel=channel)
            except SvcbusError as exc:
                log.error("reply to %s failed: %s", message.reply_channel, exc)
        stats.processed += 1
        # Acknowledged last: a worker dying before this line gets the message redelivered.
        self.transport.settle(delivery, b"+ACK")

    def _exhausted(self, channel, delivery, message, error, why):
        settings, dead = self._durable_channels[channel]
        attempts = min(delivery.attempt, settings.max_attempts)
        reason = "{0}: {1}".format(type(error).__name__, error) if error is not None else why
        log.error(
            "consumer of %s failed on message %s after %d attempts: dead-lettered to %s",
            channel,
            message.id,
            attempts,
            dead,
        )
        error_type = type(error).__name__ if error is not None else None
        if not self._store_letter(channel, dead, delivery, reason, attempts, error_type):
            # Not dead-lettered (its channel is full or away): keep the message.
            self.transport.settle(delivery, b"-NAK", settings.backoff_max)
            return
        if message.reply_channel is not None and self._may_reply(channel, message):
            self._send_quietly(message, error or RuntimeError(reason))
        self.transport.settle(delivery, b"+TERM")

    def _store_letter(self, channel, dead, delivery, reason, attempts, error_type):
        """Store a DeadLetter on ``dead``; whether it was stored (a too large one is cut)."""
        data = delivery.data
        letter = {
            "channel": channel,
            "reason": reason,
            "message_id": peek_id(data),
            "payload": data.decode("utf-8", "replace"),
            "size": len(data),
            "attempts": attempts,
            "error_type": error_type,
        }
        settings = self.durability(dead)
        for _ in range(2):
            sent_at = now_ms()
            letter_id = new_message_id()
            encoded = encode(
                letter,
                id=letter_id,
                contract="DeadLetter",
                version=1,
                sent_at=sent_at,
                expires_at=sent_at + int(settings.max_age * 1000),
            )
            try:
                self.transport.send_durable(dead, encoded, letter_id)
            except MessageTooLarge:
                if letter.get("truncated"):
                    break
                letter["payload"] = data[:TRUNCATED_PAYLOAD].decode("utf-8", "replace")
                letter["truncated"] = True
                continue
            except SvcbusError as exc:
                log.error("dead-letter channel %s refused a message: %s", dead, exc)
                return False
            self.stats[channel].dead_lettered += 1
            return True
        return False
