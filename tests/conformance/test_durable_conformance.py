"""Durable channels: the conformance suite every layer with durable channels passes.

At least once (README "Delivery guarantees"): stored on send, acknowledged after
the handler, retried after a failure with the attempt number, dead-lettered
after the last attempt, redelivered after ``ack_wait`` when a receiver vanished
without settling, deduplicated by message id, bounded by capacity. Every layer
passes it: memory (in process), NATS (JetStream), Redis (Streams).
"""

from __future__ import annotations

import json
from collections.abc import Callable

import anyio
import pytest

from svcbus import (
    Bus,
    ChannelFull,
    Context,
    DeadLetter,
    Durability,
    Layer,
    Runtime,
    Service,
)
from svcbus.durable import Delivery
from svcbus.envelope import encode_plain, now_ms

pytestmark = pytest.mark.anyio

QUICK = Durability(max_attempts=3, backoff_first=0.2, backoff_max=0.4, ack_wait=1.0)


@pytest.fixture
def durable_layers(make_layer):
    """``make_layer``: every layer has durable channels."""
    return make_layer


def envelope(n: int, message_id: str | None = None) -> bytes:
    at = now_ms()
    return encode_plain(
        json.dumps({"n": n}).encode(), message_id or f"m{n}-{at}", None, 1, at, None
    )


async def take(layer: Layer, channel: str, seconds: float = 5.0) -> Delivery:
    with anyio.fail_after(seconds):
        (delivery,) = await layer.receive_durable(channel, 1)
    return delivery


async def nothing(layer: Layer, channel: str, seconds: float) -> None:
    with anyio.move_on_after(seconds):
        got = await layer.receive_durable(channel, 1)
        pytest.fail(f"expected nothing on {channel} yet, got {got[0].data!r}")


async def test_acknowledged_message_is_not_redelivered(durable_layers, uniq):
    sender, receiver = await durable_layers(), await durable_layers()
    channel = uniq("orders")
    for layer in (sender, receiver):
        await layer.declare_durable(channel, QUICK)
    await sender.send(channel, envelope(1))
    delivery = await take(receiver, channel)
    assert (json.loads(delivery.data)["b"], delivery.attempt) == ({"n": 1}, 1)
    await delivery.ack()
    await nothing(receiver, channel, QUICK.ack_wait + 0.8)


async def test_nak_redelivers_after_its_delay_with_the_next_attempt(durable_layers, uniq):
    layer = await durable_layers()
    channel = uniq("orders")
    await layer.declare_durable(channel, QUICK)
    await layer.send(channel, envelope(1))
    first = await take(layer, channel)
    await first.nak(0.6)
    await nothing(layer, channel, 0.3)
    second = await take(layer, channel)
    assert (second.data, second.attempt) == (first.data, 2)
    await second.term()
    await nothing(layer, channel, QUICK.ack_wait + 0.5)


async def test_unsettled_delivery_comes_back_after_ack_wait(durable_layers, uniq):
    """A receiver that vanishes without acknowledging: another one gets the message."""
    doomed, survivor = await durable_layers(), await durable_layers()
    channel = uniq("orders")
    for layer in (doomed, survivor):
        await layer.declare_durable(channel, QUICK)
    await survivor.send(channel, envelope(7))
    taken = await take(doomed, channel)
    await doomed.close()  # gone without a word: no ack, no nak
    with anyio.fail_after(QUICK.ack_wait + 4):
        again = await take(survivor, channel, QUICK.ack_wait + 4)
    assert (again.data, again.attempt) == (taken.data, 2)
    await again.ack()


async def test_in_progress_keeps_a_long_delivery(durable_layers, uniq):
    worker, other = await durable_layers(), await durable_layers()
    channel = uniq("orders")
    for layer in (worker, other):
        await layer.declare_durable(channel, QUICK)
    await worker.send(channel, envelope(1))
    delivery = await take(worker, channel)
    async with anyio.create_task_group() as tg:
        tg.start_soon(nothing, other, channel, 2 * QUICK.ack_wait + 0.3)
        for _ in range(6):  # 2.4 s of work, more than twice the ack wait
            await anyio.sleep(0.4)
            await delivery.in_progress()
    await delivery.ack()


