# -*- coding: utf-8 -*-
# Python 2.7 compatible on purpose: pyupgrade (UP) and py3-only idioms must not rewrite it.
"""Durable channels on JetStream for the legacy NATS transport (docs/protocol.md).

The mapping of ``layers/nats/durable.py``: a durable channel ``C`` is the stream
``<prefix>_dur_C`` (``.`` as ``:``) on subject ``<prefix>.dur.C``, file storage,
work-queue retention, discard-new at the channel's capacity, with the pull
consumer ``workers`` (explicit acks, ``ack_wait``, unlimited deliveries) shared
by every process of either runtime. A stream or consumer that exists already
is used as it is: whoever declared it first chose its settings.

Sending waits for the PubAck (``send_durable`` returns once JetStream stored
the message); the message carries ``Nats-Msg-Id`` so a repeat is stored once.
Receiving pulls one delivery at a time (``want`` asks for at most one), so a
delivery never waits in this process's buffer while its ``ack_wait`` runs.
Settling is a publish to the delivery's reply subject: ``+ACK``, ``-NAK
{"delay": ns}``, ``+TERM``.
"""

from __future__ import absolute_import, division, print_function, unicode_literals

import json
import time
from collections import deque

from .compat import to_bytes, to_text
from .durable import Delivery, attempt_of
from .errors import ChannelFull, ConfigurationError, LayerError

WORKERS = "workers"
_NS = 1000000000
_STREAM_EXISTS = 10058
_STREAM_FULL_CODES = (10077, 10078)
_CONSUMER_EXISTS = (10013, 10148)
PUBLISH_TRIES = 3


