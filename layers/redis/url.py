"""Redis layer URLs and sharding: which servers, which prefix, and which server holds a name."""

from __future__ import annotations

import functools
import zlib
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import SplitResult, quote, unquote, urlencode, urlsplit

from redis.asyncio.connection import ConnectionPool
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff

from svcbus.errors import ConfigurationError
from svcbus.redact import redact_url

SOCKET_TIMEOUT = 10.0
"""Seconds any reply may take; must exceed the receivers' BLPOP time (``BLOCK_SECONDS``)."""

_OWN_PARAMS = {
    "prefix",
    "connect_timeout",
    "ssl_ca_certs",
    "ssl_ca_path",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_cert_reqs",
    "ssl_check_hostname",
}
_SENTINEL_PARAMS = {"db", "sentinel_username", "sentinel_password"}


def jump_hash(key: int, buckets: int) -> int:
    """Lamping & Veach's jump consistent hash: the bucket of a 64-bit ``key``.

    Adding a server at the end moves only 1/n of the names.
    """
    b, j = -1, 0
    while j < buckets:
        b = j
        key = (key * 2862933555777941757 + 1) & 0xFFFFFFFFFFFFFFFF
        j = int((b + 1) * (float(1 << 31) / float((key >> 33) + 1)))
    return b


def shard_of(name: str, shards: int) -> int:
    """Index of the server that holds ``name`` (a channel, process head or group)."""
    if shards == 1:
        return 0
    return jump_hash(zlib.crc32(name.encode()), shards)


def _split_hosts(netloc: str, default_port: int) -> tuple[str, list[tuple[str, int]]]:
    """``user:pw@h1:1,h2:2`` -> (``user:pw@`` or ``""``, [(h1, 1), (h2, 2)])."""
    userinfo, _, hostlist = netloc.rpartition("@")
    hosts: list[tuple[str, int]] = []
    for item in hostlist.split(","):
        item = item.strip()
        if not item:
            continue
        if item.startswith("["):  # [ipv6]:port
            host, _, rest = item[1:].partition("]")
            port_text = rest[1:] if rest.startswith(":") else ""
        else:
            host, _, port_text = item.partition(":")
        try:
            port = int(port_text) if port_text else default_port
        except ValueError:
            raise ConfigurationError(f"bad port in redis URL host {item!r}") from None
        hosts.append((host or "localhost", port))
    if not hosts:
        hosts.append(("localhost", default_port))
    return (userinfo + "@" if userinfo else ""), hosts


class ServerSpec:
    """Where one shard lives: a Redis server, or the master a Sentinel names."""

    def __init__(self, name: str, make_pool: Callable[[], Any]) -> None:
        self.name = name
        self.make_pool = make_pool

    def __repr__(self) -> str:
        return f"ServerSpec({self.name})"


def parse_url(url: str, params: Mapping[str, Any]) -> tuple[list[ServerSpec], str, float]:
    """Parse a redis layer URL into shards, the key prefix and the connect timeout."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    _check_params(scheme, params)
    prefix = str(params.get("prefix", "svcbus"))
    if not prefix or any(c in prefix for c in " *?[]{}\r\n\t"):
        raise ConfigurationError(f"bad redis key prefix {prefix!r}")
    try:
        connect_timeout = float(params.get("connect_timeout", 5.0))
    except ValueError:
        raise ConfigurationError("connect_timeout must be a number of seconds") from None
    if connect_timeout <= 0:
        raise ConfigurationError("connect_timeout must be positive")
    ssl = {k: str(v) for k, v in params.items() if k.startswith("ssl_")}
    common: dict[str, Any] = {
        "socket_timeout": SOCKET_TIMEOUT,
        "socket_connect_timeout": connect_timeout,
        "retry": Retry(NoBackoff(), 0),  # we reconnect ourselves, with backoff and logging
        "protocol": 2,
    }
    if scheme in ("redis", "rediss"):
        return _direct_specs(scheme, parts, ssl, common), prefix, connect_timeout
    if scheme == "redis+sentinel":
        specs = _sentinel_specs(parts, params, ssl, common, connect_timeout)
        return specs, prefix, connect_timeout
    raise ConfigurationError(f"not a redis layer URL: {redact_url(url)!r}")


def _check_params(scheme: str, params: Mapping[str, Any]) -> None:
    allowed = _OWN_PARAMS | (_SENTINEL_PARAMS if scheme == "redis+sentinel" else set())
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ConfigurationError(
            f"{scheme}:// layer does not understand {', '.join(unknown)}; "
            f"it knows {', '.join(sorted(allowed))} besides the common options"
        )


def _direct_specs(
    scheme: str, parts: SplitResult, ssl: dict[str, str], common: dict[str, Any]
) -> list[ServerSpec]:
    """``redis://`` and ``rediss://``: one spec per host."""
    userinfo, hosts = _split_hosts(parts.netloc, 6379)
    db = (parts.path or "/").strip("/") or "0"
    if not db.isdigit():
        raise ConfigurationError(f"redis URL path must be a database number, got {db!r}")
    query = ("?" + urlencode(ssl)) if ssl else ""
    if ssl and scheme != "rediss":
        raise ConfigurationError("ssl_* options need a rediss:// URL")
    specs = []
    for host, port in hosts:
        shown = f"[{host}]" if ":" in host else host
        one = f"{scheme}://{userinfo}{shown}:{port}/{db}{query}"
        specs.append(
            ServerSpec(f"{shown}:{port}", functools.partial(ConnectionPool.from_url, one, **common))
        )
    return specs


def _sentinel_specs(
    parts: SplitResult,
    params: Mapping[str, Any],
    ssl: dict[str, str],
    common: dict[str, Any],
    connect_timeout: float,
) -> list[ServerSpec]:
    """``redis+sentinel://``: one spec per master service name in the path."""
    userinfo, sentinels = _split_hosts(parts.netloc, 26379)
    services = [s for s in (parts.path or "").strip("/").split(",") if s]
    if not services:
        raise ConfigurationError(
            "redis+sentinel:// URL needs the master's service name as its path: "
            "redis+sentinel://host:26379/mymaster"
        )
    user, _, password = userinfo.rstrip("@").partition(":")
    db_text = str(params.get("db", "0"))
    if not db_text.isdigit():
        raise ConfigurationError(f"db must be a database number, got {db_text!r}")
    kwargs = dict(common, db=int(db_text))
    if user:
        kwargs["username"] = unquote(user)
    if password:
        kwargs["password"] = unquote(password)
    if ssl:
        kwargs["ssl"] = True
        kwargs.update(ssl)
    sentinel_kwargs: dict[str, Any] = {
        "socket_timeout": connect_timeout,
        "socket_connect_timeout": connect_timeout,
    }
    if params.get("sentinel_username"):
        sentinel_kwargs["username"] = str(params["sentinel_username"])
    if params.get("sentinel_password"):
        sentinel_kwargs["password"] = str(params["sentinel_password"])

    def sentinel_pool(service: str) -> Any:
        manager = Sentinel(sentinels, sentinel_kwargs=sentinel_kwargs, **kwargs)
        return manager.master_for(service).connection_pool

    where = ",".join(f"{h}:{p}" for h, p in sentinels)
    return [
        ServerSpec(f"sentinel {where} master {quote(s)}", functools.partial(sentinel_pool, s))
        for s in services
    ]
