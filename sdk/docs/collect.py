"""What exists: the services, channels, contracts and edge routes of a system.

:func:`collect` turns a few :class:`~svcbus.Service` objects (and, optionally,
an edge routing table) into a :class:`System`: a plain, sorted description that
every renderer (AsyncAPI, HTML, Markdown, the SVG diagram) reads. Nothing here
formats anything, and everything is sorted so that generated docs are stable
byte for byte from one run to the next.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..contract import Contract, registry
from ..service import Service

EDGE_SERVICE = "edge"
"""The name the edge takes in docs and diagrams when routes are documented."""


@dataclass(frozen=True)
class Route:
    """One edge route: traffic on ``path`` becomes messages on ``channel``."""

    path: str
    channel: str
    kind: str = "http"
    """``http`` or ``websocket``."""
    detail: str = ""
    """The HTTP methods (``GET, POST``) or the WebSocket event (``connect``, ``receive``...)."""


@dataclass
class ChannelDoc:
    """One channel and everything known about it."""

    name: str
    contract: type[Contract] | None = None
    """The message contract; ``None`` for an untyped channel."""
    reply: type[Contract] | None = None
    """The reply contract, for request/reply channels."""
    consumers: list[str] = field(default_factory=list)
    """Names of the services that consume the channel."""
    producers: list[str] = field(default_factory=list)
    """Names of the services (and ``edge``) that declare they send on it."""
    handlers: list[str] = field(default_factory=list)
    """``module.function`` of each consumer function."""
    routes: list[Route] = field(default_factory=list)

    @property
    def is_request(self) -> bool:
        """True when consumers answer messages on this channel."""
        return self.reply is not None

    @property
    def description(self) -> str:
        """The contract's docstring, or an empty string."""
        return contract_description(self.contract)


@dataclass
class ServiceDoc:
    """One service: what it consumes and what it declares it produces."""

    name: str
    description: str = ""
    consumes: list[str] = field(default_factory=list)
    produces: list[str] = field(default_factory=list)
    replies: list[str] = field(default_factory=list)
    """Channels whose messages this service answers."""


@dataclass
class System:
    """Everything the docs describe, sorted."""

    title: str
    services: list[ServiceDoc]
    channels: dict[str, ChannelDoc]
    servers: list[str] = field(default_factory=list)
    """Layer URLs (credentials are removed when rendered)."""
    version: str = "1.0.0"
    description: str = ""

    def contracts(self) -> list[type[Contract]]:
        """Every contract used, messages and replies, in a stable order."""
        seen: dict[tuple[str, str], type[Contract]] = {}
        for channel in self.channels.values():
            for contract in (channel.contract, channel.reply):
                if contract is not None:
                    seen.setdefault((contract.__module__, contract.__qualname__), contract)
        return [seen[key] for key in sorted(seen)]


def contract_description(contract: type[Contract] | None) -> str:
    """The contract's own docstring (not one inherited from ``Contract``)."""
    if contract is None:
        return ""
    doc = contract.__dict__.get("__doc__") or ""
    return _dedent(doc)


def _dedent(text: str) -> str:
    return inspect.cleandoc(text) if text else ""


def routes_of(table: Any) -> list[Route]:
    """The routes of an edge routing table, whatever its exact shape.

    Understands :class:`svcbus.edge.Routes` (its ``websocket`` and ``http``
    lists; static routes send nothing and are left out), any object with a
    ``routes`` attribute, or an iterable. Items may be edge route objects
    (``WebSocketRoute`` with ``connect``/``receive``/``disconnect`` channels,
    ``HttpRoute`` with ``channel`` and ``methods``), :class:`Route`, mappings
    with ``path``/``channel``/``kind`` keys, or ``(path, channel[, kind])``
    tuples. Duck typing keeps the docs independent of the edge's classes.
    """
    if hasattr(table, "websocket") or hasattr(table, "http"):
        items: Any = [*getattr(table, "websocket", ()), *getattr(table, "http", ())]
    else:
        items = getattr(table, "routes", table)
        if callable(items):
            items = items()
    found: list[Route] = []
    for item in items:
        found.extend(_routes_of_item(item))
    return sorted(set(found), key=lambda r: (r.path, r.kind, r.channel, r.detail))


