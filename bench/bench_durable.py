"""Durable channels: svcbus vs raw clients vs FastStream, send -> handler -> ack.

    python bench/bench_durable.py [--quick] [--count N] [--rounds N] [--only nats|redis]
                                  [--no-cluster] [--before GIT-REF]

Starts its own ``nats-server -js`` (file store in a temporary directory), a
3-node NATS cluster for the R3 rows and a ``redis-server``, all on free loopback
ports, and measures at-least-once delivery of the ~150-byte chat message
(``BenchChat``'s fields on a durable contract, ``DurableChat``): a publisher
process and a consumer process; the consumer validates every message with the
pydantic contract and acknowledges it after its handler returned. The time
runs from the first send to the moment the server holds no unacknowledged
message any more (this process polls the server once the consumer has handled
the last message), so every row pays for storing, delivering and acknowledging.

NATS (JetStream stream, file storage, work-queue retention, explicit acks):

* svcbus: ``Bus.send`` on a ``durable=True`` contract (returns once JetStream
  stored the message; ``WINDOW`` concurrent senders keep sends in flight) ->
  ``Runtime`` with an ``@consumes`` handler (ack after the handler);
* raw nats-py: ``js.publish_async`` (pipelined, awaited by
  ``publish_async_completed``) -> a pull subscription, ``fetch`` batches of
  ``FETCH`` messages, validate, ``ack`` each;
* FastStream: its JetStream pull subscriber (``PullSub``, durable consumer,
  ``AckPolicy.ACK``: acked after the handler), messages published by raw nats-py
  as above;
* R3 rows: svcbus and raw nats-py on a stream with three replicas on a 3-node
  cluster.

Redis (a stream and a consumer group):

* svcbus: the same ``Bus.send`` -> ``Runtime`` on ``redis://``;
* raw redis-py: ``XADD`` pipelined ``FETCH`` at a time -> ``XREADGROUP COUNT
  FETCH`` -> validate -> one ``XACK`` of the batch's ids;
* FastStream: its Redis stream subscriber (consumer group, ``AckPolicy.ACK``),
  messages ``XADD``-ed by raw redis-py as above.

Each round runs every system once (interleaved); the table shows the median.
``--before REF`` adds svcbus rows running the code at git ``REF`` (exported to a
temporary directory, imported through a shim as bench_tracing.py does), in the
same rounds. ``BENCH_PROFILE=path`` writes a cProfile of every process to
``path.<kind>.publisher`` / ``path.<kind>.consumer``.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))

from common import print_table  # noqa: E402
from servers import NatsCluster, NatsServer, RedisServer  # noqa: E402

from svcbus import Contract, Durability  # noqa: E402

WINDOW = 256
"""Sends in flight at once for the pipelined publishers (svcbus: concurrent senders)."""
FETCH = 256
"""Messages per pull (nats-py fetch, XREADGROUP COUNT) for the raw consumers and FastStream."""
TEXT = "The quick brown fox jumps over the lazy dog, twice over, for good measure."


class DurableChat(Contract, channel="bench.dchat", durable=True):
    """The ~150-byte chat message of the other benches, on a durable channel."""

    room: str
    nick: str
    text: str
    seq: int


class DurableChatR3(Contract, channel="bench.dchat3", durable=Durability(replicas=3)):
    """The same on a channel whose stream keeps three replicas (NATS cluster)."""

    room: str
    nick: str
    text: str
    seq: int


def make(seq: int, model: type[DurableChat] | type[DurableChatR3] = DurableChat) -> Any:
    return model(room="lobby", nick="ada", text=TEXT, seq=seq)


# systems ---------------------------------------------------------------------------------


class System:
    """One row: how its consumer runs, how its publisher sends, how to see it is all acked."""

    name: str
    layer: str  # "nats" or "redis"

    def __init__(self, name: str, kind: str, replicas: int = 1, shim: str = "") -> None:
        self.name = name
        self.kind = kind
        self.replicas = replicas
        self.shim = shim
        """Non-empty: run svcbus from this shim dir (``--before``)."""

    @property
    def model(self) -> type[DurableChat] | type[DurableChatR3]:
        return DurableChatR3 if self.replicas == 3 else DurableChat


def _js_names(tag: str) -> tuple[str, str]:
    """Stream and subject of the raw/FastStream JetStream rows for one round."""
    return f"BENCHD_{tag}", f"benchd.{tag}"


async def _raw_js_stream(js: Any, tag: str, count: int, replicas: int) -> None:
    """The raw rows' stream: the same settings as svcbus's durable stream."""
    from nats.js import api

    stream, subject = _js_names(tag)
    await js.add_stream(
        name=stream,
        subjects=[subject],
        storage=api.StorageType.FILE,
        retention=api.RetentionPolicy.WORK_QUEUE,
        discard=api.DiscardPolicy.NEW,
        max_msgs=count * 2,
        num_replicas=replicas,
    )
    await js.add_consumer(
        stream,
        api.ConsumerConfig(
            durable_name="workers",
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=30,
            max_ack_pending=-1,
        ),
    )


# consumers (child processes) -------------------------------------------------------------


def consumer_main(
    kind: str, url: str, tag: str, count: int, replicas: int, ready: Any, done: Any, cpu: Any
) -> None:
    if os.environ.get("BENCH_WHICH"):
        import svcbus

        print(f"consumer {kind}: svcbus from {svcbus.__file__}", file=sys.stderr)
    consumer = Consumer(url, tag, count, replicas, ready, done, cpu)
    profile_to = os.environ.get("BENCH_PROFILE")
    if not profile_to:
        asyncio.run(getattr(consumer, kind.replace("-", "_"))())
        return
    # BENCH_PROFILE=path: cProfile the consumer process, stats to path.<kind>.consumer
    import cProfile

    with cProfile.Profile() as profile:
        asyncio.run(getattr(consumer, kind.replace("-", "_"))())
    profile.dump_stats(f"{profile_to}.{kind}.consumer")


def _nats_servers(url: str) -> list[str]:
    """nats-py's server list from a layer URL (``nats://h:p,h:p?...``)."""
    hosts = url.split("://", 1)[1].split("?", 1)[0]
    return [f"nats://{host}" for host in hosts.split(",")]


