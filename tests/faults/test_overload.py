"""Overload: a producer faster than its consumer, on real servers, and the books balance.

The producer sends numbered messages at a fixed rate into a consumer (another process)
that handles about a third of that. Every ``send`` either returns (accepted) or raises
``ChannelFull`` (refused, at its own call); the consumer reports what it received.
Nothing accepted may go missing without being counted in a layer's ``lost``, and
nothing may arrive twice.
"""

from __future__ import annotations

import time
import uuid

import anyio
import pytest

from svcbus import ChannelFull, open_layer

from .books import Books, ConsumerProcess

pytestmark = pytest.mark.anyio

RATE = 3000  # messages a second from the producer
SECONDS = 6.0
DELAY = 0.001  # the consumer's pause per message: well under RATE


@pytest.fixture(
    params=[
        pytest.param("nats", marks=pytest.mark.nats),
        pytest.param("redis", marks=pytest.mark.redis),
    ]
)
def server_url(request: pytest.FixtureRequest) -> str:
    base = request.getfixturevalue(f"{request.param}_url")
    prefix = f"ov{uuid.uuid4().hex[:8]}"
    return f"{base}{'&' if '?' in base else '?'}prefix={prefix}"


async def produce(url: str, channel: str, books: Books) -> int:
    """Send at RATE for SECONDS; return the sender's ``lost`` count after a flush."""
    async with open_layer(url) as layer:
        started = time.monotonic()
        number = 0
        while (elapsed := time.monotonic() - started) < SECONDS:
            ahead = number / RATE - elapsed
            if ahead > 0:
                await anyio.sleep(ahead)
            try:
                await layer.send(channel, str(number).encode())
            except ChannelFull:
                books.refused += 1
            else:
                books.accepted.add(number)
            number += 1
        await layer.flush()
        await anyio.sleep(0.5)  # late answers (a full listener, a bounce) arrive
        return int(layer.lost)  # type: ignore[attr-defined]


async def test_overload_loses_nothing_without_a_word(server_url: str) -> None:
    channel = "overload.work"
    consumer = ConsumerProcess(server_url, channel, DELAY, idle=3.0)
    books = Books(f"overload {server_url.split(':')[0]}")
    try:
        sender_lost = await produce(server_url, channel, books)
        report = await anyio.to_thread.run_sync(consumer.result, 90.0)
    finally:
        consumer.kill()
    books.delivered = report["received"]
    books.reported_lost = sender_lost + sum(report["counters"].values())
    print("sender lost", sender_lost, "consumer", report["counters"])
    books.check()
    assert books.refused > 0, "the scenario must overload the channel"
    assert len(books.delivered) > 1000


async def test_overload_on_memory_loses_nothing_without_a_word() -> None:
    """The same books on the embedded layer: sender and slow consumer in one process."""
    url = f"memory://overload-{uuid.uuid4().hex[:8]}"
    channel = "overload.work"
    books = Books("overload memory")
    async with open_layer(url) as consumer_layer:

        async def consume() -> None:
            while True:
                for data in await consumer_layer.receive_many(channel, 16):
                    books.delivered.append(int(data))
                    await anyio.sleep(DELAY)

        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            sender_lost = await produce(url, channel, books)
            with anyio.fail_after(30):
                while len(books.delivered) < len(books.accepted):
                    await anyio.sleep(0.05)
            await anyio.sleep(0.3)  # and nothing more arrives
            tg.cancel_scope.cancel()
    books.reported_lost = sender_lost
    books.check()
    assert books.refused > 0
