"""Declaring durable channels: contract keywords, settings, the envelope id peek."""

from __future__ import annotations

import re

import anyio
import pytest

from svcbus import Bus, ConfigurationError, Contract, ContractError, Durability
from svcbus.contract import registry
from svcbus.durable import message_id_of
from svcbus.envelope import encode, encode_plain
from svcbus.layer import keep_options, split_options

pytestmark = pytest.mark.anyio


class PlaceOrder(Contract, channel="dtest.orders.place", durable=True):
    order_id: str


class Refund(Contract, channel="dtest.refund", durable=Durability(max_attempts=2, replicas=3)):
    order_id: str


def test_durable_true_takes_the_defaults() -> None:
    settings = PlaceOrder.__durability__
    assert settings == Durability()
    assert (settings.max_attempts, settings.ack_wait, settings.replicas) == (5, 30.0, 1)
    assert settings.dead_letter_channel("dtest.orders.place") == "dtest.orders.place.dlq"
    assert settings.dead_letter_channel("dtest.orders.place", "ops.dead") == "ops.dead"
    assert registry.durability("dtest.orders.place") == settings
    assert registry.durability("dtest.refund") == Durability(max_attempts=2, replicas=3)


def test_backoff_doubles_up_to_its_maximum() -> None:
    settings = Durability(backoff_first=1.0, backoff_max=30.0)
    assert [settings.backoff(a) for a in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]


def test_only_named_channels_can_be_durable() -> None:
    with pytest.raises(ContractError, match="only named channels"):

        class Bad(Contract, channel="reply.abc!def", durable=True):
            x: int

    with pytest.raises(ContractError, match="needs channel="):

        class NoChannel(Contract, durable=True):
            x: int

    with pytest.raises(ContractError, match="durable= must be"):

        class Wrong(Contract, channel="dtest.wrong", durable="yes"):  # type: ignore[arg-type]
            x: int


def test_settings_are_checked() -> None:
    with pytest.raises(ConfigurationError):
        Durability(max_attempts=0)
    with pytest.raises(ConfigurationError):
        Durability(backoff_first=5, backoff_max=1)
    with pytest.raises(ConfigurationError):
        Durability(ack_wait=0)


def test_message_id_of_reads_the_envelope_id() -> None:
    plain = encode_plain(b"{}", "abc123", None, 1, 1, None)
    full = encode(
        b"{}", id="x9", contract=None, version=1, sent_at=1, expires_at=None, headers={"a": "b"}
    )
    assert (message_id_of(plain), message_id_of(full)) == ("abc123", "x9")
    assert message_id_of(b'{"b":1,"id":"late"}') == "late"
    assert message_id_of(b"not json") is None


async def test_durable_messages_expire_with_the_stream_not_the_channel_expiry() -> None:
    async with Bus("memory://dtest-expiry?expiry=1") as bus:
        await bus.send("dtest.orders.place", PlaceOrder(order_id="o1"))
        (delivery,) = await bus.layer.receive_durable("dtest.orders.place", 1)
        envelope = bus.decode("dtest.orders.place", delivery.data)
        assert envelope.ex is not None and envelope.ex - envelope.at == 7 * 86400 * 1000
        await delivery.ack()
        with anyio.move_on_after(0.2):
            await bus.layer.receive_durable("dtest.orders.place", 1)
            pytest.fail("an acknowledged message came back")


def test_layer_url_sets_durable_settings_per_channel_pattern() -> None:
    options, rest = split_options(
        "nats://h:4222?durable_max_attempts=orders.vip:9,orders.*:2"
        "&durable_ack_wait=orders.*:4.5&durable_dead_letter=orders.*:ops.failed"
        "&durable_backoff_first=orders.*:0.5&durable_backoff_max=orders.*:2"
        "&durable_max_age=orders.*:3600&durable_replicas=orders.*:3&capacity=7"
    )
    assert rest == {} and options.capacity == 7
    contract = Durability(max_attempts=5, duplicate_window=60)
    vip, plain = (
        options.durability_for("orders.vip", contract),
        options.durability_for("orders.place", contract),
    )
    assert (vip.max_attempts, plain.max_attempts) == (9, 2)  # the first matching pattern wins
    assert (plain.ack_wait, plain.dead_letter, plain.max_age, plain.replicas) == (
        4.5,
        "ops.failed",
        3600.0,
        3,
    )
    assert [plain.backoff(a) for a in (1, 2, 3)] == [0.5, 1.0, 2.0]
    assert plain.duplicate_window == 60  # not set by the URL: the contract's
    assert options.durability_for("payments.refund", contract) is contract


@pytest.mark.parametrize(
    ("query", "complaint"),
    [
        ("durable_retries=orders.*:3", "unknown durable setting 'retries'"),
        ("durable_max_attempts=orders.*", "write pattern:value"),
        ("durable_ack_wait=orders.*:soon", "is not a number"),
        ("durable_dead_letter=orders.*:Bad*", "wildcard"),
        ("durable_max_attempts=orders.*:0", "max_attempts must be >= 1"),
    ],
)
def test_bad_durable_url_settings_say_what_is_wrong(query: str, complaint: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(complaint)):
        options, _ = split_options(f"memory://x?{query}")
        options.durability_for("orders.place", Durability())


def test_durable_url_settings_carry_over_a_command_line_layer_url() -> None:
    kept = keep_options("nats://other:4222", "memory://app?durable_max_attempts=orders.*:2")
    options, _ = split_options(kept)
    assert options.durability_for("orders.place", Durability()).max_attempts == 2


async def test_bus_applies_the_url_settings_over_the_contracts() -> None:
    url = (
        "memory://dtest-url?durable_max_attempts=dtest.*:2&durable_dead_letter=dtest.*:dtest.failed"
    )
    async with Bus(url) as bus:
        settings = bus.durability("dtest.refund")
        assert settings == Durability(max_attempts=2, replicas=3, dead_letter="dtest.failed")
        assert bus.durability("dtest.orders.place") == Durability(
            max_attempts=2, dead_letter="dtest.failed"
        )
        assert bus.durability("dtest.not.durable") is None  # the URL does not make one durable
