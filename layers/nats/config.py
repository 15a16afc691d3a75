"""The NATS layer's settings: tuning constants, subject names, and the layer URL."""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from svcbus.errors import ConfigurationError
from svcbus.names import validate_group
from svcbus.redact import redact_url

CONSUMER = "receivers"
"""Durable name of the one pull consumer every process shares on a channel stream."""

PULL_EXPIRES = 1.0
"""Seconds a pull request waits at the server; waiting receivers renew it. Short, so
that a process whose receivers left stops taking messages from the stream soon."""

MAX_IN_FLIGHT = 4096
"""Published messages whose JetStream acknowledgement is outstanding, per layer."""

ACK_TIMEOUT = 10.0
"""Seconds after which an unacknowledged publish is given up as lost."""

SEND_TIMEOUT = 10.0
"""Seconds ``send`` waits for room in the in-flight window before failing."""

CONTROL_TIMEOUT = 5.0
"""Seconds ``group_add``/``group_discard`` wait for the owning process to confirm."""

CONNECT_TIMEOUT = 5.0
"""Default seconds the first connection may take before ``connect`` fails."""

RECONNECT_WAIT = 0.5
"""Seconds between reconnection attempts to one server."""

MAKER_WAIT = 5.0
"""Seconds a sender waits for the process that created a channel's stream to give it
its subject, before taking the step over (that process may have died meanwhile)."""

LINGER = 2.0
"""Seconds a process stays subscribed to a named channel's live subject after its
last receiver left; then it unsubscribes and returns what it buffered to the stream."""

DIRECT_FOR = 0.1
"""Seconds a sender stores straight in a channel's stream after a bounce (nobody
listened) or a full listener, before it tries the live subject again. Stored sends
wait for the server's answer, so this is short: a receiver that was just starting
gets live delivery back within a tenth of a second; a backlog nobody reads costs
one bounce (a live publish returned by the server) every tenth of a second."""

MARK_EVERY = 256
"""Live publishes between two markers (see :meth:`Sender.mark`)."""

MAX_UNCONFIRMED = 16_384
"""Live publishes kept for a possible bounce until a marker confirms them, per layer."""

PREFETCH = 64
"""Messages a process pulls ahead of its waiting receivers, per named channel.

Runtime workers take one message each; pulling only what they wait for would
cost a pull request per message. Prefetched messages are this process's (they
are acknowledged on arrival); ``close()`` returns unread ones to the channel.
"""

DEFAULT_PENDING_MSGS = 65_536
DEFAULT_PENDING_BYTES = 64 * 1024 * 1024

SWEEP_INTERVAL = 1.0
"""Seconds between two housekeeping rounds."""

URL_PARAMS = (
    "prefix",
    "tls_ca",
    "tls_cert",
    "tls_key",
    "tls_hostname",
    "creds",
    "connect_timeout",
    "pending_msgs",
    "pending_bytes",
    "live",
)


@dataclass(frozen=True)
class Subjects:
    """Every subject root of one layer: ``prefix`` and this process's ``token``."""

    prefix: str
    token: str
    channel_root: str = field(init=False)  # R.ch.C: a named channel's stream
    live_root: str = field(init=False)  # R.live.C: its live queue group
    process_root: str = field(init=False)  # R.p.<head>.<local>: process channels
    group_root: str = field(init=False)  # R.g.<group>
    control: str = field(init=False)  # R.ctl.<token>: group_add/discard for our channels
    named_control: str = field(init=False)  # R.ctl.named: forwarding of named members

    def __post_init__(self) -> None:
        prefix = self.prefix
        for name, value in (
            ("channel_root", f"{prefix}.ch."),
            ("live_root", f"{prefix}.live."),
            ("process_root", f"{prefix}.p."),
            ("group_root", f"{prefix}.g."),
            ("control", f"{prefix}.ctl.{self.token}"),
            ("named_control", f"{prefix}.ctl.named"),
        ):
            object.__setattr__(self, name, value)

    def stream(self, channel: str) -> str:
        """The JetStream stream of a named channel (no '.' allowed; ':' never in names)."""
        return f"{self.prefix}_ch_{channel.replace('.', ':')}"

    def control_of(self, channel: str) -> str:
        """The control subject of the process owning the process channel ``channel``."""
        return f"{self.prefix}.ctl.{channel.partition('!')[0].rpartition('.')[2]}"


