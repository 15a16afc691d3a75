"""A broker killed (``kill -9``) and restarted under load: the books still balance.

A producer sends numbered messages at a steady rate to a consumer process; one second
into the run the test kills the server and starts it again a second later on the same
port (redis-server with its append-only file, as a deployment that must keep what it
stored would run it). Sends during the outage may raise (refused at their own call; one that raised
as the connection broke may still arrive); what they accepted is delivered, or
counted lost by a layer, and never delivered twice.
"""

from __future__ import annotations

import time

import anyio
import pytest

from svcbus import ChannelFull, LayerError, MessagesLost, open_layer

from .books import Books, ConsumerProcess

pytestmark = pytest.mark.anyio

RATE = 2000
SECONDS = 5.0


@pytest.fixture(
    params=[
        pytest.param("nats", marks=pytest.mark.nats),
        pytest.param("redis", marks=pytest.mark.redis),
    ]
)
def server(request: pytest.FixtureRequest):
    # Redis with its append-only file: what it stored survives the restart, so any
    # loss is the layer's. A plain redis-server restart loses whatever waits in its
    # lists at the kill, which no client can count (README, "Delivery guarantees");
    # at 2,000 messages a second that is now and then one message.
    name = "redis_server_aof" if request.param == "redis" else f"{request.param}_server"
    return request.getfixturevalue(name)


async def produce(url: str, channel: str, books: Books, server) -> int:
    async with open_layer(url) as layer:
        started = time.monotonic()
        number = 0
        killed = restarted = False
        while (elapsed := time.monotonic() - started) < SECONDS:
            if not killed and elapsed > 1.0:
                server.kill()
                killed = True
            elif killed and not restarted and elapsed > 2.0:
                await anyio.to_thread.run_sync(server.start)
                restarted = True
            ahead = number / RATE - elapsed
            if ahead > 0:
                await anyio.sleep(ahead)
            try:
                with anyio.fail_after(2.0):
                    await layer.send(channel, str(number).encode())
            except ChannelFull:
                books.refused += 1
            except (LayerError, TimeoutError):
                # Written, maybe, before the connection broke: sent or not, nobody knows.
                books.refused += 1
                books.in_doubt.add(number)
            else:
                books.accepted.add(number)
            number += 1
        reported = 0
        with anyio.move_on_after(10):
            try:
                await layer.flush()
            except MessagesLost as exc:  # what the sender's process learned was lost
                reported = exc.count
            except LayerError:
                pass
        assert reported == int(layer.lost)  # type: ignore[attr-defined]
        await anyio.sleep(1.0)
        return int(layer.lost)  # type: ignore[attr-defined]


async def test_a_broker_restart_loses_nothing_without_a_word(server) -> None:
    kind = "nats" if "nats" in server.url else "redis"
    url = f"{server.url}{'&' if '?' in server.url else '?'}capacity=5000"
    channel = "restart.work"
    consumer = ConsumerProcess(url, channel, 0.0, idle=4.0)
    books = Books(f"restart {kind}")
    try:
        sender_lost = await produce(url, channel, books, server)
        report = await anyio.to_thread.run_sync(consumer.result, 90.0)
    finally:
        consumer.kill()
    books.delivered = report["received"]
    books.reported_lost = sender_lost + sum(report["counters"].values())
    print("sender lost", sender_lost, "consumer", report["counters"])
    books.check()
    assert len(books.accepted) > 5000