class Consumer:
    """One consumer process: handles ``count`` messages, validating each, then says so."""

    def __init__(
        self, url: str, tag: str, count: int, replicas: int, ready: Any, done: Any, cpu: Any
    ) -> None:
        self.url, self.tag, self.count = url, tag, count
        self.replicas = replicas
        self.model: Any = DurableChatR3 if replicas == 3 else DurableChat
        self._ready, self._done, self._cpu = ready, done, cpu
        self._cpu_at_ready = 0.0
        self.finished = asyncio.Event()
        self.handled = 0

    def ready(self) -> None:
        """Set up: the publisher may start (CPU time counts from here)."""
        self._cpu_at_ready = time.process_time()
        self._ready.set()

    def done(self) -> None:
        """Every message handled (and acked, or its ack on the way)."""
        self._cpu.value = time.process_time() - self._cpu_at_ready
        self._done.set()

    def got_one(self) -> None:
        self.handled += 1
        if self.handled == self.count:
            self.finished.set()

    async def _until_finished(self) -> None:
        self.ready()
        await self.finished.wait()
        self.done()
        await asyncio.sleep(1.0)  # the last acks leave before the client closes

    async def svcbus(self) -> None:
        from svcbus import Runtime, Service, open_layer

        service = Service("bench-durable")
        got_one = self.got_one

        async def on_chat(message: DurableChat) -> None:
            got_one()

        on_chat.__annotations__["message"] = self.model  # the R3 rows' contract, if so
        service.consumes(self.model.__channel__)(on_chat)

        async with Runtime(service, open_layer(self.url)).running():
            await self._until_finished()

    svcbus_nats = svcbus_redis = svcbus

    async def raw_nats(self) -> None:
        import nats

        stream, _ = _js_names(self.tag)
        nc = await nats.connect(_nats_servers(self.url))
        js = nc.jetstream()
        await _raw_js_stream(js, self.tag, self.count, self.replicas)
        sub = await js.pull_subscribe_bind(durable="workers", stream=stream)
        self.ready()
        validate = self.model.model_validate_json
        while self.handled < self.count:
            try:
                msgs = await sub.fetch(FETCH, timeout=1)
            except (nats.errors.TimeoutError, asyncio.TimeoutError):
                continue
            for msg in msgs:
                validate(msg.data)
                await msg.ack()
                self.got_one()
        await nc.flush()
        self.done()
        await nc.close()

    async def faststream_nats(self) -> None:
        from faststream import AckPolicy
        from faststream.nats import JStream, NatsBroker, PullSub
        from nats.js import api

        stream, subject = _js_names(self.tag)
        broker = NatsBroker(_nats_servers(self.url), logger=None)
        got_one = self.got_one

        @broker.subscriber(
            subject,
            stream=JStream(
                stream,
                subjects=[subject],
                storage=api.StorageType.FILE,
                retention=api.RetentionPolicy.WORK_QUEUE,
                discard=api.DiscardPolicy.NEW,
                max_msgs=self.count * 2,
                num_replicas=self.replicas,
            ),
            durable="workers",
            config=api.ConsumerConfig(ack_wait=30, max_ack_pending=-1),
            pull_sub=PullSub(batch_size=FETCH, timeout=1.0),
            ack_policy=AckPolicy.ACK,
        )
        async def on_chat(message: DurableChat) -> None:
            got_one()

        await broker.start()
        await self._until_finished()
        await broker.stop()

    async def raw_redis(self) -> None:
        import redis.asyncio as redis

        client = redis.Redis.from_url(self.url)
        key = f"benchd:{self.tag}"
        await client.xgroup_create(key, "workers", id="0", mkstream=True)
        self.ready()
        validate = self.model.model_validate_json
        while self.handled < self.count:
            reply = await client.xreadgroup("workers", "c1", {key: ">"}, count=FETCH, block=250)
            if not reply:
                continue
            ids = []
            for entry_id, fields in reply[0][1]:
                validate(fields[b"d"])
                ids.append(entry_id)
            # One XACK for the batch, after every message of it was handled.
            await client.xack(key, "workers", *ids)
            for _ in ids:
                self.got_one()
        self.done()
        await client.aclose()

    async def faststream_redis(self) -> None:
        from faststream import AckPolicy
        from faststream.redis import RedisBroker, StreamSub

        broker = RedisBroker(self.url, logger=None)
        got_one = self.got_one

        @broker.subscriber(
            stream=StreamSub(
                f"benchd:{self.tag}", group="workers", consumer="c1", max_records=FETCH
            ),
            ack_policy=AckPolicy.ACK,
        )
        async def on_chat(message: DurableChat) -> None:
            got_one()

        await broker.start()
        await self._until_finished()
        await broker.stop()


