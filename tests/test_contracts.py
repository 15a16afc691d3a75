"""Contracts: channel binding, registry, validation errors that name channel and field."""

from __future__ import annotations

import pytest

from svcbus import Bus, Contract, ContractError, MessageInvalid
from svcbus.contract import registry
from svcbus.layers.memory import MemoryLayer

pytestmark = pytest.mark.anyio


class Pong(Contract):
    n: int


class Ping(Contract, channel="ctest.ping", version=3, reply=Pong):
    """A ping."""

    n: int
    note: str = ""


def test_declaring_a_contract_registers_it():
    assert registry.get("ctest.ping") is Ping
    assert Ping.__channel__ == "ctest.ping"
    assert Ping.__version__ == 3
    assert Ping.__reply__ is Pong
    assert Pong.__channel__ is None


def test_a_channel_has_one_contract():
    with pytest.raises(ContractError, match=r"ctest\.ping.*already has contract"):

        class Other(Contract, channel="ctest.ping"):
            x: int


def test_bad_declarations_fail_at_class_creation():
    with pytest.raises(Exception, match="wildcard"):

        class Wild(Contract, channel="ctest.*"):
            x: int

    with pytest.raises(ContractError, match="version"):

        class Zero(Contract, channel="ctest.zero", version=0):
            x: int

    with pytest.raises(ContractError, match="reply"):

        class BadReply(Contract, channel="ctest.badreply", reply=int):  # type: ignore[arg-type]
            x: int


async def test_sending_an_invalid_message_fails_before_the_wire():
    layer = MemoryLayer()
    async with Bus(layer) as bus:
        with pytest.raises(MessageInvalid) as caught:
            await bus.send("ctest.ping", {"n": "not a number"})
        assert "ctest.ping" in str(caught.value) and "n:" in str(caught.value)
        assert caught.value.channel == "ctest.ping"
        assert caught.value.errors[0]["loc"] == ("n",)
        with pytest.raises(MessageInvalid, match="expects Ping, got Pong"):
            await bus.send("ctest.ping", Pong(n=1))
        assert layer.hub.queues == {}  # nothing reached the layer


async def test_dicts_are_validated_into_the_contract():
    async with Bus(MemoryLayer()) as bus:
        await bus.send("ctest.ping", {"n": "7"})  # lax mode coerces like pydantic does
        envelope = await bus.receive("ctest.ping")
        assert envelope.b == Ping(n=7)
        assert (envelope.ct, envelope.cv) == ("Ping", 3)


async def test_receiving_a_message_that_breaks_the_contract_names_the_field():
    layer = MemoryLayer()
    async with Bus(layer) as bus:
        await bus.send("ctest.untyped", {"n": "x"})
        raw = await layer.receive("ctest.untyped")
        with pytest.raises(MessageInvalid, match=r"does not fit Ping: b\.n"):
            bus.decode("ctest.ping", raw)
        with pytest.raises(MessageInvalid, match="not JSON"):
            bus.decode("ctest.ping", b"{nope")
        with pytest.raises(MessageInvalid, match="not a svcbus envelope"):
            bus.decode("ctest.ping", b'{"b":{"n":1}}')
