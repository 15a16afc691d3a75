"""Prometheus metrics for runtimes and edges (the ``metrics`` extra: ``prometheus-client``).

Counters the runtime and the edge already keep (``Runtime.stats``,
``EdgeApp.stats``, ``layer.lost``) are read at scrape time by a collector, so
the message hot path pays nothing for them. Two things need a hook:

* the handler duration histogram and the in-flight gauge: :func:`instrument`
  wraps each consumer function of a service (a copy; the original is untouched);
* WebSocket frames in/out and closes by code: :class:`EdgeMetrics` wraps the
  edge's ASGI ``receive``/``send`` and counts the events it sees.

Each process gets its own :class:`Metrics` registry (not prometheus-client's
global one), so tests and embedded uses never collide on metric names.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Iterator
from typing import Any

from .errors import ConfigurationError
from .service import Service

try:
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    from prometheus_client.exposition import CONTENT_TYPE_LATEST
    from prometheus_client.process_collector import ProcessCollector
except ImportError:  # pragma: no cover - exercised by the missing-extra test
    CollectorRegistry = None  # type: ignore[assignment,misc]  # marks the missing extra

INSTALL_HINT = "metrics need prometheus-client: pip install 'svcbus[metrics]'"

DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
"""Handler seconds: svcbus handlers are often sub-millisecond, so the buckets start low."""

# Runtime counter field -> (metric suffix, help)
_CONSUMER_COUNTERS = {
    "received": ("received", "Messages taken from the channel."),
    "processed": ("processed", "Messages a consumer handled without raising."),
    "failed": ("failed", "Messages whose consumer raised."),
    "invalid": ("refused", "Messages refused as undecodable or not fitting the contract."),
    "expired": ("expired", "Messages dropped because they expired before handling."),
    "dead_lettered": ("dead_lettered", "Refused messages sent to the dead-letter channel."),
}

# EdgeApp.stats field -> limit label of svcbus_edge_rejections_total
_EDGE_REJECTIONS = {
    "refused_origin": "origin",
    "refused_auth": "auth",
    "refused_busy": "connections",
    "closed_rate": "rate",
    "closed_size": "size",
    "closed_bad_frame": "bad_frame",
}


def available() -> bool:
    """Whether prometheus-client is installed."""
    return CollectorRegistry is not None


class Metrics:
    """One process's metrics: a registry, the runtimes and edges it reports on."""

    def __init__(self) -> None:
        if CollectorRegistry is None:
            raise ConfigurationError(INSTALL_HINT)
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.duration = Histogram(
            "svcbus_handler_duration_seconds",
            "Seconds a consumer took per message (raising included).",
            ["service", "channel"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "svcbus_handler_in_flight",
            "Messages a consumer is handling now.",
            ["service", "channel"],
            registry=self.registry,
        )
        self.frames = Counter(
            "svcbus_edge_frames",
            "WebSocket frames through the edge, by direction (in: from browsers).",
            ["direction"],
            registry=self.registry,
        )
        self.closes = Counter(
            "svcbus_edge_closes",
            "WebSocket closes by code and by who closed (edge or client).",
            ["code", "by"],
            registry=self.registry,
        )
        self._runtimes: list[Any] = []
        self._edges: list[Any] = []
        self.registry.register(_StatsCollector(self))

    def watch_runtime(self, runtime: Any) -> None:
        """Report ``runtime.stats`` and its layer's counters at each scrape."""
        self._runtimes.append(runtime)

    def watch_edge(self, edge: Any) -> None:
        """Report ``edge.stats`` and its layer's counters at each scrape."""
        self._edges.append(edge)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type (for ``/metrics``)."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def instrument(self, service: Service) -> Service:
        """A copy of ``service`` whose consumers feed the duration histogram and in-flight gauge."""
        copy = Service(service.name, description=service.description)
        copy.produced = set(service.produced)
        copy.startup_hooks = list(service.startup_hooks)
        copy.shutdown_hooks = list(service.shutdown_hooks)
        for consumer in service.consumers:
            labels = (service.name, consumer.channel)
            timed = _timed(
                consumer.func, self.duration.labels(*labels), self.in_flight.labels(*labels)
            )
            copy.add(dataclasses.replace(consumer, func=timed))
        return copy


def _timed(func: Callable[..., Any], duration: Any, in_flight: Any) -> Callable[..., Any]:
    # Same calling convention as the original (async stays async), same name
    # (consumer names in logs come from __module__/__qualname__).
    if _is_async(func):

        @functools.wraps(func)
        async def timed_async(*args: Any) -> Any:
            in_flight.inc()
            started = time.perf_counter()
            try:
                return await func(*args)
            finally:
                duration.observe(time.perf_counter() - started)
                in_flight.dec()

        return timed_async

    @functools.wraps(func)
    def timed_sync(*args: Any) -> Any:
        in_flight.inc()
        started = time.perf_counter()
        try:
            return func(*args)
        finally:
            duration.observe(time.perf_counter() - started)
            in_flight.dec()

    return timed_sync


def _is_async(func: Callable[..., Any]) -> bool:
    import inspect

    return inspect.iscoroutinefunction(func)


class _StatsCollector:
    """Turns the counters runtimes, edges and layers keep into metric families at scrape time."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def describe(self) -> list[Any]:
        return []  # families vary with what is watched; collect() is the truth

    def collect(self) -> Iterator[Any]:
        families = {
            field: CounterMetricFamily(
                f"svcbus_messages_{suffix}", help_text, labels=["service", "channel"]
            )
            for field, (suffix, help_text) in _CONSUMER_COUNTERS.items()
        }
        layers: dict[int, Any] = {}
        for runtime in self.metrics._runtimes:
            name = runtime.service.name
            for channel, stats in runtime.stats.items():
                for field, family in families.items():
                    family.add_metric([name, channel], getattr(stats, field))
            layers[id(runtime.bus.layer)] = runtime.bus.layer
        yield from families.values()
        yield from self._edge_families(layers)
        yield from _layer_families(layers.values())

    def _edge_families(self, layers: dict[int, Any]) -> Iterator[Any]:
        if not self.metrics._edges:
            return
        sockets = GaugeMetricFamily("svcbus_edge_sockets_open", "WebSockets open now.")
        accepted = CounterMetricFamily(
            "svcbus_edge_sockets_accepted", "WebSockets a consumer accepted."
        )
        rejected = CounterMetricFamily(
            "svcbus_edge_sockets_rejected",
            "WebSockets a consumer closed before accepting, or that no consumer answered.",
        )
        requests = CounterMetricFamily("svcbus_edge_http_requests", "HTTP requests routed.")
        dropped = CounterMetricFamily(
            "svcbus_edge_frames_dropped", "Frames lost because the receive channel was full."
        )
        rejections = CounterMetricFamily(
            "svcbus_edge_rejections", "Connections and frames refused, by limit.", labels=["limit"]
        )
        totals = dict.fromkeys(_EDGE_REJECTIONS, 0)
        open_now = acc = rej = http = drop = 0
        for edge in self.metrics._edges:
            stats = edge.stats
            open_now += stats.connections
            acc += stats.accepted
            rej += stats.rejected
            http += stats.http_requests
            drop += stats.dropped
            for field in totals:
                totals[field] += getattr(stats, field)
            bus = edge._bus
            if bus is not None:
                layers[id(bus.layer)] = bus.layer
        sockets.add_metric([], open_now)
        accepted.add_metric([], acc)
        rejected.add_metric([], rej)
        requests.add_metric([], http)
        dropped.add_metric([], drop)
        for field, label in _EDGE_REJECTIONS.items():
            rejections.add_metric([label], totals[field])
        yield from (sockets, accepted, rejected, requests, dropped, rejections)


def _layer_families(layers: Any) -> Iterator[Any]:
    reconnects = CounterMetricFamily(
        "svcbus_layer_reconnects",
        "Times the layer lost its broker and reconnected.",
        labels=["system"],
    )
    lost = CounterMetricFamily(
        "svcbus_layer_lost",
        "Messages the layer had to drop (a full stream, a full buffer).",
        labels=["system"],
    )
    for layer in layers:
        reconnects.add_metric([layer.system], layer_reconnects(layer))
        lost.add_metric([layer.system], getattr(layer, "lost", 0))
    yield reconnects
    yield lost


def layer_reconnects(layer: Any) -> int:
    """How often ``layer`` reconnected to its broker (0 for memory://)."""
    if layer.system == "nats":
        nc = layer.conn.nc
        return int(nc.stats.get("reconnects", 0)) if nc is not None else 0
    if layer.system == "redis":
        return int(getattr(layer, "reconnects", 0))  # outages noticed, over all servers
    return 0


class EdgeMetrics:
    """ASGI middleware around an edge: counts WebSocket frames in/out and closes by code."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        frames = metrics.frames
        self._in = frames.labels("in")
        self._out = frames.labels("out")
        metrics.watch_edge(app)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "websocket":
            await self.app(scope, receive, send)
            return
        frame_in, frame_out, closes = self._in, self._out, self.metrics.closes

        async def counting_receive() -> dict[str, Any]:
            event: dict[str, Any] = await receive()
            kind = event["type"]
            if kind == "websocket.receive":
                frame_in.inc()
            elif kind == "websocket.disconnect":
                closes.labels(str(event.get("code", 1005)), "client").inc()
            return event

        async def counting_send(event: dict[str, Any]) -> None:
            kind = event["type"]
            if kind == "websocket.send":
                frame_out.inc()
            elif kind == "websocket.close":
                closes.labels(str(event.get("code", 1000)), "edge").inc()
            await send(event)

        await self.app(scope, counting_receive, counting_send)
