"""NATS layer: svcbus vs raw nats-py vs FastStream, one server, one run.

    python bench/bench_nats.py [--quick] [--rounds N]

Starts its own ``nats-server -js`` on a free loopback port and measures:

1. **Flood**: N chat messages, publisher and consumer in separate processes,
   from the publisher's first send to the consumer's last message. Every
   consumer validates each message with the same pydantic contract
   (``BenchChat``). svcbus delivers live over core NATS to its listening
   receiver (a message nobody listens to would wait in the channel's JetStream
   stream); the "stream only" row (``?live=false``) sends every message through
   JetStream. Raw nats-py and FastStream use core NATS pub/sub (a message with no
   subscriber is gone), published by raw nats-py.
   **Backlog**: the same messages sent while nobody listens, until JetStream has
   stored them all, with live delivery on (one bounce, then a second straight to
   the stream, repeated) and off.
2. **Request/reply**: sequential requests to a responder process; per-request
   latency p50/p99. svcbus: ``Bus.request`` to a ``Runtime`` consumer (request on
   a named channel, delivered live; reply on a process channel); raw:
   ``nc.request`` to a subscription callback that validates and answers.
3. **Group fan-out**: ``group_send`` to M member channels spread over 4
   processes, one receiving task per member channel (as an edge has one per
   connection); time until every member has received it (each process validates
   the message once).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))

from common import BenchChat, chat, print_table, requests_to_responder  # noqa: E402
from group_procs import group_fanout  # noqa: E402
from servers import NatsServer  # noqa: E402

FLOOD_SUBJECT = "bench.flood"
JS_SUBJECT = "bench.js"


async def _raw_stream(js: Any, count: int) -> None:
    """The stream raw nats-py's JetStream row uses: memory storage, like svcbus's."""
    from nats.js import api

    await js.add_stream(
        name="BENCHJS",
        subjects=[JS_SUBJECT],
        storage=api.StorageType.MEMORY,
        retention=api.RetentionPolicy.INTEREST,
        max_msgs=count * 2,
    )


CHANNEL = "bench.chat"


def _payloads(count: int) -> list[bytes]:
    return [chat(i).model_dump_json().encode() for i in range(count)]


# 1. flood --------------------------------------------------------------------------------


def flood_consumer(kind: str, url: str, count: int, ready: Any, result: Any) -> None:
    """Consume ``count`` messages, validating each; report when the last one arrived."""
    asyncio.run(_flood_consumer(kind, url, count, ready, result))


async def _flood_consumer(kind: str, url: str, count: int, ready: Any, result: Any) -> None:
    done = asyncio.Event()
    received = 0

    def got_one() -> None:
        nonlocal received
        received += 1
        if received == count:
            done.set()

    if kind == "raw":
        import nats

        nc = await nats.connect(url)

        async def on_message(msg: Any) -> None:
            BenchChat.model_validate_json(msg.data)
            got_one()

        await nc.subscribe(FLOOD_SUBJECT, cb=on_message)
        await nc.flush()
        ready.set()
        await done.wait()
        result.value = time.monotonic()
        await nc.close()
    elif kind == "raw-js":
        import nats
        from nats.js import api

        nc = await nats.connect(url)
        js = nc.jetstream()
        await _raw_stream(js, count)
        sub = await js.pull_subscribe(
            JS_SUBJECT, durable="bench", config=api.ConsumerConfig(ack_policy=api.AckPolicy.NONE)
        )
        ready.set()
        while received < count:
            try:
                for msg in await sub.fetch(256, timeout=1):
                    BenchChat.model_validate_json(msg.data)
                    got_one()
            except nats.errors.TimeoutError:
                pass
        result.value = time.monotonic()
        await nc.close()
    elif kind == "faststream":
        from faststream.nats import NatsBroker

        broker = NatsBroker(url, logger=None)

        @broker.subscriber(FLOOD_SUBJECT)
        async def on_chat(message: BenchChat) -> None:
            got_one()

        await broker.start()
        ready.set()
        await done.wait()
        result.value = time.monotonic()
        await broker.stop()
    else:
        from svcbus import Runtime, Service, open_layer

        service = Service("bench-flood")

        @service.consumes(CHANNEL)
        async def on_chat(message: BenchChat) -> None:
            got_one()

        runtime = Runtime(service, open_layer(url))
        async with runtime.running():
            ready.set()
            await done.wait()
            result.value = time.monotonic()


async def _flood_publish(kind: str, url: str, count: int) -> float:
    """Publish ``count`` chat messages; returns the monotonic start time."""
    if kind == "svcbus":
        from svcbus import Bus

        messages = [chat(i) for i in range(count)]
        async with Bus(url) as bus:
            await bus.layer.connect()
            await bus.send(CHANNEL, chat(-1))  # warm: the stream exists
            started = time.monotonic()
            for message in messages:
                await bus.send(CHANNEL, message)
            await bus.layer.flush()
        return started
    import nats

    nc = await nats.connect(url)
    if kind == "raw-js":
        js = nc.jetstream()
        started = time.monotonic()
        for i in range(count):
            # Pipelined publishes with asynchronous acknowledgements: the fastest nats-py way.
            await js.publish_async(JS_SUBJECT, chat(i).model_dump_json().encode())
        await js.publish_async_completed()
        await nc.close()
        return started
    started = time.monotonic()
    for i in range(count):
        # Same work as Bus.send: validate and encode each message.
        await nc.publish(FLOOD_SUBJECT, chat(i).model_dump_json().encode())
    await nc.flush()
    await nc.close()
    return started


def flood(kind: str, url: str, count: int) -> float:
    """Messages per second, publish start to last message consumed, across two processes."""
    ctx = mp.get_context("spawn")
    ready, result = ctx.Event(), ctx.Value("d", 0.0)
    extra = 1 if kind == "svcbus" else 0  # the warm-up message
    consumer = ctx.Process(target=flood_consumer, args=(kind, url, count + extra, ready, result))
    consumer.start()
    try:
        if not ready.wait(60):
            raise RuntimeError(f"{kind} consumer did not start")
        time.sleep(0.5)
        started = asyncio.run(_flood_publish(kind, url, count))
        consumer.join(300)
        if consumer.exitcode != 0 or not result.value:
            raise RuntimeError(f"{kind} consumer failed (exit code {consumer.exitcode})")
    finally:
        if consumer.is_alive():
            consumer.terminate()
            consumer.join()
    return count / (result.value - started)


async def _backlog(url: str, count: int) -> float:
    """Messages per second sent into a channel nobody listens to, until all are stored."""
    from svcbus import Bus

    messages = [chat(i) for i in range(count)]
    async with Bus(url) as bus:
        await bus.send(CHANNEL, chat(-1))  # warm: the stream exists
        await bus.layer.flush()
        started = time.monotonic()
        for message in messages:
            await bus.send(CHANNEL, message)
        await bus.layer.flush()  # every message acknowledged by JetStream
        return count / (time.monotonic() - started)


# 2. request/reply ----------------------------------------------------------------------------


def responder(kind: str, url: str, ready: Any, stop: Any) -> None:
    asyncio.run(_responder(kind, url, ready, stop))


async def _responder(kind: str, url: str, ready: Any, stop: Any) -> None:
    async def until_stopped() -> None:
        while not stop.is_set():
            await asyncio.sleep(0.1)

    if kind == "raw":
        import nats

        nc = await nats.connect(url)

        async def on_request(msg: Any) -> None:
            BenchChat.model_validate_json(msg.data)
            await msg.respond(msg.data)

        await nc.subscribe("bench.echo", cb=on_request)
        await nc.flush()
        ready.set()
        await until_stopped()
        await nc.close()
    else:
        from svcbus import Runtime, Service, open_layer

        service = Service("bench-echo")

        @service.consumes(CHANNEL)
        async def echo(message: BenchChat) -> BenchChat:
            return message

        async with Runtime(service, open_layer(url)).running():
            ready.set()
            await until_stopped()


async def _requests(kind: str, url: str, count: int) -> list[float]:
    samples: list[float] = []
    message = chat(1)
    if kind == "raw":
        import nats

        nc = await nats.connect(url)
        for _ in range(count + 50):
            started = time.perf_counter()
            reply = await nc.request("bench.echo", message.model_dump_json().encode(), timeout=5)
            BenchChat.model_validate_json(reply.data)
            samples.append(time.perf_counter() - started)
        await nc.close()
    else:
        from svcbus import Bus

        async with Bus(url) as bus:
            for _ in range(count + 50):
                started = time.perf_counter()
                await bus.request(CHANNEL, message, reply_type=BenchChat)
                samples.append(time.perf_counter() - started)
    return samples[50:]  # the first ones warm connections, streams and caches


def request_reply(kind: str, url: str, count: int) -> tuple[float, float]:
    return requests_to_responder(responder, _requests, kind, url, count)


# main ----------------------------------------------------------------------------------------------


def _ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}x"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts (a quick look)")
    parser.add_argument("--rounds", type=int, default=5, help="flood rounds (median reported)")
    args = parser.parse_args()
    flood_n, requests_n = (10_000, 1_000) if args.quick else (100_000, 5_000)
    groups = [(100, 20), (1_000, 20)] if args.quick else [(1_000, 50), (10_000, 20)]

    with NatsServer() as server:
        base = server.url
        step: Callable[[str], None] = lambda what: print(f"... {what}", file=sys.stderr)  # noqa: E731

        # Rounds, each system once per round, and the median: a single run of a
        # second or so swings by 20% or more on a shared 2-core machine.
        kinds = {
            "raw nats-py": ("raw", lambda r: base),
            "raw nats-py JetStream": ("raw-js", lambda r: base),
            "svcbus": ("svcbus", lambda r: f"{base}?prefix=bflood{r}&capacity={flood_n * 2}"),
            "svcbus, stream only": (
                "svcbus",
                lambda r: f"{base}?prefix=bstream{r}&capacity={flood_n * 2}&live=false",
            ),
            "FastStream": ("faststream", lambda r: base),
        }
        rates: dict[str, list[float]] = {name: [] for name in kinds}
        for r in range(args.rounds):
            for name, (kind, url) in kinds.items():
                step(f"flood {flood_n:,}, round {r + 1}/{args.rounds}: {name}")
                rates[name].append(flood(kind, url(r), flood_n))
                step(f"    {rates[name][-1]:,.0f} msg/s")
        raw, raw_js, ours, stream_only, fast = (statistics.median(rates[name]) for name in kinds)
        print_table(
            f"Flood: {flood_n:,} chat messages, publisher and consumer in separate processes "
            f"(median of {args.rounds} rounds)",
            ["system", "msg/s", "vs raw nats-py", "svcbus vs it"],
            [
                [
                    "raw nats-py (core pub/sub, callback + validate)",
                    f"{raw:,.0f}",
                    "1.00x",
                    _ratio(ours, raw),
                ],
                [
                    "raw nats-py JetStream (publish_async + pull fetch + validate)",
                    f"{raw_js:,.0f}",
                    _ratio(raw_js, raw),
                    _ratio(ours, raw_js),
                ],
                [
                    "svcbus (live to the listening Runtime)",
                    f"{ours:,.0f}",
                    _ratio(ours, raw),
                    "1.00x",
                ],
                [
                    "svcbus, stream only (?live=false: JetStream + pull, Runtime)",
                    f"{stream_only:,.0f}",
                    _ratio(stream_only, raw),
                    _ratio(ours, stream_only),
                ],
                [
                    "FastStream NATS subscriber",
                    f"{fast:,.0f}",
                    _ratio(fast, raw),
                    _ratio(ours, fast),
                ],
            ],
        )

        backlog_n = flood_n // 2
        step(f"backlog {backlog_n:,}: svcbus, live and stream only")
        backlog_rates: dict[str, list[float]] = {"true": [], "false": []}
        for r in range(3):
            for live, rates_ in backlog_rates.items():
                url = f"{base}?prefix=bbacklog{live}{r}&capacity={backlog_n * 2}&live={live}"
                rates_.append(asyncio.run(_backlog(url, backlog_n)))
        backlog = {live: statistics.median(rates_) for live, rates_ in backlog_rates.items()}
        print_table(
            f"Backlog: {backlog_n:,} sends with no consumer listening, until JetStream stored "
            "them all (median of 3)",
            ["svcbus", "msg/s", "vs stream only"],
            [
                [
                    "live (the default: a bounce, then straight to the stream)",
                    f"{backlog['true']:,.0f}",
                    _ratio(backlog["true"], backlog["false"]),
                ],
                ["stream only (?live=false)", f"{backlog['false']:,.0f}", "1.00x"],
            ],
        )

        step(f"request/reply {requests_n:,}: raw nats-py")
        raw_p50, raw_p99 = request_reply("raw", base, requests_n)
        step(f"request/reply {requests_n:,}: svcbus")
        our_p50, our_p99 = request_reply("svcbus", f"{base}?prefix=breq", requests_n)
        print_table(
            f"Request/reply: {requests_n:,} sequential requests, responder in another process",
            ["system", "p50 ms", "p99 ms", "p50 vs raw"],
            [
                ["raw nats-py request", f"{raw_p50:.3f}", f"{raw_p99:.3f}", "1.00x"],
                [
                    "svcbus Bus.request -> Runtime",
                    f"{our_p50:.3f}",
                    f"{our_p99:.3f}",
                    _ratio(our_p50, raw_p50),
                ],
            ],
        )

        rows = []
        for members, rounds in groups:
            step(f"group_send to {members:,} members over 4 processes, {rounds} rounds")
            p50, p99 = group_fanout(f"{base}?prefix=bgroup", members, rounds)
            rows.append([f"{members:,}", "4", str(rounds), f"{p50:.1f}", f"{p99:.1f}"])
        print_table(
            "Group fan-out: one group_send until every member channel has received it",
            ["members", "processes", "sends", "p50 ms", "p99 ms"],
            rows,
        )


if __name__ == "__main__":
    main()
