"""Hot paths against their peers: send -> Runtime and send -> receive loops, per layer.

    python bench/bench_paths.py [--quick] [--rounds N] [--before REV]

Every row puts svcbus next to its peer, measured in the same run: rounds are
interleaved (each system once per round, each measurement in a fresh child
process) and the median is reported, because a single run on a shared 2-core
machine swings by 20% or more. The payload is the ~150-byte ``BenchChat``
(bench/common.py) everywhere; senders start from built ``BenchChat`` instances
(svcbus ``Bus.send``s them, the peers serialise them: ``model_dump_json`` for
NATS, ``model_dump`` dicts for Channels), and every consumer validates each
message with the same pydantic model (svcbus through its contract, the peers by
calling ``BenchChat.model_validate_json`` / ``model_validate``). Rates are from
the first send to the last message validated.

Rows (one process unless said otherwise; servers are started on loopback ports):

* NATS, send -> Runtime: ``Bus.send`` loop and a ``Runtime`` consumer (default
  concurrency) on two layers; raw nats-py publishes on one connection and
  validates in a subscription callback on another; FastStream publishes with
  ``broker.publish`` to its own typed subscriber.
* NATS, send -> ``await bus.receive()`` loop (and ``async for bus.messages()``):
  against the same raw nats-py figure.
* Redis, send -> receive loop: against channels_redis's ``RedisChannelLayer``
  (core) and ``RedisPubSubChannelLayer``, each with a sender and a receiver layer.
* memory, send -> receive loop and send -> Runtime: against Channels'
  ``InMemoryChannelLayer`` (a ``send`` / ``receive`` loop).
* NATS, send -> Runtime, publisher and consumer in separate processes: the
  flood of bench/bench_nats.py (svcbus and raw nats-py only).

``--before REV`` adds a "before" column: the same svcbus rows run against the
code of git revision REV (extracted with ``git archive`` into a temporary
directory and imported through a shim that maps ``svcbus`` onto it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "tests"))

# In a "before" child, PYTHONPATH makes svcbus (imported by common) the old code.
from common import BenchChat, chat, print_table  # noqa: E402

CPU_PER_MESSAGE: list[float] = []
"""Microseconds of this process's CPU time per message, of the measurement that ran."""
CHANNEL = "bench.chat"
SUBJECT = "bench.paths"
TEXT = "chat.message"


# children: one measurement each -------------------------------------------------------------


class Counter:
    """Counts consumed messages; ``done`` is set at ``count``.

    Warm-up messages carry a negative ``seq`` and are not counted: on core
    NATS and Redis pub/sub one sent before the subscription settled is gone,
    so warming up sends them until one arrives.
    """

    def __init__(self, count: int) -> None:
        self.count = count
        self.seen = 0
        self.done = asyncio.Event()
        self.warm = asyncio.Event()

    def got(self, seq: int) -> None:
        if seq < 0:
            self.warm.set()
            return
        self.seen += 1
        if self.seen == self.count:
            self.done.set()


async def _timed(
    counter: Counter, warm: Callable[[], Awaitable[None]], send_all: Callable[[], Awaitable[None]]
) -> float:
    """Warm up until a warm-up message arrives, then time ``send_all`` until the last arrives."""
    for _ in range(60):
        await warm()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(counter.warm.wait(), 0.5)
            break
    else:
        raise RuntimeError("no warm-up message arrived within 30 s")
    started, cpu = time.perf_counter(), time.process_time()
    await send_all()
    await asyncio.wait_for(counter.done.wait(), 300)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    # This process's CPU time per message (sender and consumer, in one process):
    # steadier than the rate on a machine shared with other work.
    CPU_PER_MESSAGE.append(cpu / counter.count * 1e6)
    return counter.count / elapsed


async def svcbus_runtime(url: str, count: int) -> float:
    """``Bus.send`` loop -> a ``Runtime`` consumer of ``BenchChat`` (default concurrency)."""
    from svcbus import Bus, Runtime, Service, open_layer

    counter = Counter(count)
    service = Service("bench-paths")

    @service.consumes(CHANNEL)
    async def on_chat(message: BenchChat) -> None:
        counter.got(message.seq)

    messages = [chat(i) for i in range(count)]
    async with Runtime(service, open_layer(url)).running(), Bus(url) as bus:

        async def send_all() -> None:
            for message in messages:
                await bus.send(CHANNEL, message)
            await bus.flush()

        return await _timed(counter, lambda: _send_warm(bus), send_all)


async def _send_warm(bus: Any) -> None:
    await bus.send(CHANNEL, chat(-1))


