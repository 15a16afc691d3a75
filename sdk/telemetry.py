"""Turning tracing on: an OpenTelemetry SDK tracer provider with a readable console or OTLP.

svcbus instruments itself with ``opentelemetry-api`` only (:mod:`svcbus.tracing`);
spans are recorded once an SDK tracer provider is installed. This module is
the one place that imports ``opentelemetry-sdk``, and nothing imports it until
tracing is asked for (``--trace``), so ``import svcbus`` never needs the SDK::

    from svcbus.telemetry import setup_tracing
    setup_tracing("console", "chat")   # or "otlp"; svc run/edge/demo --trace does this

``console`` prints one compact line per finished span to stderr, indented by
its depth in the trace::

    3f2a9c1e edge  WS receive /chat/{room} ............  0.21 ms  ok  id=9f1c20e4a7b3d5c1 to=chat.receive
    3f2a9c1e   chat  process chat.receive .............  1.10 ms  ok  id=9f1c20e4a7b3d5c1

``otlp`` batches spans to an OTLP/HTTP collector configured by the standard
``OTEL_EXPORTER_OTLP_*`` environment variables (endpoint, headers, timeout...).
``OTEL_SERVICE_NAME`` overrides the service name given here.
"""

from __future__ import annotations

import os
import sys
import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, TextIO

from .errors import ConfigurationError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import SpanProcessor as _ProcessorBase
else:
    try:
        # Only the base class is needed at import; without the SDK, build_provider
        # fails first, with the install hint.
        from opentelemetry.sdk.trace import SpanProcessor as _ProcessorBase
    except ImportError:  # pragma: no cover - the SDK is the `tracing` extra
        _ProcessorBase = object

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import ReadableSpan, Span, TracerProvider

MODES = ("off", "console", "otlp")
"""What ``--trace`` accepts."""

INSTALL_HINT = "pip install 'svcbus[tracing]'"

NAME_WIDTH = 52
"""Columns for indentation, service and span name, so durations line up."""


def _sdk_missing(exc: ImportError) -> ConfigurationError:
    return ConfigurationError(
        f"tracing needs the OpenTelemetry SDK and exporter ({exc.name or exc} is missing): "
        f"{INSTALL_HINT}"
    )


def build_provider(mode: str, service_name: str, *, stream: TextIO | None = None) -> TracerProvider:
    """A tracer provider for ``mode`` ("console" or "otlp"), not installed globally.

    ``stream`` is where the console output goes (default: stderr). Raises
    :class:`~svcbus.errors.ConfigurationError` for an unknown mode or a missing SDK.
    """
    if mode not in MODES or mode == "off":
        raise ConfigurationError(f"--trace must be one of {', '.join(MODES)}, not {mode!r}")
    try:
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
    except ImportError as exc:
        raise _sdk_missing(exc) from None
    # The standard variable wins over the name the command picked.
    given = {} if os.environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: service_name}
    provider = TracerProvider(resource=Resource.create(given))
    if mode == "console":
        provider.add_span_processor(ReadableSpanProcessor(stream))
    else:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
        except ImportError as exc:
            raise _sdk_missing(exc) from None
        # The exporter reads OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT, _HEADERS, _TIMEOUT... itself.
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


def setup_tracing(mode: str, service_name: str) -> TracerProvider | None:
    """Install the global tracer provider for ``mode``; ``"off"`` installs nothing (None).

    Call it once per process, before buses are opened (a Bus opened earlier
    picks the provider up on its next ``async with``). Spans still buffered
    are flushed when the process exits.
    """
    if mode == "off":
        return None
    provider = build_provider(mode, service_name)
    from opentelemetry import trace

    trace.set_tracer_provider(provider)
    return provider


# console -----------------------------------------------------------------------------


class _Seen:
    """What the console remembers of a started span: its depth, service and (live) span."""

    __slots__ = ("depth", "service", "span")

    def __init__(self, depth: int, span: Any) -> None:
        self.depth = depth
        self.span = span
        self.service: str | None = None