# publishers (this process) ---------------------------------------------------------------


async def _publish(kind: str, url: str, tag: str, count: int, replicas: int) -> tuple[float, float]:
    """Send ``count`` messages; returns the monotonic time of the first send, CPU seconds."""
    model: Any = DurableChatR3 if replicas == 3 else DurableChat
    if kind.startswith("svcbus"):
        from svcbus import Bus

        channel = model.__channel__
        async with Bus(url) as bus:
            await bus.send(channel, make(-1, model))  # warm: the stream exists, connected
            next_seq = iter(range(count))
            started, cpu = time.monotonic(), time.process_time()

            async def sender() -> None:
                # Each send returns once the server stored its message; WINDOW of
                # them run at once, like the raw publishers' pipelines.
                for seq in next_seq:
                    await bus.send(channel, make(seq, model))

            await asyncio.gather(*(sender() for _ in range(WINDOW)))
            await bus.layer.flush()
        return started, time.process_time() - cpu
    if kind.endswith("nats"):
        import nats

        _, subject = _js_names(tag)
        nc = await nats.connect(_nats_servers(url))
        js = nc.jetstream(publish_async_max_pending=WINDOW)
        await nc.flush()
        started, cpu = time.monotonic(), time.process_time()
        for seq in range(count):
            await js.publish_async(subject, make(seq, model).model_dump_json().encode())
        await js.publish_async_completed()
        await nc.close()
        return started, time.process_time() - cpu
    import redis.asyncio as redis

    client = redis.Redis.from_url(url)
    key = f"benchd:{tag}"
    field, wrap = "d", None
    if kind == "faststream-redis":
        # FastStream's own stream format (what its publisher writes), so its
        # subscriber parses the message as it would in production.
        from faststream.redis.message import DATA_KEY
        from faststream.redis.parser.binary import BinaryMessageFormatV1

        field, wrap = DATA_KEY, BinaryMessageFormatV1.encode
    await client.ping()
    started, cpu = time.monotonic(), time.process_time()
    for first in range(0, count, WINDOW):
        pipe = client.pipeline(transaction=False)
        for seq in range(first, min(count, first + WINDOW)):
            data = make(seq, model).model_dump_json().encode()
            if wrap is not None:
                data = await wrap(
                    message=data, reply_to=None, headers=None, correlation_id=str(seq)
                )
            pipe.xadd(key, {field: data})
        await pipe.execute()
    await client.aclose()
    return started, time.process_time() - cpu


