# -*- coding: utf-8 -*-
# Python 2.7 compatible on purpose: pyupgrade (UP) and py3-only idioms must not rewrite it.
"""NATS over a plain socket: the text protocol and the svcbus mapping of ``layers/nats.py``.

The mapping (subject root ``svcbus``), kept byte-compatible with the async layer:

* named channel ``chat.receive``: JetStream stream ``svcbus_ch_chat:receive`` (interest
  retention) on subject ``svcbus.ch.chat.receive``, read through the shared durable pull
  consumer ``receivers`` with ``ack_policy: none``
  (``$JS.API.CONSUMER.MSG.NEXT.<stream>.receivers``): a message leaves the stream when it
  is delivered (at-most-once). Senders create the consumer too, before publishing;
* process channel ``inbox.<token>!<local>``: core subject ``svcbus.p.inbox.<token>.<local>``;
* group ``room.lobby``: core subject ``svcbus.g.room.lobby``; ``group_add`` of another
  process's channel is a request to ``svcbus.ctl.<token>``; named-channel members are
  forwarded by a queue subscription ``fwd:<channel>``.

Everything runs in the caller's thread: :meth:`NatsTransport.poll` reads the socket
and dispatches by subscription id; handlers only change local state and write.
"""

from __future__ import absolute_import, division, print_function, unicode_literals

import json
import logging
import select
import socket
import time
from collections import deque

from .compat import monotonic, random_hex, to_bytes, to_text
from .errors import ChannelFull, ConfigurationError, LayerError, MessageTooLarge
from .names import owner_token, validate_channel, validate_group
from .nats_durable import NatsDurable

log = logging.getLogger("svcbus.legacy.nats")

CONSUMER = "receivers"
PULL_EXPIRES = 5.0
API_TIMEOUT = 5.0
CONTROL_TIMEOUT = 5.0
CONSUMER_INACTIVE = 3600.0
MAX_BACKOFF = 2.0
_STREAM_CONFIG_DIFFERS = 10058
_STREAM_FULL_CODES = (10077, 10078)
_CONSUMER_EXISTS = (10013, 10148)
_OK = b'{"ok":true}'
_NS = 1000000000
_SOCKET_ERRORS = (socket.error, OSError, IOError)


class ConnectionLost(LayerError):
    """The socket broke; the transport reconnects."""


class _Incoming(object):
    """A named channel this process receives from: its stream, pull inbox and buffer."""

    def __init__(self, channel, stream, inbox, consumer=CONSUMER):
        self.channel = channel
        self.stream = stream
        self.inbox = inbox
        self.durable = consumer != CONSUMER
        self.next_subject = "$JS.API.CONSUMER.MSG.NEXT.{0}.{1}".format(stream, consumer)
        self.requested = 0
        self.pull_deadline = 0.0
        self.sid = None


