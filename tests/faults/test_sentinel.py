"""A Redis Sentinel failover under a durable channel: what a promoted replica loses or repeats.

A master, one replica and three Sentinels (``redis-server --sentinel``, quorum 2)
on loopback; two ``svc run`` workers and the test's senders connect through the
Sentinels (``redis+sentinel://s1,s2,s3/svcbus``). 20,000 numbered items are sent
by concurrent senders at 2,000 a second; a quarter in, the failover:

* ``kill``: the master is killed (``kill -9``) and the Sentinels promote the replica;
* ``failover``: ``SENTINEL FAILOVER``; the old master keeps running, and accepting
  writes, until the Sentinels turn it into a replica about 10 s later.

Everyone follows the Sentinels to the new master; no process is restarted.

Redis replicates asynchronously and svcbus does not use ``WAIT``: a send the old
master answered but had not yet passed on is lost with it, so is one answered by
a still-running old master before the clients moved, and an acknowledgement
lost either way comes back as a redelivery. The test does not assert 0 lost; it
prints the books (accepted = delivered + lost, duplicates) and asserts that every
loss and duplicate is the failover's:

* lost items (accepted, never handled) were all answered between ``LAG`` seconds
  before the fault and ``LAG`` seconds after the Sentinels named the new master;
* duplicated items were first handled from ``LAG`` seconds before the fault on
  (an ack the old master never replicated, or one that failed during the
  outage), or were sent again after a send raised.

Workers write their confirmations to files, not to Redis, so the books do not
depend on the server that fails over.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import pytest
from servers import RedisSentinelGroup, redis_call

from svcbus import Bus
from svcbus.errors import LayerError

from .books import send_numbered, stop
from .sentinel_workers import SETTINGS, FailoverItem

pytestmark = [pytest.mark.anyio, pytest.mark.redis, pytest.mark.timeout(240)]

TESTS = Path(__file__).parent.parent
TOTAL = 20_000
SENDERS = 16
RATE = 2000
"""Sends per second over all senders: sending lasts about 10 s, so items flow through
the whole failover (unthrottled, the senders would be done within the failover)."""
LAG = 2.0
"""Seconds before the fault in which an answered send may still have been unreplicated
(on loopback the replica trails by milliseconds; 2 s is a generous bound under load),
and after the Sentinels name the new master in which a client may still use the old one
(the layer asks the Sentinels once a second)."""
MOVE_WITHIN = 3.0
"""Seconds after the Sentinels name a new master by which every process has left the old
one: the layer asks them once a second, and a subscriber notices within its 1 s read."""


@dataclass
class Ledger:
    """The books: when each item's send returned, every handling, resends, dead letters."""

    accepted: dict[int, float] = field(default_factory=dict)  # n -> time.time() of the answer
    handled: dict[int, list[tuple[int, int, float]]] = field(default_factory=dict)
    resent: set[int] = field(default_factory=set)
    resends: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    dead: int = 0

    def read(self, files: dict[int, Path]) -> None:
        """Rebuild ``handled`` from the workers' confirmation files (pid -> path)."""
        handled: dict[int, list[tuple[int, int, float]]] = {}
        for pid, path in files.items():
            if not path.exists():
                continue
            for line in path.read_text(encoding="utf-8").splitlines():
                parts = line.split()
                if len(parts) == 3:  # a line still being written has fewer parts
                    n, attempt, at = int(parts[0]), int(parts[1]), float(parts[2])
                    handled.setdefault(n, []).append((pid, attempt, at))
        self.handled = handled

    async def send_all(self, bus: Bus) -> None:
        """Send items 0..TOTAL-1 from concurrent senders at RATE; a send that raised is sent again."""

        async def send(n: int) -> None:
            await bus.send("sentinel.item", FailoverItem(n=n))  # returns once stored

        def stored(n: int) -> None:
            self.accepted[n] = time.time()

        await send_numbered(
            send, TOTAL, SENDERS, stored=stored, failed=self.resend, pace=SENDERS / RATE
        )

    def resend(self, n: int, exc: LayerError) -> None:
        """Count a send that raised (it is sent again)."""
        self.errors[str(exc)[:100]] = self.errors.get(str(exc)[:100], 0) + 1
        self.resends += 1
        self.resent.add(n)

    @property
    def duplicates(self) -> int:
        return sum(len(seen) for seen in self.handled.values()) - len(self.handled)


def spawn(url: str, confirmations: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PYTHONPATH": f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "SVCBUS_FAULT_CONFIRMATIONS": str(confirmations),
    }
    command = [sys.executable, "-m", "svcbus.cli", "run", "faults.sentinel_workers"]
    command += ["--layer", url, "--log-level", "error"]
    return subprocess.Popen(command, cwd=TESTS, env=env, stdin=subprocess.DEVNULL)


