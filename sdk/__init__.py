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

from . import tracing
from .blocking import BlockingBus, connect_blocking
from .bus import Bus, connect
from .consumer import Consumer, consumes
from .context import Context
from .contract import Contract, ContractRegistry, registry
from .durable import Delivery, Durability
from .envelope import Envelope
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
from .service import Service, load_service

__version__ = "0.1.0"

__all__ = [
    "BlockingBus",
    "Bus",
    "ChannelFull",
    "ConfigurationError",
    "Consumer",
    "Context",
    "Contract",
    "ContractError",
    "ContractRegistry",
    "DeadLetter",
    "Delivery",
    "Durability",
    "Envelope",
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
    "__version__",
    "connect",
    "connect_blocking",
    "consumes",
    "load_service",
    "open_layer",
    "registry",
    "tracing",
]