def _routes_of_item(item: Any) -> list[Route]:
    if isinstance(item, Route):
        return [item]
    if isinstance(item, tuple) and len(item) >= 2:
        kind = str(item[2]) if len(item) > 2 else "http"
        return [Route(str(item[0]), str(item[1]), _kind(kind))]
    if isinstance(item, dict):
        get: Any = item.get
    else:

        def get(key: str, default: Any = None) -> Any:
            return getattr(item, key, default)

    path = get("path")
    if not isinstance(path, str):
        return []  # static file routes and the like: no channel to document
    events = [e for e in ("connect", "receive", "disconnect") if isinstance(get(e), str)]
    if events:  # an edge WebSocketRoute: one channel per event
        return [Route(path, get(e), "websocket", e) for e in events]
    channel = get("channel")
    if not isinstance(channel, str):
        return []
    kind = get("kind") or get("protocol") or get("type") or _kind_from_class(item)
    methods = get("methods")
    detail = ", ".join(methods) if isinstance(methods, (list, tuple)) else ""
    return [Route(path, channel, _kind(str(kind)), detail)]


def _kind(kind: str) -> str:
    return "websocket" if kind.lower().startswith(("ws", "websocket")) else "http"


def _kind_from_class(item: Any) -> str:
    return "websocket" if "websocket" in type(item).__name__.lower() else "http"


def collect(
    services: Iterable[Service],
    *,
    routes: Any = None,
    servers: Iterable[str] = (),
    title: str | None = None,
    version: str = "1.0.0",
    description: str = "",
) -> System:
    """Describe ``services`` (and the edge ``routes``, if given) as a :class:`System`.

    A channel appears when a service consumes it, declares it produces it
    (``produces=`` on ``@consumes`` or ``service.produces(...)``), or an edge
    route sends to it. Its contract comes from the consumer's message type,
    else from the contract registry.
    """
    services = sorted(services, key=lambda s: s.name)
    channels: dict[str, ChannelDoc] = {}

    def channel(name: str) -> ChannelDoc:
        if name not in channels:
            channels[name] = ChannelDoc(name, contract=registry.get(name))
        return channels[name]

    service_docs: list[ServiceDoc] = []
    for service in services:
        doc = ServiceDoc(service.name, description=_dedent(service.description))
        produced = set(service.produced)
        for consumer in service.consumers:
            chan = channel(consumer.channel)
            if isinstance(consumer.message_type, type) and issubclass(
                consumer.message_type, Contract
            ):
                chan.contract = consumer.message_type
            reply = consumer.reply_type or getattr(chan.contract, "__reply__", None)
            if reply is not None:
                chan.reply = reply
                doc.replies.append(consumer.channel)
            _add(chan.consumers, service.name)
            _add(chan.handlers, consumer.name)
            doc.consumes.append(consumer.channel)
            produced.update(consumer.produces)
        for name in produced:
            _add(channel(name).producers, service.name)
        doc.produces = sorted(produced)
        doc.consumes = sorted(set(doc.consumes))
        doc.replies = sorted(set(doc.replies))
        service_docs.append(doc)

    if routes is not None:
        edge = ServiceDoc(EDGE_SERVICE, description="Translates HTTP and WebSocket traffic.")
        for route in routes_of(routes):
            chan = channel(route.channel)
            chan.routes.append(route)
            _add(chan.producers, EDGE_SERVICE)
            _add(edge.produces, route.channel)
        edge.produces.sort()
        service_docs.append(edge)
        service_docs.sort(key=lambda s: s.name)

    for chan in channels.values():
        if chan.reply is None and chan.contract is not None:
            chan.reply = chan.contract.__reply__
        chan.consumers.sort()
        chan.producers.sort()
        chan.handlers.sort()
    return System(
        title=title or ", ".join(s.name for s in services) or "svcbus system",
        services=service_docs,
        channels={name: channels[name] for name in sorted(channels)},
        servers=list(servers),
        version=version,
        description=description,
    )


def _add(items: list[str], value: str) -> None:
    if value not in items:
        items.append(value)
