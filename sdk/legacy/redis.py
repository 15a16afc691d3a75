# -*- coding: utf-8 -*-
# Python 2.7 compatible on purpose: pyupgrade (UP) and py3-only idioms must not rewrite it.
"""Redis (RESP2) over plain sockets: the svcbus mapping of ``layers/redis/``.

Same keys, scripts and pub/sub channels as the async layer (prefix ``svcbus``):

* named channel ``chat.receive``: list ``svcbus:c:chat.receive``, items
  ``<13-digit deadline ms>:<message>``, pushed by SEND_SCRIPT (capacity check, TTL),
  popped by POP_SCRIPT (skips expired items) or BLPOP;
* process channel ``inbox.<token>!<local>``: list ``svcbus:p:inbox.<token>``, items
  ``<deadline>:<local>:<message>``;
* group ``room.lobby``: pub/sub channel ``svcbus:g:room.lobby``; named members in the
  sorted set ``svcbus:gn:room.lobby``; ``group_add`` of another process's channel is a
  JSON control message on ``svcbus:ctl:<token>``, acknowledged once subscribed.

Three connections: commands (sends, pops, publishes; one answer at a time), blocking
pops (BLPOP over every key this process waits on), and pub/sub. :meth:`poll` waits
on the last two with ``select``. One server only (no sharding, Sentinel or TLS).
"""

from __future__ import absolute_import, division, print_function, unicode_literals

import json
import logging
import select
import socket
import time
from collections import deque

from .compat import integer_types, monotonic, now_ms, random_hex, to_bytes, to_text
from .errors import ChannelFull, ConfigurationError, LayerError
from .names import owner_token, validate_channel, validate_group
from .options import userinfo
from .redis_wire import POP_SCRIPT, POP_SHA, SEND_SCRIPT, SEND_SHA, quarantine_key, split_item

log = logging.getLogger("svcbus.legacy.redis")

BLOCK_SECONDS = 1
MAX_FETCH = 256
ACK_TIMEOUT = 5.0
MAX_BACKOFF = 2.0
_SOCKET_ERRORS = (socket.error, OSError, IOError)


class ConnectionLost(LayerError):
    """A socket broke; the transport reconnects."""


class ReplyError(Exception):
    """An error reply (``-ERR ...``) from Redis."""


def pack(*args):
    """One command in RESP: an array of bulk strings."""
    out = [b"*" + str(len(args)).encode("ascii") + b"\r\n"]
    for value in args:
        if isinstance(value, integer_types):
            value = str(value).encode("ascii")
        elif not isinstance(value, bytes):
            value = value.encode("utf-8")
        out.append(b"$" + str(len(value)).encode("ascii") + b"\r\n" + value + b"\r\n")
    return b"".join(out)


def _deadline(ms):
    """The ``<13-digit deadline>:`` head of a list item."""
    return ("%013d:" % ms).encode("ascii")


class _Incomplete(Exception):
    pass


