"""``@consumes``: turn a function into a typed consumer of a channel.

The message type comes from the contract registered for the channel or from
the first parameter's annotation; when both exist they must agree, checked
when the decorator runs (at import time). ``async def`` consumers run on the
event loop; plain ``def`` consumers run in worker threads.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .contract import Contract, registry
from .errors import ContractError
from .names import validate_channel

F = TypeVar("F", bound=Callable[..., Any])

_UNTYPED = (inspect.Parameter.empty, Any, dict, typing.Dict, object)  # noqa: UP006


@dataclass(frozen=True)
class Consumer:
    """A consumer's declaration: what it reads, what it replies, how it runs."""

    channel: str
    func: Callable[..., Any]
    message_type: Any
    """The contract (or other type) the body is validated as; ``Any`` for untyped channels."""
    reply_type: Any
    """The reply's contract, or ``None`` when the reply is untyped."""
    is_async: bool
    takes_context: bool
    concurrency: int | None = None
    produces: tuple[str, ...] = field(default=())
    """Channels this consumer sends to (documentation and diagrams)."""

    @property
    def name(self) -> str:
        """``module.function`` of the consumer function."""
        return f"{self.func.__module__}.{self.func.__qualname__}"


def _hints(func: Callable[..., Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(func)
    except Exception:
        # Unresolvable forward references: fall back to what is evaluated.
        return dict(getattr(func, "__annotations__", {}))


def _same(a: type, b: type) -> bool:
    return a is b or (a.__module__, a.__qualname__) == (b.__module__, b.__qualname__)


def resolve_message_type(channel: str, annotation: Any, where: str) -> Any:
    """Pick the body type for ``channel`` from the registry and an annotation."""
    registered = registry.get(channel)
    if isinstance(annotation, type) and issubclass(annotation, Contract):
        bound = annotation.__channel__
        if bound is not None and bound != channel:
            raise ContractError(
                f"{where} consumes {channel!r} but its message parameter is annotated "
                f"{annotation.__qualname__}, the contract of {bound!r}"
            )
        if registered is not None and not _same(registered, annotation):
            raise ContractError(
                f"{where} consumes {channel!r}, whose contract is {registered.__qualname__}, "
                f"but annotates its message as {annotation.__qualname__}"
            )
        return annotation
    if annotation in _UNTYPED or typing.get_origin(annotation) is dict:
        return registered if registered is not None else Any
    if registered is not None:
        raise ContractError(
            f"{where} consumes {channel!r}, whose contract is {registered.__qualname__}, "
            f"but annotates its message as {annotation!r}"
        )
    return annotation


def make_consumer(
    channel: str,
    func: Callable[..., Any],
    *,
    concurrency: int | None = None,
    produces: Iterable[str] = (),
) -> Consumer:
    """Build the :class:`Consumer` for ``func`` on ``channel`` (validating everything)."""
    validate_channel(channel)
    if "!" in channel:
        raise ContractError(
            f"cannot @consumes process-specific channel {channel!r}: they are made at run time"
        )
    if not callable(func):
        raise ContractError(f"@consumes({channel!r}) needs a function, got {func!r}")
    if concurrency is not None and concurrency < 1:
        raise ContractError(f"concurrency must be >= 1, got {concurrency}")
    where = f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', func)}"
    params = [
        p
        for p in inspect.signature(func).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if not 1 <= len(params) <= 2:
        raise ContractError(
            f"{where} must take (message) or (message, ctx); it takes {len(params)} parameters"
        )
    hints = _hints(func)
    message_type = resolve_message_type(
        channel, hints.get(params[0].name, inspect.Parameter.empty), where
    )
    reply_type = hints.get("return")
    if reply_type in (None, type(None), Any) or not (
        isinstance(reply_type, type) and issubclass(reply_type, Contract)
    ):
        reply_type = getattr(message_type, "__reply__", None)
    for target in produces:
        validate_channel(target)
    return Consumer(
        channel=channel,
        func=func,
        message_type=message_type,
        reply_type=reply_type,
        is_async=inspect.iscoroutinefunction(func),
        takes_context=len(params) == 2,
        concurrency=concurrency,
        produces=tuple(produces),
    )


CONSUMER_ATTR = "__svcbus_consumers__"


def consumes(
    channel: str, *, concurrency: int | None = None, produces: Iterable[str] = ()
) -> Callable[[F], F]:
    """Mark a function as the consumer of ``channel``.

    The function stays callable as it is. ``svc run some.module`` finds every
    marked function in the module; a :class:`~svcbus.Service` collects them
    explicitly with ``service.consumes(...)``. ``concurrency`` caps how many
    messages this consumer handles at once (the runtime default otherwise);
    ``produces`` lists the channels it sends to, for docs and diagrams.
    """

    def mark(func: F) -> F:
        consumer = make_consumer(channel, func, concurrency=concurrency, produces=produces)
        marks = list(getattr(func, CONSUMER_ATTR, ()))
        marks.append(consumer)
        setattr(func, CONSUMER_ATTR, tuple(marks))
        return func

    return mark


def consumers_of(obj: Any) -> tuple[Consumer, ...]:
    """The consumers ``@consumes`` attached to ``obj`` (empty if none)."""
    return tuple(getattr(obj, CONSUMER_ATTR, ()))