# waiting for the acks -------------------------------------------------------------------


async def _all_acked(kind: str, url: str, tag: str, svc_prefix: str, channel: str) -> float:
    """Poll the server until nothing is left unacknowledged; returns when it saw that."""
    if kind.endswith("nats"):
        import nats

        nc = await nats.connect(_nats_servers(url))
        js = nc.jetstream()
        if kind.startswith("svcbus"):
            stream = f"{svc_prefix}_dur_{channel.replace('.', ':')}"
        else:
            stream, _ = _js_names(tag)
        while True:
            info = await js.consumer_info(stream, "workers")
            if not info.num_pending and not info.num_ack_pending:
                at = time.monotonic()
                await nc.close()
                return at
            await asyncio.sleep(0.005)
    import redis.asyncio as redis

    client = redis.Redis.from_url(url)
    key = f"{svc_prefix}:d:{channel}" if kind.startswith("svcbus") else f"benchd:{tag}"
    while True:
        groups = await client.xinfo_groups(key)
        group = next(g for g in groups if g["name"] == b"workers")
        if not group["pending"] and not group.get("lag"):
            at = time.monotonic()
            await client.aclose()
            return at
        await asyncio.sleep(0.005)


def publisher_main(
    kind: str, url: str, tag: str, count: int, replicas: int, result: Any, cpu: Any
) -> None:
    """The publisher process: sends, then reports the monotonic time of its first send."""
    publish = _publish(kind, url, tag, count, replicas)
    profile_to = os.environ.get("BENCH_PROFILE")
    if not profile_to:
        result.value, cpu.value = asyncio.run(publish)
        return
    import cProfile

    with cProfile.Profile() as profile:
        result.value, cpu.value = asyncio.run(publish)
    profile.dump_stats(f"{profile_to}.{kind}.publisher")


