"""Durable channels: svcbus vs raw clients vs FastStream, send -> handler -> ack.

    python bench/bench_durable.py [--quick] [--count N] [--rounds N] [--only nats|redis]

Starts its own ``nats-server -js`` (file store in a temporary directory), a
3-node NATS cluster for the R3 rows and a ``redis-server``, all on free loopback
ports, and measures at-least-once delivery of the ~150-byte chat message
(``BenchChat``'s fields on a durable contract, ``DurableChat``): a publisher in
this process, a consumer in a child process that validates every message with
the pydantic contract and acknowledges it after its handler returned. The time
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
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import statistics
import sys
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

    def __init__(self, name: str, kind: str, replicas: int = 1) -> None:
        self.name = name
        self.kind = kind
        self.replicas = replicas

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
    kind: str, url: str, tag: str, count: int, replicas: int, ready: Any, done: Any
) -> None:
    consumer = Consumer(url, tag, count, replicas, ready, done)
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
        self, url: str, tag: str, count: int, replicas: int, ready: Any, done: Any
    ) -> None:
        self.url, self.tag, self.count = url, tag, count
        self.replicas = replicas
        self.model: Any = DurableChatR3 if replicas == 3 else DurableChat
        self.ready, self.done = ready, done
        self.finished = asyncio.Event()
        self.handled = 0

    def got_one(self) -> None:
        self.handled += 1
        if self.handled == self.count:
            self.finished.set()

    async def _until_finished(self) -> None:
        self.ready.set()
        await self.finished.wait()
        self.done.set()
        await asyncio.sleep(1.0)  # the last acks leave before the client closes

    async def svcbus(self) -> None:
        from svcbus import Runtime, Service, open_layer

        service = Service("bench-durable")
        got_one = self.got_one

        @service.consumes(self.model.__channel__)
        async def on_chat(message: DurableChat) -> None:
            got_one()

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
        self.ready.set()
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
        self.done.set()
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
        self.ready.set()
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
        self.done.set()
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


async def _publish(kind: str, url: str, tag: str, count: int, replicas: int) -> float:
    """Send ``count`` messages; returns the monotonic time of the first send."""
    model: Any = DurableChatR3 if replicas == 3 else DurableChat
    if kind.startswith("svcbus"):
        from svcbus import Bus

        channel = model.__channel__
        async with Bus(url) as bus:
            await bus.send(channel, make(-1, model))  # warm: the stream exists, connected
            next_seq = iter(range(count))
            started = time.monotonic()

            async def sender() -> None:
                # Each send returns once the server stored its message; WINDOW of
                # them run at once, like the raw publishers' pipelines.
                for seq in next_seq:
                    await bus.send(channel, make(seq, model))

            await asyncio.gather(*(sender() for _ in range(WINDOW)))
            await bus.layer.flush()
        return started
    if kind.endswith("nats"):
        import nats

        _, subject = _js_names(tag)
        nc = await nats.connect(_nats_servers(url))
        js = nc.jetstream(publish_async_max_pending=WINDOW)
        await nc.flush()
        started = time.monotonic()
        for seq in range(count):
            await js.publish_async(subject, make(seq, model).model_dump_json().encode())
        await js.publish_async_completed()
        await nc.close()
        return started
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
    started = time.monotonic()
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
    return started


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


def run_one(system: System, base: str, tag: str, count: int) -> float:
    """One round of one system: messages per second, first send to last ack."""
    prefix = f"bd{tag}"
    url = base
    if system.kind.startswith("svcbus"):
        sep = "&" if "?" in base else "?"
        url = f"{base}{sep}prefix={prefix}&capacity={count * 2}"
    ctx = mp.get_context("spawn")
    ready, done = ctx.Event(), ctx.Event()
    extra = 1 if system.kind.startswith("svcbus") else 0  # the warm-up message
    consumer = ctx.Process(
        target=consumer_main,
        args=(system.kind, url, tag, count + extra, system.replicas, ready, done),
    )
    consumer.start()
    ended = started = 0.0
    try:
        if not ready.wait(60):
            raise RuntimeError(f"{system.name}: consumer did not start")
        time.sleep(0.3)
        publish = _publish(system.kind, url, tag, count, system.replicas)
        profile_to = os.environ.get("BENCH_PROFILE")
        if profile_to:
            import cProfile

            with cProfile.Profile() as profile:
                started = asyncio.run(publish)
            profile.dump_stats(f"{profile_to}.{system.kind}.publisher")
        else:
            started = asyncio.run(publish)
        if not done.wait(300):
            raise RuntimeError(f"{system.name}: consumer did not finish")
        ended = asyncio.run(_all_acked(system.kind, base, tag, prefix, system.model.__channel__))
        consumer.join(30)
    finally:
        if consumer.is_alive():
            consumer.terminate()
            consumer.join()
    return count / (ended - started)


# main ----------------------------------------------------------------------------------------


def _ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}x"


def _rounds(
    systems: list[System], base: str, label: str, count: int, rounds: int
) -> dict[str, float]:
    rates: dict[str, list[float]] = {s.name: [] for s in systems}
    for r in range(rounds):
        for system in systems:
            tag = f"{label}{r}{system.kind.replace('-', '')}"
            rate = run_one(system, base, tag, count)
            rates[system.name].append(rate)
            print(
                f"... {label} round {r + 1}/{rounds} {system.name}: {rate:,.0f} msg/s",
                file=sys.stderr,
                flush=True,
            )
    return {name: statistics.median(values) for name, values in rates.items()}


def _table(title: str, medians: dict[str, float], ours: str, peers: list[str]) -> None:
    rows = []
    for name, rate in medians.items():
        rows.append(
            [
                name,
                f"{rate:,.0f}",
                *(_ratio(medians[ours], medians[peer]) if name == ours else "" for peer in peers),
            ]
        )
    columns = ["system", "msg/s", *(f"svcbus vs {peer.split(' (')[0]}" for peer in peers)]
    # The ratios go on svcbus's row; peers' rows show their own rate.
    print_table(title, columns, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="5,000 messages, 1 round")
    parser.add_argument("--count", type=int, help="messages per round (default 20,000)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 3)")
    parser.add_argument("--only", choices=["nats", "redis"], help="one layer's rows only")
    parser.add_argument("--no-cluster", action="store_true", help="skip the R3 rows")
    args = parser.parse_args()
    count = args.count or (5_000 if args.quick else 20_000)
    rounds = args.rounds or (1 if args.quick else 3)

    if args.only != "redis":
        svc, raw, fast = (
            "svcbus (Bus.send -> Runtime)",
            "raw nats-py (publish_async + fetch + ack)",
            "FastStream (JetStream PullSub, AckPolicy.ACK)",
        )
        with NatsServer() as server:
            print(f"nats-server {server.url} (pid {server.pid})", file=sys.stderr, flush=True)
            medians = _rounds(
                [
                    System(svc, "svcbus-nats"),
                    System(raw, "raw-nats"),
                    System(fast, "faststream-nats"),
                ],
                server.url,
                "n",
                count,
                rounds,
            )
        _table(
            f"NATS durable: {count:,} messages, send -> handler -> ack, separate processes "
            f"(median of {rounds} rounds)",
            medians,
            svc,
            [raw, fast],
        )
        if not args.no_cluster:
            svc3, raw3 = "svcbus R3 (3-node cluster)", "raw nats-py R3 (3-node cluster)"
            with NatsCluster() as cluster:
                medians3 = _rounds(
                    [System(svc3, "svcbus-nats", 3), System(raw3, "raw-nats", 3)],
                    cluster.urls,
                    "c",
                    count,
                    rounds,
                )
            _table(
                f"NATS durable, stream with 3 replicas on a 3-node cluster: {count:,} messages "
                f"(median of {rounds} rounds)",
                medians3,
                svc3,
                [raw3],
            )

    if args.only != "nats":
        svc, raw, fast = (
            "svcbus (Bus.send -> Runtime)",
            "raw redis-py (XADD pipelined + XREADGROUP + XACK)",
            "FastStream (stream consumer group, AckPolicy.ACK)",
        )
        with RedisServer() as rserver:
            print(f"redis-server {rserver.url} (pid {rserver.pid})", file=sys.stderr, flush=True)
            medians = _rounds(
                [
                    System(svc, "svcbus-redis"),
                    System(raw, "raw-redis"),
                    System(fast, "faststream-redis"),
                ],
                rserver.url,
                "r",
                count,
                rounds,
            )
        _table(
            f"Redis durable: {count:,} messages, send -> handler -> ack, separate processes "
            f"(median of {rounds} rounds)",
            medians,
            svc,
            [raw, fast],
        )
    print(f"load average at the end: {os.getloadavg()}", file=sys.stderr)


if __name__ == "__main__":
    main()
