"""Group fan-out across processes, for any layer URL (bench_nats.py and bench_redis.py).

``group_send`` to M member channels spread over P processes, one receiving task
per member channel (as an edge has one per connection); time from the send until
every member has received it. Each process validates a message once (an edge
forwards the same bytes to every connection) and reports when its last member
had it; the sender takes the latest report.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import time
from typing import Any

from common import BenchChat, chat, percentiles


def group_member(url: str, members: int, rounds: int, ready: Any, reports: Any) -> None:
    asyncio.run(_group_member(url, members, rounds, ready, reports))


async def _group_member(url: str, members: int, rounds: int, ready: Any, reports: Any) -> None:
    from svcbus import open_layer
    from svcbus.envelope import envelope_type

    decode = envelope_type(BenchChat).model_validate_json
    layer = open_layer(url)
    await layer.connect()
    channels = [await layer.new_channel("member") for _ in range(members)]
    for channel in channels:
        await layer.group_add("bench.room", channel)
    counts = [0] * rounds
    finished = asyncio.Event()

    async def member(channel: str) -> None:
        for _ in range(rounds):
            data = await layer.receive(channel)
            # Validated once per process (an edge forwards the same bytes to every
            # connection); the sequence number says which send it belongs to.
            seq = decode(data).b.seq if counts_by_bytes.get(data) is None else counts_by_bytes[data]
            counts_by_bytes[data] = seq
            counts[seq] += 1
            if counts[seq] == members:
                del counts_by_bytes[data]
                reports.put((seq, time.monotonic()))
                if seq == rounds - 1:
                    finished.set()

    counts_by_bytes: dict[bytes, int] = {}
    tasks = [asyncio.ensure_future(member(channel)) for channel in channels]
    ready.release()
    await finished.wait()
    for task in tasks:
        task.cancel()
    await layer.close()


def group_fanout(
    url: str, total_members: int, rounds: int, processes: int = 4
) -> tuple[float, float]:
    """p50/p99 of group_send -> the last of ``total_members`` members has the message."""
    ctx = mp.get_context("spawn")
    ready, reports = ctx.Semaphore(0), ctx.Queue()
    per_process = total_members // processes
    workers = [
        ctx.Process(target=group_member, args=(url, per_process, rounds, ready, reports))
        for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    try:
        for _ in workers:
            if not ready.acquire(timeout=120):
                raise RuntimeError("group member processes did not start")
        samples = asyncio.run(_group_rounds(url, rounds, processes, reports))
    finally:
        for worker in workers:
            worker.join(10)
            if worker.is_alive():
                worker.terminate()
                worker.join()
    return percentiles(samples)


async def _group_rounds(url: str, rounds: int, processes: int, reports: Any) -> list[float]:
    from svcbus import Bus

    samples = []
    async with Bus(url) as bus:
        for seq in range(rounds):
            started = time.monotonic()
            await bus.group_send("bench.room", chat(seq))
            last = 0.0
            for _ in range(processes):
                got_seq, at = await asyncio.to_thread(reports.get, True, 60)
                assert got_seq == seq, (got_seq, seq)
                last = max(last, at)
            samples.append(last - started)
            await asyncio.sleep(0.02)
    return samples
