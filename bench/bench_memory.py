"""Memory layer: send -> typed consume throughput vs Channels' InMemoryChannelLayer.

    python bench/bench_memory.py [--count 100000]

svcbus validates every message on send and on receive (pydantic contract);
Channels' in-memory layer moves untyped dicts (deep-copied on send) and
validates nothing. Same process, same payload, same run.
"""

from __future__ import annotations

import argparse
import os
import sys

import anyio

sys.path.insert(0, os.path.dirname(__file__))

from common import Timer, chat, chat_dict, print_table, typed_throughput

from svcbus import LayerOptions
from svcbus.layers.memory import MemoryHub, MemoryLayer


async def svcbus_typed(count: int, concurrency: int) -> float:
    """Bus.send (validate + encode) -> Runtime consumer (decode + validate) of BenchChat."""
    options = LayerOptions(capacity=count + 1)
    hub = MemoryHub()
    return await typed_throughput(lambda: MemoryLayer(options, hub=hub), count, concurrency)


async def svcbus_raw(count: int) -> float:
    """The layer alone: bytes in, bytes out (the floor under the typed path)."""
    layer = MemoryLayer(LayerOptions(capacity=count + 1))
    payload = chat(0).model_dump_json().encode()
    with Timer() as timer:
        async with anyio.create_task_group() as tg:

            async def drain() -> None:
                left = count
                while left:
                    left -= len(await layer.receive_many("bench.raw", 64))

            tg.start_soon(drain)
            for _ in range(count):
                await layer.send("bench.raw", payload)
    return count / timer.seconds


async def channels_memory(count: int) -> float:
    """Channels' InMemoryChannelLayer: send dicts, receive dicts, no validation."""
    from channels.layers import InMemoryChannelLayer

    layer = InMemoryChannelLayer(capacity=count + 1)
    messages = [{"type": "chat.message", **chat_dict(i)} for i in range(count)]
    with Timer() as timer:
        async with anyio.create_task_group() as tg:

            async def drain() -> None:
                for _ in range(count):
                    await layer.receive("bench.chat")

            tg.start_soon(drain)
            for message in messages:
                await layer.send("bench.chat", message)
    return count / timer.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3, help="best of N rounds")
    args = parser.parse_args()
    runs = {
        "svcbus memory, typed consumer (validate send + receive)": lambda: svcbus_typed(
            args.count, 1
        ),
        "svcbus memory, typed consumer, concurrency 10": lambda: svcbus_typed(args.count, 10),
        "svcbus memory layer, raw bytes (no contract)": lambda: svcbus_raw(args.count),
        "channels InMemoryChannelLayer (dicts, no validation)": lambda: channels_memory(args.count),
    }
    results = {name: max(anyio.run(run) for _ in range(args.rounds)) for name, run in runs.items()}
    peer = results["channels InMemoryChannelLayer (dicts, no validation)"]
    rows = [(name, f"{rate:,.0f}", f"{rate / peer:.2f}x") for name, rate in results.items()]
    print_table(
        f"send -> receive, {args.count:,} messages, best of {args.rounds}",
        ["path", "msg/s", "vs channels"],
        rows,
    )


if __name__ == "__main__":
    main()
