"""Typed message contracts and the registry that binds them to channels.

A contract is a pydantic model declared with the channel it travels on::

    class ChatPosted(Contract, channel="chat.posted", version=1):
        room: str
        text: str

    class StatsQuery(Contract, channel="stats.get", reply=StatsReply):
        room: str

    class PlaceOrder(Contract, channel="orders.place", durable=True):
        order_id: str

Declaring the class registers it; sending on ``chat.posted`` then validates
against ``ChatPosted`` before anything reaches the wire.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from .durable import Durability
from .errors import ContractError, MessageInvalid
from .names import validate_channel


class Contract(BaseModel):
    """Base class of message contracts.

    Class keywords: ``channel`` (the channel the contract is bound to; leave it
    out for reply contracts and contracts used on several channels),
    ``version`` (an integer bumped on breaking changes), ``reply`` (the
    contract of the reply, for request/reply channels), ``durable`` (True or a
    :class:`~svcbus.durable.Durability`: the channel is at least once, with
    acknowledgements, retries and dead letters; see README "Delivery guarantees").
    """

    # bytes fields travel as base64 so arbitrary binary data survives JSON.
    model_config = ConfigDict(ser_json_bytes="base64", val_json_bytes="base64")

    __channel__: ClassVar[str | None] = None
    __version__: ClassVar[int] = 1
    __reply__: ClassVar[type[Contract] | None] = None
    __contract_name__: ClassVar[str] = "Contract"
    __durability__: ClassVar[Durability | None] = None

    def __init_subclass__(
        cls,
        *,
        channel: str | None = None,
        version: int = 1,
        reply: type[Contract] | None = None,
        name: str | None = None,
        durable: bool | Durability = False,
        **kwargs: Any,
    ) -> None:
        super().__init_subclass__(**kwargs)
        if not isinstance(version, int) or version < 1:
            raise ContractError(
                f"{cls.__qualname__}: version must be a positive int, got {version!r}"
            )
        if reply is not None and not (isinstance(reply, type) and issubclass(reply, Contract)):
            raise ContractError(
                f"{cls.__qualname__}: reply= must be a Contract subclass, got {reply!r}"
            )
        cls.__channel__ = validate_channel(channel) if channel is not None else None
        cls.__durability__ = _durability(cls.__qualname__, channel, durable)
        cls.__version__ = version
        cls.__reply__ = reply
        cls.__contract_name__ = name or cls.__name__

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        # Called once pydantic has built the fields: only then is it safe to register.
        super().__pydantic_init_subclass__(**kwargs)
        _name_contract(cls)
        if cls.__channel__ is not None:
            registry.register(cls)


_by_name: dict[tuple[str, int], type[Contract] | None] = {}
"""Every contract class of this process by (contract name, version); None when ambiguous."""


def _name_contract(contract: type[Contract]) -> None:
    key = (contract.__contract_name__, contract.__version__)
    if key in _by_name:
        existing = _by_name[key]
        if existing is None or _identity(existing) != _identity(contract):
            # Two different classes claim one name: an envelope naming it cannot say which.
            _by_name[key] = None
            return
    _by_name[key] = contract


def contract_named(name: str, version: int) -> type[Contract] | None:
    """The contract class this process knows as ``name`` version ``version``, if exactly one."""
    return _by_name.get((name, version))


class ContractRegistry:
    """Maps channel names to their contracts."""

    def __init__(self) -> None:
        self._by_channel: dict[str, type[Contract]] = {}

    def register(self, contract: type[Contract]) -> None:
        """Bind ``contract`` to its channel; a second, different contract for it is an error."""
        channel = contract.__channel__
        if channel is None:
            raise ContractError(f"{contract.__qualname__} has no channel= to register under")
        existing = self._by_channel.get(channel)
        if existing is not None and _identity(existing) != _identity(contract):
            raise ContractError(
                f"channel {channel!r} already has contract {existing.__module__}."
                f"{existing.__qualname__}; {contract.__module__}.{contract.__qualname__} cannot "
                "claim it too (one contract per channel: bump version= on the existing one instead)"
            )
        self._by_channel[channel] = contract

    def get(self, channel: str) -> type[Contract] | None:
        """The contract bound to ``channel``, or None for an untyped channel."""
        return self._by_channel.get(channel)

    def durability(self, channel: str) -> Durability | None:
        """The settings of ``channel`` if its contract declares it durable, else None."""
        contract = self._by_channel.get(channel)
        return contract.__durability__ if contract is not None else None

    def channels(self) -> dict[str, type[Contract]]:
        """A copy of the channel -> contract map."""
        return dict(self._by_channel)


def _durability(owner: str, channel: str | None, durable: bool | Durability) -> Durability | None:
    """The contract's durability settings, checked: only a named channel can be durable."""
    if durable is False:
        return None
    if not (durable is True or isinstance(durable, Durability)):
        raise ContractError(f"{owner}: durable= must be True or a Durability, got {durable!r}")
    if channel is None:
        raise ContractError(f"{owner}: durable=True needs channel= (the channel that is durable)")
    if "!" in channel:
        # Process channels live and die with one process: nothing to redeliver to.
        raise ContractError(
            f"{owner}: {channel!r} is a process-specific channel; only named channels can be "
            "durable"
        )
    return durable if isinstance(durable, Durability) else Durability()


def _identity(contract: type[Contract]) -> tuple[str, str]:
    # Re-importing a module (test reloads, `svc run` of a file also imported
    # elsewhere) makes a new class object with the same identity: allow it.
    return (contract.__module__, contract.__qualname__)


registry = ContractRegistry()
"""The process-wide registry that contract classes add themselves to."""


def coerce(channel: str, message: Any, contract: type[Contract] | None) -> Any:
    """Check ``message`` against ``contract`` before it is sent on ``channel``.

    Returns the value to serialise: a contract instance, or a JSON-compatible
    value for untyped channels. Raises :class:`MessageInvalid` naming the
    channel and the offending fields.
    """
    if contract is None:
        return message
    if type(message) is contract:
        return message
    if isinstance(message, Contract):
        raise MessageInvalid(
            f"channel {channel!r} expects {contract.__contract_name__}, got "
            f"{type(message).__contract_name__}",
            channel=channel,
        )
    try:
        return contract.model_validate(message)
    except ValidationError as exc:
        raise MessageInvalid(
            f"message for channel {channel!r} does not fit {contract.__contract_name__}: "
            + describe_errors(exc),
            channel=channel,
            errors=exc.errors(include_url=False),
        ) from None


def describe_errors(exc: ValidationError) -> str:
    """One line per pydantic error: ``field.path: message``."""
    parts = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"]) or "(message)"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)
