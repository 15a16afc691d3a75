"""The blocking client: the bus for code that is not a service.

Scripts, Django or Flask views and Celery tasks are plain blocking code. They
get the whole async :class:`~svcbus.Bus` through :class:`BlockingBus`, which
runs it on an event loop in a background thread of its own (an anyio blocking
portal) and hands every call over to that loop::

    from svcbus.blocking import BlockingBus

    with BlockingBus("nats://localhost:4222") as bus:
        bus.send("chat.posted", ChatPosted(room="lobby", nick="ada", text="hi"))
        stats = bus.request("stats.get", StatsQuery(room="lobby"))

One ``BlockingBus`` is meant to be shared: any number of threads may call it at
once (the calls are queued onto the one loop, and all requests share one reply
inbox), so a web process opens one at startup instead of one per request.

A ``memory://`` hub lives in one event loop: two BlockingBus objects have two
loops, so on ``memory://`` run the services in the client's own loop with
:meth:`BlockingBus.serve`. NATS and Redis have no such limit.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import anyio
from anyio.from_thread import BlockingPortal, start_blocking_portal

from . import tracing
from .bus import DEFAULT_REQUEST_TIMEOUT, Bus
from .contract import ContractRegistry, registry
from .envelope import Envelope
from .errors import SvcbusError
from .layer import Layer, open_layer
from .runtime import Runtime
from .service import Service

T = TypeVar("T")


class BlockingBus:
    """A :class:`~svcbus.Bus` with a blocking API, safe to share between threads.

    ``layer`` is a layer URL (``memory://``, ``nats://host:4222``, ``redis://host:6379/0``)
    or a :class:`~svcbus.Layer`; keyword ``options`` are the layer options
    (``capacity``, ``expiry``...). Use it as a context manager, or call
    :meth:`open` and :meth:`close` (for example in an app's startup and shutdown).
    """

    def __init__(
        self,
        layer: Layer | str,
        *,
        contracts: ContractRegistry = registry,
        tracer: Any = None,
        backend: str = "asyncio",
        **options: Any,
    ) -> None:
        if isinstance(layer, str):
            layer = open_layer(layer, **options)
        elif options:
            raise SvcbusError("layer options go with a layer URL, not with a Layer object")
        self.bus = Bus(layer, contracts=contracts, tracer=tracer)
        """The async bus underneath; touch it only from the portal's loop."""
        self._backend = backend
        self._lock = threading.Lock()
        self._stack: contextlib.ExitStack | None = None
        self._portal: BlockingPortal | None = None

    # lifecycle ---------------------------------------------------------------------

    def open(self) -> BlockingBus:
        """Start the background loop and connect. Idempotent."""
        with self._lock:
            if self._portal is not None:
                return self
            stack = contextlib.ExitStack()
            try:
                portal = stack.enter_context(start_blocking_portal(self._backend))
                # The bus owns a task group: one portal task must enter and exit it,
                # which is what wrap_async_context_manager arranges.
                stack.enter_context(portal.wrap_async_context_manager(self.bus))
            except BaseException:
                stack.close()
                raise
            self._stack, self._portal = stack, portal
        return self

    def close(self) -> None:
        """Flush what was sent, disconnect and stop the background loop. Idempotent."""
        with self._lock:
            stack, self._stack, self._portal = self._stack, None, None
        if stack is not None:
            stack.close()

    def __enter__(self) -> BlockingBus:
        return self.open()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def portal(self) -> BlockingPortal:
        """The anyio portal into the bus's loop (to run your own async code beside it)."""
        portal = self._portal
        if portal is None:
            raise SvcbusError(
                "the BlockingBus is not open: use `with BlockingBus(url) as bus:` or call open()"
            )
        return portal

    @property
    def layer(self) -> Layer:
        """The layer underneath."""
        return self.bus.layer

    def _call(self, func: Callable[..., Awaitable[T]], *args: Any) -> T:
        return self.portal.call(func, *args)

    @contextlib.contextmanager
    def _span(self, destination: str, operation: str) -> Iterator[dict[str, str] | None]:
        """A send span in the calling thread: the caller's current span is its parent.

        The loop thread does not see the caller's OpenTelemetry context, so the span
        and the trace context the envelope carries are made here.
        """
        tracer = self.bus.tracer
        if tracer is None:
            yield None
            return
        with tracing.send_span(tracer, self.bus.layer.system, destination, operation=operation):
            yield tracing.inject()

    # messaging -------------------------------------------------------------------

    def send(
        self,
        channel: str,
        message: Any,
        *,
        reply_channel: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> str:
        """Validate and send ``message`` on ``channel``; returns the message id.

        Raises ``MessageInvalid`` (nothing sent), ``ChannelFull``, ``MessageTooLarge``.
        """
        with self._span(channel, "send") as trace:
            return self._call(
                lambda: self.bus.send(
                    channel, message, reply_channel=reply_channel, trace=trace, headers=headers
                )
            )

    def request(
        self,
        channel: str,
        message: Any,
        *,
        timeout: float = DEFAULT_REQUEST_TIMEOUT,
        reply_type: Any = None,
    ) -> Any:
        """Send a request and block until its typed reply arrives.

        Raises :class:`~svcbus.RequestTimeout` or :class:`~svcbus.RemoteError`.
        """
        with self._span(channel, "request") as trace:
            return self._call(
                lambda: self.bus.request(
                    channel, message, timeout=timeout, reply_type=reply_type, trace=trace
                )
            )

    def group_send(self, group: str, message: Any) -> None:
        """Send ``message`` to every member of ``group``."""
        with self._span(group, "send") as trace:
            self._call(lambda: self.bus.group_send(group, message, trace=trace))

    def group_add(self, group: str, channel: str) -> None:
        """Add ``channel`` to ``group``; effective for every later ``group_send``."""
        self._call(self.bus.group_add, group, channel)

    def group_discard(self, group: str, channel: str) -> None:
        """Remove ``channel`` from ``group``."""
        self._call(self.bus.group_discard, group, channel)

    def new_channel(self, prefix: str = "specific") -> str:
        """A new process-specific channel that only this client receives."""
        return self._call(self.bus.new_channel, prefix)

    def receive(
        self, channel: str, *, timeout: float | None = None, body_type: Any = None
    ) -> Envelope[Any]:
        """Wait for the next valid message on ``channel`` (a named or own process channel).

        Raises :class:`TimeoutError` after ``timeout`` seconds (``None``: wait forever).
        """

        async def receive() -> Envelope[Any]:
            with anyio.fail_after(timeout):
                return await self.bus.receive(channel, body_type)

        return self._call(receive)

    def flush(self) -> None:
        """Wait until the layer has handed every message sent so far to its server."""
        self._call(self.bus.layer.flush)

    # serving -------------------------------------------------------------------------

    @contextlib.contextmanager
    def serve(self, service: Service, **runtime_options: Any) -> Iterator[Runtime]:
        """Run ``service`` on this bus's loop for the body of a ``with`` block.

        Embeds a (small) service into blocking code, and runs the consumers of a
        test next to the client on one ``memory://`` layer. ``runtime_options`` go
        to :class:`~svcbus.Runtime` (``concurrency``, ``threads``...).
        """
        runtime = Runtime(service, self.bus, **runtime_options)
        with self.portal.wrap_async_context_manager(runtime.running()):
            yield runtime


def connect_blocking(url: str, **options: Any) -> BlockingBus:
    """An open :class:`BlockingBus` on the layer ``url`` selects (close it, or use ``with``)."""
    return BlockingBus(url, **options).open()