def replication_behind(group: RedisSentinelGroup) -> int:
    """Bytes of the replication stream the replica lacks (an upper bound: the replica
    is asked first, so the master's offset may include writes made in between)."""
    replica = redis_call(group.replica.port, "INFO", "replication")
    master = redis_call(group.primary.port, "INFO", "replication")
    return int(master["master_repl_offset"]) - int(replica["slave_repl_offset"])


def kill_master(group: RedisSentinelGroup) -> None:
    group.kill_master()


def manual_failover(group: RedisSentinelGroup) -> None:
    # The old master stays up until the Sentinels turn it into a replica of the
    # new one; what it answers in between is dropped by its resynchronisation.
    redis_call(group.sentinels[0].port, "SENTINEL", "FAILOVER", group.master_name)


def named(group: RedisSentinelGroup) -> bool:
    """Whether the Sentinels name the replica as the master now."""
    return group.master_port() == group.replica.port


def demoted(group: RedisSentinelGroup, how: str) -> bool:
    """Whether the old master is gone or a replica (after a manual failover the Sentinels
    reconfigure it only once it has reported itself a master for about 8 s)."""
    if how == "kill":
        return True
    return bool(redis_call(group.primary.port, "INFO", "replication")["role"] == "slave")


def clients_left_on(port: int) -> list[str]:
    """Connections of svcbus processes on the server at ``port`` (all but the Sentinels',
    the replicas' and this query's own), each as ``cmd=... age=... idle=...``."""
    listing = redis_call(port, "CLIENT", "LIST")
    if isinstance(listing, str):
        listing = [
            dict(field.split("=", 1) for field in line.split() if "=" in field)
            for line in listing.splitlines()
        ]
    return [
        f"cmd={client.get('cmd')} age={client.get('age')} idle={client.get('idle')}"
        for client in listing
        if not str(client.get("name", "")).startswith("sentinel-")
        and "S" not in str(client.get("flags", ""))
        and client.get("cmd") not in ("client", "client|list")
    ]


FAULTS = {
    "kill": (kill_master, "kill -9 of the master"),
    "failover": (manual_failover, "SENTINEL FAILOVER, the old master alive"),
}


@dataclass
class Timeline:
    """When the failover's steps happened (``time.time()``) and what was seen then."""

    sent_at_fault: int = -1
    behind: int = -1  # bytes the replica lacked just before the fault
    fault_at: float = 0.0
    named_at: float = 0.0  # the Sentinels name the replica
    demoted_at: float = 0.0  # the old master is gone or a replica
    left_on_old: list[str] | None = (
        None  # svcbus connections on a running old master LAG s after naming
    )


async def fail_over(group: RedisSentinelGroup, how: str, ledger: Ledger) -> Timeline:
    """Make the fault ``how`` happen now and follow the failover to its end."""
    fault, _ = FAULTS[how]
    timeline = Timeline(sent_at_fault=len(ledger.accepted))
    timeline.behind = await anyio.to_thread.run_sync(replication_behind, group)
    timeline.fault_at = time.time()
    await anyio.to_thread.run_sync(fault, group)
    while not await anyio.to_thread.run_sync(named, group):
        await anyio.sleep(0.02)
    timeline.named_at = time.time()
    if how == "failover":
        # The old master still runs (and takes writes) for seconds yet: every
        # process must have left it soon after the naming.
        await anyio.sleep(MOVE_WITHIN)
        timeline.left_on_old = await anyio.to_thread.run_sync(clients_left_on, group.primary.port)
    while not await anyio.to_thread.run_sync(demoted, group, how):
        await anyio.sleep(0.1)
    timeline.demoted_at = time.time()
    return timeline


async def wait_handled(ledger: Ledger, files: dict[int, Path]) -> None:
    """Wait for every accepted item, or for the handling to stop growing (an item
    lost with the old master never comes)."""
    last, quiet_since = -1, time.monotonic()
    while time.monotonic() - quiet_since < 2 * SETTINGS.ack_wait + 1:
        ledger.read(files)
        if set(ledger.accepted) <= set(ledger.handled):
            return
        if len(ledger.handled) != last:
            last, quiet_since = len(ledger.handled), time.monotonic()
        await anyio.sleep(0.25)


