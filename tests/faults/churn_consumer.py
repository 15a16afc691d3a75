"""A consumer that keeps coming and going, for the NATS duplicate stress test.

``python churn_consumer.py URL CHANNEL SEED IDLE``: receives in short spells with
pauses in between (so the process joins and leaves the live queue group, lingers,
gives its buffer back, and its full buffer spills), with a small random delay per
message; stops after ``IDLE`` seconds without a message and prints one JSON line:
the numbers received and the layer's counters.
"""

from __future__ import annotations

import json
import random
import sys
import time

import anyio

from svcbus import open_layer


async def main(url: str, channel: str, seed: int, idle: float) -> None:
    rng = random.Random(seed)
    received: list[int] = []
    last = time.monotonic() + 30.0  # until the first message
    async with open_layer(url) as layer:
        layer.linger = 0.2  # type: ignore[attr-defined]  # leave the queue group soon
        print("ready", flush=True)
        while time.monotonic() - last < idle:
            spell_end = time.monotonic() + rng.uniform(0.05, 0.4)
            while time.monotonic() < spell_end:
                with anyio.move_on_after(max(0.01, spell_end - time.monotonic())):
                    batch = await layer.receive_many(channel, rng.choice((1, 8, 64)))
                    received.extend(int(data) for data in batch)
                    last = time.monotonic()
                    if rng.random() < 0.3:
                        await anyio.sleep(rng.uniform(0, 0.003))
            await anyio.sleep(rng.uniform(0, 0.5))  # away: linger, give back, rejoin
        counters = {
            name: getattr(layer, name)
            for name in ("lost", "dropped", "slow_consumer_drops")
            if isinstance(getattr(layer, name, None), int)
        }
    print(json.dumps({"received": received, "counters": counters}), flush=True)


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2], int(float(sys.argv[3])), float(sys.argv[4]))