async def svcbus_receive(url: str, count: int, iterate: bool) -> float:
    """``Bus.send`` loop -> ``await bus.receive()`` loop (or ``async for bus.messages()``)."""
    from svcbus import Bus

    counter = Counter(count)
    messages = [chat(i) for i in range(count)]
    async with Bus(url) as receiver, Bus(url) as bus:

        async def receive_all() -> None:
            if iterate:
                async for envelope in receiver.messages(CHANNEL):
                    counter.got(envelope.b.seq)
                    if counter.done.is_set():
                        return
            else:
                while not counter.done.is_set():
                    counter.got((await receiver.receive(CHANNEL)).b.seq)

        async def send_all() -> None:
            for message in messages:
                await bus.send(CHANNEL, message)
            await bus.flush()

        task = asyncio.ensure_future(receive_all())
        try:
            return await _timed(counter, lambda: _send_warm(bus), send_all)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def raw_nats(url: str, count: int) -> float:
    """nats-py: publish ``model_dump_json`` on one connection, validate in a callback on another."""
    import nats

    counter = Counter(count)
    messages = [chat(i) for i in range(count)]
    sub_nc = await nats.connect(url)
    pub_nc = await nats.connect(url)

    async def on_message(msg: Any) -> None:
        counter.got(BenchChat.model_validate_json(msg.data).seq)

    await sub_nc.subscribe(SUBJECT, cb=on_message)
    await sub_nc.flush()

    async def warm() -> None:
        await pub_nc.publish(SUBJECT, chat(-1).model_dump_json().encode())

    async def send_all() -> None:
        for message in messages:
            await pub_nc.publish(SUBJECT, message.model_dump_json().encode())
        await pub_nc.flush()

    try:
        return await _timed(counter, warm, send_all)
    finally:
        await pub_nc.close()
        await sub_nc.close()


async def faststream_nats(url: str, count: int) -> float:
    """FastStream: ``broker.publish(BenchChat)`` to its own typed subscriber."""
    from faststream.nats import NatsBroker

    counter = Counter(count)
    messages = [chat(i) for i in range(count)]
    broker = NatsBroker(url, logger=None)

    @broker.subscriber(SUBJECT)
    async def on_chat(message: BenchChat) -> None:
        counter.got(message.seq)

    await broker.start()

    async def send_all() -> None:
        for message in messages:
            await broker.publish(message, SUBJECT)

    try:
        return await _timed(counter, lambda: broker.publish(chat(-1), SUBJECT), send_all)
    finally:
        await broker.stop()


async def channels_loop(make: Callable[[], Any], count: int) -> float:
    """A Channels layer: send ``model_dump`` dicts, receive and ``model_validate`` each."""
    counter = Counter(count)
    messages = [chat(i) for i in range(count)]
    sender, receiver = make(), make()

    async def receive_all() -> None:
        while not counter.done.is_set():
            counter.got(BenchChat.model_validate(await receiver.receive(CHANNEL)).seq)

    async def send_all() -> None:
        for message in messages:
            await sender.send(CHANNEL, {"type": TEXT, **message.model_dump()})

    async def warm() -> None:
        await sender.send(CHANNEL, {"type": TEXT, **chat(-1).model_dump()})

    task = asyncio.ensure_future(receive_all())
    try:
        return await _timed(counter, warm, send_all)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        for layer in (sender, receiver):
            if hasattr(layer, "close_pools"):
                await layer.close_pools()
            elif hasattr(layer, "flush") and "Redis" in type(layer).__name__:
                await layer.flush()


def _channels_memory() -> Callable[[], Any]:
    from channels.layers import InMemoryChannelLayer

    layer = InMemoryChannelLayer(capacity=1_000_000)
    return lambda: layer  # one in-memory layer is the whole "server"


def _channels_redis(url: str, count: int, pubsub: bool) -> Callable[[], Any]:
    if pubsub:
        from channels_redis.pubsub import RedisPubSubChannelLayer

        return lambda: RedisPubSubChannelLayer(hosts=[url])
    from channels_redis.core import RedisChannelLayer

    return lambda: RedisChannelLayer(hosts=[url], capacity=count + 10)


def _nats_processes(kind: str, url: str, count: int) -> float:
    from bench_nats import flood  # the flood of bench_nats.py, publisher and consumer apart

    return flood(kind, url, count)


MEASUREMENTS: dict[str, Callable[[str, int], Any]] = {
    "nats-svcbus-runtime": svcbus_runtime,
    "nats-svcbus-receive": lambda url, n: svcbus_receive(url, n, False),
    "nats-svcbus-messages": lambda url, n: svcbus_receive(url, n, True),
    "nats-raw": raw_nats,
    "nats-faststream": faststream_nats,
    "redis-svcbus-receive": lambda url, n: svcbus_receive(url, n, False),
    "redis-svcbus-messages": lambda url, n: svcbus_receive(url, n, True),
    "redis-channels-core": lambda url, n: channels_loop(_channels_redis(url, n, False), n),
    "redis-channels-pubsub": lambda url, n: channels_loop(_channels_redis(url, n, True), n),
    "memory-svcbus-runtime": svcbus_runtime,
    "memory-svcbus-receive": lambda url, n: svcbus_receive(url, n, False),
    "memory-svcbus-messages": lambda url, n: svcbus_receive(url, n, True),
    "memory-channels": lambda url, n: channels_loop(_channels_memory(), n),
    "nats2-svcbus": lambda url, n: _nats_processes("svcbus", url, n),
    "nats2-raw": lambda url, n: _nats_processes("raw", url, n),
}


