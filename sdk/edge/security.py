"""Security and limits of the edge: origins, authentication, header sanitising, sizes, rates.

Everything is on by default: WebSockets from other sites are refused, frames
and bodies are size-capped, each connection is rate-limited, credentials never
travel on the bus (the authentication hook turns them into an identity).
"""

from __future__ import annotations

import inspect
import re
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import urlsplit

from ..errors import ConfigurationError
from .contracts import Identity


@dataclass(frozen=True)
class Limits:
    """Per-process limits; the defaults suit a public-facing edge."""

    max_message_size: int = 64 * 1024
    """Largest WebSocket frame (bytes of text or binary); bigger ones close the socket with 1009."""
    max_body_size: int = 1024 * 1024
    """Largest HTTP request body; bigger ones get 413."""
    messages_per_second: float = 50.0
    """Sustained frames per second per connection (token bucket); over it: close 1008."""
    burst: int = 100
    """Frames a connection may send at once before the rate applies."""
    max_connections: int = 10_000
    """Open WebSockets per process (handshakes in progress included); over it: close 1013."""
    max_requests: int = 1_000
    """HTTP requests being answered at once per process; over it: 503 with ``Retry-After``.

    Separate from ``max_connections``, so that a full house of sockets never
    shuts out HTTP. The edge's uvicorn protocol caps TCP connections of any
    kind at ``max_connections + max_requests``, counted from their first byte.
    """
    accept_timeout: float = 5.0
    """Seconds a consumer has to Accept or Close a new connection before it is rejected."""
    request_timeout: float = 10.0
    """Seconds an HTTP request waits for its reply before 504."""
    max_header_length: int = 1024
    """Header names and values longer than this are cut before they travel."""
    max_headers: int = 32
    """At most this many headers travel with a message."""
    header_timeout: float = 10.0
    """Seconds a client has to send a request's headers (slow-header clients are cut off)."""

    def __post_init__(self) -> None:
        for name in (
            "max_message_size",
            "max_body_size",
            "max_connections",
            "max_requests",
            "burst",
        ):
            if getattr(self, name) < 1:
                raise ConfigurationError(f"Limits.{name} must be >= 1")
        for name in ("messages_per_second", "accept_timeout", "header_timeout"):
            if getattr(self, name) <= 0:
                raise ConfigurationError(f"Limits.{name} must be > 0")


# -- origins -------------------------------------------------------------------------


class OriginPolicy:
    """Which ``Origin`` headers may open a WebSocket.

    ``None`` (the default) allows the edge's own host only (Origin host equals
    the Host header). A list allows exact origins (``https://app.example.com``),
    subdomain patterns (``https://*.example.com``, which does not match
    ``example.com`` itself) or ``"*"`` (any site: only for public, credential-free
    sockets). Requests without an Origin header come from non-browser clients,
    which the same-origin rule cannot protect anyway; set
    ``allow_missing=False`` to refuse them too.
    """

    def __init__(self, allowed: Iterable[str] | None = None, *, allow_missing: bool = True) -> None:
        self.same_host_only = allowed is None
        self.allow_any = False
        self.allow_missing = allow_missing
        self._exact: set[str] = set()
        self._patterns: list[re.Pattern[str]] = []
        for origin in allowed or ():
            origin = origin.strip().lower().rstrip("/")
            if origin == "*":
                self.allow_any = True
            elif "*" in origin:
                scheme, sep, host = origin.partition("://")
                if not sep or not host.startswith("*.") or "*" in host[2:]:
                    raise ConfigurationError(
                        f"origin pattern {origin!r}: write it as 'https://*.example.com'"
                    )
                self._patterns.append(
                    re.compile(
                        rf"{re.escape(scheme)}://[a-z0-9-]+(\.[a-z0-9-]+)*{re.escape(host[1:])}"
                    )
                )
            else:
                self._exact.add(origin)

    def allows(self, origin: str | None, host: str | None) -> bool:
        """Whether a handshake with this Origin (and Host) header may proceed."""
        if origin is None:
            return self.allow_missing
        origin = origin.lower().rstrip("/")
        if self.allow_any:
            return True
        if self.same_host_only:
            return host is not None and urlsplit(origin).netloc == host.lower()
        return origin in self._exact or any(p.fullmatch(origin) for p in self._patterns)


# -- headers -------------------------------------------------------------------------

DROPPED_HEADERS: frozenset[str] = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
        "x-api-key",
        "x-auth-token",
        "x-csrf-token",
        "sec-websocket-key",
        "sec-websocket-extensions",
    }
)
"""Headers that never travel on the bus: credentials and handshake internals."""


def sanitise_headers(
    raw: Iterable[tuple[bytes, bytes]],
    limits: Limits,
    dropped: Collection[str] = DROPPED_HEADERS,
) -> dict[str, str]:
    """ASGI headers as a small dict: credentials dropped; names, values and count capped.

    Repeated headers are joined with ``", "`` as HTTP allows.
    """
    found: dict[str, str] = {}
    cap = limits.max_header_length
    for raw_name, raw_value in raw:
        name = raw_name.decode("latin-1").lower()[:cap]
        if name in dropped:
            continue
        value = raw_value.decode("latin-1")[:cap]
        if name in found:
            found[name] = (found[name] + ", " + value)[:cap]
        elif len(found) < limits.max_headers:
            found[name] = value
    return found