class NatsDurable(object):
    """Mixed into ``NatsTransport``: declaring, sending to and pulling from durable channels.

    Uses the transport's ``_request``, ``_pub``, ``_subscribe``, ``buffers`` and
    ``_durable_in`` (durable channel -> its pull box).
    """

    def durable_stream(self, channel):
        return "{0}_dur_{1}".format(self.prefix, channel.replace(".", ":"))

    def durable_subject(self, channel):
        return "{0}.dur.{1}".format(self.prefix, channel)

    def declare_durable(self, channel, settings):
        """Create ``channel``'s stream and consumer unless they exist (then use them as they are)."""
        if "!" in channel:
            raise ConfigurationError("{0!r}: only named channels can be durable".format(channel))
        if channel in self._durable_out:
            return
        settings = self.options.durability_for(channel, settings)
        stream = self.durable_stream(channel)
        config = {
            "name": stream,
            "subjects": [self.durable_subject(channel)],
            "retention": "workqueue",
            "max_msgs": self.options.capacity_for(channel),
            "discard": "new",
            "max_age": int(settings.max_age * _NS),
            "storage": "file",
            "num_replicas": settings.replicas,
            "duplicate_window": int(settings.duplicate_window * _NS),
        }
        self._api("$JS.API.STREAM.CREATE." + stream, config, channel, (_STREAM_EXISTS,))
        consumer = {
            "stream_name": stream,
            "config": {
                "durable_name": WORKERS,
                "deliver_policy": "all",
                "ack_policy": "explicit",
                "ack_wait": int(settings.ack_wait * _NS),
                "max_deliver": -1,
                "max_waiting": 512,
                "replay_policy": "instant",
            },
        }
        subject = "$JS.API.CONSUMER.DURABLE.CREATE.{0}.{1}".format(stream, WORKERS)
        self._api(subject, consumer, channel, _CONSUMER_EXISTS)
        self._durable_out[channel] = settings

    def _api(self, subject, request, channel, fine):
        from .nats import ConnectionLost  # nats.py imports this module

        payload = to_bytes(json.dumps(request))
        for attempt in range(8):
            try:
                status, data = self._request(subject, payload, 5.0)
            except ConnectionLost:
                raise
            except LayerError:
                status, data = "timeout", None
            if status not in ("503", "timeout"):
                break
            # A server that just restarted may still be starting JetStream.
            time.sleep(min(2.0, 0.1 * 2**attempt))
        else:
            raise LayerError(
                "JetStream did not answer for {0!r}: is nats-server running with -js? "
                "(durable channels are JetStream streams)".format(channel)
            )
        problem = json.loads(to_text(data)).get("error") if data else None
        if problem and problem.get("err_code") not in fine:
            raise ConfigurationError(
                "cannot set up the durable stream of {0!r}: {1}".format(
                    channel, problem.get("description", problem)
                )
            )

    def send_durable(self, channel, message, message_id):
        """Publish and return once JetStream confirmed it stored ``message``."""
        self.options.check_size(channel, message)
        self._ensure_up()
        headers = None
        if message_id:
            headers = b"NATS/1.0\r\nNats-Msg-Id: " + to_bytes(message_id) + b"\r\n\r\n"
        error = None
        for _ in range(PUBLISH_TRIES):
            try:
                status, data = self._request(
                    self.durable_subject(channel), message, 5.0 / PUBLISH_TRIES, headers
                )
            except LayerError as exc:  # no answer: publish again, the window stores it once
                error = exc
                continue
            if status == "503" or not data:
                error = LayerError("no stream answered (503)")
                time.sleep(0.1)
                continue
            answer = json.loads(to_text(data))
            problem = answer.get("error")
            if problem is None:
                return
            if problem.get("err_code") in _STREAM_FULL_CODES:
                raise ChannelFull(
                    "durable channel {0!r} holds {1} unacknowledged messages (its capacity); "
                    "its consumers are behind: retry later".format(
                        channel, self.options.capacity_for(channel)
                    )
                )
            raise LayerError(
                "JetStream refused a message for {0!r}: {1}".format(
                    channel, problem.get("description", problem)
                )
            )
        raise LayerError(
            "JetStream did not confirm storing a message for {0!r} ({1}); it may be stored: "
            "sending the same message id again is safe".format(channel, error)
        )

    def listen_durable(self, channel, settings):
        """Prepare to receive deliveries from durable ``channel`` (declared first)."""
        if channel in self._durable_in:
            return
        self._ensure_up()
        self.declare_durable(channel, settings)
        box = self._new_box(channel, self.durable_stream(channel), WORKERS)
        box.sid = self._subscribe(box.inbox, self._durable_handler(box))
        self._durable_in[channel] = box
        self.buffers.setdefault(channel, deque())

    def _durable_handler(self, box):
        buffer = self.buffers.setdefault(box.channel, deque())

        def on_message(subject, reply, headers, payload):
            if headers is not None and not payload:
                self._pull_status(box, headers)
                return
            box.requested = max(0, box.requested - 1)
            if reply:
                buffer.append(Delivery(payload, attempt_of(reply), to_text(reply)))

        return on_message

    def settle(self, delivery, verb, delay=None):
        """``+ACK``, ``-NAK`` (after ``delay`` seconds), ``+WPI`` or ``+TERM`` for ``delivery``."""
        if verb == b"-NAK" and delay:
            verb = to_bytes('-NAK {{"delay": {0}}}'.format(int(delay * _NS)))
        self._pub(delivery.reply, verb)

    def _durable_restore(self):
        """After a reconnect: declare again (a restarted server may have lost nothing, but
        the pull requests are gone)."""
        declared, self._durable_out = self._durable_out, {}
        for channel, settings in declared.items():
            self.declare_durable(channel, settings)
        for box in self._durable_in.values():
            box.requested = 0

    def _durable_release(self):
        """On close: give back deliveries taken but not handled (NAK: delivered again now)."""
        for channel in self._durable_in:
            for delivery in self.buffers.pop(channel, ()):
                self._pub(delivery.reply, b"-NAK")

    def _durable_sweep(self, now):
        for box in self._durable_in.values():
            if box.requested and now > box.pull_deadline:
                box.requested = 0
