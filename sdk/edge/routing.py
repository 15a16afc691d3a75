"""Routes: which URL paths become which channels.

::

    routes = Routes(
        WebSocketRoute("/chat/{room}", "chat"),            # chat.connect/.receive/.disconnect
        HttpRoute("/api/stats/{room}", "stats.get"),         # GET -> request/reply
        HttpRoute("/api/items/{id:int}", "items.update", methods=["PUT"]),
        StaticRoute("/", "web/"),                            # files, last
    )

Path parameters are ``{name}`` (one segment), ``{name:int}``, ``{name:float}``,
``{name:slug}`` (``[a-z0-9_-]+``) or ``{name:path}`` (the rest, slashes
included). They arrive typed in the message's ``params``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigurationError
from ..names import validate_channel
from .contracts import PathParams

_CONVERTERS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "str": (r"[^/]+", str),
    "int": (r"-?[0-9]{1,18}", int),
    "float": (r"-?[0-9]{1,18}(?:\.[0-9]{1,18})?", float),
    "slug": (r"[A-Za-z0-9_-]+", str),
    "path": (r".*", str),
}
_PARAM = re.compile(r"{([A-Za-z_][A-Za-z0-9_]*)(?::([a-z]+))?}")


class PathPattern:
    """A compiled path pattern like ``/chat/{room}`` or ``/items/{id:int}``."""

    __slots__ = ("converters", "pattern", "regex")

    def __init__(self, pattern: str) -> None:
        if not pattern.startswith("/"):
            raise ConfigurationError(f"route path {pattern!r} must start with '/'")
        self.pattern = pattern
        self.converters: dict[str, Callable[[str], Any]] = {}
        parts: list[str] = []
        end = 0
        for match in _PARAM.finditer(pattern):
            name, kind = match.group(1), match.group(2) or "str"
            if kind not in _CONVERTERS:
                raise ConfigurationError(
                    f"route {pattern!r}: unknown parameter type {kind!r}; "
                    f"use one of {', '.join(_CONVERTERS)}"
                )
            if name in self.converters:
                raise ConfigurationError(f"route {pattern!r} names {{{name}}} twice")
            regex, convert = _CONVERTERS[kind]
            parts.append(re.escape(pattern[end : match.start()]))
            parts.append(f"(?P<{name}>{regex})")
            self.converters[name] = convert
            end = match.end()
        parts.append(re.escape(pattern[end:]))
        self.regex = re.compile("".join(parts))

    def match(self, path: str) -> PathParams | None:
        """The typed parameters if ``path`` matches the whole pattern, else None."""
        found = self.regex.fullmatch(path)
        if found is None:
            return None
        converters = self.converters
        return {name: converters[name](value) for name, value in found.groupdict().items()}

    def __repr__(self) -> str:
        return f"PathPattern({self.pattern!r})"


@dataclass(frozen=True)
class WebSocketRoute:
    """A WebSocket endpoint whose events go to channels.

    ``WebSocketRoute("/chat/{room}", "chat")`` sends to ``chat.connect``,
    ``chat.receive`` and ``chat.disconnect``; name them one by one with
    ``connect=``, ``receive=``, ``disconnect=`` instead. With ``connect=None``
    the edge accepts every (origin- and auth-checked) connection itself.
    ``json_frames=True`` closes the connection (1007) on a text frame that is
    not JSON, so consumers only ever see JSON.
    """

    path: str
    channel: str | None = None
    connect: str | None = ""
    receive: str | None = ""
    disconnect: str | None = ""
    json_frames: bool = False
    pattern: PathPattern = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        prefix = self.channel
        for name in ("connect", "receive", "disconnect"):
            value = getattr(self, name)
            if value == "":
                # Not given: derive from the prefix, if there is one.
                value = f"{prefix}.{name}" if prefix else None
            if value is not None:
                validate_channel(value)
            object.__setattr__(self, name, value)
        if self.receive is None and self.connect is None:
            raise ConfigurationError(
                f"WebSocketRoute {self.path!r} sends nowhere: give a channel prefix or "
                "connect=/receive= channels"
            )
        object.__setattr__(self, "pattern", PathPattern(self.path))


@dataclass(frozen=True)
class HttpRoute:
    """``methods`` on ``path`` become requests on ``channel``; the reply is the response.

    When ``channel`` has a registered contract, the request's JSON body,
    query and path parameters are merged (path wins, then body, then query)
    and validated against it: invalid input is a ``422`` with pydantic's
    errors. Otherwise the consumer gets an :class:`~svcbus.edge.HttpRequest`.
    """

    path: str
    channel: str
    methods: Iterable[str] = ("GET",)
    pattern: PathPattern = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        validate_channel(self.channel)
        methods = tuple(m.upper() for m in self.methods)
        if not methods:
            raise ConfigurationError(f"HttpRoute {self.path!r} has no methods")
        object.__setattr__(self, "methods", methods)
        object.__setattr__(self, "pattern", PathPattern(self.path))


@dataclass(frozen=True)
class StaticRoute:
    """Serve the files under ``directory`` at ``prefix`` (GET and HEAD).

    ``index.html`` answers for a directory. Paths that leave the directory
    (``..``, symlinks pointing outside, encoded variants) are 404s.
    """

    prefix: str
    directory: str | Path
    index: str = "index.html"

    def __post_init__(self) -> None:
        if not self.prefix.startswith("/"):
            raise ConfigurationError(f"StaticRoute prefix {self.prefix!r} must start with '/'")
        root = Path(self.directory).resolve()
        if not root.is_dir():
            raise ConfigurationError(
                f"StaticRoute {self.prefix!r}: {str(self.directory)!r} is not a directory"
            )
        object.__setattr__(self, "directory", root)
        object.__setattr__(self, "prefix", self.prefix.rstrip("/") + "/")

    def subpath(self, path: str) -> str | None:
        """The part of ``path`` under the prefix, or None if it is not under it."""
        if path.startswith(self.prefix):
            return path[len(self.prefix) :]
        if path + "/" == self.prefix:
            return ""
        return None


Route = WebSocketRoute | HttpRoute | StaticRoute


@dataclass(frozen=True)
class HttpMatch:
    """The outcome of matching an HTTP request: a route, a static file, 405 or 404."""

    route: HttpRoute | None = None
    params: PathParams = field(default_factory=dict)
    static: StaticRoute | None = None
    subpath: str = ""
    allowed: tuple[str, ...] = ()
    """Methods the path accepts, when it matched but the method did not (405)."""


class Routes:
    """The edge's routing table: WebSocket, HTTP and static routes, matched in order."""

    def __init__(self, *routes: Route) -> None:
        self.websocket: list[WebSocketRoute] = []
        self.http: list[HttpRoute] = []
        self.static: list[StaticRoute] = []
        # (method, path) -> the match, for paths that matched a route without
        # parameters: such a pattern matches one path only, so this holds at most
        # a few entries per route, and a match found here costs a dict lookup
        # instead of a regex per route and a new HttpMatch per request.
        self._fixed: dict[tuple[str, str], HttpMatch] = {}
        for route in routes:
            self.add(route)

    def add(self, route: Route) -> None:
        """Append ``route`` to the table."""
        self._fixed.clear()  # a new route may change what a path matches
        if isinstance(route, WebSocketRoute):
            self.websocket.append(route)
        elif isinstance(route, HttpRoute):
            self.http.append(route)
        elif isinstance(route, StaticRoute):
            self.static.append(route)
        else:
            raise ConfigurationError(
                f"{route!r} is not a route: use WebSocketRoute, HttpRoute or StaticRoute"
            )

    def __repr__(self) -> str:
        routes = [*self.websocket, *self.http, *self.static]
        return f"Routes({', '.join(repr(r) for r in routes)})"

    def match_websocket(self, path: str) -> tuple[WebSocketRoute, PathParams] | None:
        """The first WebSocket route matching ``path`` and its parameters."""
        for route in self.websocket:
            params = route.pattern.match(path)
            if params is not None:
                return route, params
        return None

    def match_http(self, method: str, path: str) -> HttpMatch:
        """Find what answers ``method path``: HTTP routes first, then static files.

        The match's ``params`` may be shared between requests: copy it to change it.
        """
        found = self._fixed.get((method, path))
        if found is not None:
            return found
        allowed: list[str] = []
        for route in self.http:
            params = route.pattern.match(path)
            if params is None:
                continue
            if method in route.methods or (method == "HEAD" and "GET" in route.methods):
                match = HttpMatch(route=route, params=params)
                if not route.pattern.converters:  # a pattern without parameters
                    self._fixed[(method, path)] = match
                return match
            allowed.extend(m for m in route.methods if m not in allowed)
        if allowed:
            return HttpMatch(allowed=tuple(allowed))
        for static in self.static:
            subpath = static.subpath(path)
            if subpath is not None:
                if method not in ("GET", "HEAD"):
                    return HttpMatch(allowed=("GET", "HEAD"))
                return HttpMatch(static=static, subpath=subpath)
        return HttpMatch()