def _server_cpu(pids: list[int]) -> float:
    """CPU seconds (user + system) the server processes used so far (Linux /proc)."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


class Result:
    """One round of one system: its rate and what it cost in CPU per message."""

    def __init__(self, rate: float, client_us: float, server_us: float, split: str = "") -> None:
        self.rate = rate
        self.split = split
        """Publisher / consumer CPU per message, for the progress lines."""
        self.client_us = client_us
        """Publisher + consumer CPU microseconds per message."""
        self.server_us = server_us
        """Server CPU microseconds per message (all nodes of a cluster)."""


def run_one(system: System, base: str, tag: str, count: int, pids: list[int]) -> Result:
    """One round of one system: messages per second, first send to last ack, and CPU."""
    prefix = f"bd{tag}"
    url = base
    if system.kind.startswith("svcbus"):
        sep = "&" if "?" in base else "?"
        url = f"{base}{sep}prefix={prefix}&capacity={count * 2}"
    ctx = mp.get_context("spawn")
    ready, done, started = ctx.Event(), ctx.Event(), ctx.Value("d", 0.0)
    consumer_cpu, publisher_cpu = ctx.Value("d", 0.0), ctx.Value("d", 0.0)
    extra = 1 if system.kind.startswith("svcbus") else 0  # the warm-up message
    consumer = ctx.Process(
        target=consumer_main,
        args=(system.kind, url, tag, count + extra, system.replicas, ready, done, consumer_cpu),
    )
    publisher = ctx.Process(
        target=publisher_main,
        args=(system.kind, url, tag, count, system.replicas, started, publisher_cpu),
    )
    if system.shim:
        # Spawned children start with this process's sys.path (multiprocessing sends
        # it over, replacing PYTHONPATH's), so the shim goes in front of it for them.
        sys.path.insert(0, system.shim)
    try:
        consumer.start()
        if not ready.wait(60):
            raise RuntimeError(f"{system.name}: consumer did not start")
        time.sleep(0.3)
        server_before = _server_cpu(pids)
        publisher.start()
        publisher.join(300)
        if publisher.exitcode != 0 or not started.value:
            raise RuntimeError(f"{system.name}: publisher failed ({publisher.exitcode})")
        published = time.monotonic()
        if not done.wait(300):
            raise RuntimeError(f"{system.name}: consumer did not finish")
        handled = time.monotonic()
        ended = asyncio.run(_all_acked(system.kind, base, tag, prefix, system.model.__channel__))
        server_used = _server_cpu(pids) - server_before
        consumer.join(30)
    finally:
        if system.shim:
            sys.path.remove(system.shim)
        for process in (publisher, consumer):
            if process.is_alive():
                process.terminate()
                process.join()
    client = consumer_cpu.value + publisher_cpu.value
    split = (
        f"publisher {publisher_cpu.value / count * 1e6:.0f} + "
        f"consumer {consumer_cpu.value / count * 1e6:.0f}; published "
        f"{published - started.value:.2f}s, handled {handled - started.value:.2f}s, "
        f"acked {ended - started.value:.2f}s"
    )
    return Result(
        count / (ended - started.value), client / count * 1e6, server_used / count * 1e6, split
    )


def before_shim(ref: str, into: str) -> str:
    """Export svcbus at git ``ref`` into ``into`` with a shim dir; returns the shim's path.

    The shim maps the ``svcbus`` package onto the export's ``sdk/`` and ``layers/``
    (as bench_tracing.py does), so child processes can run that code.
    """
    root = os.path.dirname(HERE)
    export = os.path.join(into, "src")
    os.makedirs(export)
    archive = subprocess.run(
        ["git", "archive", ref, "sdk", "layers"], cwd=root, check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", export], input=archive, check=True)
    package = os.path.join(into, "shim", "svcbus")
    os.makedirs(package)
    for entry in os.listdir(os.path.join(export, "sdk")):
        os.symlink(os.path.join(export, "sdk", entry), os.path.join(package, entry))
    os.symlink(os.path.join(export, "layers"), os.path.join(package, "layers"))
    return os.path.join(into, "shim")


# main ----------------------------------------------------------------------------------------


def _ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}x"


def _rounds(
    systems: list[System], base: str, pids: list[int], label: str, count: int, rounds: int
) -> dict[str, Result]:
    """Every system once per round; the median rate and CPU figures of each."""
    results: dict[str, list[Result]] = {s.name: [] for s in systems}
    for r in range(rounds):
        for i, system in enumerate(systems):
            result = run_one(system, base, f"{label}{r}s{i}", count, pids)
            results[system.name].append(result)
            print(
                f"... {label} round {r + 1}/{rounds} {system.name}: {result.rate:,.0f} msg/s, "
                f"client {result.client_us:.0f} us/msg ({result.split}), "
                f"server {result.server_us:.0f} us/msg",
                file=sys.stderr,
                flush=True,
            )
    return {
        name: Result(
            statistics.median(x.rate for x in values),
            statistics.median(x.client_us for x in values),
            statistics.median(x.server_us for x in values),
        )
        for name, values in results.items()
    }


def _table(title: str, medians: dict[str, Result], ours: str, peers: list[str]) -> None:
    """Rates, CPU per message, and svcbus's rate against each peer's (on svcbus's row)."""
    rows = []
    for name, result in medians.items():
        ratios = (
            _ratio(medians[ours].rate, medians[peer].rate) if name == ours else "" for peer in peers
        )
        rows.append(
            [
                name,
                f"{result.rate:,.0f}",
                f"{result.client_us:.0f}",
                f"{result.server_us:.0f}",
                *ratios,
            ]
        )
    columns = [
        "system",
        "msg/s",
        "client CPU us/msg",
        "server CPU us/msg",
        *(f"svcbus vs {peer.split(' (')[0]}" for peer in peers),
    ]
    print_table(title, columns, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="5,000 messages, 1 round")
    parser.add_argument("--count", type=int, help="messages per round (default 20,000)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 3)")
    parser.add_argument("--only", choices=["nats", "redis"], help="one layer's rows only")
    parser.add_argument("--no-cluster", action="store_true", help="skip the R3 rows")
    parser.add_argument(
        "--before", metavar="REF", help="add svcbus rows running the code at git REF"
    )
    args = parser.parse_args()
    count = args.count or (5_000 if args.quick else 20_000)
    rounds = args.rounds or (1 if args.quick else 3)
    with tempfile.TemporaryDirectory(prefix="bench-durable-") as tmp:
        shim = before_shim(args.before, tmp) if args.before else ""
        if args.only != "redis":
            bench_nats(count, rounds, shim, args.before, not args.no_cluster)
        if args.only != "nats":
            bench_redis(count, rounds, shim, args.before)
    print(f"load average at the end: {os.getloadavg()}", file=sys.stderr)


def _pid(server: Any) -> int:
    pid = server.pid
    assert pid is not None, "the server is not running"
    return int(pid)


def _with_before(
    systems: list[System], shim: str, ref: str | None, name: str, kind: str, replicas: int = 1
) -> list[str]:
    """Add the ``--before`` row (after svcbus's own); returns the peers' names."""
    if shim:
        systems.insert(1, System(f"{name} at {ref}", kind, replicas, shim))
    return [system.name for system in systems[1:]]


def bench_nats(count: int, rounds: int, shim: str, ref: str | None, cluster: bool) -> None:
    svc = "svcbus (Bus.send -> Runtime)"
    systems = [
        System(svc, "svcbus-nats"),
        System("raw nats-py (publish_async + fetch + ack)", "raw-nats"),
        System("FastStream (JetStream PullSub, AckPolicy.ACK)", "faststream-nats"),
    ]
    peers = _with_before(systems, shim, ref, "svcbus", "svcbus-nats")
    with NatsServer() as server:
        print(f"nats-server {server.url} (pid {server.pid})", file=sys.stderr, flush=True)
        medians = _rounds(systems, server.url, [_pid(server)], "n", count, rounds)
    _table(
        f"NATS durable: {count:,} messages, send -> handler -> ack, separate processes "
        f"(median of {rounds} rounds)",
        medians,
        svc,
        peers,
    )
    if not cluster:
        return
    svc3 = "svcbus R3 (3-node cluster)"
    systems = [
        System(svc3, "svcbus-nats", 3),
        System("raw nats-py R3 (3-node cluster)", "raw-nats", 3),
    ]
    peers = _with_before(systems, shim, ref, "svcbus R3", "svcbus-nats", 3)
    with NatsCluster() as nodes:
        print(f"nats cluster {nodes.urls}", file=sys.stderr, flush=True)
        pids = [_pid(node) for node in nodes.nodes]
        medians = _rounds(systems, nodes.urls, pids, "c", count, rounds)
    _table(
        f"NATS durable, stream with 3 replicas on a 3-node cluster: {count:,} messages "
        f"(median of {rounds} rounds)",
        medians,
        svc3,
        peers,
    )


def bench_redis(count: int, rounds: int, shim: str, ref: str | None) -> None:
    svc = "svcbus (Bus.send -> Runtime)"
    systems = [
        System(svc, "svcbus-redis"),
        System("raw redis-py (XADD pipelined + XREADGROUP + XACK)", "raw-redis"),
        System("FastStream (stream consumer group, AckPolicy.ACK)", "faststream-redis"),
    ]
    peers = _with_before(systems, shim, ref, "svcbus", "svcbus-redis")
    with RedisServer() as server:
        print(f"redis-server {server.url} (pid {server.pid})", file=sys.stderr, flush=True)
        medians = _rounds(systems, server.url, [_pid(server)], "r", count, rounds)
    _table(
        f"Redis durable: {count:,} messages, send -> handler -> ack, separate processes "
        f"(median of {rounds} rounds)",
        medians,
        svc,
        peers,
    )


if __name__ == "__main__":
    main()
