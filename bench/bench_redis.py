"""Redis layer: svcbus vs channels_redis (core and pub/sub) vs raw redis-py, same run.

    python bench/bench_redis.py [--quick] [--only SECTION,...] [--url redis://...]
                                [--runs N] [--before GIT-REF]

Starts its own redis-server on a free loopback port (tests/servers.py) and runs,
with the same ~150-byte chat message validated by one pydantic contract:

1. ``throughput``: send -> typed receive on one named channel (20,000 messages);
2. ``groups``: group_send to 100 and 1,000 member channels spread over 4 layers
   ("processes") in this process, each member a loop that receives again at once:
   time until every member has the message, p50/p99 over several rounds;
   ``user``: the same fan-out measured the way a user does: 1,000 channels of one
   receiving Bus (``new_channel`` + ``group_add``), a ``receive`` pending on each,
   one ``group_send``, time until every call returned a validated message, for
   svcbus, channels_redis core and its pub/sub layer, round by round in turn;
   ``processes``: 1,000 and 10,000 members over 4 real processes (group_procs.py);
3. ``request``: request/reply latency, p50/p99, one request at a time, in this
   process; ``request-processes``: svcbus and raw redis-py lists (RPUSH, BLPOP)
   with the responder in another process, alternating runs.
   ``--runs N`` repeats both request sections (alternating); ``--before REF`` adds
   svcbus rows running the code at git ``REF`` (exported to a temporary directory,
   imported through a shim as bench_durable.py does) and then runs both svcbus
   rows in child processes.

Apart from the ``processes`` sections everything runs in one process and event
loop (the peers too), so the numbers compare client-side costs plus Redis round
trips; redis-server has the other core.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))

import redis.asyncio as redis_client  # noqa: E402 - after the sys.path lines
from common import (  # noqa: E402 - after the sys.path lines
    BenchChat,
    Timer,
    chat,
    chat_dict,
    percentiles,
    print_table,
    requests_to_responder,
    typed_throughput,
)
from group_procs import group_fanout  # noqa: E402 - after the sys.path lines
from servers import RedisServer  # noqa: E402 - after the sys.path lines

from svcbus import Bus, Runtime, Service, open_layer  # noqa: E402 - after the sys.path lines

Row = tuple[str, ...]


# --- 1. throughput ------------------------------------------------------------------


async def svcbus_throughput(url: str, count: int, concurrency: int) -> float:
    """Bus.send(BenchChat) in a loop -> Runtime consumer typed as BenchChat."""
    return await typed_throughput(lambda: open_layer(url, capacity=count + 1), count, concurrency)


async def channels_throughput(layer: Any, count: int, settle: float = 0.0) -> float:
    """channels_redis: send dicts, receive dicts, validate each with the same contract."""
    messages = [{"type": "chat.message", **chat_dict(i)} for i in range(count)]

    async def consume() -> None:
        for _ in range(count):
            message = await layer.receive("bench.chat")
            BenchChat.model_validate(message)

    task = asyncio.ensure_future(consume())
    await asyncio.sleep(settle)  # the pub/sub layer drops what is sent before it subscribes
    with Timer() as timer:
        for message in messages:
            await layer.send("bench.chat", message)
        await task
    return count / timer.seconds


async def raw_throughput(url: str, count: int, pipelined: bool) -> float:
    """redis-py alone: RPUSH JSON, pop with BLPOP then LPOP 32, model_validate_json."""
    client = redis_client.Redis.from_url(url)
    await client.delete("raw.chat")
    payloads = [chat(i).model_dump_json().encode() for i in range(count)]

    async def consume() -> None:
        left = count
        while left:
            _, first = await client.blpop(["raw.chat"])
            batch = [first, *(await client.lpop("raw.chat", 31) or [])]
            for item in batch:
                BenchChat.model_validate_json(item)
            left -= len(batch)

    task = asyncio.ensure_future(consume())
    with Timer() as timer:
        if pipelined:
            for start in range(0, count, 100):
                pipe = client.pipeline(transaction=False)
                for payload in payloads[start : start + 100]:
                    pipe.rpush("raw.chat", payload)
                await pipe.execute()
        else:
            for payload in payloads:
                await client.rpush("raw.chat", payload)
        await task
    await client.aclose()
    return count / timer.seconds


# --- 2. group fan-out ---------------------------------------------------------------


async def fan_out(
    members: list[tuple[Any, str]],
    send: Callable[[int], Awaitable[None]],
    receive: Callable[[Any, str], Awaitable[Any]],
    rounds: int,
) -> tuple[float, float]:
    """Time group_send until every member has received it, ``rounds`` times."""
    arrived = 0
    all_in = asyncio.Event()

    async def member_loop(layer: Any, channel: str) -> None:
        nonlocal arrived
        while True:
            await receive(layer, channel)
            arrived += 1
            if arrived == len(members):
                all_in.set()

    tasks = [asyncio.ensure_future(member_loop(layer, ch)) for layer, ch in members]
    await asyncio.sleep(0.3)
    samples = []
    try:
        for i in range(rounds):
            arrived = 0
            all_in.clear()
            started = time.perf_counter()
            await send(i)
            await asyncio.wait_for(all_in.wait(), 30)
            samples.append(time.perf_counter() - started)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return percentiles(samples)


async def svcbus_fan_out(url: str, size: int, rounds: int) -> tuple[float, float]:
    layers = [open_layer(url, capacity=100) for _ in range(5)]
    for layer in layers:
        await layer.connect()
    sender, owners = layers[0], layers[1:]
    group = f"bench.room{size}"
    members = []
    for i in range(size):
        owner = owners[i % len(owners)]
        channel = await owner.new_channel("ws")
        await owner.group_add(group, channel)
        members.append((owner, channel))

    async with Bus(sender) as bus:

        async def send(i: int) -> None:
            await bus.group_send(group, chat(i))

        async def receive(layer: Any, channel: str) -> Any:
            return bus.decode(channel, await layer.receive(channel), BenchChat)

        result = await fan_out(members, send, receive, rounds)
    for layer in owners:
        await layer.close()
    return result


async def channels_fan_out(make: Callable[[], Any], size: int, rounds: int) -> tuple[float, float]:
    layers = [make() for _ in range(5)]
    sender, owners = layers[0], layers[1:]
    group = f"bench.room{size}"
    members = []
    for i in range(size):
        owner = owners[i % len(owners)]
        channel = await owner.new_channel()
        await owner.group_add(group, channel)  # the pub/sub layer allows only this
        members.append((owner, channel))

    async def send(i: int) -> None:
        await sender.group_send(group, {"type": "chat.message", **chat_dict(i)})

    async def receive(layer: Any, channel: str) -> Any:
        return BenchChat.model_validate(await layer.receive(channel))

    result = await fan_out(members, send, receive, rounds)
    for layer in layers:
        await _close_channels_layer(layer)
    return result


async def pending_fan_out(
    systems: dict[
        str, tuple[list[str], Callable[[str], Awaitable[Any]], Callable[[int], Awaitable[None]]]
    ],
    rounds: int,
) -> dict[str, tuple[float, float]]:
    """The user's measurement: a receive call pending on every member, one group_send.

    Each round starts one ``receive`` per member channel (all on one receiving
    layer), lets them all wait, sends once and times until every call returned a
    validated message. Systems take turns round by round (one warm-up round each
    is not counted), so they share the machine's moods.
    """
    samples: dict[str, list[float]] = {name: [] for name in systems}
    for i in range(rounds + 1):
        for name, (channels, receive, send) in systems.items():
            tasks = [asyncio.ensure_future(receive(channel)) for channel in channels]
            await asyncio.sleep(0.05)  # every receive is waiting
            started = time.perf_counter()
            await send(i)
            await asyncio.wait_for(asyncio.gather(*tasks), 30)
            if i:
                samples[name].append(time.perf_counter() - started)
    return {name: percentiles(values) for name, values in samples.items()}


async def user_way_fan_out(url: str, size: int, rounds: int) -> dict[str, tuple[float, float]]:
    """svcbus, channels_redis core and its pub/sub layer, each: one receiving layer, one sender."""
    receiver, sender = Bus(open_layer(url, capacity=100)), Bus(open_layer(url, capacity=100))
    await receiver.__aenter__()
    await sender.__aenter__()
    peers = {
        "core": (core_layer(url), core_layer(url)),
        "pubsub": (pubsub_layer(url), pubsub_layer(url)),
    }
    systems: dict[str, Any] = {}
    try:
        channels = [await receiver.new_channel("ws") for _ in range(size)]
        for channel in channels:
            await receiver.group_add("bench.user", channel)

        async def svcbus_receive(channel: str) -> Any:
            return await receiver.receive(channel, BenchChat)

        async def svcbus_send(i: int) -> None:
            await sender.group_send("bench.user", chat(i))

        systems["svcbus (Bus.receive)"] = (channels, svcbus_receive, svcbus_send)
        for kind, (rx, tx) in peers.items():
            systems[f"channels_redis {CHANNELS_NAMES[kind]}"] = await _channels_members(
                rx, tx, size
            )
        return await pending_fan_out(systems, rounds)
    finally:
        await receiver.__aexit__(None, None, None)
        await sender.__aexit__(None, None, None)
        for rx, tx in peers.values():
            await _close_channels_layer(rx)
            await _close_channels_layer(tx)


CHANNELS_NAMES = {"core": "RedisChannelLayer", "pubsub": "RedisPubSubChannelLayer"}


async def _channels_members(rx: Any, tx: Any, size: int) -> Any:
    channels = [await rx.new_channel() for _ in range(size)]
    for channel in channels:
        await rx.group_add("bench.user", channel)

    async def receive(channel: str) -> Any:
        return BenchChat.model_validate(await rx.receive(channel))

    async def send(i: int) -> None:
        await tx.group_send("bench.user", {"type": "chat.message", **chat_dict(i)})

    return channels, receive, send


# --- 3. request/reply ---------------------------------------------------------------


async def svcbus_request(url: str, count: int) -> tuple[float, float]:
    service = Service("echo")

    @service.consumes("bench.chat")
    async def echo(message: BenchChat) -> BenchChat:
        return message

    samples = []
    async with (
        Runtime(service, open_layer(url), concurrency=1).running(),
        Bus(open_layer(url)) as bus,
    ):
        await bus.request("bench.chat", chat(0), reply_type=BenchChat)  # warm up
        for i in range(count):
            started = time.perf_counter()
            await bus.request("bench.chat", chat(i), reply_type=BenchChat)
            samples.append(time.perf_counter() - started)
    return percentiles(samples)


async def channels_request(
    server_layer: Any, client_layer: Any, count: int, settle: float = 0.0
) -> tuple[float, float]:
    async def serve() -> None:
        while True:
            message = await server_layer.receive("bench.echo")
            body = BenchChat.model_validate(message["body"])
            await server_layer.send(
                message["reply_channel"], {"type": "reply", "body": body.model_dump()}
            )

    server = asyncio.ensure_future(serve())
    inbox = await client_layer.new_channel()
    await asyncio.sleep(settle)
    samples = []
    try:
        for i in range(count + 1):
            started = time.perf_counter()
            await client_layer.send(
                "bench.echo", {"type": "request", "reply_channel": inbox, "body": chat_dict(i)}
            )
            BenchChat.model_validate((await client_layer.receive(inbox))["body"])
            if i:  # the first one warms up
                samples.append(time.perf_counter() - started)
    finally:
        server.cancel()
        await asyncio.gather(server, return_exceptions=True)
    return percentiles(samples)


async def raw_request(url: str, count: int) -> tuple[float, float]:
    """redis-py alone: RPUSH the request, the server BLPOPs it and RPUSHes the reply."""
    client = redis_client.Redis.from_url(url)
    server_client = redis_client.Redis.from_url(url)

    async def serve() -> None:
        while True:
            _, data = await server_client.blpop(["raw.echo"])
            body = BenchChat.model_validate_json(data)
            await server_client.rpush("raw.reply", body.model_dump_json())

    server = asyncio.ensure_future(serve())
    samples = []
    try:
        for i in range(count + 1):
            started = time.perf_counter()
            await client.rpush("raw.echo", chat(i).model_dump_json())
            _, data = await client.blpop(["raw.reply"])
            BenchChat.model_validate_json(data)
            if i:
                samples.append(time.perf_counter() - started)
    finally:
        server.cancel()
        await asyncio.gather(server, return_exceptions=True)
        await client.aclose()
        await server_client.aclose()
    return percentiles(samples)


# --- 3b. request/reply with the responder in another process ----------------------------


def responder(kind: str, url: str, ready: Any, stop: Any) -> None:
    asyncio.run(_responder(kind, url, ready, stop))


async def _responder(kind: str, url: str, ready: Any, stop: Any) -> None:
    if kind == "raw":
        client = redis_client.Redis.from_url(url)
        await client.ping()
        ready.set()
        while not stop.is_set():
            popped = await client.blpop(["raw.echo"], timeout=0.2)
            if popped:
                body = BenchChat.model_validate_json(popped[1])
                await client.rpush("raw.reply", body.model_dump_json())
        await client.aclose()
        return
    service = Service("echo")

    @service.consumes("bench.chat")
    async def echo(message: BenchChat) -> BenchChat:
        return message

    async with Runtime(service, open_layer(url), concurrency=1).running():
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.1)


async def _requests(kind: str, url: str, count: int) -> list[float]:
    samples: list[float] = []
    if kind == "raw":
        client = redis_client.Redis.from_url(url)
        for i in range(count + 50):
            started = time.perf_counter()
            await client.rpush("raw.echo", chat(i).model_dump_json())
            _, data = await client.blpop(["raw.reply"])
            BenchChat.model_validate_json(data)
            samples.append(time.perf_counter() - started)
        await client.aclose()
    else:
        async with Bus(open_layer(url)) as bus:
            for i in range(count + 50):
                started = time.perf_counter()
                await bus.request("bench.chat", chat(i), reply_type=BenchChat)
                samples.append(time.perf_counter() - started)
    return samples[50:]  # the first ones warm connections and caches


def request_reply_procs(kind: str, url: str, count: int) -> tuple[float, float]:
    """p50/p99 of one request at a time to a responder process (svcbus or raw lists)."""
    return requests_to_responder(responder, _requests, kind, url, count)


# --- helpers ------------------------------------------------------------------------


def core_layer(url: str, capacity: int = 100) -> Any:
    from channels_redis.core import RedisChannelLayer

    return RedisChannelLayer(hosts=[url], capacity=capacity)


def pubsub_layer(url: str) -> Any:
    from channels_redis.pubsub import RedisPubSubChannelLayer

    return RedisPubSubChannelLayer(hosts=[url])


async def _close_channels_layer(layer: Any) -> None:
    if hasattr(layer, "close_pools"):
        await layer.close_pools()
    else:
        await layer.flush()


async def _fresh(url: str) -> None:
    client = redis_client.Redis.from_url(url)
    await client.flushdb()
    await client.aclose()


async def throughput_section(url: str, quick: bool) -> None:
    count = 2_000 if quick else 20_000
    core_count = 1_000 if quick else count  # channels_redis core runs ~1k msg/s
    results: dict[str, float] = {}

    async def measure(name: str, job: Callable[[], Awaitable[float]]) -> None:
        await _fresh(url)
        results[name] = await job()
        print(f"  {name}: {results[name]:,.0f} msg/s", flush=True)

    print("1. send -> typed receive throughput", flush=True)
    await measure("svcbus, Runtime concurrency 1", lambda: svcbus_throughput(url, count, 1))
    await measure("svcbus, Runtime concurrency 10", lambda: svcbus_throughput(url, count, 10))

    async def core() -> float:
        layer = core_layer(url, capacity=core_count + 1)
        try:
            return await channels_throughput(layer, core_count)
        finally:
            await _close_channels_layer(layer)

    async def pubsub() -> float:
        layer = pubsub_layer(url)
        try:
            return await channels_throughput(layer, count, settle=0.3)
        finally:
            await _close_channels_layer(layer)

    await measure("channels_redis RedisChannelLayer", core)
    await measure("channels_redis RedisPubSubChannelLayer", pubsub)
    await measure(
        "raw redis-py, RPUSH each + BLPOP/LPOP 32", lambda: raw_throughput(url, count, False)
    )
    await measure(
        "raw redis-py, pipelined RPUSH x100 + BLPOP/LPOP 32",
        lambda: raw_throughput(url, count, True),
    )
    core_rate = results["channels_redis RedisChannelLayer"]
    pubsub_rate = results["channels_redis RedisPubSubChannelLayer"]
    throughput_rows: list[Row] = [
        (name, f"{rate:,.0f}", f"{rate / core_rate:.1f}x", f"{rate / pubsub_rate:.1f}x")
        for name, rate in results.items()
    ]

    print_table(
        f"1. send -> typed receive, one named channel ({count:,} messages; "
        f"channels_redis core {core_count:,})",
        ["path", "msg/s", "vs channels core", "vs channels pub/sub"],
        throughput_rows,
    )


async def groups_section(url: str, quick: bool) -> None:
    rounds = {100: 10 if quick else 30, 1000: 5 if quick else 15}
    print("2. group_send fan-out", flush=True)
    fan_rows: list[Row] = []
    for size in (100, 1000):
        n = rounds[size]
        measured = {}
        await _fresh(url)
        measured["svcbus"] = await svcbus_fan_out(url, size, n)
        await _fresh(url)
        measured["channels_redis RedisChannelLayer"] = await channels_fan_out(
            lambda: core_layer(url), size, n
        )
        await _fresh(url)
        measured["channels_redis RedisPubSubChannelLayer"] = await channels_fan_out(
            lambda: pubsub_layer(url), size, n
        )
        core_p50 = measured["channels_redis RedisChannelLayer"][0]
        for name, (p50, p99) in measured.items():
            fan_rows.append(
                (f"{name}, {size} members", f"{p50:.2f}", f"{p99:.2f}", f"{core_p50 / p50:.1f}x")
            )
            print(f"  {fan_rows[-1]}", flush=True)

    print_table(
        "2. group_send until every member has it (members over 4 layers), ms",
        ["path", "p50", "p99", "p50 vs channels core"],
        fan_rows,
    )


async def user_section(url: str, quick: bool) -> None:
    size, rounds = (1000, 5) if quick else (1000, 10)
    print(f"2b. group_send to {size:,} pending receives on one Bus", flush=True)
    await _fresh(url)
    measured = await user_way_fan_out(url, size, rounds)
    core_p50 = measured["channels_redis RedisChannelLayer"][0]
    pubsub_p50 = measured["channels_redis RedisPubSubChannelLayer"][0]
    print_table(
        f"2b. group_send to {size:,} members of one receiving layer, a receive pending on "
        f"each, until all returned a validated message ({rounds} rounds, interleaved), ms",
        ["path", "p50", "p99", "p50 vs channels core", "p50 vs channels pub/sub"],
        [
            (name, f"{p50:.2f}", f"{p99:.2f}", f"{core_p50 / p50:.1f}x", f"{pubsub_p50 / p50:.1f}x")
            for name, (p50, p99) in measured.items()
        ],
    )


def processes_section(url: str, quick: bool) -> None:
    sizes = [(100, 20), (1_000, 20)] if quick else [(1_000, 50), (10_000, 20)]
    rows: list[Row] = []
    for members, rounds in sizes:
        print(
            f"2c. group_send to {members:,} members over 4 processes, {rounds} rounds", flush=True
        )
        asyncio.run(_fresh(url))
        p50, p99 = group_fanout(url, members, rounds)
        rows.append((f"{members:,}", "4", str(rounds), f"{p50:.1f}", f"{p99:.1f}"))
    print_table(
        "2c. group_send until every member channel, over 4 processes, has it, ms",
        ["members", "processes", "sends", "p50", "p99"],
        rows,
    )


def _svcbus_in_child(section: str, url: str, count: int, shim: str) -> tuple[float, float]:
    """p50/p99 of svcbus's rows of ``section`` measured in a child process.

    With ``shim`` (``--before``) the child, and the responder it starts, import the
    svcbus exported there instead of this checkout's.
    """
    env = dict(os.environ)
    if shim:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [shim, env.get("PYTHONPATH")]))
    command = [sys.executable, os.path.abspath(__file__), "--url", url, "--worker", section]
    out = subprocess.run(
        [*command, "--count", str(count)], env=env, check=True, capture_output=True, text=True
    ).stdout
    p50, p99 = out.split()[-2:]
    return float(p50), float(p99)


def worker(section: str, url: str, count: int) -> None:
    """``--worker``: one svcbus row of ``section``; prints its p50 and p99 (ms)."""
    asyncio.run(_fresh(url))
    if section == "request":
        p50, p99 = asyncio.run(svcbus_request(url, count))
    else:
        p50, p99 = request_reply_procs("svcbus", url, count)
    print(f"{p50} {p99}")


def _median_rows(p50s: dict[str, list[float]], p99s: dict[str, list[float]], raw: str) -> list[Row]:
    base = statistics.median(p50s[raw])
    return [
        (
            name,
            f"{statistics.median(p50s[name]):.3f}",
            f"{statistics.median(p99s[name]):.3f}",
            f"{statistics.median(p50s[name]) / base:.2f}x",
        )
        for name in p50s
    ]


def _per_run_table(title: str, p50s: dict[str, list[float]], raw: str) -> None:
    runs = len(p50s[raw])
    if runs < 2:
        return
    p50s = {name: p50s[name] for name in p50s if name.startswith("svcbus") or name == raw}
    rows: list[Row] = []
    for run in range(runs):
        rows.append(
            (
                str(run + 1),
                *(f"{p50s[name][run]:.3f}" for name in p50s),
                *(f"{p50s[name][run] / p50s[raw][run]:.2f}x" for name in p50s if name != raw),
            )
        )
    short = {name: name.split(" (")[0] for name in p50s}
    columns = ["run", *(short[n] for n in p50s), *(f"{short[n]} vs raw" for n in p50s if n != raw)]
    print_table(title, columns, rows)


async def request_section(url: str, quick: bool, runs: int, before: tuple[str, str] | None) -> None:
    requests = 200 if quick else 1_000
    raw = "raw redis-py RPUSH + BLPOP"
    svcbus = "svcbus Bus.request -> Runtime"
    p50s: dict[str, list[float]] = {svcbus: []}
    if before is not None:
        p50s[f"svcbus at {before[0]}"] = []
    p50s.update(
        {"channels_redis RedisChannelLayer": [], "channels_redis RedisPubSubChannelLayer": []}
    )
    p50s[raw] = []
    p99s: dict[str, list[float]] = {name: [] for name in p50s}

    def note(name: str, result: tuple[float, float]) -> None:
        p50s[name].append(result[0])
        p99s[name].append(result[1])

    for run in range(runs):
        print(f"3. request/reply, run {run + 1}/{runs}", flush=True)
        await _fresh(url)
        if before is None:
            note(svcbus, await svcbus_request(url, requests))
        else:
            # Both svcbus rows in a child process of their own, alternating.
            note(svcbus, await asyncio.to_thread(_svcbus_in_child, "request", url, requests, ""))
            note(
                f"svcbus at {before[0]}",
                await asyncio.to_thread(_svcbus_in_child, "request", url, requests, before[1]),
            )
        await _fresh(url)
        server, client = core_layer(url), core_layer(url)
        note("channels_redis RedisChannelLayer", await channels_request(server, client, requests))
        await _close_channels_layer(server)
        await _close_channels_layer(client)
        await _fresh(url)
        server, client = pubsub_layer(url), pubsub_layer(url)
        note(
            "channels_redis RedisPubSubChannelLayer",
            await channels_request(server, client, requests, settle=0.3),
        )
        await _close_channels_layer(server)
        await _close_channels_layer(client)
        await _fresh(url)
        note(raw, await raw_request(url, requests))
    median = f", median of {runs} alternating runs" if runs > 1 else ""
    print_table(
        f"3. request/reply, one at a time ({requests:,} requests{median}), ms",
        ["path", "p50", "p99", "p50 vs raw"],
        _median_rows(p50s, p99s, raw),
    )
    _per_run_table("3. request/reply p50 of each run, ms", p50s, raw)


def request_procs_section(
    url: str, quick: bool, runs: int | None, before: tuple[str, str] | None
) -> None:
    count, default_runs = (300, 1) if quick else (2_000, 3)
    runs = runs or default_runs
    names = {
        "raw": "raw redis-py RPUSH + BLPOP (responder process BLPOPs, RPUSHes)",
        "svcbus": "svcbus Bus.request -> Runtime in another process",
    }
    if before is not None:
        names["before"] = f"svcbus at {before[0]} (both processes)"
    p50s: dict[str, list[float]] = {names[kind]: [] for kind in names}
    p99s: dict[str, list[float]] = {names[kind]: [] for kind in names}
    for run in range(runs):
        for kind, name in names.items():
            print(f"3b. request/reply to another process, {kind}, run {run + 1}/{runs}", flush=True)
            if kind == "before" and before is not None:
                p50, p99 = _svcbus_in_child("request-processes", url, count, before[1])
            elif kind == "svcbus" and before is not None:
                p50, p99 = _svcbus_in_child("request-processes", url, count, "")
            else:
                asyncio.run(_fresh(url))
                p50, p99 = request_reply_procs(kind, url, count)
            p50s[name].append(p50)
            p99s[name].append(p99)
    print_table(
        f"3b. request/reply, responder in another process ({count:,} requests, median of "
        f"{runs} alternating runs), ms",
        ["path", "p50", "p99", "p50 vs raw"],
        _median_rows(p50s, p99s, names["raw"]),
    )
    _per_run_table("3b. request/reply to another process, p50 of each run, ms", p50s, names["raw"])


SECTIONS = ("throughput", "groups", "user", "processes", "request", "request-processes")


def run_all(
    url: str, quick: bool, sections: list[str], runs: int | None, before: tuple[str, str] | None
) -> None:
    for section in sections:
        if section == "throughput":
            asyncio.run(throughput_section(url, quick))
        elif section == "groups":
            asyncio.run(groups_section(url, quick))
        elif section == "user":
            asyncio.run(user_section(url, quick))
        elif section == "processes":
            processes_section(url, quick)
        elif section == "request":
            asyncio.run(request_section(url, quick, runs or 1, before))
        elif section == "request-processes":
            request_procs_section(url, quick, runs, before)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer messages and rounds")
    parser.add_argument("--url", help="use this Redis instead of starting one (it is FLUSHDB'd)")
    parser.add_argument(
        "--only",
        default=",".join(SECTIONS),
        help=f"comma-separated sections to run (default all: {','.join(SECTIONS)})",
    )
    parser.add_argument(
        "--runs", type=int, help="alternating runs of the request sections (default 1; 3b: 3)"
    )
    parser.add_argument(
        "--before",
        metavar="REF",
        help="request sections: add svcbus rows running the code at git REF, alternating",
    )
    parser.add_argument(
        "--worker", choices=("request", "request-processes"), help=argparse.SUPPRESS
    )
    parser.add_argument("--count", type=int, default=1_000, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.url, args.count)
        return
    sections = [name for name in args.only.split(",") if name]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s) {', '.join(sorted(unknown))}; choose from {SECTIONS}")
    with contextlib.ExitStack() as stack:
        before = None
        if args.before:
            from bench_durable import before_shim

            tmp = stack.enter_context(tempfile.TemporaryDirectory())
            before = (args.before, before_shim(args.before, tmp))
        if args.url:
            run_all(args.url, args.quick, sections, args.runs, before)
            return
        server = stack.enter_context(RedisServer())
        print(f"redis-server {server.url} (pid {server.pid})", flush=True)
        run_all(server.url, args.quick, sections, args.runs, before)


if __name__ == "__main__":
    main()