def parse_url(url):
    """``nats://[user:password@|token@]host[:port]`` -> (host, port, auth dict)."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() != "nats":
        raise ConfigurationError(
            "the legacy runtime speaks nats://host:port (no TLS), got {0!r}".format(url)
        )
    netloc = rest.split("/", 1)[0].split("?", 1)[0]
    auth = {}
    if "@" in netloc:
        userinfo, netloc = netloc.rsplit("@", 1)
        if ":" in userinfo:
            auth["user"], auth["pass"] = userinfo.split(":", 1)
        else:
            auth["auth_token"] = userinfo
    netloc = netloc.split(",", 1)[0]
    host, _, port = netloc.rpartition(":")
    if not host:
        host, port = netloc, "4222"
    if not port.isdigit():
        raise ConfigurationError("bad NATS server in {0!r}; write nats://host:port".format(url))
    return host or "127.0.0.1", int(port), auth


class NatsTransport(NatsDurable):
    """Blocking NATS transport for one process; see the module docstring."""

    system = "nats"

    def __init__(self, url, options):
        self.host, self.port, self._auth = parse_url(url)
        self.options = options
        self.prefix = options.prefix
        self.token = random_hex(5)
        self._sock = None
        self._inbuf = b""
        self._out = []
        self._out_size = 0
        self._closed = False
        self._down = False
        self.max_payload = 1024 * 1024
        self._root = "_INBOX.{0}".format(random_hex(11))
        self._ch_root = self.prefix + ".ch."
        self._p_root = self.prefix + ".p."
        self._g_root = self.prefix + ".g."
        self._ctl = "{0}.ctl.{1}".format(self.prefix, self.token)
        self._named_ctl = self.prefix + ".ctl.named"
        # Subscriptions: sid -> (subject, queue, handler); re-made after a reconnect.
        self._subs = {}
        self._next_sid = 0
        self._next_req = 0
        self._replies = {}  # request number -> (headers, payload) once answered
        self._waiting = set()  # request numbers still wanted
        self._seq = 0
        self._in_flight = {}  # publish seq -> (channel, message), until JetStream acks it
        self._refused = {}  # channel -> description of a refusal to raise on the next send
        self._retry = []  # (channel, message) bounced because a stream was missing
        self.lost = 0
        self._streams_out = set()
        self._incoming = {}
        self._durable_in = {}  # durable channel -> its pull box (nats_durable.py)
        self._durable_out = {}  # durable channel -> settings it was declared with
        self._heads = {}  # process head -> sid
        self._groups = {}  # group -> {"sid": sid, "members": {channel: deadline}}
        self._held = {}  # (group, named channel) -> (sid, deadline)
        self.buffers = {}  # channel -> deque of raw messages taken from the server
        self._last_sweep = 0.0
        self._pongs_wanted = 0

    # connection -----------------------------------------------------------------

    def connect(self):
        """Connect (once); raise LayerError within the connect timeout."""
        if self._sock is not None:
            return
        self._open_socket(self.options.connect_timeout)
        self._subscribe_base()

    def _open_socket(self, timeout):
        try:
            sock = socket.create_connection((self.host, self.port), timeout)
        except _SOCKET_ERRORS as exc:
            raise LayerError(
                "cannot reach NATS at {0}:{1}: is nats-server -js running? ({2})".format(
                    self.host, self.port, exc
                )
            )
        try:
            sock.settimeout(timeout)
            reader = sock.makefile("rb")
            info_line = reader.readline()
            if not info_line.startswith(b"INFO "):
                raise LayerError("{0}:{1} is not a NATS server".format(self.host, self.port))
            info = json.loads(to_text(info_line[5:]))
            if info.get("tls_required"):
                raise LayerError("the NATS server requires TLS, which the legacy runtime lacks")
            self.max_payload = int(info.get("max_payload", self.max_payload))
            connect = {
                "verbose": False,
                "pedantic": False,
                "headers": True,
                "no_responders": True,
                "protocol": 1,
                "lang": "python-svcbus-legacy",
                "version": "1",
                "name": "svcbus-legacy-" + self.token,
            }
            connect.update(self._auth)
            sock.sendall(b"CONNECT " + to_bytes(json.dumps(connect)) + b"\r\nPING\r\n")
            answer = reader.readline()
            while answer.startswith(b"INFO "):
                answer = reader.readline()
            if not answer.startswith(b"PONG"):
                raise LayerError(
                    "NATS at {0}:{1} refused the connection: {2}".format(
                        self.host, self.port, to_text(answer.strip())
                    )
                )
            reader.close()
        except _SOCKET_ERRORS as exc:
            sock.close()
            raise LayerError("NATS handshake failed: {0}".format(exc))
        except LayerError:
            sock.close()
            raise
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock
        self._inbuf = b""

    def _subscribe_base(self):
        self._subscribe(self._root + ".a.*", self._on_ack)
        self._subscribe(self._root + ".r.*", self._on_reply)
        self._subscribe(self._ctl, self._on_control)
        self._subscribe(self._named_ctl, self._on_named_control)
        self.flush()

    def close(self):
        """Put pulled but unhandled messages back on their channels, then disconnect."""
        if self._closed:
            return
        try:
            if self._sock is not None and not self._down:
                self._durable_release()
                for channel in list(self._incoming):
                    for data in self.buffers.get(channel, ()):
                        self._pub(self._ch_root + channel, data)
                    self.buffers.pop(channel, None)
                self.flush(timeout=2.0)
        except LayerError:
            pass
        self._closed = True
        if self._sock is not None:
            try:
                self._sock.close()
            except _SOCKET_ERRORS:
                pass
            self._sock = None

    def _lost(self, exc):
        if not self._down:
            self._down = True
            log.warning(
                "lost connection to NATS at %s:%s (%s); reconnecting", self.host, self.port, exc
            )
        if self._sock is not None:
            try:
                self._sock.close()
            except _SOCKET_ERRORS:
                pass
            self._sock = None
        self._out, self._out_size = [], 0
        self._pongs_wanted = 0
        self._inbuf = b""

    def reconnect(self, deadline=None, stopping=None):
        """Reconnect with bounded backoff; restore subscriptions, streams and consumers.

        Gives up (LayerError) at ``deadline`` (a monotonic time), or when ``stopping()``.
        """
        backoff = 0.05
        while True:
            try:
                self._open_socket(min(2.0, self.options.connect_timeout))
                break
            except LayerError as exc:
                if (deadline is not None and monotonic() > deadline) or (stopping and stopping()):
                    raise LayerError(
                        "NATS at {0}:{1} is unreachable: {2}".format(self.host, self.port, exc)
                    )
                time.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
        for sid in sorted(self._subs):
            subject, queue, _ = self._subs[sid]
            self._write_sub(sid, subject, queue)
        lost = len(self._in_flight)
        if lost:
            self.lost += lost
            log.warning("%d messages sent before the disconnect were never acknowledged", lost)
        self._in_flight.clear()
        self._streams_out.clear()
        self._down = False
        log.warning("reconnected to NATS at %s:%s", self.host, self.port)
        # A restarted server has lost its memory streams and every pull request.
        for box in self._incoming.values():
            box.requested = 0
            self._ensure_channel(box.channel, box.stream, for_send=False)
        self._durable_restore()

    def _ensure_up(self):
        if self._closed:
            raise LayerError("this NATS connection is closed")
        if self._sock is None:
            self.reconnect(deadline=monotonic() + self.options.connect_timeout)

    # writing ----------------------------------------------------------------------

    def _write(self, data):
        self._out.append(data)
        self._out_size += len(data)
        if self._out_size > 65536:
            self._send_out()

    def _send_out(self):
        if not self._out:
            return
        data = b"".join(self._out)
        self._out, self._out_size = [], 0
        if self._sock is None:
            raise ConnectionLost("not connected")
        try:
            self._sock.sendall(data)
        except _SOCKET_ERRORS as exc:
            self._lost(exc)
            raise ConnectionLost(str(exc))

    def _pub(self, subject, data, reply=None, headers=None):
        if len(data) > self.max_payload:
            raise MessageTooLarge(
                "message for {0!r} is {1} bytes, more than the NATS server's max_payload "
                "({2})".format(subject, len(data), self.max_payload)
            )
        if headers:
            # HPUB: only durable sends use headers (Nats-Msg-Id for deduplication).
            head = "HPUB {0} {1}{2} {3}\r\n".format(
                subject, reply + " " if reply else "", len(headers), len(headers) + len(data)
            )
            self._write(head.encode("utf-8") + headers + data + b"\r\n")
            return
        if reply:
            head = "PUB {0} {1} {2}\r\n".format(subject, reply, len(data))
        else:
            head = "PUB {0} {1}\r\n".format(subject, len(data))
        self._write(head.encode("utf-8") + data + b"\r\n")

    def _write_sub(self, sid, subject, queue):
        if queue:
            line = "SUB {0} {1} {2}\r\n".format(subject, queue, sid)
        else:
            line = "SUB {0} {1}\r\n".format(subject, sid)
        self._write(line.encode("utf-8"))

    def _subscribe(self, subject, handler, queue=None):
        self._next_sid += 1
        sid = self._next_sid
        self._subs[sid] = (subject, queue, handler)
        if self._sock is not None:
            self._write_sub(sid, subject, queue)
        return sid

    def _unsubscribe(self, sid):
        if self._subs.pop(sid, None) is not None and self._sock is not None:
            self._write("UNSUB {0}\r\n".format(sid).encode("utf-8"))

    def flush(self, timeout=API_TIMEOUT):
        """Write everything and wait for the server's PONG (it has seen all before it)."""
        self._ensure_up()
        self._write(b"PING\r\n")
        self._pongs_wanted += 1
        deadline = monotonic() + timeout
        while self._pongs_wanted > 0:
            if monotonic() > deadline:
                raise LayerError("NATS did not answer a PING within {0}s".format(timeout))
            self._io(deadline - monotonic())

    # reading ----------------------------------------------------------------------

    def _io(self, timeout):
        """Write pending output, wait up to ``timeout`` for input, dispatch it."""
        try:
            self._send_out()
            try:
                ready = select.select([self._sock], [], [], max(0.0, timeout))[0]
            except (select.error, ValueError) as exc:  # EINTR from a signal, or a closed socket
                if self._sock is None or getattr(exc, "args", (None,))[0] != 4:
                    raise socket.error(str(exc))
                return False
            if not ready:
                return False
            chunk = self._sock.recv(262144)
            if not chunk:
                raise socket.error("connection closed by the server")
        except ConnectionLost:
            raise
        except _SOCKET_ERRORS as exc:
            self._lost(exc)
            raise ConnectionLost(str(exc))
        self._inbuf = self._inbuf + chunk if self._inbuf else chunk
        self._parse()
        return True

    def _parse(self):
        buf = self._inbuf
        pos = 0
        size = len(buf)
        subs = self._subs
        while pos < size:
            end = buf.find(b"\r\n", pos)
            if end < 0:
                break
            line = buf[pos:end]
            op = line[:4]
            if op == b"MSG " or op == b"HMSG":
                parts = line.split()
                if op == b"MSG ":
                    header_size = 0
                    total = int(parts[-1])
                    reply = parts[3] if len(parts) == 5 else None
                else:
                    header_size = int(parts[-2])
                    total = int(parts[-1])
                    reply = parts[3] if len(parts) == 6 else None
                start = end + 2
                if start + total + 2 > size:
                    break  # the payload has not fully arrived
                headers = buf[start : start + header_size] if header_size else None
                payload = buf[start + header_size : start + total]
                pos = start + total + 2
                entry = subs.get(int(parts[2]))
                if entry is not None:
                    entry[2](parts[1], reply, headers, payload)
                continue
            pos = end + 2
            if op == b"PING":
                self._write(b"PONG\r\n")
            elif op == b"PONG":
                self._pongs_wanted = max(0, self._pongs_wanted - 1)
            elif op == b"-ERR":
                log.error("NATS error: %s", to_text(line[5:]))
            # +OK and INFO need nothing.
        self._inbuf = buf[pos:]

    def poll(self, timeout):
        """Do I/O for up to ``timeout`` seconds (returns early once something arrived)."""
        if self._sock is None:
            self._ensure_up()
        got = self._io(timeout)
        # Drain what is already readable without waiting, so one poll takes a whole burst.
        while got and self._io(0):
            pass
        self._after_io()
        return got

    def _after_io(self):
        if self._retry:
            retry, self._retry = self._retry, []
            for channel, message in retry:
                self._streams_out.discard(channel)
                try:
                    self.send(channel, message)
                except LayerError as exc:
                    self.lost += 1
                    log.error("message for %s lost on retry: %s", channel, exc)
        now = monotonic()
        if now - self._last_sweep >= 1.0:
            self._last_sweep = now
            self._sweep(now)

    def _sweep(self, now):
        for box in self._incoming.values():
            if box.requested and now > box.pull_deadline:
                box.requested = 0  # a pull request the server forgot (it restarted)
        self._durable_sweep(now)
        for group, entry in list(self._groups.items()):
            members = entry["members"]
            for channel in [c for c, until in members.items() if until <= now]:
                del members[channel]
            if not members:
                self._unsubscribe(entry["sid"])
                del self._groups[group]
        for key in [k for k, (_, until) in self._held.items() if until <= now]:
            self._unsubscribe(self._held.pop(key)[0])

    def _request(self, subject, payload, timeout, headers=None):
        """A core request/reply: returns (status or None, payload)."""
        self._ensure_up()
        self._next_req += 1
        number = "{0}".format(self._next_req)
        self._waiting.add(number)
        try:
            self._pub(subject, payload, self._root + ".r." + number, headers)
            deadline = monotonic() + timeout
            while number not in self._replies:
                left = deadline - monotonic()
                if left <= 0:
                    raise LayerError(
                        "no answer from NATS on {0} within {1}s".format(subject, timeout)
                    )
                self._io(left)
            headers, data = self._replies.pop(number)
        finally:
            self._waiting.discard(number)
        return _status(headers), data

    def _on_reply(self, subject, reply, headers, payload):
        number = to_text(subject).rsplit(".", 1)[1]
        if number in self._waiting:
            self._replies[number] = (headers, payload)

    # named channels: streams, consumers, sending ---------------------------------------

    def _stream_name(self, channel):
        return "{0}_ch_{1}".format(self.prefix, channel.replace(".", ":"))

    def _stream_config(self, channel, stream):
        # Byte-for-byte what nats-py sends for the async layer's StreamConfig, so a
        # stream made by either side has the same configuration (no "config differs").
        expiry = self.options.expiry
        return {
            "name": stream,
            "subjects": [self._ch_root + channel],
            "retention": "interest",
            "max_msgs": self.options.capacity_for(channel),
            "discard": "new",
            "discard_new_per_subject": False,
            "max_age": int(expiry * _NS),
            "max_msgs_per_subject": -1,
            "max_msg_size": -1,
            "storage": "memory",
            "num_replicas": 1,
            "no_ack": False,
            "duplicate_window": int(min(expiry, 1.0) * _NS),
            "sealed": False,
            "deny_delete": False,
            "deny_purge": False,
            "allow_rollup_hdrs": False,
        }

    def _ensure_stream(self, channel, stream, for_send):
        config = self._stream_config(channel, stream)
        payload = to_bytes(json.dumps(config))
        error = None
        for attempt in range(8):
            try:
                status, data = self._request(
                    "$JS.API.STREAM.CREATE." + stream, payload, API_TIMEOUT
                )
            except ConnectionLost:
                raise
            except LayerError as exc:
                error = exc
            else:
                if status == "503":
                    error = LayerError(
                        "JetStream is not enabled on the NATS server: start "
                        "nats-server with -js (named channels are streams)"
                    )
                else:
                    answer = json.loads(to_text(data))
                    problem = answer.get("error")
                    if problem is None:
                        return
                    if problem.get("err_code") == _STREAM_CONFIG_DIFFERS:
                        if not for_send:
                            return  # a sender made it with its settings: use it as is
                        status, data = self._request(
                            "$JS.API.STREAM.UPDATE." + stream, payload, API_TIMEOUT
                        )
                        problem = json.loads(to_text(data)).get("error")
                        if problem is None:
                            return
                    error = LayerError(
                        "cannot create the NATS stream for {0!r}: {1}".format(
                            channel, problem.get("description", problem)
                        )
                    )
            # A server that just restarted may still be starting JetStream.
            time.sleep(min(2.0, 0.1 * 2**attempt))
        raise error

    def _ensure_consumer(self, channel, stream):
        # Exactly what nats-py sends for the async layer's ConsumerConfig.
        request = {
            "stream_name": stream,
            "config": {
                "durable_name": CONSUMER,
                "deliver_policy": "all",
                "ack_policy": "none",
                "replay_policy": "instant",
                "max_waiting": 512,
                "ack_wait": 0,
                "idle_heartbeat": 0,
                "inactive_threshold": 0,
            },
        }
        subject = "$JS.API.CONSUMER.DURABLE.CREATE.{0}.{1}".format(stream, CONSUMER)
        status, data = self._request(subject, to_bytes(json.dumps(request)), API_TIMEOUT)
        problem = json.loads(to_text(data)).get("error") if data else {"description": status}
        if problem and problem.get("err_code") not in _CONSUMER_EXISTS:
            raise LayerError(
                "cannot create the consumer of {0!r}: {1}".format(
                    channel, problem.get("description", problem)
                )
            )

    def _ensure_channel(self, channel, stream, for_send):
        """Stream and shared consumer of a named channel.

        Interest retention keeps messages only for existing consumers, so senders
        create the consumer too, before their first publish.
        """
        self._ensure_stream(channel, stream, for_send)
        self._ensure_consumer(channel, stream)

    def send(self, channel, message):
        """Put ``message`` on ``channel``; ChannelFull reports an earlier refusal too."""
        validate_channel(channel)
        self.options.check_size(channel, message)
        self._ensure_up()
        if "!" in channel:
            head, _, local = channel.partition("!")
            self._pub(self._p_root + head + "." + local, message)
            return
        refused = self._refused.pop(channel, None)
        if refused == "full":
            raise ChannelFull(
                "channel {0!r} holds {1} messages (its capacity); its consumers are behind: "
                "retry later".format(channel, self.options.capacity_for(channel))
            )
        if refused is not None:
            raise LayerError("NATS refused a message for {0!r}: {1}".format(channel, refused))
        if channel not in self._streams_out:
            self._ensure_channel(channel, self._stream_name(channel), for_send=True)
            self._streams_out.add(channel)
        # Pipelined: the acknowledgement comes back on <root>.a.<seq>; a refusal is
        # raised by the next send to the channel (or by flush_acks).
        self._seq += 1
        self._in_flight[self._seq] = (channel, message)
        self._pub(self._ch_root + channel, message, "{0}.a.{1}".format(self._root, self._seq))
        if len(self._in_flight) > 1024:
            self.flush_acks()

    def flush_acks(self, timeout=API_TIMEOUT):
        """Wait until JetStream has acknowledged every message sent so far."""
        deadline = monotonic() + timeout
        mark = self._seq
        while self._in_flight and min(self._in_flight) <= mark:
            left = deadline - monotonic()
            if left <= 0:
                raise LayerError(
                    "NATS did not acknowledge {0} messages within {1}s".format(
                        len(self._in_flight), timeout
                    )
                )
            self._io(left)
        self._after_io()

    def _on_ack(self, subject, reply, headers, payload):
        entry = self._in_flight.pop(int(subject.rsplit(b".", 1)[1]), None)
        if entry is None:
            return
        if payload[:9] == b'{"error":':
            try:
                error = json.loads(to_text(payload))["error"]
            except (ValueError, KeyError, TypeError):
                error = {"description": to_text(payload[:200])}
            if error.get("err_code") in _STREAM_FULL_CODES:
                self._refused[entry[0]] = "full"
            else:
                self._refused[entry[0]] = error.get("description", "{0}".format(error))
        elif not payload and _status(headers) == "503":
            # No stream on the subject: a restarted server lost it. Recreate, resend.
            self._retry.append(entry)

    # named channels: receiving ------------------------------------------------------

    def listen(self, channel):
        """Prepare to receive from named ``channel`` (stream, consumer, pull inbox)."""
        validate_channel(channel)
        if channel in self._incoming or "!" in channel:
            return
        self._ensure_up()
        box = self._new_box(channel, self._stream_name(channel), CONSUMER)
        self._ensure_channel(channel, box.stream, for_send=False)
        box.sid = self._subscribe(box.inbox, self._pull_handler(box))
        self._incoming[channel] = box
        self.buffers.setdefault(channel, deque())

    def _new_box(self, channel, stream, consumer):
        number = len(self._incoming) + len(self._durable_in) + 1
        return _Incoming(channel, stream, "{0}.p{1}".format(self._root, number), consumer)

    def want(self, channel, count):
        """Make sure ``count`` messages of named ``channel`` are buffered or pulled for.

        A durable channel gets one at a time: a delivery waiting in the buffer
        would use up its ``ack_wait`` before its handler even started.
        """
        box = self._incoming.get(channel) or self._durable_in.get(channel)
        if box is None or self._sock is None:
            return
        if box.durable:
            count = 1
        missing = count - len(self.buffers[channel]) - box.requested
        if missing <= 0:
            return
        box.requested += missing
        box.pull_deadline = monotonic() + PULL_EXPIRES + 3.0
        payload = '{{"batch":{0},"expires":{1}}}'.format(missing, int(PULL_EXPIRES * _NS))
        self._pub(box.next_subject, payload.encode("ascii"), box.inbox)

    def _pull_handler(self, box):
        buffer = self.buffers.setdefault(box.channel, deque())

        def on_message(subject, reply, headers, payload):
            if headers is not None and not payload:
                self._pull_status(box, headers)
                return
            # No acknowledgement: the consumer is ack-none (delivered is done).
            box.requested = max(0, box.requested - 1)
            buffer.append(payload)

        return on_message

    def _pull_status(self, box, headers):
        """A status message on a pull inbox: the request ended (fully or partly)."""
        status = _status(headers)
        if status == "100":
            return  # idle heartbeat
        pending = _header(headers, b"Nats-Pending-Messages")
        if pending is not None and pending.isdigit():
            box.requested = max(0, box.requested - int(pending))
        else:
            box.requested = 0
        if status not in ("404", "408", "409"):
            log.debug("pull status %s on %s", status, box.channel)

    # process channels -----------------------------------------------------------------

    def owns(self, channel):
        """True for this process's own process-specific channels."""
        return "!" in channel and owner_token(channel) == self.token

    def new_channel(self, prefix):
        """A new process-specific channel ``prefix.<token>!<local>``."""
        validate_group(prefix)
        self._ensure_up()
        head = "{0}.{1}".format(prefix, self.token)
        if head not in self._heads:
            subject = "{0}{1}.".format(self._p_root, head)
            self._heads[head] = self._subscribe(subject + ">", self._head_handler(head, subject))
            self.flush()  # the server knows the subscription before anyone learns the name
        return "{0}!{1}".format(head, random_hex(6))

    def _head_handler(self, head, subject):
        bang = head + "!"
        offset = len(subject)

        def on_message(subj, reply, headers, payload):
            self._deliver_local(bang + to_text(subj[offset:]), payload)

        return on_message

    def _deliver_local(self, channel, payload):
        buffer = self.buffers.get(channel)
        if buffer is None:
            buffer = self.buffers[channel] = deque()
        if len(buffer) >= self.options.capacity_for(channel):
            return  # bounded memory: a full process channel drops
        buffer.append(payload)

    def discard_channel(self, channel):
        """Forget the local buffer of one of our process channels."""
        self.buffers.pop(channel, None)

    # groups ------------------------------------------------------------------------------

    def group_send(self, group, message):
        """Publish ``message`` to every member of ``group`` (one publish)."""
        validate_group(group)
        self.options.check_size(group, message)
        self._ensure_up()
        self._pub(self._g_root + group, message)

    def group_add(self, group, channel):
        """Add ``channel`` to ``group``; returns once it is effective."""
        validate_group(group)
        validate_channel(channel)
        self._ensure_up()
        if "!" not in channel:
            self._hold_named(group, channel)
        elif self.owns(channel):
            self._add_member(group, channel)
            self.flush()
        else:
            self._control(channel, "add", group)

    def group_discard(self, group, channel):
        """Remove ``channel`` from ``group`` (no error if it is not a member)."""
        validate_group(group)
        validate_channel(channel)
        self._ensure_up()
        if "!" not in channel:
            held = self._held.pop((group, channel), None)
            if held is not None:
                self._unsubscribe(held[0])
            payload = json.dumps({"op": "discard", "group": group, "channel": channel})
            self._pub(self._named_ctl, to_bytes(payload))
            self.flush()
        elif self.owns(channel):
            entry = self._groups.get(group)
            if entry is not None:
                entry["members"].pop(channel, None)
                if not entry["members"]:
                    self._unsubscribe(entry["sid"])
                    del self._groups[group]
        else:
            self._control(channel, "discard", group)

    def _add_member(self, group, channel):
        until = monotonic() + self.options.group_expiry
        entry = self._groups.get(group)
        if entry is None:
            members = {channel: until}
            entry = self._groups[group] = {"members": members, "sid": None}
            entry["sid"] = self._subscribe(self._g_root + group, self._group_handler(members))
        else:
            entry["members"][channel] = until

    def _group_handler(self, members):
        def on_message(subject, reply, headers, payload):
            now = monotonic()
            for channel, until in list(members.items()):
                if until <= now:
                    del members[channel]
                else:
                    self._deliver_local(channel, payload)

        return on_message

    def _control(self, channel, op, group):
        token = owner_token(channel)
        payload = to_bytes(json.dumps({"op": op, "group": group, "channel": channel}))
        try:
            status, data = self._request(
                "{0}.ctl.{1}".format(self.prefix, token), payload, CONTROL_TIMEOUT
            )
        except ConnectionLost:
            raise
        except LayerError:
            raise LayerError(
                "group_{0}({1!r}, {2!r}): the process owning the channel did not confirm "
                "within {3}s".format(op, group, channel, CONTROL_TIMEOUT)
            )
        if status == "503":
            return  # nobody owns the channel any more: nothing to add or remove
        if data != _OK:
            raise LayerError(
                "group_{0}({1!r}, {2!r}) failed: {3!r}".format(op, group, channel, data[:300])
            )

    def _on_control(self, subject, reply, headers, payload):
        try:
            request = json.loads(to_text(payload))
            op, group, channel = request["op"], request["group"], request["channel"]
            validate_group(group)
            validate_channel(channel)
            if not self.owns(channel):
                raise ValueError("{0!r} is not a channel of this process".format(channel))
            if op == "add":
                # SUB is written before the reply on the same connection: the server
                # knows the subscription before the requester sees the answer.
                self._add_member(group, channel)
            elif op == "discard":
                entry = self._groups.get(group)
                if entry is not None:
                    entry["members"].pop(channel, None)
            else:
                raise ValueError("unknown op {0!r}".format(op))
            answer = _OK
        except Exception as exc:  # a bad request must not break the loop
            answer = to_bytes(json.dumps({"ok": False, "error": "{0}".format(exc)}))
        if reply:
            self._pub(to_text(reply), answer)

    def _hold_named(self, group, channel):
        """Forward the group's messages into named ``channel`` (one forwarder per channel)."""
        until = monotonic() + self.options.group_expiry
        key = (group, channel)
        held = self._held.get(key)
        if held is not None:
            self._held[key] = (held[0], until)
            return
        if channel not in self._streams_out:
            self._ensure_channel(channel, self._stream_name(channel), for_send=True)
            self._streams_out.add(channel)
        subject = self._ch_root + channel

        def forward(subj, reply, headers, payload):
            entry = self._held.get(key)
            if entry is not None and entry[1] > monotonic():
                self._pub(subject, payload)

        sid = self._subscribe(self._g_root + group, forward, queue="fwd:" + channel)
        self._held[key] = (sid, until)
        self.flush()

    def _on_named_control(self, subject, reply, headers, payload):
        try:
            request = json.loads(to_text(payload))
            if request.get("op") == "discard":
                held = self._held.pop((request["group"], request["channel"]), None)
                if held is not None:
                    self._unsubscribe(held[0])
        except (ValueError, KeyError, TypeError):
            log.warning("bad message on %s ignored", self._named_ctl)


def _status(headers):
    """The status code of a NATS header block (``NATS/1.0 503``), or None."""
    if not headers:
        return None
    first = headers.split(b"\r\n", 1)[0].split()
    return to_text(first[1]) if len(first) > 1 else None


def _header(headers, name):
    for line in headers.split(b"\r\n")[1:]:
        key, sep, value = line.partition(b":")
        if sep and key.strip().lower() == name.lower():
            return to_text(value.strip())
    return None
