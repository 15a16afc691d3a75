"""Two consumer processes that keep joining and leaving: never a duplicate (NATS).

The NATS layer moves a named channel's messages between paths: live to listening
processes, bounced into the stream when nobody listens, spilled by a full
listener, given back by one that left. Two churning consumer processes drive
every transition many times while a producer sends in bursts; each message must
arrive at most once, and none may go missing without a report.
"""

from __future__ import annotations

import random
import uuid

import anyio
import pytest

from svcbus import ChannelFull, open_layer

from .books import Books, ConsumerProcess

pytestmark = [pytest.mark.anyio, pytest.mark.nats]

TOTAL = 8000


async def test_churning_consumers_never_see_a_duplicate(nats_url: str) -> None:
    url = f"{nats_url}?prefix=ch{uuid.uuid4().hex[:8]}&capacity=50"
    channel = "churn.work"
    # The third argument is each consumer's random seed.
    consumers = [
        ConsumerProcess(url, channel, seed, idle=3.0, script="churn_consumer.py") for seed in (1, 2)
    ]
    books = Books("churn nats")
    rng = random.Random(7)
    try:
        async with open_layer(url) as layer:
            number = 0
            while number < TOTAL:
                for _ in range(rng.choice((1, 20, 200))):
                    try:
                        await layer.send(channel, str(number).encode())
                    except ChannelFull:
                        books.refused += 1
                    else:
                        books.accepted.add(number)
                    number += 1
                await anyio.sleep(rng.uniform(0, 0.05))
            await layer.flush()
            await anyio.sleep(0.5)
            sender_lost = int(layer.lost)  # type: ignore[attr-defined]
        reports = [await anyio.to_thread.run_sync(c.result, 90.0) for c in consumers]
    finally:
        for consumer in consumers:
            consumer.kill()
    books.delivered = [n for report in reports for n in report["received"]]
    books.reported_lost = sender_lost + sum(sum(r["counters"].values()) for r in reports)
    print("each consumer got", [len(r["received"]) for r in reports])
    books.check()
    assert all(r["received"] for r in reports), "both consumers must take part"
