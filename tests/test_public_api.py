"""The public API is a deliberate list: adding or removing a name is a decision, made here."""

from __future__ import annotations

import importlib.metadata

import svcbus
import svcbus.edge
import svcbus.testing

PUBLIC = [
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


def test_all_is_the_pinned_list() -> None:
    assert sorted(svcbus.__all__) == PUBLIC


def test_every_public_name_exists() -> None:
    for module in (svcbus, svcbus.edge, svcbus.testing):
        missing = [name for name in getattr(module, "__all__", ()) if not hasattr(module, name)]
        assert missing == [], f"{module.__name__}.__all__ names missing attributes: {missing}"


def test_internals_stay_in_their_modules() -> None:
    for name in ("Envelope", "Consumer", "ContractRegistry", "registry", "load_service"):
        assert not hasattr(svcbus, name), name
    from svcbus.contract import registry
    from svcbus.envelope import Envelope
    from svcbus.service import load_service

    assert registry is not None and Envelope is not None and load_service is not None


def test_the_version_comes_from_the_distribution() -> None:
    assert svcbus.__version__ == importlib.metadata.version("svcbus")
