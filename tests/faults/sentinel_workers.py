"""A durable worker service for the Sentinel failover test (``svc run faults.sentinel_workers``).

Each handled item is written to this process's confirmation file (the path in
``$SVCBUS_FAULT_CONFIRMATIONS``), one ``n attempt time`` line, flushed at once:
the books live outside the Redis that fails over, so a write the failover loses
cannot pass for a lost item.
"""

from __future__ import annotations

import os
import time

import anyio

from svcbus import Bus, Context, Contract, Durability, Service

SETTINGS = Durability(max_attempts=5, backoff_first=0.2, backoff_max=0.5, ack_wait=2.0)
CONCURRENCY = 10
"""Handler tasks per worker process (the runtime's default)."""


class FailoverItem(Contract, channel="sentinel.item", durable=SETTINGS):
    """A numbered work item."""

    n: int


service = Service("sentinel-workers")
confirmations = open(  # noqa: SIM115  # open for the process's life; closed at shutdown
    os.environ.get("SVCBUS_FAULT_CONFIRMATIONS", os.devnull), "a", encoding="utf-8"
)


@service.on_startup
async def announce(bus: Bus) -> None:
    await bus.send("sentinel.ready", {"pid": os.getpid()})


@service.on_shutdown
def close() -> None:
    confirmations.close()


@service.consumes("sentinel.item", concurrency=CONCURRENCY)
async def work(item: FailoverItem, ctx: Context) -> None:
    await anyio.sleep(0.002)  # some work: the failover lands while items are in flight
    confirmations.write(f"{item.n} {ctx.attempt} {time.time():.6f}\n")
    confirmations.flush()