class ReadableSpanProcessor(_ProcessorBase):
    """Writes a compact, human-readable line per finished span (not the SDK's JSON dump).

    Lines are held per trace until every span of that trace started in this
    process has ended, then written in start order: parents above children,
    although children end first. A trace that moves on asynchronously (a
    ``send`` whose ``process`` starts later) simply prints in several groups.
    Depth comes from parents seen in this process; a span whose parent is in
    another process starts at depth 0.
    """

    MAX_REMEMBERED = 4096
    """Started spans remembered for depth and service (a bounded LRU)."""
    MAX_HELD = 200
    """Lines held for one trace before they are written anyway."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream
        self._lock = threading.Lock()
        self._seen: OrderedDict[int, _Seen] = OrderedDict()
        self._open: dict[int, int] = {}
        self._held: dict[int, list[tuple[int, str]]] = {}

    # SpanProcessor ---------------------------------------------------------------------

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        """Remember the span's depth; count it open in its trace."""
        context = span.get_span_context()
        parent = span.parent
        with self._lock:
            seen_parent = self._seen.get(parent.span_id) if parent is not None else None
            depth = seen_parent.depth + 1 if seen_parent is not None else 0
            self._seen[context.span_id] = _Seen(depth, span)
            if len(self._seen) > self.MAX_REMEMBERED:
                self._seen.popitem(last=False)
            self._open[context.trace_id] = self._open.get(context.trace_id, 0) + 1

    def on_end(self, span: ReadableSpan) -> None:
        """Format the span; write its trace's lines once nothing of it is open here."""
        context = span.context
        assert context is not None
        trace_id = context.trace_id
        with self._lock:
            seen = self._seen.get(context.span_id)
            depth = seen.depth if seen is not None else 0
            service = self._service(span)
            if seen is not None:
                seen.service = service
                seen.span = None  # ended: keep the small facts, not the span
            line = format_span(span, depth, service)
            held = self._held.setdefault(trace_id, [])
            held.append((span.start_time or 0, line))
            left = self._open.get(trace_id, 1) - 1
            if left > 0:
                self._open[trace_id] = left
                if len(held) < self.MAX_HELD:
                    return
                lines = self._take(trace_id)
            else:
                self._open.pop(trace_id, None)
                lines = self._take(trace_id)
        self._write(lines)

    def shutdown(self) -> None:
        """Write whatever is still held."""
        self.force_flush()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Write every held line now."""
        with self._lock:
            lines = [line for trace_id in list(self._held) for line in self._take(trace_id)]
        self._write(lines)
        return True

    # helpers -----------------------------------------------------------------------------

    def _service(self, span: ReadableSpan) -> str:
        """``svcbus.service`` of the span or its nearest local ancestor, else the resource's."""
        attributes = span.attributes or {}
        found = attributes.get("svcbus.service")
        parent = span.parent
        while found is None and parent is not None:
            seen = self._seen.get(parent.span_id)
            if seen is None:
                break
            if seen.service is not None:
                found = seen.service
            elif seen.span is not None:
                found = (seen.span.attributes or {}).get("svcbus.service")
                parent = seen.span.parent
            else:
                break
        if found is None:
            found = span.resource.attributes.get("service.name", "?")
        return str(found)

    def _take(self, trace_id: int) -> list[str]:
        held = self._held.pop(trace_id, [])
        held.sort(key=lambda item: item[0])
        return [line for _, line in held]

    def _write(self, lines: list[str]) -> None:
        if not lines:
            return
        stream = self.stream or sys.stderr  # looked up late: tests and tools swap stderr
        stream.write("".join(line + "\n" for line in lines))
        stream.flush()


_SHOWN = (
    ("http.response.status_code", "http"),
    ("websocket.close.code", "close"),
    ("svcbus.edge.sockets", "sockets"),
    ("messaging.message.id", "id"),
)


def format_span(span: ReadableSpan, depth: int, service: str) -> str:
    """One console line: trace id, indented service and name, duration, status, key attributes.

    ``3f2a9c1e   chat  process chat.receive .....  1.10 ms  ok  id=9f1c20e4a7b3d5c1``
    """
    from opentelemetry.trace import StatusCode

    context = span.context
    trace_id = f"{context.trace_id:032x}"[:8] if context is not None else "--------"
    head = f"{'  ' * depth}{service}  {span.name} "
    if len(head) < NAME_WIDTH:
        head = head + "." * (NAME_WIDTH - len(head))
    duration = ((span.end_time or 0) - (span.start_time or 0)) / 1e6
    attributes = span.attributes or {}
    if span.status.status_code is StatusCode.ERROR:
        error = attributes.get("error.type") or "error"
        description = span.status.description
        status = f"ERROR {description}" if description else f"ERROR {error}"
    else:
        status = "ok"
    parts = [f"{key}={attributes[name]!s}" for name, key in _SHOWN if name in attributes]
    destination = attributes.get("messaging.destination.name")
    if destination is not None and str(destination) not in span.name:
        parts.append(f"to={destination}")
    if attributes.get("svcbus.edge.dropped"):
        parts.append("dropped")
    if span.links:
        parts.append(f"links={len(span.links)}")
    extra = f"  {' '.join(parts)}" if parts else ""
    return f"{trace_id} {head} {duration:8.2f} ms  {status}{extra}"
