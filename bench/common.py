"""Shared pieces of the benchmarks: the payload, timing, and the table."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio
from rich.console import Console
from rich.table import Table

from svcbus import Bus, Contract, Layer, Runtime, Service


class BenchChat(Contract, channel="bench.chat"):
    """The ~150-byte chat message every benchmark sends."""

    room: str
    nick: str
    text: str
    seq: int


def chat(seq: int) -> BenchChat:
    return BenchChat(
        room="lobby",
        nick="ada",
        text="The quick brown fox jumps over the lazy dog, twice over, for good measure.",
        seq=seq,
    )


def chat_dict(seq: int) -> dict:
    return chat(seq).model_dump()


def percentiles(samples: Sequence[float]) -> tuple[float, float]:
    """p50 and p99 of samples (seconds), in milliseconds."""
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return statistics.median(ordered) * 1000, p99 * 1000


class Timer:
    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


def requests_to_responder(
    responder: Callable[..., None],
    requests: Callable[[str, str, int], Awaitable[list[float]]],
    kind: str,
    url: str,
    count: int,
) -> tuple[float, float]:
    """p50/p99 of ``requests(kind, url, count)`` against ``responder`` in a spawned process.

    ``responder(kind, url, ready, stop)`` sets ``ready`` once it answers and returns
    when ``stop`` is set; it is terminated if it does not within 10 s.
    """
    ctx = mp.get_context("spawn")
    ready, stop = ctx.Event(), ctx.Event()
    server = ctx.Process(target=responder, args=(kind, url, ready, stop))
    server.start()
    try:
        if not ready.wait(60):
            raise RuntimeError(f"{kind} responder did not start")
        samples = asyncio.run(requests(kind, url, count))
    finally:
        stop.set()
        server.join(10)
        if server.is_alive():
            server.terminate()
            server.join()
    return percentiles(samples)


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Print a rich table and the same as Markdown (for bench/README.md)."""
    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="right" if column != columns[0] else "left")
    for row in rows:
        table.add_row(*(str(cell) for cell in row))
    console = Console()
    console.print(table)
    console.print("| " + " | ".join(columns) + " |", highlight=False, soft_wrap=True)
    console.print("|" + "---|" * len(columns), highlight=False, soft_wrap=True)
    for row in rows:
        console.print(
            "| " + " | ".join(str(c) for c in row) + " |", highlight=False, soft_wrap=True
        )


async def typed_throughput(
    make_layer: Callable[[], Layer], count: int, concurrency: int = 1, tracer: Any = None
) -> float:
    """svcbus's typed path: Bus.send(BenchChat) in a loop -> a Runtime consumer of BenchChat.

    ``make_layer`` opens a layer; it is called twice (the consumer's and the
    sender's), both on the same system. Returns messages per second.
    """
    service = Service("bench")
    done = anyio.Event()
    received = 0

    @service.consumes("bench.chat")
    async def consume(message: BenchChat) -> None:
        nonlocal received
        received += 1
        if received == count:
            done.set()

    messages = [chat(i) for i in range(count)]
    # Only pass tracer= when given: bench_tracing.py runs this against older code too.
    extra = {"tracer": tracer} if tracer is not None else {}
    server = Bus(make_layer(), **extra)
    runtime = Runtime(service, server, concurrency=concurrency)
    async with server, runtime.running(), Bus(make_layer(), **extra) as bus:
        with Timer() as timer:
            for message in messages:
                await bus.send("bench.chat", message)
            await done.wait()
    return count / timer.seconds
