"""Sync runtime: plain ``def`` consumers vs ``async def``, and the legacy worker vs the Runtime.

    python bench/bench_sync.py [--quick]

1. **Main SDK**: a channel pre-filled with N ``BenchChat`` messages is drained by a
   :class:`~svcbus.Runtime` whose consumer is either ``async def`` or plain ``def``
   (worker threads), at concurrency 1 and 10, on ``memory://`` and on NATS (its own
   ``nats-server -js``). Both validate every message with the same contract; the
   handler only counts. Rate = messages / (last handled - first handled).
2. **Legacy worker on NATS**: the same drain by ``svcbus.legacy.Worker`` (standard
   library only, one thread, JSON Schema validation) and by an async Runtime, each in
   its own process.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))

import anyio  # noqa: E402
from common import BenchChat, chat, print_table  # noqa: E402
from servers import NatsServer  # noqa: E402

from svcbus import Bus, Runtime, Service  # noqa: E402
from svcbus.legacy_export import export_schemas  # noqa: E402

CHANNEL = "bench.chat"


class Clock:
    """First and last handled time of a drain, safe from worker threads."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.seen = 0
        self.first = 0.0
        self.last = 0.0
        self.lock = threading.Lock()

    def tick(self) -> None:
        now = time.perf_counter()
        with self.lock:
            self.seen += 1
            if self.seen == 1:
                self.first = now
            if self.seen == self.count:
                self.last = now

    @property
    def rate(self) -> float:
        return (self.count - 1) / (self.last - self.first)


def make_service(kind: str, clock: Clock) -> Service:
    service = Service(f"bench-{kind}")
    if kind == "async":

        @service.consumes(CHANNEL)
        async def on_chat(message: BenchChat) -> None:
            clock.tick()

    else:

        @service.consumes(CHANNEL)
        def on_chat_sync(message: BenchChat) -> None:
            clock.tick()

    return service


async def fill(bus: Bus, count: int) -> None:
    for i in range(count):
        await bus.send(CHANNEL, chat(i))
    await bus.layer.flush()


async def drain(url: str, kind: str, concurrency: int, count: int) -> float:
    """Pre-fill ``count`` messages, then time a Runtime draining them."""
    clock = Clock(count)
    async with Bus(url) as bus:
        await fill(bus, count)
        runtime = Runtime(make_service(kind, clock), bus, concurrency=concurrency)
        async with runtime.running():
            while clock.seen < count:
                await anyio.sleep(0.005)
    return clock.rate


# legacy vs async in their own processes --------------------------------------------------

LEGACY_APP = textwrap.dedent(
    """
    import json, sys, time
    from svcbus_legacy import Worker, consumes

    count = int(sys.argv[2])
    state = {"seen": 0, "first": 0.0}

    @consumes("bench.chat")
    def on_chat(message):
        state["seen"] += 1
        if state["seen"] == 1:
            state["first"] = time.time()
        if state["seen"] == count:
            print(json.dumps({"seconds": time.time() - state["first"]}))
            sys.stdout.flush()
            worker.stop()

    worker = Worker(sys.argv[1], schemas=sys.argv[3], prefetch=int(sys.argv[4]))
    worker.run()
    """
)


def async_drain_process(url: str, count: int) -> None:
    """Body of ``--async-drain``: drain the pre-filled channel and print the seconds."""
    clock = Clock(count)

    async def run() -> None:
        runtime = Runtime(make_service("async", clock), url, concurrency=1)
        async with runtime.running():
            while clock.seen < count:
                await anyio.sleep(0.005)

    anyio.run(run)
    print(json.dumps({"seconds": clock.last - clock.first}))


def process_drain(url: str, count: int, command: list[str], env: dict[str, str]) -> float:
    anyio.run(_fill_url, url, count)
    out = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return (count - 1) / json.loads(out.stdout.strip().splitlines()[-1])["seconds"]


async def _fill_url(url: str, count: int) -> None:
    async with Bus(url) as bus:
        await fill(bus, count)


def legacy_vs_async(base: str, count: int, prefetch: int) -> tuple[float, float]:
    workdir = tempfile.mkdtemp(prefix="svcbus-bench-sync-")
    try:
        shutil.copytree(os.path.join(ROOT, "sdk", "legacy"), os.path.join(workdir, "svcbus_legacy"))
        app = os.path.join(workdir, "legacy_app.py")
        with open(app, "w", encoding="utf-8") as handle:
            handle.write(LEGACY_APP)
        schemas = str(export_schemas(os.path.join(workdir, "contracts.json"), channels=[CHANNEL]))
        url = f"{base}?prefix=l{uuid.uuid4().hex[:8]}&capacity={count * 2}"
        legacy = process_drain(
            url,
            count,
            [sys.executable, "-S", app, url, str(count), schemas, str(prefetch)],
            {"PYTHONPATH": workdir, "PATH": os.environ.get("PATH", "")},
        )
        url = f"{base}?prefix=a{uuid.uuid4().hex[:8]}&capacity={count * 2}"
        ours = process_drain(
            url,
            count,
            [sys.executable, __file__, "--async-drain", url, str(count)],
            dict(os.environ),
        )
        return legacy, ours
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts (a quick look)")
    parser.add_argument("--async-drain", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.async_drain:
        async_drain_process(args.async_drain[0], int(args.async_drain[1]))
        return
    count = 10_000 if args.quick else 50_000
    step = lambda what: print(f"... {what}", file=sys.stderr)  # noqa: E731

    rows: list[list[Any]] = []
    with NatsServer() as server:
        layers = {
            "memory": f"memory://bench-sync?capacity={count * 2}",
            "nats": f"{server.url}?prefix=s{uuid.uuid4().hex[:8]}&capacity={count * 2}",
        }
        for layer, url in layers.items():
            for concurrency in (1, 10):
                rates = {}
                for kind in ("async", "sync"):
                    step(f"{layer}: {kind} consumer, concurrency {concurrency}, {count:,} messages")
                    rates[kind] = max(
                        anyio.run(drain, url, kind, concurrency, count) for _ in range(2)
                    )
                rows.append(
                    [
                        layer,
                        str(concurrency),
                        f"{rates['async']:,.0f}",
                        f"{rates['sync']:,.0f}",
                        f"{rates['sync'] / rates['async']:.2f}x",
                    ]
                )
        print_table(
            f"Runtime drain of {count:,} BenchChat messages (validated): def vs async def",
            ["layer", "concurrency", "async def msg/s", "def msg/s", "def / async"],
            rows,
        )

        step(f"legacy worker vs async Runtime on NATS, {count:,} messages, separate processes")
        legacy, ours = legacy_vs_async(server.url, count, prefetch=64)
        print_table(
            f"NATS drain of {count:,} BenchChat messages, consumer in its own process",
            ["consumer", "msg/s", "vs async Runtime"],
            [
                ["async Runtime (pydantic, concurrency 1)", f"{ours:,.0f}", "1.00x"],
                [
                    "svcbus.legacy Worker (stdlib, JSON Schema, prefetch 64)",
                    f"{legacy:,.0f}",
                    f"{legacy / ours:.2f}x",
                ],
            ],
        )


if __name__ == "__main__":
    main()