def child(name: str, url: str, count: int) -> None:
    """Run one measurement here and print its rate as the last line (the parent reads it)."""
    job = MEASUREMENTS[name]
    if name.endswith("-messages"):
        from svcbus import Bus

        if not hasattr(Bus, "messages"):
            print("[null, null]")  # older code: no Bus.messages
            return
    # The separate-process flood runs its own event loops; the rest run in this one.
    rate = job(url, count) if name.startswith("nats2-") else asyncio.run(job(url, count))
    print(json.dumps([rate, CPU_PER_MESSAGE[-1] if CPU_PER_MESSAGE else None]))


# parent: servers, rounds, the table -----------------------------------------------------------


Result = tuple[float | None, float | None]
"""msg/s and CPU microseconds per message (None: not measured, or not possible there)."""


def measure(name: str, url: str, count: int, shim: Path | None) -> Result:
    """One measurement in a fresh child process."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if shim is not None:
        env["PYTHONPATH"] = str(shim)  # ahead of the editable install's finder
    result = subprocess.run(
        [sys.executable, str(Path(__file__)), "--child", name, "--url", url, "--count", str(count)],
        env=env,
        capture_output=True,
        text=True,
        cwd=tempfile.gettempdir(),
        timeout=900,
    )
    if result.returncode != 0:
        raise SystemExit(f"{name} failed:\n{result.stderr[-3000:]}")
    rate, cpu = json.loads(result.stdout.strip().splitlines()[-1])
    return rate, cpu


def before_checkout(rev: str, tmp: Path) -> Path:
    """``sdk/`` and ``layers/`` of ``rev`` under ``tmp``, and a shim dir mapping ``svcbus`` there."""
    tree = tmp / "before"
    tree.mkdir()
    archive = subprocess.run(
        ["git", "archive", rev, "sdk", "layers"], cwd=ROOT, check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    package = tmp / "shim" / "svcbus"
    package.mkdir(parents=True)
    for entry in (tree / "sdk").iterdir():
        (package / entry.name).symlink_to(entry)
    (package / "layers").symlink_to(tree / "layers")
    return tmp / "shim"


ROWS: list[tuple[str, str, str, list[tuple[str, str]]]] = [
    # (label, server, svcbus measurement, [(peer label, peer measurement), ...])
    (
        "NATS, send -> Runtime, one process",
        "nats",
        "nats-svcbus-runtime",
        [("raw nats-py", "nats-raw"), ("FastStream", "nats-faststream")],
    ),
    (
        "NATS, send -> await bus.receive() loop, one process",
        "nats",
        "nats-svcbus-receive",
        [("raw nats-py", "nats-raw")],
    ),
    (
        "NATS, send -> async for bus.messages(), one process",
        "nats",
        "nats-svcbus-messages",
        [("raw nats-py", "nats-raw")],
    ),
    (
        "Redis, send -> await bus.receive() loop",
        "redis",
        "redis-svcbus-receive",
        [
            ("channels_redis core", "redis-channels-core"),
            ("channels_redis pubsub", "redis-channels-pubsub"),
        ],
    ),
    (
        "Redis, send -> async for bus.messages()",
        "redis",
        "redis-svcbus-messages",
        [
            ("channels_redis core", "redis-channels-core"),
            ("channels_redis pubsub", "redis-channels-pubsub"),
        ],
    ),
    (
        "memory, send -> await bus.receive() loop",
        "memory",
        "memory-svcbus-receive",
        [("Channels InMemoryChannelLayer", "memory-channels")],
    ),
    (
        "memory, send -> async for bus.messages()",
        "memory",
        "memory-svcbus-messages",
        [("Channels InMemoryChannelLayer", "memory-channels")],
    ),
    (
        "memory, send -> Runtime",
        "memory",
        "memory-svcbus-runtime",
        [("Channels InMemoryChannelLayer", "memory-channels")],
    ),
    (
        "NATS, send -> Runtime, separate processes",
        "nats",
        "nats2-svcbus",
        [("raw nats-py", "nats2-raw")],
    ),
]


def _counts(quick: bool) -> dict[str, int]:
    """Messages per measurement: channels_redis core manages about 1k msg/s."""
    if quick:
        return {"default": 20_000, "redis": 5_000, "redis-channels-core": 1_000}
    return {"default": 100_000, "redis": 20_000, "redis-channels-core": 3_000}


def _count_for(name: str, counts: dict[str, int]) -> int:
    if name in counts:
        return counts[name]
    return counts["redis"] if name.startswith("redis") else counts["default"]


def _url_for(name: str, servers: dict[str, str], count: int, round_: int) -> str:
    if name.startswith("memory"):
        return f"memory://paths{round_}?capacity={count + 10}"
    if name.startswith("redis"):
        base = servers["redis"]
        # Each svcbus run gets its own key prefix (and database noise does not carry over).
        return (
            f"{base}?prefix=p{round_}{name[-4:]}&capacity={count + 10}"
            if "svcbus" in name
            else base
        )
    base = servers["nats"]
    if "raw" in name or "faststream" in name:
        return base
    return f"{base}?prefix=p{round_}{name.replace('-', '')}&capacity={count * 2}"


def run_rounds(
    rounds: int, quick: bool, shim: Path | None, servers: dict[str, str], only: set[str]
) -> dict[tuple[str, bool], list[Result]]:
    counts = _counts(quick)
    names: list[str] = []
    for _label, server, ours, peers in ROWS:
        if only and server not in only:
            continue
        for name in [ours, *(peer for _, peer in peers)]:
            if name not in names:
                names.append(name)
    results: dict[tuple[str, bool], list[Result]] = {}
    for r in range(rounds):
        for name in names:
            variants = [False, True] if shim is not None and "svcbus" in name else [False]
            for before in variants:
                count = _count_for(name, counts)
                url = _url_for(name, servers, count, r * 2 + before)
                rate, cpu = measure(name, url, count, shim if before else None)
                results.setdefault((name, before), []).append((rate, cpu))
                shown = "n/a" if rate is None else f"{rate:,.0f} msg/s"
                shown += "" if cpu is None else f", {cpu:.2f} us/msg CPU"
                tag = " (before)" if before else ""
                print(f"round {r + 1}/{rounds} {name}{tag}: {shown}", file=sys.stderr, flush=True)
    return results


def _median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def report(results: dict[tuple[str, bool], list[Result]], rounds: int, before: str | None) -> None:
    """Two tables: throughput (msg/s) and CPU time per message, both medians."""
    for what, index, unit in (("throughput", 0, "msg/s"), ("CPU per message", 1, "us/msg")):
        columns = ["path", f"svcbus {unit}"]
        if before:
            columns += [f"before ({before})", "after vs before"]
        columns += ["peer", f"peer {unit}", "svcbus vs peer"]
        rows = []
        for label, _server, ours, peers in ROWS:
            if (ours, False) not in results:
                continue
            after = _median([r[index] for r in results[(ours, False)]])
            old = _median([r[index] for r in results.get((ours, True), [])]) if before else None
            for peer_label, peer in peers:
                theirs = _median([r[index] for r in results[(peer, False)]])
                row = [label, _number(after, index)]
                # Ratios read "svcbus is N times as fast": CPU ratios are inverted.
                if before:
                    row += [_number(old, index), _ratio(after, old, inverse=bool(index))]
                row += [peer_label, _number(theirs, index), _ratio(after, theirs, bool(index))]
                rows.append(row)
        print_table(f"Hot paths, {what}, median of {rounds} interleaved rounds", columns, rows)


def _number(value: float | None, index: int) -> str:
    if value is None:
        return "n/a"
    return f"{value:.2f}" if index else f"{value:,.0f}"


def _ratio(value: float | None, base: float | None, inverse: bool = False) -> str:
    if value is None or not base:
        return "n/a"
    return f"{base / value:.2f}x" if inverse else f"{value / base:.2f}x"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts, 3 rounds")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 5, quick 3)")
    parser.add_argument("--before", metavar="REV", help="also run svcbus rows on this revision")
    parser.add_argument(
        "--only", action="append", choices=["nats", "redis", "memory"], help="these layers only"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.url, args.count)
        return
    rounds = args.rounds or (3 if args.quick else 5)
    only = set(args.only or [])
    from servers import NatsServer, RedisServer

    tmp = Path(tempfile.mkdtemp(prefix="svcbus-bench-paths-"))
    try:
        shim = before_checkout(args.before, tmp) if args.before else None
        with NatsServer() as nats_server, RedisServer() as redis_server:
            servers = {"nats": nats_server.url, "redis": redis_server.url}
            print(
                f"nats-server {nats_server.url}, redis-server {redis_server.url}", file=sys.stderr
            )
            results = run_rounds(rounds, args.quick, shim, servers, only)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report(results, rounds, args.before)


if __name__ == "__main__":
    main()
