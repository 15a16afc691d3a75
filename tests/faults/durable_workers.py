"""A durable worker service for the durable fault test (``svc run faults.durable_workers``).

Every tenth item fails its first two attempts; each handled item is confirmed on
the durable ``durable.fault.done`` with the worker's pid and the attempt that succeeded.
"""

from __future__ import annotations

import os

import anyio

from svcbus import Context, Contract, Durability, Service

CONCURRENCY = 10
"""Handler tasks per worker process (the runtime's default)."""
SETTINGS = Durability(max_attempts=5, backoff_first=0.2, backoff_max=0.5, ack_wait=2.0)


class FaultItem(Contract, channel="durable.fault.item", durable=SETTINGS):
    """A numbered work item."""

    n: int


class FaultDone(Contract, channel="durable.fault.done", durable=SETTINGS):
    """A handled item, confirmed durably: a server restart must not lose the books either."""

    n: int
    pid: int
    a: int


service = Service("durable-fault-workers")


@service.on_startup
async def announce(bus) -> None:  # type: ignore[no-untyped-def]
    await bus.send("durable.fault.ready", {"pid": os.getpid()})


@service.consumes("durable.fault.item", concurrency=CONCURRENCY)
async def work(item: FaultItem, ctx: Context) -> None:
    if item.n % 10 == 0 and ctx.attempt <= 2:
        raise RuntimeError(f"item {item.n} fails attempt {ctx.attempt} on purpose")
    await anyio.sleep(0.005)  # some work: the kill lands while items are in flight
    await ctx.send("durable.fault.done", {"n": item.n, "pid": os.getpid(), "a": ctx.attempt})