@pytest.mark.parametrize("how", list(FAULTS))
async def test_sentinel_failover_books_balance(
    redis_sentinel: RedisSentinelGroup, tmp_path: Path, how: str
) -> None:
    group = redis_sentinel
    url = group.url(f"?prefix=t{uuid.uuid4().hex[:8]}&capacity={TOTAL}")
    started = time.monotonic()
    ledger = Ledger()
    files: dict[int, Path] = {}
    workers: list[subprocess.Popen[bytes]] = []
    for i in range(2):
        path = tmp_path / f"worker{i}.txt"
        worker = spawn(url, path)
        workers.append(worker)
        files[worker.pid] = path
    timeline = Timeline()
    try:
        async with Bus(url) as bus:
            with anyio.fail_after(20):
                ready = {(await bus.receive("sentinel.ready")).b["pid"] for _ in range(2)}
            assert ready == set(files)
            async with anyio.create_task_group() as tg:
                sent = anyio.Event()

                async def send_then_flag() -> None:
                    await ledger.send_all(bus)
                    sent.set()

                tg.start_soon(send_then_flag)
                with anyio.fail_after(120):  # a guard against a hang; loaded machines are slow
                    # Mid-stream: sends still going, both workers handling items.
                    while len(ledger.accepted) < TOTAL // 4 or not all(
                        p.exists() and p.stat().st_size for p in files.values()
                    ):
                        await anyio.sleep(0.01)
                    timeline = await fail_over(group, how, ledger)
                    await sent.wait()
                    await wait_handled(ledger, files)
                # Redeliveries still under way would show up within one ack wait.
                await anyio.sleep(SETTINGS.ack_wait + 0.5)
                tg.cancel_scope.cancel()
            await bus.declare_durable("sentinel.item.dlq", SETTINGS)
            with anyio.move_on_after(0.5):
                ledger.dead += len(await bus.layer.receive_durable("sentinel.item.dlq", 100))
            alive = [w.poll() is None for w in workers]
    finally:
        stop(workers)
    ledger.read(files)
    check(ledger, timeline, how, time.monotonic() - started)
    assert alive == [True, True], "a worker died with the master instead of reconnecting"


def check(ledger: Ledger, t: Timeline, how: str, seconds: float) -> None:
    """Print the books and assert that every loss and duplicate is the failover's."""
    lost = set(ledger.accepted) - set(ledger.handled)
    # Answered by the old master shortly before the fault, or after it until the
    # clients followed the Sentinels to the new master: writes a failover drops.
    explained_lost = {n for n in lost if t.fault_at - LAG <= ledger.accepted[n] <= t.named_at + LAG}
    doubled = {n for n, seen in ledger.handled.items() if len(seen) > 1}
    first = {n: min(at for _, _, at in ledger.handled[n]) for n in doubled}
    explained_doubled = {n for n in doubled if n in ledger.resent or first[n] >= t.fault_at - LAG}
    print(
        f"\nRedis Sentinel failover ({FAULTS[how][1]}; the Sentinels named the replica after "
        f"{t.named_at - t.fault_at:.1f}s, the old master gone or a replica after "
        f"{t.demoted_at - t.fault_at:.1f}s): accepted {len(ledger.accepted)}/{TOTAL}, delivered "
        f"{len(ledger.handled)}, duplicates {ledger.duplicates} (on {len(doubled)} items), "
        f"lost {len(lost)}, dead-lettered {ledger.dead}; resent sends {ledger.resends}; "
        f"replica behind by {t.behind} bytes just before the fault; fault after "
        f"{t.sent_at_fault} sends, {seconds:.1f}s"
    )
    in_window = sum(1 for at in ledger.accepted.values() if t.fault_at <= at <= t.named_at)
    print(
        f"sends answered between the fault and the new master's naming: {in_window}; "
        f"duplicates first handled before / after the fault: "
        f"{sum(1 for n in doubled if first[n] < t.fault_at)} / "
        f"{sum(1 for n in doubled if first[n] >= t.fault_at)}"
    )
    if how == "failover":
        print(f"left on the old master {MOVE_WITHIN:g}s after the naming: {t.left_on_old}")
    if lost:
        print(
            "lost, answered this long before the fault (s):",
            sorted(round(t.fault_at - ledger.accepted[n], 3) for n in lost)[:20],
        )
    if ledger.errors:
        print("send errors:", ledger.errors)
    assert 0 <= t.sent_at_fault < TOTAL, "the failover came after the last send, not mid-stream"
    assert len(ledger.accepted) == TOTAL
    assert not set(ledger.handled) - set(ledger.accepted), "handled items nobody sent"
    # accepted = delivered + lost holds by construction; what counts is every loss
    # and every duplicate being the failover's.
    assert lost == explained_lost, f"lost outside the failover window: {lost - explained_lost}"
    assert doubled == explained_doubled, f"unexplained duplicates: {doubled - explained_doubled}"
    assert ledger.dead == 0
    if how == "failover":
        assert t.left_on_old == [], "processes stayed on the old master after the failover"
