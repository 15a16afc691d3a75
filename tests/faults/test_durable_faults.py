"""Durable channel under faults: a worker killed (``kill -9``) mid-stream, failing handlers.

2,000 numbered items on a durable NATS channel, two ``svc run`` worker processes;
one is killed with SIGKILL once items flow; every tenth item fails its first two
attempts. Its unacknowledged items come back to the other worker after the ack
wait, the failing ones on their third attempt: nothing is lost, duplicates are
counted (bounded by what the killed worker had in flight).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import anyio
import pytest

from svcbus import Bus

from .durable_workers import SETTINGS, FaultItem

pytestmark = [pytest.mark.anyio, pytest.mark.nats]

TESTS = Path(__file__).parent.parent
TOTAL = 2000


def worker_processes(url: str) -> list[subprocess.Popen[bytes]]:
    env = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    command = [sys.executable, "-m", "svcbus.cli", "run", "faults.durable_workers"]
    command += ["--layer", url, "--log-level", "error"]
    return [
        subprocess.Popen(command, cwd=TESTS, env=env, stdin=subprocess.DEVNULL) for _ in range(2)
    ]


async def test_kill_9_of_a_worker_loses_no_durable_message(nats_url: str) -> None:
    url = f"{nats_url}?prefix=t{uuid.uuid4().hex[:8]}&capacity=5000"
    workers = worker_processes(url)
    done: dict[int, list[tuple[int, int]]] = {}
    killed = None
    try:
        async with Bus(url) as bus:
            with anyio.fail_after(20):
                ready = {(await bus.receive("durable.fault.ready")).b["pid"] for _ in range(2)}
            assert ready == {w.pid for w in workers}
            for n in range(TOTAL):
                await bus.send("durable.fault.item", FaultItem(n=n))  # returns once stored
            with anyio.fail_after(30):
                while len(done) < TOTAL:
                    for data in await bus.layer.receive_many("durable.fault.done", 256):
                        body = json.loads(data)["b"]
                        done.setdefault(body["n"], []).append((body["pid"], body["a"]))
                    handled_by = {pid for seen in done.values() for pid, _ in seen}
                    if killed is None and len(done) >= 400 and handled_by == ready:
                        killed = workers[0]
                        killed.send_signal(signal.SIGKILL)
            # Redeliveries still under way would show up within one ack wait.
            with anyio.move_on_after(SETTINGS.ack_wait + 0.5):
                while True:
                    for data in await bus.layer.receive_many("durable.fault.done", 256):
                        body = json.loads(data)["b"]
                        done.setdefault(body["n"], []).append((body["pid"], body["a"]))
            await bus.declare_durable("durable.fault.item.dlq", SETTINGS)
            dead = 0
            with anyio.move_on_after(0.5):
                dead += len(await bus.layer.receive_durable("durable.fault.item.dlq", 100))
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.terminate()
        for worker in workers:
            try:
                worker.wait(10)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
    assert killed is not None, "the kill never happened: items did not reach both workers"
    confirmations = sum(len(seen) for seen in done.values())
    duplicates = confirmations - len(done)
    lost = TOTAL - len(set(done) & set(range(TOTAL)))
    retried = sorted(n for n, seen in done.items() if any(a == 3 for _, a in seen))
    after_kill = sum(1 for seen in done.values() if seen[-1][0] != killed.pid)
    print(
        f"\ndurable kill -9: delivered {len(done)}/{TOTAL}, duplicates {duplicates}, "
        f"dead-lettered {dead}, lost {lost}; items succeeding on attempt 3: {len(retried)}; "
        f"handled last by the surviving worker: {after_kill}"
    )
    assert lost == 0
    assert dead == 0
    # Every tenth item failed twice and succeeded on its third attempt.
    assert {n for n in range(0, TOTAL, 10)} <= {n for n, seen in done.items() if seen[-1][1] >= 3}
    # Duplicates are bounded by what the killed worker had in flight (10 tasks, batches of 1..32).
    assert duplicates <= 10 * 32