async def test_republished_message_id_is_stored_once(durable_layers, uniq):
    layer = await durable_layers()
    channel = uniq("orders")
    await layer.declare_durable(channel, QUICK)
    data = envelope(1, message_id="same-id")
    await layer.send(channel, data)
    await layer.send(channel, data)  # a publish retried after a lost answer
    await layer.send(channel, envelope(2))
    first, second = await take(layer, channel), await take(layer, channel)
    assert [json.loads(d.data)["b"]["n"] for d in (first, second)] == [1, 2]
    await first.ack()
    await second.ack()
    await nothing(layer, channel, 0.5)


async def test_durable_channel_full_at_capacity(durable_layers, uniq):
    layer = await durable_layers(capacity=3)
    channel = uniq("orders")
    await layer.declare_durable(channel, QUICK)
    for i in range(3):
        await layer.send(channel, envelope(i))
    with pytest.raises(ChannelFull):
        await layer.send(channel, envelope(3))
    # An unacknowledged delivery still takes room; an acknowledged one frees it.
    delivery = await take(layer, channel)
    with pytest.raises(ChannelFull):
        await layer.send(channel, envelope(4))
    await delivery.ack()
    await anyio.sleep(0.1)
    await layer.send(channel, envelope(5))


def service_on(channel: str, handler: Callable[..., object]) -> Service:
    service = Service("durable-conformance")
    service.consumes(channel, concurrency=2)(handler)
    return service


async def test_runtime_retries_with_attempt_numbers_then_acks(durable_layers, uniq):
    layer = await durable_layers()
    channel = uniq("orders")
    attempts: dict[int, list[int]] = {}

    async def handle(message: dict[str, int], ctx: Context) -> None:
        attempts.setdefault(message["n"], []).append(ctx.attempt)
        if message["n"] % 2 and ctx.attempt < 3:
            raise RuntimeError(f"not yet ({ctx.attempt})")

    async with Bus(layer) as bus:
        await bus.declare_durable(channel, QUICK)
        runtime = Runtime(service_on(channel, handle), bus)
        async with runtime.running():
            for n in range(4):
                await bus.send(channel, {"n": n})
            with anyio.fail_after(8):
                while runtime.stats[channel].processed < 4:
                    await anyio.sleep(0.05)
        await anyio.sleep(QUICK.ack_wait + 0.5)  # acknowledged: nothing comes back
    print("attempts per message:", attempts)
    assert attempts == {0: [1], 1: [1, 2, 3], 2: [1], 3: [1, 2, 3]}
    stats = runtime.stats[channel]
    assert (stats.failed, stats.retried, stats.dead_lettered) == (4, 4, 0)


async def test_runtime_dead_letters_after_the_last_attempt(durable_layers, uniq):
    layer = await durable_layers()
    channel = uniq("orders")
    calls: list[int] = []

    def handle(message: dict[str, int], ctx: object) -> None:  # a plain def consumer
        calls.append(ctx.attempt)  # type: ignore[attr-defined]
        raise ValueError(f"cannot place order {message['n']}")

    async with Bus(layer) as bus:
        await bus.declare_durable(channel, QUICK)
        runtime = Runtime(service_on(channel, handle), bus)
        async with runtime.running():
            message_id = await bus.send(channel, {"n": 42}, headers={"tenant": "acme"})
            with anyio.fail_after(8):
                letter = await take(layer, channel + ".dlq", 8)
        await letter.ack()
    dead = bus.decode(channel + ".dlq", letter.data, DeadLetter).b
    print("dead letter:", dead.model_dump(exclude={"payload"}))
    assert calls == [1, 2, 3]
    assert (dead.channel, dead.message_id, dead.attempts) == (channel, message_id, 3)
    assert dead.error_type == "ValueError" and "cannot place order 42" in dead.reason
    original = json.loads(dead.payload)  # the whole message, metadata included
    assert (original["id"], original["h"], original["b"]) == (
        message_id,
        {"tenant": "acme"},
        {"n": 42},
    )
    assert runtime.stats[channel].dead_lettered == 1
