"""A durable R3 worker service for the cluster tests (``svc run faults.cluster_workers``).

It announces its pid and the client port of the node its NATS connection landed
on (nats-py shuffles the seeds, so the test asks rather than assumes), and
confirms each handled item on ``cluster.done`` with its pid and attempt.
"""

from __future__ import annotations

import os

import anyio

from svcbus import Bus, Context, Contract, Durability, Service

SETTINGS = Durability(max_attempts=5, backoff_first=0.2, backoff_max=0.5, ack_wait=2.0, replicas=3)


class ClusterItem(Contract, channel="cluster.item", durable=SETTINGS):
    """A numbered work item on a channel replicated to three nodes."""

    n: int


class ClusterDone(Contract, channel="cluster.done", durable=SETTINGS):
    """A handled item, confirmed durably: a confirmation must outlive a node too."""

    n: int
    pid: int
    a: int


service = Service("cluster-workers")


def connected_port(bus: Bus) -> int:
    """Client port of the node this process's NATS connection uses now."""
    nc = bus.layer.conn.nc  # type: ignore[attr-defined]
    return int(nc.connected_url.port)


@service.on_startup
async def announce(bus: Bus) -> None:
    await bus.layer.connect()
    await bus.send("cluster.ready", {"pid": os.getpid(), "port": connected_port(bus)})


@service.consumes("cluster.item")
async def work(item: ClusterItem, ctx: Context) -> None:
    await anyio.sleep(0.002)  # some work: the kill lands while items are in flight
    await ctx.send("cluster.done", ClusterDone(n=item.n, pid=os.getpid(), a=ctx.attempt))
