"""Durable R3 channel on a 3-node NATS cluster: ``kill -9`` of a node mid-stream.

Two ``svc run`` workers, each connected to a different node, handle numbered
items on a durable channel replicated to all three nodes while the test sends
them. Mid-stream one node dies with SIGKILL: the node a worker is connected to
(its client reconnects to another seed), or the stream's leader (the remaining
two elect a new one). The workers carry on without a restart; every item whose
send returned is handled at least once; duplicates are counted and bounded by
what was in flight.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import pytest
from servers import NatsCluster

from svcbus import Bus
from svcbus.errors import LayerError

from .books import send_numbered, take_confirmations
from .books import stop as stop_processes
from .cluster_workers import SETTINGS, ClusterItem

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.nats,
    pytest.mark.nats_cluster,
    pytest.mark.timeout(240),
]

TESTS = Path(__file__).parent.parent
TOTAL = 20_000
SENDERS = 16
# In flight per worker process: its consumer's tasks (10) times a fetch batch (<= 32).
IN_FLIGHT = 10 * 32


@dataclass
class Worker:
    """One ``svc run faults.cluster_workers`` process and the node it connected to."""

    process: subprocess.Popen[bytes]
    port: int = 0


@dataclass
class Tally:
    """What the test saw: items accepted (send returned), confirmations, resends."""

    accepted: set[int] = field(default_factory=set)
    done: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    confirmations: set[str] = field(default_factory=set)  # envelope ids of confirmations seen
    resends: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def duplicates(self) -> int:
        return sum(len(seen) for seen in self.done.values()) - len(self.done)


def spawn(url: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    command = [sys.executable, "-m", "svcbus.cli", "run", "faults.cluster_workers"]
    command += ["--layer", url, "--log-level", "error"]
    return subprocess.Popen(command, cwd=TESTS, env=env, stdin=subprocess.DEVNULL)


async def ready(bus: Bus, process: subprocess.Popen[bytes]) -> Worker:
    """Wait for ``process``'s announcement: its pid and the node it is connected to."""
    with anyio.fail_after(15):
        while True:
            body = (await bus.receive("cluster.ready")).b
            if body["pid"] == process.pid:
                return Worker(process, body["port"])


async def start_workers(bus: Bus, cluster: NatsCluster, params: str) -> list[Worker]:
    """Two workers on different nodes; each URL lists a different node first.

    nats-py shuffles the seeds, so a worker that lands on the other's node is
    replaced by one more try (bounded).
    """
    first = await ready(bus, spawn(cluster.url_from(0) + params))
    for attempt in range(6):
        second = await ready(bus, spawn(cluster.url_from(1 + attempt % 2) + params))
        if second.port != first.port:
            return [first, second]
        stop([second])
    stop([first])
    pytest.fail("six workers in a row landed on the first worker's node")


def stop(workers: list[Worker]) -> None:
    stop_processes(worker.process for worker in workers)


async def send_all(bus: Bus, tally: Tally) -> None:
    """Send items 0..TOTAL-1 from concurrent senders; a send that failed is sent again."""

    async def send(n: int) -> None:
        await bus.send("cluster.item", ClusterItem(n=n))  # returns once stored

    def resend(n: int, exc: LayerError) -> None:
        tally.errors[str(exc)[:120]] = tally.errors.get(str(exc)[:120], 0) + 1
        tally.resends += 1  # maybe stored: a resend may become a duplicate

    # No pause before a resend: the client moves to another node by itself.
    await send_numbered(
        send, TOTAL, SENDERS, stored=tally.accepted.add, failed=resend, retry_pause=0
    )


async def collect(bus: Bus, tally: Tally) -> None:
    """Take confirmations (durable, acknowledged) into ``tally.done``; runs until cancelled."""
    await take_confirmations(bus, "cluster.done", tally.confirmations, tally.done)


Victim = Callable[[Bus, NatsCluster, list[Worker]], Awaitable[int]]