def _parse(buf, pos):
    """One RESP2 reply from ``buf`` at ``pos`` -> (value, next position); _Incomplete if cut."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        raise _Incomplete()
    kind = buf[pos : pos + 1]
    line = buf[pos + 1 : end]
    pos = end + 2
    if kind == b"+":
        return line, pos
    if kind == b":":
        return int(line), pos
    if kind == b"-":
        return ReplyError(to_text(line)), pos
    if kind == b"$":
        size = int(line)
        if size < 0:
            return None, pos
        if len(buf) < pos + size + 2:
            raise _Incomplete()
        return buf[pos : pos + size], pos + size + 2
    if kind == b"*":
        count = int(line)
        if count < 0:
            return None, pos
        items = []
        for _ in range(count):
            item, pos = _parse(buf, pos)
            items.append(item)
        return items, pos
    raise LayerError("unexpected reply from redis: {0!r}".format(buf[pos - 2 : pos + 40]))


class _Conn(object):
    """One RESP connection with its own read buffer (so ``select`` sees the truth)."""

    def __init__(self, server):
        self.server = server
        self.sock = None
        self.buf = b""

    def open(self, timeout):
        server = self.server
        try:
            self.sock = socket.create_connection((server.host, server.port), timeout)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.sock.settimeout(None)
        except _SOCKET_ERRORS as exc:
            self.sock = None
            raise ConnectionLost("cannot connect to redis at {0}: {1}".format(server.name, exc))
        setup = []
        if server.password is not None:
            setup.append(
                pack(b"AUTH", server.user, server.password)
                if server.user
                else pack(b"AUTH", server.password)
            )
        if server.db:
            setup.append(pack(b"SELECT", server.db))
        if setup:
            self.write(b"".join(setup))
            for _ in setup:
                reply = self.read(timeout)
                if isinstance(reply, ReplyError):
                    self.close()
                    raise LayerError(
                        "redis at {0} refused the login or database: {1}".format(server.name, reply)
                    )
        return self

    def write(self, data):
        if self.sock is None:
            raise ConnectionLost("not connected")
        try:
            self.sock.sendall(data)
        except _SOCKET_ERRORS as exc:
            raise ConnectionLost("redis connection broke: {0}".format(exc))

    def take(self):
        """A complete reply already buffered, or raise _Incomplete."""
        value, pos = _parse(self.buf, 0)
        self.buf = self.buf[pos:]
        return value

    def fill(self, timeout=None):
        """Receive more bytes; False if none within ``timeout``."""
        if timeout is not None:
            try:
                ready = select.select([self.sock], [], [], max(0.0, timeout))[0]
            except (select.error, ValueError) as exc:
                if getattr(exc, "args", (None,))[0] == 4:  # EINTR: a signal arrived
                    return False
                raise ConnectionLost("redis connection broke: {0}".format(exc))
            if not ready:
                return False
        try:
            chunk = self.sock.recv(262144)
        except _SOCKET_ERRORS as exc:
            raise ConnectionLost("redis connection broke: {0}".format(exc))
        if not chunk:
            raise ConnectionLost("redis closed the connection")
        self.buf += chunk
        return True

    def read(self, timeout=None):
        """The next reply, waiting for it (up to ``timeout`` seconds when given)."""
        deadline = None if timeout is None else monotonic() + timeout
        while True:
            try:
                return self.take()
            except _Incomplete:
                pass
            left = None if deadline is None else deadline - monotonic()
            if left is not None and left <= 0:
                raise ConnectionLost("redis did not answer within {0}s".format(timeout))
            if self.sock is None:
                raise ConnectionLost("not connected")
            self.fill(left)

    def call(self, *args):
        self.write(pack(*args))
        reply = self.read(30.0)
        if isinstance(reply, ReplyError):
            raise reply
        return reply

    def close(self):
        if self.sock is not None:
            try:
                self.sock.close()
            except _SOCKET_ERRORS:
                pass
            self.sock = None
        self.buf = b""


class _Server(object):
    def __init__(self, url):
        scheme, sep, rest = url.partition("://")
        if not sep or scheme.lower() != "redis":
            raise ConfigurationError(
                "the legacy runtime speaks redis://[[user]:password@]host[:port][/db] "
                "(one server, no TLS or Sentinel), got {0!r}".format(url)
            )
        netloc, _, path = rest.partition("/")
        self.user, self.password, hostport = userinfo(netloc)
        if "," in hostport:
            raise ConfigurationError(
                "the legacy runtime talks to one redis server, not a sharded set: {0!r}".format(url)
            )
        host, _, port = hostport.rpartition(":")
        if not host:
            host, port = hostport, "6379"
        if not port.isdigit():
            raise ConfigurationError("bad port in redis URL {0!r}".format(url))
        self.host, self.port = host or "localhost", int(port)
        db = path.strip("/") or "0"
        if not db.isdigit():
            raise ConfigurationError(
                "redis URL path must be a database number, got {0!r}".format(db)
            )
        self.db = int(db)
        self.name = "{0}:{1}".format(self.host, self.port)


class RedisTransport(object):
    """Blocking Redis transport for one process; see the module docstring."""

    system = "redis"

    def __init__(self, url, options):
        self.server = _Server(url)
        self.options = options
        self.prefix = options.prefix
        self.token = random_hex(6)
        self._expiry_ms = max(1, int(options.expiry * 1000))
        self._ttl = str(self._expiry_ms + 1000).encode("ascii")
        self._cmd = None
        self._sub = None
        self._idle = []  # connections free for the next BLPOP
        self._blocking = []  # (connection, keys) with a BLPOP outstanding
        self._ctl = "{0}:ctl:{1}".format(self.prefix, self.token).encode("utf-8")
        self._subscribed = set()  # pub/sub channels wanted
        self._confirmed = set()  # ... whose SUBSCRIBE the server confirmed
        self._after_confirm = {}  # pub/sub channel -> [callables]
        self._members = {}  # pub/sub channel of a group -> {channel: monotonic deadline}
        self._acks = set()
        self._ack_ids = 0
        self._named = {}  # named channel we receive from -> messages wanted
        self._heads = {}  # process head key -> head
        self.buffers = {}
        self._down = False
        self._closed = False
        self._last_sweep = 0.0

    # connections -----------------------------------------------------------------

    def connect(self):
        """Connect once; raise LayerError if the server is unreachable."""
        if self._cmd is not None:
            return
        try:
            self._open(self.options.connect_timeout)
        except ConnectionLost as exc:
            raise LayerError("{0}. Is redis-server running and the layer URL right?".format(exc))

    def _open(self, timeout):
        cmd = _Conn(self.server).open(timeout)
        try:
            cmd.write(pack(b"SCRIPT", b"LOAD", SEND_SCRIPT) + pack(b"SCRIPT", b"LOAD", POP_SCRIPT))
            cmd.read(timeout)
            cmd.read(timeout)
            sub = _Conn(self.server).open(timeout)
        except LayerError:
            cmd.close()
            raise
        self._cmd, self._sub = cmd, sub
        self._confirmed = set()
        wanted = set(self._subscribed) | set([self._ctl])
        self._subscribed = wanted
        sub.write(pack(b"SUBSCRIBE", *sorted(wanted)))
        deadline = monotonic() + timeout
        while not wanted <= self._confirmed:
            if monotonic() > deadline:
                raise ConnectionLost("redis did not confirm SUBSCRIBE within {0}s".format(timeout))
            self._read_sub(deadline - monotonic())

    def _lost(self, exc):
        if not self._down:
            self._down = True
            log.warning("lost connection to redis at %s (%s); reconnecting", self.server.name, exc)
        for conn in [self._cmd, self._sub] + self._idle + [c for c, _ in self._blocking]:
            if conn is not None:
                conn.close()
        self._cmd = self._sub = None
        self._idle, self._blocking = [], []

    def reconnect(self, deadline=None, stopping=None):
        """Reconnect with bounded backoff, resubscribing; LayerError past ``deadline``."""
        backoff = 0.05
        while True:
            try:
                self._open(min(2.0, self.options.connect_timeout))
                break
            except LayerError as exc:
                self._lost(exc)
                if (deadline is not None and monotonic() > deadline) or (stopping and stopping()):
                    raise LayerError(
                        "redis at {0} is unreachable: {1}".format(self.server.name, exc)
                    )
                time.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
        self._down = False
        log.warning("reconnected to redis at %s", self.server.name)

    def _ensure_up(self):
        if self._closed:
            raise LayerError("this redis connection is closed")
        if self._cmd is None:
            self.reconnect(deadline=monotonic() + self.options.connect_timeout)

    def _call(self, *args):
        self._ensure_up()
        try:
            return self._cmd.call(*args)
        except ConnectionLost as exc:
            self._lost(exc)
            raise

    def close(self):
        """Return popped but unhandled messages of named channels, then disconnect."""
        if self._closed:
            return
        try:
            if self._cmd is not None:
                for conn, _ in self._blocking:
                    try:  # a BLPOP still out may take a message: keep it
                        self._deliver_blpop(conn.read(BLOCK_SECONDS + 1.0))
                    except (LayerError, ValueError):
                        pass
                self._blocking = []
                deadline = _deadline(now_ms() + self._expiry_ms)
                for channel in self._named:
                    items = self.buffers.get(channel)
                    if items:
                        key = self._key(channel)
                        self._cmd.call(b"LPUSH", key, *[deadline + i for i in reversed(items)])
                        items.clear()
        except (LayerError, ReplyError) as exc:
            log.debug("returning unhandled messages failed: %s", exc)
        self._closed = True
        self._down = True  # closing on purpose: nothing to log
        self._lost(None)

    # sending -------------------------------------------------------------------------

    def _key(self, channel):
        if "!" in channel:
            return "{0}:p:{1}".format(self.prefix, channel.split("!", 1)[0]).encode("utf-8")
        return "{0}:c:{1}".format(self.prefix, channel).encode("utf-8")

    def _push(self, channel, message):
        """Run SEND_SCRIPT; the number of free places left, -1 when full."""
        now = now_ms()
        header = _deadline(now + self._expiry_ms)
        if "!" in channel:
            header += to_bytes(channel.split("!", 1)[1]) + b":"
        args = (
            b"EVALSHA",
            SEND_SHA,
            b"1",
            self._key(channel),
            self.options.capacity_for(channel),
            self._ttl,
            now,
            header,
            message,
        )
        try:
            return self._call(*args)
        except ReplyError as exc:
            if "NOSCRIPT" not in "{0}".format(exc):
                raise LayerError("redis refused a send: {0}".format(exc))
            self._call(b"SCRIPT", b"LOAD", SEND_SCRIPT)
            return self._call(*args)

    def send(self, channel, message):
        """Put ``message`` on ``channel``; ChannelFull when it holds its capacity."""
        validate_channel(channel)
        self.options.check_size(channel, message)
        if self._push(channel, message) < 0:
            raise ChannelFull(
                "channel {0!r} holds {1} messages (its capacity); its consumers are behind: "
                "retry later".format(channel, self.options.capacity_for(channel))
            )

    def flush(self):
        """Sends are answered one by one: nothing to wait for."""

    def flush_acks(self):
        """Sends are answered one by one: nothing to wait for."""

    # groups ---------------------------------------------------------------------------

    def group_send(self, group, message):
        """PUBLISH to the group's members, then push to its named members."""
        validate_group(group)
        self.options.check_size(group, message)
        self._ensure_up()
        zkey = "{0}:gn:{1}".format(self.prefix, group)
        commands = (
            pack(b"PUBLISH", "{0}:g:{1}".format(self.prefix, group), message)
            + pack(b"ZREMRANGEBYSCORE", zkey, b"-inf", now_ms())
            + pack(b"ZRANGE", zkey, 0, -1)
        )
        try:
            self._cmd.write(commands)
            self._cmd.read(30.0)
            self._cmd.read(30.0)
            named = self._cmd.read(30.0)
        except ConnectionLost as exc:
            self._lost(exc)
            raise
        for member in named if isinstance(named, list) else ():
            self._push(to_text(member), message)  # a full member just misses it

    def group_add(self, group, channel):
        """Add ``channel`` to ``group``; returns once a later group_send reaches it."""
        validate_group(group)
        validate_channel(channel)
        ttl_ms = max(1, int(self.options.group_expiry * 1000))
        if "!" not in channel:
            zkey = "{0}:gn:{1}".format(self.prefix, group)
            self._call(b"ZADD", zkey, now_ms() + ttl_ms, channel)
            self._call(b"PEXPIRE", zkey, ttl_ms)
            return
        token = owner_token(channel)
        if token == self.token:
            self._add_local(group, channel, ttl_ms / 1000.0)
            deadline = monotonic() + ACK_TIMEOUT
            pubsub = self._group_channel(group)
            while pubsub not in self._confirmed:
                if monotonic() > deadline:
                    raise LayerError("redis did not confirm SUBSCRIBE to {0!r}".format(group))
                self._read_sub(deadline - monotonic())
            return
        self._ack_ids += 1
        ack_id = "{0}.{1}".format(self.token, self._ack_ids)
        control = {
            "op": "add",
            "group": group,
            "channel": channel,
            "ttl": ttl_ms,
            "from": self.token,
            "id": ack_id,
        }
        receivers = self._call(
            b"PUBLISH", "{0}:ctl:{1}".format(self.prefix, token), json.dumps(control)
        )
        if receivers == 0:
            return  # no process owns the channel any more
        deadline = monotonic() + ACK_TIMEOUT
        while ack_id not in self._acks:
            if monotonic() > deadline:
                raise LayerError(
                    "the process owning {0!r} did not confirm joining group {1!r} within "
                    "{2}s".format(channel, group, ACK_TIMEOUT)
                )
            self._read_sub(deadline - monotonic())
        self._acks.discard(ack_id)

    def group_discard(self, group, channel):
        """Remove ``channel`` from ``group``."""
        validate_group(group)
        validate_channel(channel)
        if "!" not in channel:
            self._call(b"ZREM", "{0}:gn:{1}".format(self.prefix, group), channel)
            return
        token = owner_token(channel)
        if token == self.token:
            self._members.get(self._group_channel(group), {}).pop(channel, None)
            return
        control = {"op": "discard", "group": group, "channel": channel}
        self._call(b"PUBLISH", "{0}:ctl:{1}".format(self.prefix, token), json.dumps(control))

    def _group_channel(self, group):
        return "{0}:g:{1}".format(self.prefix, group).encode("utf-8")

    def _add_local(self, group, channel, ttl):
        pubsub = self._group_channel(group)
        self._members.setdefault(pubsub, {})[channel] = monotonic() + ttl
        self._subscribe(pubsub)

    def _subscribe(self, pubsub, then=None):
        if then is not None:
            if pubsub in self._confirmed:
                then()
                return
            self._after_confirm.setdefault(pubsub, []).append(then)
        if pubsub not in self._subscribed:
            self._subscribed.add(pubsub)
            self._ensure_up()
            try:
                self._sub.write(pack(b"SUBSCRIBE", pubsub))
            except ConnectionLost as exc:
                self._lost(exc)  # the reconnect subscribes again

    # pub/sub ---------------------------------------------------------------------------

    def _read_sub(self, timeout):
        """Wait up to ``timeout`` for pub/sub traffic and handle all that is there."""
        self._ensure_up()
        sub = self._sub
        try:
            got = sub.fill(timeout) if not sub.buf else True
            while got:
                try:
                    reply = sub.take()
                except _Incomplete:
                    break
                self._on_pubsub(reply)
        except ConnectionLost as exc:
            self._lost(exc)
            raise

    def _on_pubsub(self, reply):
        if not isinstance(reply, list) or len(reply) < 3:
            return
        kind = reply[0]
        if kind == b"message":
            if reply[1] == self._ctl:
                self._on_control(reply[2])
            else:
                self._on_group(reply[1], reply[2])
        elif kind == b"subscribe":
            channel = reply[1]
            if channel in self._subscribed:
                self._confirmed.add(channel)
            for then in self._after_confirm.pop(channel, ()):
                then()

    def _on_group(self, pubsub, message):
        members = self._members.get(pubsub)
        if not members:
            return
        now = monotonic()
        for channel, until in list(members.items()):
            if until <= now:
                del members[channel]
                continue
            self._deliver_local(channel, message)

    def _foreign(self, key, item):
        """Keep an item svcbus did not write where the scripts keep theirs, and say so."""
        log.warning(
            "a foreign item in %s (not written by svcbus) moved to %s",
            to_text(key),
            to_text(quarantine_key(key)),
        )
        try:
            self._cmd.call(b"RPUSH", quarantine_key(key), item)
        except (LayerError, ReplyError):
            log.warning("could not keep the foreign item of %s: dropped", to_text(key))

    def _deliver_local(self, channel, message):
        box = self.buffers.get(channel)
        if box is None:
            box = self.buffers[channel] = deque()
        if len(box) < self.options.capacity_for(channel):
            box.append(message)  # a full process channel misses it, as in the async layer

    def _on_control(self, data):
        try:
            control = json.loads(to_text(data))
            op = control["op"]
            if op == "ack":
                self._acks.add(control["id"])
                return
            group, channel = control["group"], control["channel"]
            validate_group(group)
            validate_channel(channel)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("bad control message %r ignored: %s", data[:200], exc)
            return
        if owner_token(channel) != self.token:
            log.warning("control message for a channel of another process ignored: %r", data)
            return
        pubsub = self._group_channel(group)
        if op == "discard":
            self._members.get(pubsub, {}).pop(channel, None)
        elif op == "add":
            ttl = float(control.get("ttl", self.options.group_expiry * 1000)) / 1000
            self._members.setdefault(pubsub, {})[channel] = monotonic() + ttl
            ack = json.dumps({"op": "ack", "id": control.get("id")})
            target = "{0}:ctl:{1}".format(self.prefix, control.get("from", ""))
            # Acknowledge only once our SUBSCRIBE is confirmed: from then on every
            # later group_send reaches this process.
            self._subscribe(pubsub, lambda: self._call(b"PUBLISH", target, ack))
        else:
            log.warning("unknown control op %r ignored", op)

    # receiving -------------------------------------------------------------------------

    def owns(self, channel):
        """True for this process's own process-specific channels."""
        return "!" in channel and owner_token(channel) == self.token

    def new_channel(self, prefix):
        """A new process-specific channel ``prefix.<token>!<local>``."""
        validate_group(prefix)
        head = "{0}.{1}".format(prefix, self.token)
        self._heads[self._key(head + "!x")] = head
        return "{0}!{1}".format(head, random_hex(5))

    def discard_channel(self, channel):
        """Forget the local buffer of one of our process channels."""
        self.buffers.pop(channel, None)

    def listen(self, channel):
        """Receive from named ``channel`` from now on (when :meth:`want` asks)."""
        validate_channel(channel)
        if "!" not in channel:
            self._named.setdefault(channel, 0)
            self.buffers.setdefault(channel, deque())

    def want(self, channel, count):
        """Ask for up to ``count`` messages of named ``channel`` at the next poll."""
        if channel in self._named:
            self._named[channel] = max(0, count - len(self.buffers[channel]))

    def poll(self, timeout):
        """Take what is there; else wait up to ``timeout`` for messages or pub/sub traffic."""
        self._ensure_up()
        try:
            if self._pop_ready():
                self._read_sub(0)
                return True
            return self._wait(timeout)
        except ConnectionLost as exc:
            self._lost(exc)
            raise
        finally:
            now = monotonic()
            if now - self._last_sweep >= 1.0:
                self._last_sweep = now
                for members in list(self._members.values()):
                    for channel in [c for c, until in members.items() if until <= now]:
                        del members[channel]

    def _sources(self):
        """(key, split, want) of every list to pop from now."""
        sources = [(self._key(c), b"0", n) for c, n in self._named.items() if n > 0]
        sources += [(key, b"1", MAX_FETCH) for key in self._heads]
        return sources

    def _pop_ready(self):
        sources = self._sources()
        if not sources:
            return False
        now = now_ms()
        cmd = self._cmd
        cmd.write(
            b"".join(
                pack(b"EVALSHA", POP_SHA, b"1", key, now, want, split)
                for key, split, want in sources
            )
        )
        got = False
        missing_script = False
        for key, split, _ in sources:
            items = cmd.read(30.0)
            if isinstance(items, ReplyError):
                missing_script = missing_script or "NOSCRIPT" in "{0}".format(items)
                continue
            items, foreign = items
            if foreign:
                log.warning(
                    "%d foreign item(s) in %s (not written by svcbus) moved to %s",
                    foreign,
                    to_text(key),
                    to_text(quarantine_key(key)),
                )
            if items:
                got = True
                self._deliver_popped(key, split, items)
        if missing_script:
            cmd.call(b"SCRIPT", b"LOAD", POP_SCRIPT)
        return got

    def _deliver_popped(self, key, split, items):
        if split == b"0":
            channel = to_text(key)[len(self.prefix) + 3 :]
            self.buffers[channel].extend(items)
            self._named[channel] = max(0, self._named[channel] - len(items))
            return
        head = self._heads[key]
        for i in range(0, len(items), 2):
            self._deliver_local(head + "!" + to_text(items[i]), items[i + 1])

    def _wait(self, timeout):
        keys = [key for key, _, _ in self._sources()]
        if keys and not any(set(keys) <= set(k) for _, k in self._blocking):
            # Nobody blocks on this key set yet (first wait, or the set grew): one more
            # BLPOP; an older one keeps running and is read whenever it answers.
            conn = (
                self._idle.pop()
                if self._idle
                else _Conn(self.server).open(self.options.connect_timeout)
            )
            conn.write(pack(b"BLPOP", *(keys + [BLOCK_SECONDS])))
            self._blocking.append((conn, keys))
        socks = [self._sub.sock] + [c.sock for c, _ in self._blocking]
        if self._sub.buf:
            ready = [self._sub.sock]
        else:
            try:
                ready = select.select(socks, [], [], max(0.0, timeout))[0]
            except (select.error, ValueError) as exc:
                if getattr(exc, "args", (None,))[0] == 4:
                    return False
                raise ConnectionLost("select failed: {0}".format(exc))
        got = False
        if self._sub.sock in ready:
            self._read_sub(0)
            got = True
        for entry in list(self._blocking):
            conn = entry[0]
            if conn.sock in ready or conn.buf:
                if conn.sock in ready:
                    conn.fill(0)
                try:
                    reply = conn.take()
                except _Incomplete:
                    continue
                self._blocking.remove(entry)
                if len(self._idle) < 4:
                    self._idle.append(conn)
                else:
                    conn.close()
                got = self._deliver_blpop(reply) or got
        return got

    def _deliver_blpop(self, reply):
        if not reply or isinstance(reply, ReplyError):
            return False
        key, item = reply[0], reply[1]
        parts = split_item(item, key in self._heads)
        if parts is None:
            self._foreign(key, item)
            return False
        deadline, local, message = parts
        if deadline <= now_ms():
            return False  # expired while it waited
        if key in self._heads:
            self._deliver_local(self._heads[key] + "!" + to_text(local), message)
        else:
            channel = to_text(key)[len(self.prefix) + 3 :]
            self.buffers.setdefault(channel, deque()).append(message)
            if channel in self._named:
                self._named[channel] = max(0, self._named[channel] - 1)
        return True
