"""svcbus: typed service-to-service messaging.

Declare contracts, consume them, run services on any layer::

    from svcbus import Contract, consumes

    class ChatPosted(Contract, channel="chat.posted"):
        room: str
        text: str

    @consumes("chat.posted")
    async def on_posted(msg: ChatPosted, ctx) -> None: ...

Run it with ``svc run mymodule --layer nats://localhost:4222``.
"""

from importlib.metadata import PackageNotFoundError, version

from .blocking import BlockingBus, connect_blocking
from .bus import Bus, connect
from .consumer import consumes
from .context import Context
from .contract import Contract
from .durable import Durability
from .errors import (
    ChannelFull,
    ConfigurationError,
    ContractError,
    InvalidChannelName,
    LayerError,
    MessageInvalid,
    MessagesLost,
    MessageTooLarge,
    RemoteError,
    RequestTimeout,
    SvcbusError,
)
from .layer import Layer, LayerOptions, open_layer
from .runtime import DeadLetter, Runtime
from .service import Service

try:
    # The one place the version is written is pyproject.toml.
    __version__ = version("svcbus")
except PackageNotFoundError:  # pragma: no cover - imported from a checkout, not installed
    __version__ = "0+unknown"

# What users write in their code. Internals live in their submodules
# (svcbus.envelope, svcbus.contract.registry, svcbus.service.load_service...);
# tests/test_public_api.py pins this list.
__all__ = [
    "BlockingBus",
    "Bus",
    "ChannelFull",
    "ConfigurationError",
    "Context",
    "Contract",
    "ContractError",
    "DeadLetter",
    "Durability",
    "InvalidChannelName",
    "Layer",
    "LayerError",
    "LayerOptions",
    "MessageInvalid",
    "MessageTooLarge",
    "MessagesLost",
    "RemoteError",
    "RequestTimeout",
    "Runtime",
    "Service",
    "SvcbusError",
    "connect",
    "connect_blocking",
    "consumes",
    "open_layer",
]
