"""OpenTelemetry instrumentation: spans for send, process and request.

svcbus depends only on ``opentelemetry-api``. Nothing is traced until an
OpenTelemetry SDK tracer provider is installed (``svc run --trace console``,
or your own ``trace.set_tracer_provider(...)``); until then the hot path
makes no span objects and no header work. The W3C trace context travels in
the envelope's ``tc`` field, so a consumer's ``process`` span is the child of
the sender's span (or, with ``configure(parent="link")``, linked to it).

Span names and attributes follow OpenTelemetry's messaging conventions:
``send <channel>`` (PRODUCER), ``process <channel>`` (CONSUMER),
``request <channel>`` (CLIENT, request/reply), with ``messaging.system``,
``messaging.destination.name``, ``messaging.operation.name`` and ``.type``,
``messaging.message.id``, ``messaging.message.body.size``,
``messaging.consumer.group.name`` for named channels and ``error.type`` on
failure.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

from opentelemetry import propagate, trace
from opentelemetry.trace import Link, NoOpTracerProvider, ProxyTracerProvider, SpanKind, Status
from opentelemetry.trace import StatusCode as _StatusCode

INSTRUMENTATION = "svcbus"

_parent_mode: Literal["child", "link"] = "child"


def configure(*, parent: Literal["child", "link"] = "child") -> None:
    """Choose how a ``process`` span relates to the sender's span: child (default) or link."""
    global _parent_mode
    if parent not in ("child", "link"):
        raise ValueError(f"parent must be 'child' or 'link', got {parent!r}")
    _parent_mode = parent


def active() -> bool:
    """True once a real tracer provider (an OpenTelemetry SDK) is installed."""
    return not isinstance(trace.get_tracer_provider(), ProxyTracerProvider | NoOpTracerProvider)


def tracer() -> trace.Tracer | None:
    """svcbus's tracer, or None when tracing is off (the zero-cost path)."""
    if not active():
        return None
    from . import __version__

    return trace.get_tracer(INSTRUMENTATION, __version__)


def inject() -> dict[str, str]:
    """The current trace context as envelope ``tc`` entries (traceparent, tracestate, baggage)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def _attributes(system: str, destination: str, operation: str, kind: str) -> dict[str, Any]:
    return {
        "messaging.system": system,
        "messaging.destination.name": destination,
        "messaging.operation.name": operation,
        "messaging.operation.type": kind,
    }


@contextmanager
def send_span(
    tracer_: trace.Tracer, system: str, destination: str, *, operation: str = "send"
) -> Iterator[trace.Span]:
    """A PRODUCER span (CLIENT for ``request``) around one send; sets ``error.type`` on failure."""
    kind = SpanKind.CLIENT if operation == "request" else SpanKind.PRODUCER
    with tracer_.start_as_current_span(
        f"{operation} {destination}",
        kind=kind,
        attributes=_attributes(system, destination, operation, "send"),
        record_exception=True,
        set_status_on_exception=True,
    ) as span:
        try:
            yield span
        except BaseException as exc:
            span.set_attribute("error.type", type(exc).__qualname__)
            raise


@contextmanager
def process_span(
    tracer_: trace.Tracer,
    system: str,
    channel: str,
    message_id: str,
    body_size: int,
    carried: dict[str, str] | None,
) -> Iterator[trace.Span]:
    """A CONSUMER span for handling one message, parented on (or linked to) the sender's span."""
    attributes = _attributes(system, channel, "process", "process")
    attributes["messaging.message.id"] = message_id
    attributes["messaging.message.body.size"] = body_size
    if "!" not in channel:
        # Named channels are load-balanced like a consumer group.
        attributes["messaging.consumer.group.name"] = channel
    parent_context = propagate.extract(carried) if carried else None
    links = None
    if parent_context is not None and _parent_mode == "link":
        sender = trace.get_current_span(parent_context).get_span_context()
        links = [Link(sender)] if sender.is_valid else None
        parent_context = None
    with tracer_.start_as_current_span(
        f"process {channel}",
        context=parent_context,
        kind=SpanKind.CONSUMER,
        attributes=attributes,
        links=links,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        yield span


def mark_failed(span: trace.Span, error: BaseException) -> None:
    """Record a consumer's exception on its span: status ERROR and ``error.type``."""
    span.record_exception(error)
    span.set_status(Status(_StatusCode.ERROR, f"{type(error).__name__}: {error}"))
    span.set_attribute("error.type", type(error).__qualname__)
