"""A consumer process for fault tests: receives numbered messages slowly, reports its books.

``python slow_consumer.py URL CHANNEL DELAY IDLE``: receive from ``CHANNEL`` with the
layer ``URL``, pausing ``DELAY`` seconds per message (a consumer slower than its
producer), until nothing has arrived for ``IDLE`` seconds after the first message;
then print one JSON line: the numbers received (in order) and the layer's counters.
"""

from __future__ import annotations

import json
import sys

import anyio

from svcbus import open_layer


async def main(url: str, channel: str, delay: float, idle: float) -> None:
    received: list[int] = []
    async with open_layer(url) as layer:
        print("ready", flush=True)
        while True:
            timeout = idle if received else 60.0
            with anyio.move_on_after(timeout) as scope:
                batch = await layer.receive_many(channel, 16)
            if scope.cancelled_caught:
                break
            for data in batch:
                received.append(int(data))
                if delay:
                    await anyio.sleep(delay)
        counters = {
            name: getattr(layer, name)
            for name in ("lost", "dropped", "slow_consumer_drops")
            if isinstance(getattr(layer, name, None), int)
        }
    print(json.dumps({"received": received, "counters": counters}), flush=True)


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]))
