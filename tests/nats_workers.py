"""A worker service for the multi-process NATS test (``svc run nats_workers``).

Each ``work.item`` is confirmed on ``work.done`` with the worker's pid, so the
test can check that every item was processed exactly once and by whom.
"""

from __future__ import annotations

import os

from svcbus import Context, Service

service = Service("nats-workers")


@service.on_startup
async def announce(bus) -> None:
    await bus.send("work.ready", {"pid": os.getpid()})


@service.consumes("work.item")
async def work(item: dict, ctx: Context) -> None:
    await ctx.send("work.done", {"id": item["id"], "pid": os.getpid()})