# -- authentication --------------------------------------------------------------------


class AuthenticationFailed(Exception):
    """Raise from an authentication hook to refuse the request (401 / WebSocket refused)."""


@dataclass(frozen=True)
class Handshake:
    """What an authentication hook sees: the raw request, credentials included."""

    path: str
    headers: Mapping[str, str]
    """All request headers, lower-case names (repeats joined with ``", "``)."""
    query: Mapping[str, str]
    client: str | None
    cookies: Mapping[str, str] = field(default_factory=dict)


Authenticate = Callable[[Handshake], Identity | Awaitable[Identity]]
"""An authentication hook: returns the identity (None for anonymous) or raises AuthenticationFailed."""


async def call_hook(hook: Authenticate, handshake: Handshake) -> Identity:
    """Run a sync or async hook."""
    result = hook(handshake)
    if inspect.isawaitable(result):
        result = await result
    return result


def parse_cookies(header: str | None) -> dict[str, str]:
    """The cookies of a ``Cookie`` header (malformed ones ignored)."""
    if not header:
        return {}
    jar = SimpleCookie()
    try:
        jar.load(header)
    except CookieError:
        return {}
    return {key: morsel.value for key, morsel in jar.items()}


Verify = Callable[[str], Identity | Awaitable[Identity]]
"""Turns a token or cookie value into an identity, or returns None / raises to refuse it."""


def bearer_token(verify: Verify, *, query_param: str | None = "access_token") -> Authenticate:
    """A hook that verifies ``Authorization: Bearer <token>``.

    Browsers cannot set headers on a WebSocket, so the token may also come in
    the ``query_param`` query parameter (removed before the query travels).
    No token means anonymous; a token ``verify`` rejects (returns None or
    raises) refuses the request.
    """

    async def authenticate(handshake: Handshake) -> Identity:
        scheme, _, token = handshake.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            token = handshake.query.get(query_param, "") if query_param else ""
        if not token:
            return None
        return await _verified(verify, token.strip(), "bearer token")

    authenticate.secret_query_params = (query_param,) if query_param else ()  # type: ignore[attr-defined]  # read back by secret_query_params()
    return authenticate


def cookie(name: str, verify: Verify) -> Authenticate:
    """A hook that verifies the cookie ``name`` (a session id, a signed token...)."""

    async def authenticate(handshake: Handshake) -> Identity:
        value = handshake.cookies.get(name)
        if not value:
            return None
        return await _verified(verify, value, f"cookie {name!r}")

    return authenticate


async def _verified(verify: Verify, credential: str, what: str) -> Identity:
    result = verify(credential)
    if inspect.isawaitable(result):
        result = await result
    if result is None:
        raise AuthenticationFailed(f"the {what} was not accepted")
    return result


def secret_query_params(hook: Authenticate | None) -> frozenset[str]:
    """Query parameters a hook reads credentials from; the edge strips them."""
    return frozenset(getattr(hook, "secret_query_params", ()))


# -- rate limiting ---------------------------------------------------------------------


def refill(tokens: float, last: float, now: float, limits: Limits) -> float:
    """Token bucket step: the tokens available at ``now`` (capped at ``burst``)."""
    tokens += (now - last) * limits.messages_per_second
    return tokens if tokens < limits.burst else float(limits.burst)


BUDGET_EXTENSION = "svcbus.edge.frame_budget"
"""ASGI scope extension through which the edge's server protocol shares a socket's budget."""


class FrameBudget:
    """One connection's token bucket: data frames and pings draw on the same budget.

    The server protocol (see :mod:`svcbus.edge.protocol`) makes it and charges
    pings to it; the edge sets its limits once the connection is accepted and
    charges frames. Without the edge's protocol the edge makes its own (pings
    are then not counted).
    """

    __slots__ = ("last", "limits", "tokens")

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits: Limits | None = None
        self.tokens = 0.0
        self.last = 0.0
        if limits is not None:
            self.adopt(limits)

    def adopt(self, limits: Limits) -> None:
        """Start charging against ``limits``, with a full burst."""
        self.limits = limits
        self.tokens = float(limits.burst)
        self.last = time.monotonic()

    def take(self) -> bool:
        """Charge one frame; False if the connection is over its rate."""
        limits = self.limits
        if limits is None:
            return True  # not accepted yet: nothing flows before the edge adopts the budget
        now = time.monotonic()
        tokens = refill(self.tokens, self.last, now, limits)
        self.last = now
        if tokens < 1.0:
            self.tokens = tokens
            return False
        self.tokens = tokens - 1.0
        return True


def describe(identity: Any) -> str:
    """A short, log-safe description of an identity."""
    if isinstance(identity, dict):
        return str(identity.get("sub") or identity.get("id") or "(claims)")[:60]
    return str(identity)[:60]
