"""Durable channels: the conformance suite every layer with durable channels passes.

At least once (README "Delivery guarantees"): stored on send, acknowledged after
the handler, retried after a failure with the attempt number, dead-lettered
after the last attempt, redelivered after ``ack_wait`` when a receiver vanished
without settling, deduplicated by message id, bounded by capacity. Every layer
passes it: memory (in process), NATS (JetStream), Redis (Streams).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable

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
    open_layer,
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


@pytest.mark.parametrize("kind", ["async", "def"])
async def test_runtime_retries_with_attempt_numbers_then_acks(durable_layers, uniq, kind):
    """The same acks, retries and attempt numbers for a plain ``def`` consumer (worker threads)."""
    layer = await durable_layers()
    channel = uniq("orders")
    attempts: dict[int, list[int]] = {}

    def handle_sync(message: dict[str, int], ctx: Context) -> None:
        attempts.setdefault(message["n"], []).append(ctx.attempt)
        if message["n"] % 2 and ctx.attempt < 3:
            raise RuntimeError(f"not yet ({ctx.attempt})")

    async def handle(message: dict[str, int], ctx: Context) -> None:
        handle_sync(message, ctx)

    async with Bus(layer) as bus:
        await bus.declare_durable(channel, QUICK)
        runtime = Runtime(service_on(channel, handle if kind == "async" else handle_sync), bus)
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


async def test_a_slow_def_consumer_keeps_its_delivery(durable_layers, uniq):
    """A plain ``def`` handler running past ``ack_wait`` in its thread: the runtime's
    in-progress signals keep the message from going to another receiver meanwhile."""
    layer, other = await durable_layers(), await durable_layers()
    channel = uniq("orders")
    calls: list[int] = []

    def slow(message: dict[str, int], ctx: Context) -> None:
        calls.append(ctx.attempt)
        time.sleep(2.5 * QUICK.ack_wait)

    await other.declare_durable(channel, QUICK)
    async with Bus(layer) as bus:
        await bus.declare_durable(channel, QUICK)
        runtime = Runtime(service_on(channel, slow), bus)
        async with runtime.running():
            await bus.send(channel, {"n": 1})
            with anyio.fail_after(5):
                while not calls:  # the runtime has it: from now on nobody else may get it
                    await anyio.sleep(0.01)
            await nothing(other, channel, 2 * QUICK.ack_wait)
            with anyio.fail_after(3):
                while runtime.stats[channel].processed < 1:
                    await anyio.sleep(0.05)
    assert calls == [1]


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


# -- settings from the layer URL ---------------------------------------------------------


def with_query(url: str, query: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}{query}"


@pytest.fixture
async def url_layers(layer_url: str) -> AsyncIterator[Callable[[str], Awaitable[Layer]]]:
    """Open connected layers on ``layer_url`` plus a query of the test's own."""
    opened: list[Layer] = []

    async def make(query: str) -> Layer:
        layer = open_layer(with_query(layer_url, query))
        await layer.connect()
        opened.append(layer)
        return layer

    yield make
    for layer in reversed(opened):
        await layer.close()


async def test_layer_url_durable_settings_override_the_contracts(url_layers, uniq):
    """Attempts, backoff and dead-letter channel from the URL's channel pattern, not the defaults."""
    channel, failed = uniq("orders"), uniq("failed.orders")
    pattern = channel.rsplit(".", 1)[0] + ".*"
    query = (
        f"durable_max_attempts={pattern}:2&durable_backoff_first={pattern}:0.1"
        f"&durable_backoff_max={pattern}:0.2&durable_dead_letter={pattern}:{failed}"
        f"&durable_ack_wait={pattern}:1"
    )
    layer = await url_layers(query)
    calls: list[tuple[int, float]] = []

    async def handle(message: dict[str, int], ctx: Context) -> None:
        calls.append((ctx.attempt, anyio.current_time()))
        raise RuntimeError("always")

    async with Bus(layer) as bus:
        await bus.declare_durable(channel, Durability())  # 5 attempts, 1 s backoff, .dlq
        runtime = Runtime(service_on(channel, handle), bus)
        async with runtime.running():
            await bus.send(channel, {"n": 1})
            letter = await take(layer, failed, 8)
        await letter.ack()
    assert [attempt for attempt, _ in calls] == [1, 2]
    assert calls[1][1] - calls[0][1] < 0.9  # the URL's 0.1 s backoff, not the contract's 1 s
    assert bus.decode(failed, letter.data, DeadLetter).b.attempts == 2