def check_prefix(prefix: str) -> str:
    """``prefix`` if it is one lower-case subject token, else a ConfigurationError."""
    if not prefix or "." in prefix or prefix != prefix.lower():
        raise ConfigurationError(
            f"NATS prefix {prefix!r} must be one lower-case token like 'svcbus' "
            "(letters, digits, '_' or '-')"
        )
    validate_group(prefix)
    return prefix


def parse_url(url: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """The :class:`NatsLayer` keyword arguments for ``nats://[auth@]host:port[,...]?...``."""
    unknown = sorted(set(params) - set(URL_PARAMS))
    if unknown:
        raise ConfigurationError(
            f"nats:// layer does not understand {', '.join(unknown)}; it knows "
            f"{', '.join(URL_PARAMS)} and the common capacity, channel_capacity, expiry, "
            "group_expiry, max_message_size, durable_<setting>"
        )
    scheme, _, rest = url.partition("://")
    scheme = scheme.lower()
    netloc = rest.split("/", 1)[0].split("?", 1)[0]
    user = password = token = None
    if "@" in netloc:
        auth, netloc = netloc.rsplit("@", 1)
        if ":" in auth:
            user, password = (unquote(part) for part in auth.split(":", 1))
        else:
            token = unquote(auth)
    servers = _servers(url, scheme, netloc)
    tls = None
    if scheme == "tls" or any(k in params for k in ("tls_ca", "tls_cert", "tls_key")):
        tls = tls_context(params)
    creds = params.get("creds")
    if creds is not None and not os.path.isfile(creds):
        raise ConfigurationError(
            "the NATS credentials file given with creds= does not exist (the path is not "
            "shown: it may name a secret); check the layer URL's creds= parameter"
        )
    return {
        "servers": servers,
        "prefix": params.get("prefix", "svcbus"),
        "user": user,
        "password": password,
        "token": token,
        "tls": tls,
        "tls_hostname": params.get("tls_hostname"),
        "creds": creds,
        "connect_timeout": positive(params, "connect_timeout", CONNECT_TIMEOUT, float),
        "pending_msgs_limit": positive(params, "pending_msgs", DEFAULT_PENDING_MSGS, int),
        "pending_bytes_limit": positive(params, "pending_bytes", DEFAULT_PENDING_BYTES, int),
        "live": flag(params, "live", True),
    }


def _servers(url: str, scheme: str, netloc: str) -> list[str]:
    servers = []
    for seed in netloc.split(","):
        seed = seed.strip().split("://", 1)[-1]
        if not seed:
            continue
        host, sep, port = seed.rpartition(":") if not seed.endswith("]") else (seed, "", "")
        if not sep:
            host, port = seed, "4222"
        if not host or not port.isdigit():
            raise ConfigurationError(
                f"bad NATS server {seed!r} in {redact_url(url)!r}; write nats://host:port"
            )
        servers.append(f"{'tls' if scheme == 'tls' else 'nats'}://{host}:{port}")
    if not servers:
        raise ConfigurationError(
            f"no NATS server in {redact_url(url)!r}; write nats://host:port[,host:port]"
        )
    return servers


def positive(params: Mapping[str, Any], key: str, default: Any, kind: type) -> Any:
    """URL option ``key`` as a positive ``kind``, or ``default`` when absent."""
    value = params.get(key)
    if value is None:
        return default
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise ConfigurationError(f"nats:// option {key}={value!r} is not a number") from None
    if number <= 0:
        raise ConfigurationError(f"nats:// option {key}={value!r} must be positive")
    return number


def flag(params: Mapping[str, Any], key: str, default: bool) -> bool:
    """URL option ``key`` as a boolean (true/false, yes/no, on/off, 1/0)."""
    value = params.get(key)
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigurationError(f"nats:// option {key}={value!r}: write {key}=true or {key}=false")


def tls_context(params: Mapping[str, Any]) -> ssl.SSLContext:
    """The client TLS context the ``tls_ca``/``tls_cert``/``tls_key`` options describe."""
    ca, cert, key = params.get("tls_ca"), params.get("tls_cert"), params.get("tls_key")
    for name, path in (("tls_ca", ca), ("tls_cert", cert), ("tls_key", key)):
        if path is not None and not os.path.isfile(path):
            raise ConfigurationError(f"NATS {name} file {path!r} does not exist")
    if (cert is None) != (key is None):
        raise ConfigurationError("NATS client TLS needs both tls_cert and tls_key")
    try:
        context = ssl.create_default_context(cafile=ca)
        if cert is not None:
            context.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigurationError(f"cannot load NATS TLS files: {exc}") from None
    return context