async def run_with_kill(cluster: NatsCluster, victim: Victim, what: str) -> None:
    params = f"?prefix=t{uuid.uuid4().hex[:8]}&capacity={TOTAL * 2}"
    tally = Tally()
    workers: list[Worker] = []
    started = time.monotonic()
    phases: list[float] = []
    try:
        async with Bus(cluster.urls + params) as bus:
            await bus.declare_durable("cluster.done", SETTINGS)
            workers = await start_workers(bus, cluster, params)
            phases.append(time.monotonic() - started)
            killed: int | None = None
            sent_at_kill = 0
            async with anyio.create_task_group() as tg:
                tg.start_soon(collect, bus, tally)
                sending = anyio.Event()

                async def send_then_flag() -> None:
                    await send_all(bus, tally)
                    sending.set()

                tg.start_soon(send_then_flag)
                with anyio.fail_after(120):  # a guard against a hang; loaded machines are slow
                    # Mid-stream: sends still going, items already handled by both workers.
                    while len(tally.accepted) < TOTAL // 3 or len(handlers(tally)) < 2:
                        await anyio.sleep(0.01)
                    killed = await victim(bus, cluster, workers)
                    cluster.kill(killed)
                    sent_at_kill = len(tally.accepted)
                    phases.append(time.monotonic() - started)
                    await sending.wait()
                    phases.append(time.monotonic() - started)
                    while not tally.accepted <= set(tally.done):
                        await anyio.sleep(0.05)
                # Redeliveries still under way would show up within one ack wait.
                await anyio.sleep(SETTINGS.ack_wait + 0.5)
                tg.cancel_scope.cancel()
            dead = await dead_letters(bus)
            alive = [w.process.poll() is None for w in workers]
    finally:
        stop(workers)
    lost = len(tally.accepted - set(tally.done))
    print(
        f"\ncluster, kill -9 of {what} (node {killed}): sent {len(tally.accepted)}/{TOTAL}, "
        f"delivered {len(tally.done)}, duplicates {tally.duplicates}, resent sends "
        f"{tally.resends}, dead-lettered {dead}, lost {lost}; killed after {sent_at_kill} sends, "
        f"{time.monotonic() - started:.1f}s"
    )
    print("workers ready, kill, sent (s):", [round(p, 1) for p in phases], tally.errors)
    assert sent_at_kill < TOTAL, "the node died after the last send, not mid-stream"
    assert alive == [True, True], "a worker died with the node instead of reconnecting"
    assert len(tally.accepted) == TOTAL
    assert lost == 0
    assert dead == 0
    assert tally.duplicates <= 2 * IN_FLIGHT + tally.resends


def handlers(tally: Tally) -> set[int]:
    return {pid for seen in list(tally.done.values()) for pid, _ in seen}


async def dead_letters(bus: Bus) -> int:
    await bus.declare_durable("cluster.item.dlq", SETTINGS)
    dead = 0
    with anyio.move_on_after(0.5):
        dead += len(await bus.layer.receive_durable("cluster.item.dlq", 100))
    return dead


async def node_of_first_worker(bus: Bus, cluster: NatsCluster, workers: list[Worker]) -> int:
    return cluster.ports.index(workers[0].port)


async def stream_leader(bus: Bus, cluster: NatsCluster, workers: list[Worker]) -> int:
    nc = bus.layer.conn.nc  # type: ignore[attr-defined]
    stream = bus.layer.durable.stream("cluster.item")  # type: ignore[attr-defined]
    info = await nc.jetstream().stream_info(stream)
    assert info.cluster is not None and info.cluster.leader
    assert len(info.cluster.replicas or []) == 2, "the stream is not on three nodes"
    return cluster.index_of(info.cluster.leader)


async def test_kill_9_of_a_workers_node_loses_nothing(nats_cluster: NatsCluster) -> None:
    await run_with_kill(nats_cluster, node_of_first_worker, "the first worker's node")


async def test_kill_9_of_the_stream_leader_loses_nothing(nats_cluster: NatsCluster) -> None:
    await run_with_kill(nats_cluster, stream_leader, "the stream leader")
