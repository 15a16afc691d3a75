"""Durable channels under faults: a worker killed (``kill -9``), a server restarted, failing handlers.

20,000 numbered items on a durable channel, sent by concurrent senders while two
``svc run`` worker processes handle them; every tenth item fails its first two
attempts. Once items flow (a quarter sent, both workers busy), a fault hits:

* NATS and Redis: one worker is killed with SIGKILL. Its unacknowledged items
  come back to the other worker after the ack wait;
* NATS (JetStream file storage): nats-server is killed with SIGKILL and started
  again on the same store dir and port; clients reconnect by themselves;
* Redis with ``appendonly yes``: redis-server is restarted (stream, consumer
  group and pending entries come back from the append-only file).

Each test prints delivered / duplicates / dead-lettered and asserts nothing was
lost; duplicates are counted and bounded by what was in flight. Workers confirm
each item on a durable channel too, so the books survive the restart.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import pytest
from servers import NatsServer, RedisServer

from svcbus import Bus
from svcbus.errors import LayerError

from .books import send_numbered, stop, take_confirmations
from .durable_workers import CONCURRENCY, SETTINGS, FaultItem

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(240)]

TESTS = Path(__file__).parent.parent
TOTAL = 20_000
SENDERS = 16
DONE = "durable.fault.done"
# Handled but maybe not acknowledged when a fault hits: per worker process, its
# consumer's tasks times the largest batch one task holds (runtime_durable.BATCH_SIZE).
IN_FLIGHT = CONCURRENCY * 32
GUARD = 150.0
"""Seconds a scenario may take from the first send before it fails, saying what it lacks."""


def worker_processes(url: str) -> list[subprocess.Popen[bytes]]:
    env = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    command = [sys.executable, "-m", "svcbus.cli", "run", "faults.durable_workers"]
    command += ["--layer", url, "--log-level", "error"]
    return [
        subprocess.Popen(command, cwd=TESTS, env=env, stdin=subprocess.DEVNULL) for _ in range(2)
    ]


@dataclass
class Books:
    """What the test saw: items accepted (send returned), who confirmed which item on
    which attempt, sends repeated after an error, dead letters."""

    accepted: set[int] = field(default_factory=set)
    done: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    confirmations: set[str] = field(default_factory=set)  # envelope ids of confirmations seen
    resends: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    dead: int = 0

    async def collect(self, bus: Bus) -> None:
        """Take confirmations into ``done`` until cancelled; rides out a server outage."""
        await take_confirmations(bus, DONE, self.confirmations, self.done)

    async def send_all(self, bus: Bus) -> None:
        """Send items 0..TOTAL-1 from concurrent senders; a send that raised is sent again."""

        async def send(n: int) -> None:
            await bus.send("durable.fault.item", FaultItem(n=n))  # returns once stored

        await send_numbered(send, TOTAL, SENDERS, stored=self.accepted.add, failed=self.resend)

    def resend(self, n: int, exc: LayerError) -> None:
        """Count a send that raised (it is sent again)."""
        self.errors[str(exc)[:100]] = self.errors.get(str(exc)[:100], 0) + 1
        self.resends += 1

    @property
    def duplicates(self) -> int:
        return sum(len(seen) for seen in self.done.values()) - len(self.done)

    def handlers(self) -> set[int]:
        return {pid for seen in list(self.done.values()) for pid, _ in seen}

    def report(self, what: str, sent_at_fault: int, seconds: float) -> int:
        """Print the counts; return how many accepted items were never confirmed."""
        lost = len(self.accepted - set(self.done))
        third = sum(1 for seen in self.done.values() if any(a == 3 for _, a in seen))
        # Items meant to pass on attempt 1 that needed more: the fault's redeliveries.
        redelivered = sum(1 for n, seen in self.done.items() if n % 10 and seen[-1][1] > 1)
        print(
            f"\n{what}: accepted {len(self.accepted)}/{TOTAL}, delivered {len(self.done)}, "
            f"duplicates {self.duplicates}, dead-lettered {self.dead}, lost {lost}; "
            f"resent sends {self.resends}, succeeding on attempt 3: {third}, redelivered "
            f"after the fault: {redelivered}; fault after {sent_at_fault} sends, {seconds:.1f}s"
        )
        if self.errors:
            print("send errors:", self.errors)
        return lost


Fault = Callable[[list[subprocess.Popen[bytes]]], None]


async def run_with_fault(url: str, fault: Fault, what: str) -> Books:
    """Send TOTAL items to two workers, call ``fault`` mid-stream once both handle items."""
    started = time.monotonic()
    workers = worker_processes(url)
    books = Books()
    sent_at_fault = -1
    try:
        async with Bus(url) as bus:
            await bus.declare_durable(DONE, SETTINGS)
            with anyio.fail_after(20):
                ready = {(await bus.receive("durable.fault.ready")).b["pid"] for _ in range(2)}
            assert ready == {w.pid for w in workers}
            async with anyio.create_task_group() as tg:
                tg.start_soon(books.collect, bus)
                sent = anyio.Event()

                async def send_then_flag() -> None:
                    await books.send_all(bus)
                    sent.set()

                tg.start_soon(send_then_flag)
                with anyio.move_on_after(GUARD) as guard:  # loaded machines are slow
                    # Mid-stream: sends still going, items already handled by both workers.
                    while len(books.accepted) < TOTAL // 4 or books.handlers() != ready:
                        await anyio.sleep(0.01)
                    sent_at_fault = len(books.accepted)
                    await anyio.to_thread.run_sync(fault, workers)
                    await sent.wait()
                    while not books.accepted <= set(books.done):
                        await anyio.sleep(0.05)
                if not guard.cancelled_caught:
                    # Redeliveries still under way would show up within one ack wait.
                    await anyio.sleep(SETTINGS.ack_wait + 0.5)
                tg.cancel_scope.cancel()
            await bus.declare_durable("durable.fault.item.dlq", SETTINGS)
            with anyio.move_on_after(0.5):
                books.dead += len(await bus.layer.receive_durable("durable.fault.item.dlq", 100))
    finally:
        alive = [w.poll() is None for w in workers]
        stop(workers)
    lost = books.report(what, sent_at_fault, time.monotonic() - started)
    missing = sorted(books.accepted - set(books.done))
    assert not guard.cancelled_caught, (
        f"not done within {GUARD}s: sent {len(books.accepted)}/{TOTAL} (fault after "
        f"{sent_at_fault}), workers alive {alive}, dead-lettered {books.dead}, "
        f"{len(missing)} accepted but not confirmed: {missing[:20]}"
    )
    assert 0 <= sent_at_fault < TOTAL, "the fault did not hit mid-stream"
    assert len(books.accepted) == TOTAL
    assert lost == 0
    assert not set(books.done) - books.accepted
    assert books.dead == 0
    # Every tenth item failed twice and succeeded on its third attempt (or later).
    succeeded_late = {n for n, seen in books.done.items() if seen[-1][1] >= 3}
    assert set(range(0, TOTAL, 10)) <= succeeded_late
    # Duplicates are bounded by what was in flight, plus sends repeated after an error.
    assert books.duplicates <= 2 * IN_FLIGHT + books.resends
    return books


def kill_first(workers: list[subprocess.Popen[bytes]]) -> None:
    workers[0].send_signal(signal.SIGKILL)


@pytest.mark.nats
async def test_kill_9_of_a_worker_loses_no_durable_message_nats(nats_url: str) -> None:
    url = f"{nats_url}?prefix=t{uuid.uuid4().hex[:8]}&capacity={TOTAL}"
    await run_with_fault(url, kill_first, "NATS durable kill -9 of a worker")


@pytest.mark.nats
async def test_nats_server_kill_9_and_restart_loses_no_durable_message(
    nats_server: NatsServer,
) -> None:
    url = f"{nats_server.url}?prefix=t{uuid.uuid4().hex[:8]}&capacity={TOTAL}"

    def restart(workers: list[subprocess.Popen[bytes]]) -> None:
        # SIGKILL, not a shutdown: JetStream recovers its file store on the same dir.
        nats_server.kill()
        nats_server.start()

    await run_with_fault(url, restart, "NATS durable nats-server kill -9 + restart (file storage)")


@pytest.mark.redis
async def test_kill_9_of_a_worker_loses_no_durable_message_redis(redis_url: str) -> None:
    url = f"{redis_url}?prefix=t{uuid.uuid4().hex[:8]}&capacity={TOTAL}"
    await run_with_fault(url, kill_first, "Redis durable kill -9 of a worker")


@pytest.mark.redis
async def test_redis_restart_with_aof_loses_no_durable_message(
    redis_server_aof: RedisServer,
) -> None:
    url = f"{redis_server_aof.url}?prefix=t{uuid.uuid4().hex[:8]}&capacity={TOTAL}"

    def restart(workers: list[subprocess.Popen[bytes]]) -> None:
        redis_server_aof.restart()

    await run_with_fault(url, restart, "Redis durable restart (appendonly yes)")