async def test_layer_url_ack_wait_redelivers_sooner(url_layers, uniq):
    channel = uniq("orders")
    doomed = await url_layers(f"durable_ack_wait={channel}:1")
    survivor = await url_layers(f"durable_ack_wait={channel}:1")
    for layer in (doomed, survivor):
        await layer.declare_durable(channel, Durability())  # ack_wait 30 s by contract
    await survivor.send(channel, envelope(3))
    taken = await take(doomed, channel)
    await doomed.close()
    again = await take(survivor, channel, 5)  # within seconds: the URL's 1 s ack wait
    assert (again.data, again.attempt) == (taken.data, 2)
    await again.ack()


async def test_layer_url_max_age_drops_messages_sooner(url_layers, uniq):
    channel = uniq("orders")
    layer = await url_layers(f"durable_max_age={channel}:1&durable_duplicate_window={channel}:0.5")
    await layer.declare_durable(channel, Durability())  # kept 7 days by contract
    await layer.send(channel, envelope(1))
    await anyio.sleep(2.6)  # the URL's 1 s, plus Redis' once-a-second sweep
    await nothing(layer, channel, 0.5)


# -- expiry -------------------------------------------------------------------------------

SHORT_LIVED = Durability(max_age=1.0, duplicate_window=0.5, ack_wait=1.0)


async def test_expired_durable_messages_are_dropped_and_counted(durable_layers, uniq):
    """Stored longer than max_age: dropped, delivered or not, and counted in layer.lost.

    On NATS the server drops them (JetStream max_age) without telling anyone: the
    layer cannot count those; the runtime counts the ones it still receives.
    """
    layer = await durable_layers()
    channel = uniq("orders")
    await layer.declare_durable(channel, SHORT_LIVED)
    before = layer.lost  # type: ignore[attr-defined]
    await layer.send(channel, envelope(1))
    await layer.send(channel, envelope(2))
    taken = await take(layer, channel)  # delivered, never settled: expires all the same
    # Redis drops expired entries on sends and on a sweep once a second.
    await anyio.sleep(SHORT_LIVED.max_age + 1.6)
    await nothing(layer, channel, SHORT_LIVED.ack_wait + 0.3)
    await taken.ack()  # too late: gone already, and no error
    if layer.system != "nats":
        assert layer.lost - before == 2  # type: ignore[attr-defined]
    await layer.send(channel, envelope(3))  # the channel goes on
    fresh = await take(layer, channel)
    assert json.loads(fresh.data)["b"] == {"n": 3}
    await fresh.ack()


async def test_runtime_counts_and_terminates_an_expired_delivery(durable_layers, uniq):
    """A delivery whose envelope expired is counted, never handled, never redelivered."""
    layer = await durable_layers()
    channel = uniq("orders")
    handled: list[int] = []

    async def handle(message: dict[str, int]) -> None:
        handled.append(message["n"])

    async with Bus(layer) as bus:
        await bus.declare_durable(channel, QUICK)
        runtime = Runtime(service_on(channel, handle), bus)
        async with runtime.running():
            at = now_ms()
            await layer.send(channel, encode_plain(b'{"n":1}', f"old-{at}", None, 1, at, at - 1))
            await bus.send(channel, {"n": 2})
            with anyio.fail_after(5):
                while runtime.stats[channel].processed < 1 or not runtime.stats[channel].expired:
                    await anyio.sleep(0.05)
            await anyio.sleep(QUICK.ack_wait + 0.5)  # terminated: it does not come back
    assert handled == [2]
    assert runtime.stats[channel].expired == 1


# -- send stores before it returns --------------------------------------------------------


async def test_send_returns_once_the_message_is_stored(durable_layers, uniq):
    """No durable send is pipelined: each returns after the server stored it, so a second
    sender sees the room the first one's returned sends took, and a refusal raises
    ChannelFull at its own send, never later from flush()."""
    first, second = await durable_layers(capacity=4), await durable_layers(capacity=4)
    channel = uniq("orders")
    for layer in (first, second):
        await layer.declare_durable(channel, QUICK)
    for n in range(4):
        await (first if n % 2 else second).send(channel, envelope(n))
    for layer in (first, second):
        with pytest.raises(ChannelFull):
            await layer.send(channel, envelope(9))
        await layer.flush()  # nothing late to report: every send answered for itself
    taken = [await take(first, channel) for _ in range(4)]
    assert sorted(json.loads(d.data)["b"]["n"] for d in taken) == [0, 1, 2, 3]
    for delivery in taken:
        await delivery.ack()
