# -*- coding: utf-8 -*-
# Python 2.7 compatible on purpose: pyupgrade (UP) and py3-only idioms must not rewrite it.
"""svcbus for old interpreters: a blocking worker and client, standard library only.

This package runs on Python 2.7 and any Python 3 (CPython or PyPy) and imports
nothing outside the standard library and itself, so it can be copied alone onto
an old host (``cp -r sdk/legacy site-packages/svcbus_legacy``). It speaks the
wire protocol of ``docs/protocol.md`` over NATS (with JetStream) and Redis,
interoperating with services built on the main SDK::

    from svcbus_legacy import Worker, consumes

    @consumes("stats.get")
    def get_stats(query):
        return {"room": query["room"], "messages": 3}

    Worker("nats://127.0.0.1:4222", schemas="contracts.json").run()

See docs/sync.md for what it supports and what it does not.
"""

from __future__ import absolute_import, division, print_function, unicode_literals

from .envelope import Message, decode, encode, new_message_id
from .errors import (
    ChannelFull,
    ConfigurationError,
    InvalidChannelName,
    LayerError,
    MessageInvalid,
    MessageTooLarge,
    RemoteError,
    RequestTimeout,
    SvcbusError,
)
from .names import validate_channel, validate_group
from .options import Options
from .schema import ChannelSchemas, SchemaError, validate
from .worker import Client, Consumer, Context, Stats, Worker, consumes

__version__ = "0.1.0"

__all__ = [
    "ChannelFull",
    "ChannelSchemas",
    "Client",
    "ConfigurationError",
    "Consumer",
    "Context",
    "InvalidChannelName",
    "LayerError",
    "Message",
    "MessageInvalid",
    "MessageTooLarge",
    "Options",
    "RemoteError",
    "RequestTimeout",
    "SchemaError",
    "Stats",
    "SvcbusError",
    "Worker",
    "__version__",
    "consumes",
    "decode",
    "encode",
    "new_message_id",
    "validate",
    "validate_channel",
    "validate_group",
]
