"""Services: named collections of consumers with startup and shutdown hooks."""

from __future__ import annotations

import inspect
import types
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

from .consumer import Consumer, consumers_of, make_consumer
from .errors import ConfigurationError, ContractError
from .names import validate_channel
from .references import import_user_module

F = TypeVar("F", bound=Callable[..., Any])
Hook = Callable[..., Awaitable[None] | None]


class Service:
    """A microservice: its consumers, what it produces, and its lifecycle hooks.

    ::

        service = Service("stats")

        @service.consumes("stats.get")
        async def get_stats(query: StatsQuery) -> StatsReply: ...
    """

    def __init__(
        self, name: str, *, description: str = "", consumers: Iterable[Consumer] = ()
    ) -> None:
        self.name = name
        self.description = description
        self.consumers: list[Consumer] = []
        self.produced: set[str] = set()
        self.startup_hooks: list[Hook] = []
        self.shutdown_hooks: list[Hook] = []
        for consumer in consumers:
            self.add(consumer)

    def __repr__(self) -> str:
        return f"<Service {self.name!r} consumers={[c.channel for c in self.consumers]}>"

    def add(self, consumer: Consumer | Callable[..., Any]) -> None:
        """Add a :class:`Consumer`, or every consumer ``@consumes`` put on a function."""
        found = (consumer,) if isinstance(consumer, Consumer) else consumers_of(consumer)
        if not found:
            raise ContractError(f"{consumer!r} is not marked with @consumes")
        for item in found:
            if any(c.func is item.func and c.channel == item.channel for c in self.consumers):
                continue
            self.consumers.append(item)

    def consumes(
        self, channel: str, *, concurrency: int | None = None, produces: Iterable[str] = ()
    ) -> Callable[[F], F]:
        """Decorator: add the function as this service's consumer of ``channel``."""

        def register(func: F) -> F:
            self.add(make_consumer(channel, func, concurrency=concurrency, produces=produces))
            return func

        return register

    def produces(self, *channels: str) -> None:
        """Declare channels this service sends to outside any consumer (docs, diagrams)."""
        for channel in channels:
            self.produced.add(validate_channel(channel))

    def on_startup(self, hook: F) -> F:
        """Run ``hook`` (sync or async; optionally taking the Bus) before consuming starts."""
        self.startup_hooks.append(hook)
        return hook

    def on_shutdown(self, hook: F) -> F:
        """Run ``hook`` after consuming has stopped."""
        self.shutdown_hooks.append(hook)
        return hook

    @property
    def channels(self) -> list[str]:
        """The channels this service consumes."""
        return [c.channel for c in self.consumers]

    @classmethod
    def from_module(cls, module: types.ModuleType, name: str | None = None) -> Service:
        """Collect the module-level ``@consumes`` functions of ``module`` into a service."""
        service = cls(name or module.__name__.rsplit(".", 1)[-1], description=module.__doc__ or "")
        for value in vars(module).values():
            if inspect.isfunction(value) and consumers_of(value):
                service.add(value)
        return service


async def run_hooks(hooks: list[Hook], *args: Any) -> None:
    """Call each hook, passing ``args`` if it takes them, awaiting async ones."""
    for hook in hooks:
        takes = len(inspect.signature(hook).parameters)
        result = hook(*args[:takes])
        if inspect.isawaitable(result):
            await result


def load_service(ref: str) -> Service:
    """Find the service ``ref`` names: ``package.module`` or ``package.module:attribute``.

    For a bare module: its one :class:`Service` instance if it has exactly one,
    else its module-level ``@consumes`` functions. The current directory is
    importable, as with ``python -m``.
    """
    module_name, _, attribute = ref.partition(":")
    module = import_user_module(module_name)
    if attribute:
        try:
            found = getattr(module, attribute)
        except AttributeError:
            raise ConfigurationError(
                f"module {module_name!r} has no attribute {attribute!r}"
            ) from None
        if callable(found) and not isinstance(found, Service):
            found = found()  # a factory
        if not isinstance(found, Service):
            raise ConfigurationError(f"{ref!r} is {type(found).__name__}, not a svcbus Service")
        return found
    services = [v for v in vars(module).values() if isinstance(v, Service)]
    if len(services) == 1:
        return services[0]
    if len(services) > 1:
        names = ", ".join(
            f"{module_name}:{k}" for k, v in vars(module).items() if isinstance(v, Service)
        )
        raise ConfigurationError(f"{module_name!r} has several services; pick one: {names}")
    service = Service.from_module(module)
    if not service.consumers:
        raise ConfigurationError(
            f"{module_name!r} has no Service and no @consumes functions: nothing to run"
        )
    return service
