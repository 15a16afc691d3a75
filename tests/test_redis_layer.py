"""The Redis layer beyond the conformance suite: URLs, outages, bounds, sharding, Sentinel.

Every test runs against real redis-server processes (the ``redis_url`` and
``redis_server`` fixtures, or servers started here); nothing is mocked.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from servers import RedisServer, find_redis_server, free_port
from waiter_scenario import wake_up_of_a_cancelled_receive_goes_on

pytest.importorskip("redis")

import redis.asyncio as redis_client

from svcbus import (
    Bus,
    ChannelFull,
    ConfigurationError,
    Contract,
    LayerError,
    MessagesLost,
    Runtime,
    Service,
)
from svcbus.layer import LayerOptions, open_layer
from svcbus.layers.redis import RedisLayer, jump_hash, parse_url, shard_of

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


@contextlib.asynccontextmanager
async def opened(url: str, **options):
    layer = open_layer(url, **options)
    await layer.connect()
    try:
        yield layer
    finally:
        await layer.close()


@contextlib.asynccontextmanager
async def raw(url: str):
    client = redis_client.Redis.from_url(url)
    try:
        yield client
    finally:
        await client.aclose()


async def eventually(check, seconds: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not reached within {seconds}s")
        await anyio.sleep(0.02)


# --- URLs ---------------------------------------------------------------------------


def test_plain_url():
    layer = open_layer("redis://:secret@db.example:6380/3?prefix=app&capacity=7")
    assert isinstance(layer, RedisLayer)
    assert layer.servers == ["db.example:6380"]
    assert layer.prefix == "app"
    assert layer.options.capacity == 7
    pool = layer._shards[0].spec.make_pool()
    kwargs = pool.connection_kwargs
    assert (kwargs["host"], kwargs["port"], kwargs["db"], kwargs["password"]) == (
        "db.example",
        6380,
        3,
        "secret",
    )


def test_defaults():
    layer = open_layer("redis://")
    assert layer.servers == ["localhost:6379"]
    assert layer.prefix == "svcbus"
    assert layer.key_of("chat.receive") == ("svcbus:c:chat.receive", 0)
    assert layer.key_of("edge.ab12!c3") == ("svcbus:p:edge.ab12", 0)


def test_tls_url_passes_ssl_options():
    layer = open_layer(
        "rediss://h:6380/0?ssl_ca_certs=/etc/ca.pem&ssl_cert_reqs=required&ssl_check_hostname=false"
    )
    pool = layer._shards[0].spec.make_pool()
    assert pool.connection_class.__name__ == "SSLConnection"
    assert pool.connection_kwargs["ssl_ca_certs"] == "/etc/ca.pem"


def test_ssl_options_need_rediss():
    with pytest.raises(ConfigurationError, match="rediss://"):
        open_layer("redis://h/0?ssl_ca_certs=/x")


def test_sentinel_url():
    layer = open_layer("redis+sentinel://s1:26379,s2/mymaster?db=2&sentinel_password=pw")
    assert len(layer.servers) == 1
    assert "s1:26379,s2:26379" in layer.servers[0] and "mymaster" in layer.servers[0]
    pool = layer._shards[0].spec.make_pool()
    assert pool.service_name == "mymaster"
    assert pool.connection_kwargs["db"] == 2


def test_sentinel_url_needs_a_service_name():
    with pytest.raises(ConfigurationError, match="service name"):
        open_layer("redis+sentinel://s1:26379")


def test_sharded_url():
    layer = open_layer("redis://h1:6379,h2:6380,[::1]:6381/1")
    assert layer.servers == ["h1:6379", "h2:6380", "[::1]:6381"]


def test_unknown_parameters_are_named():
    with pytest.raises(ConfigurationError, match="bogus, colour"):
        open_layer("redis://h/0?bogus=1&colour=red")
    with pytest.raises(ConfigurationError, match="sentinel_password"):
        open_layer("redis://h/0?sentinel_password=x")  # only for redis+sentinel://


@pytest.mark.parametrize(
    "url",
    ["redis://h/notanumber", "redis://h:port/0", "redis://h/0?connect_timeout=soon"],
)
def test_bad_urls(url):
    with pytest.raises(ConfigurationError):
        open_layer(url)


def test_parse_url_without_open_layer():
    specs, prefix, timeout = parse_url("redis://a:1,b:2/0", {"connect_timeout": "2"})
    assert [s.name for s in specs] == ["a:1", "b:2"] and prefix == "svcbus" and timeout == 2.0


def test_shard_rule_is_stable():
    # Test vectors for other runtimes: jump_hash(crc32(name), n) (docs/protocol.md).
    # The published jump-hash vectors (Lamping & Veach's reference implementations).
    assert [jump_hash(1, 1), jump_hash(42, 57), jump_hash(0xDEAD10CC, 666)] == [0, 43, 361]
    assert jump_hash(256, 1024) == 520
    names = ("chat.receive", "room.lobby", "edge.k3f9")
    assert [shard_of(n, 2) for n in names] == [0, 0, 1]
    assert [shard_of(n, 3) for n in names] == [2, 2, 1]
    spread = [shard_of(f"chan.{i}", 2) for i in range(1000)]
    assert 400 < spread.count(0) < 600
    # Adding a third server moves only names to the new one.
    moved = [(shard_of(f"chan.{i}", 2), shard_of(f"chan.{i}", 3)) for i in range(1000)]
    assert all(after in (before, 2) for before, after in moved)


async def test_unreachable_server_fails_fast_and_clearly():
    port = free_port()  # nothing listens here
    layer = open_layer(f"redis://127.0.0.1:{port}/0?connect_timeout=1")
    started = time.monotonic()
    with pytest.raises(LayerError, match=f"127.0.0.1:{port}.*redis-server running"):
        await layer.connect()
    assert time.monotonic() - started < 3
    await layer.close()


# --- outages ------------------------------------------------------------------------


class Job(Contract):
    n: int


async def test_runtime_keeps_consuming_across_a_server_restart(redis_server, uniq, caplog):
    caplog.set_level(logging.WARNING, logger="svcbus.layers.redis")
    channel = uniq("jobs")
    service = Service("restart")
    seen: list[int] = []

    @service.consumes(channel)
    async def work(job: Job) -> None:
        seen.append(job.n)

    consumer_layer = open_layer(redis_server.url)
    async with (
        Runtime(service, consumer_layer, concurrency=2).running(),
        Bus(open_layer(redis_server.url)) as bus,
    ):
        for n in range(5):
            await bus.send(channel, Job(n=n))
        await eventually(lambda: len(seen) == 5, what="messages before the restart")

        await anyio.to_thread.run_sync(redis_server.restart)

        # Sends during or right after the outage raise LayerError; never hang.
        deadline = time.monotonic() + 15
        sent = 100
        while True:
            try:
                with anyio.fail_after(5):
                    await bus.send(channel, Job(n=sent))
                break
            except LayerError:
                assert time.monotonic() < deadline, "sending never recovered"
                await anyio.sleep(0.1)
        for n in range(101, 105):
            await bus.send(channel, Job(n=n))
        await eventually(lambda: {100, 104} <= set(seen), 15, "messages after the restart")
    lost = [r for r in caplog.records if r.getMessage().startswith("lost connection")]
    back = [r for r in caplog.records if r.getMessage().startswith("reconnected")]
    # Two layers (consumer and sender), each logs the outage once and the return once.
    assert 1 <= len(lost) <= 2 and 1 <= len(back) <= 2, [r.getMessage() for r in caplog.records]


async def test_cancelled_receive_after_the_pop_loses_nothing(redis_url, uniq):
    channel = uniq("popped")
    async with opened(redis_url) as layer, opened(redis_url) as sender, raw(redis_url) as r:
        with anyio.move_on_after(0.3):
            await layer.receive(channel)  # leaves a BLPOP in flight for this channel
        await sender.send(channel, b"in-flight")
        key = layer.key_of(channel)[0]
        # The pop in flight takes it from Redis although nobody waits any more ...
        await eventually(lambda: bool(layer._receivers.boxes()[channel].items), 3, "the pop")
        assert await r.llen(key) == 0
        # ... and the next receive gets it.
        with anyio.fail_after(5):
            assert await layer.receive(channel) == b"in-flight"


async def test_close_returns_unreceived_messages(redis_url, uniq):
    channel = uniq("returned")
    async with opened(redis_url) as other, opened(redis_url) as sender:
        layer = open_layer(redis_url)
        await layer.connect()
        with anyio.move_on_after(0.3):
            await layer.receive(channel)
        await sender.send(channel, b"a")
        await eventually(lambda: bool(layer._receivers.boxes()[channel].items), 3, "the pop")
        await sender.send(channel, b"b")
        await sender.flush()
        await layer.close()
        with anyio.fail_after(5):
            assert [await other.receive(channel), await other.receive(channel)] == [b"a", b"b"]


async def test_single_receives_read_ahead_and_give_back_what_they_did_not_take(redis_url, uniq):
    channel = uniq("ahead")
    async with (
        opened(redis_url, capacity=500) as sender,
        opened(redis_url) as other,
        raw(redis_url) as r,
    ):
        for i in range(200):
            await sender.send(channel, b"%d" % i)
        await sender.flush()
        layer = open_layer(redis_url)
        await layer.connect()
        with anyio.fail_after(5):
            taken = [await layer.receive(channel) for _ in range(25)]
        assert taken == [b"%d" % i for i in range(25)]
        # A backlog makes the pops grow (1, 2, 3, 5, 9, 17 messages): 25 single
        # receives took six pops,
        # and what was read ahead waits in this process for its next receive.
        ahead = len(layer._receivers.boxes()[channel].items)
        assert ahead > 0
        assert await r.llen(layer.key_of(channel)[0]) == 175 - ahead
        await layer.close()  # gives the read-ahead back, at the head of the list
        with anyio.fail_after(5):
            rest = [await other.receive(channel) for _ in range(175)]
        assert rest == [b"%d" % i for i in range(25, 200)]
        assert layer.lost == 0


async def test_read_ahead_left_unreceived_past_the_expiry_is_counted_lost(redis_url, uniq):
    channel = uniq("stale")
    async with opened(redis_url, expiry=1.0) as layer:
        for i in range(50):
            await layer.send(channel, b"%d" % i)
        with anyio.fail_after(5):
            for _ in range(10):
                await layer.receive(channel)
        left = len(layer._receivers.boxes()[channel].items)
        assert left > 0
        # Nobody receives any more: after the expiry the box is dropped and counted.
        await eventually(lambda: layer.lost == left, 6, "the read-ahead counted lost")


async def test_unread_channel_stays_bounded(redis_url, uniq):
    channel = uniq("unread")
    async with opened(redis_url, capacity=5, expiry=0.5) as layer, raw(redis_url) as r:
        key = layer.key_of(channel)[0]
        for i in range(5):
            await layer.send(channel, b"%d" % i)
        with pytest.raises(ChannelFull):
            await layer.send(channel, b"too many")
            await layer.flush()
        assert await r.llen(key) == 5
        assert 0 < await r.pttl(key) <= 1500  # the key dies with its newest message
        await anyio.sleep(0.6)
        # Expired messages no longer count against the capacity.
        await layer.send(channel, b"fresh")
        assert await r.llen(key) == 1
        await anyio.sleep(1.6)
        assert await r.exists(key) == 0


async def test_late_refusal_of_a_pipelined_send_is_reported(redis_url, uniq):
    channel = uniq("late")
    async with opened(redis_url, capacity=10) as mine, opened(redis_url, capacity=10) as other:
        await mine.send(channel, b"first")  # learns there is room for 9 more
        for _ in range(9):
            await other.send(channel, b"filler")
        await other.flush()
        await mine.send(channel, b"refused")  # pipelined on stale room: the server refuses
        with pytest.raises(MessagesLost, match="earlier") as lost:
            await mine.flush()
        assert (lost.value.count, lost.value.channel) == (1, channel)
        assert mine.lost == 1
        await mine.flush()  # reported once
        with pytest.raises(ChannelFull, match="capacity"):
            await mine.send(channel, b"now it waits for the answer")


async def test_group_add_by_a_non_owner_is_effective_at_once(redis_url, uniq):
    async with (
        opened(redis_url) as owner,
        opened(redis_url) as adder,
        opened(redis_url) as sender,
    ):
        for i in range(20):
            group = uniq(f"fresh{i}")  # a new group each time: a new SUBSCRIBE each time
            member = await owner.new_channel()
            await adder.group_add(group, member)
            await sender.group_send(group, b"%d" % i)
            with anyio.fail_after(5):
                assert await owner.receive(member) == b"%d" % i


async def test_group_add_of_a_gone_owner_returns(redis_url, uniq):
    async with opened(redis_url) as adder:
        with anyio.fail_after(5):
            await adder.group_add(uniq("g"), "reply.deadbeef0000!x")


async def test_named_channels_in_groups(redis_url, uniq):
    async with opened(redis_url, capacity=1) as layer:
        named, member = uniq("named"), await layer.new_channel()
        await layer.group_add(uniq("g"), named)
        await layer.group_add(uniq("g"), member)
        await layer.group_send(uniq("g"), b"one")
        await layer.group_send(uniq("g"), b"two")  # the full named channel misses this
        with anyio.fail_after(5):
            assert await layer.receive(named) == b"one"
            assert await layer.receive(member) == b"one"
        await layer.group_discard(uniq("g"), named)
        await layer.group_send(uniq("g"), b"three")
        with anyio.move_on_after(0.3):
            pytest.fail(f"discarded member got {await layer.receive(named)!r}")


# --- sharding -----------------------------------------------------------------------


@pytest.fixture
def second_redis() -> Iterator[RedisServer]:
    if find_redis_server() is None:
        pytest.skip("no redis-server binary on PATH")
    with RedisServer() as server:
        yield server


class Echo(Contract):
    text: str


async def test_sharding_spreads_channels_and_still_works(redis_server, second_redis, uniq):
    first, second = redis_server, second_redis
    url = f"redis://127.0.0.1:{first.port},127.0.0.1:{second.port}/0"
    names = [uniq(f"spread{i}") for i in range(20)]
    async with (
        opened(url) as a,
        opened(url) as b,
        raw(first.url) as r1,
        raw(second.url) as r2,
    ):
        assert a.servers == [f"127.0.0.1:{first.port}", f"127.0.0.1:{second.port}"]
        for name in names:
            await a.send(name, name.encode())
        await a.flush()
        on_first = sum([await r1.exists(a.key_of(n)[0]) for n in names])
        on_second = sum([await r2.exists(a.key_of(n)[0]) for n in names])
        assert on_first + on_second == 20 and on_first > 0 and on_second > 0
        assert on_first == sum(1 for n in names if a.key_of(n)[1] == 0)
        with anyio.fail_after(5):
            for name in names:
                assert await b.receive(name) == name.encode()

        # Groups whose pub/sub lives on either server reach members of both layers.
        # Three groups on each server (names are random per test, so pick them by shard).
        groups: list[str] = []
        taken = {0: 0, 1: 0}
        for i in range(1000):
            group = uniq(f"room{i}")
            if taken[shard_of(group, 2)] < 3:
                taken[shard_of(group, 2)] += 1
                groups.append(group)
            if len(groups) == 6:
                break
        assert taken == {0: 3, 1: 3}
        members = [await a.new_channel(), await b.new_channel()]
        for group in groups:
            for member in members:
                await b.group_add(group, member)
            await a.group_send(group, group.encode())
            with anyio.fail_after(5):
                assert await a.receive(members[0]) == group.encode()
                assert await b.receive(members[1]) == group.encode()

        # Request/reply: process channels of either layer, on either server.
        service = Service("echo")

        @service.consumes(uniq("echo"))
        async def echo(message: Echo) -> Echo:
            return Echo(text=message.text.upper())

        async with Runtime(service, a).running(), Bus(b) as bus:
            with anyio.fail_after(5):
                for i in range(5):
                    reply = await bus.request(uniq("echo"), Echo(text=f"hi {i}"), reply_type=Echo)
                    assert reply.text == f"HI {i}"


# --- Sentinel -----------------------------------------------------------------------


@pytest.fixture
def sentinel(redis_server: RedisServer, tmp_path: Path) -> Iterator[int]:
    """A ``redis-server --sentinel`` on a free port monitoring ``redis_server`` as mymaster."""
    binary = find_redis_server()
    assert binary is not None  # redis_server would have skipped
    port = free_port()
    config = tmp_path / "sentinel.conf"
    config.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor mymaster 127.0.0.1 {redis_server.port} 1\n"
    )
    log = (tmp_path / "sentinel.log").open("wb")
    proc = subprocess.Popen(
        [binary, str(config), "--sentinel"], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 5
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                    sock.sendall(b"SENTINEL get-master-addr-by-name mymaster\r\n")
                    if str(redis_server.port).encode() in sock.recv(200):
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.skip(f"redis-server --sentinel did not start: {config.read_text()}")
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


async def test_sentinel_finds_the_master(sentinel, redis_server, uniq):
    url = f"redis+sentinel://127.0.0.1:{sentinel}/mymaster?db=0"
    async with opened(url) as a, opened(url) as b, raw(redis_server.url) as r:
        await a.send(uniq("via.sentinel"), b"hello")
        await a.flush()
        assert await r.llen(a.key_of(uniq("via.sentinel"))[0]) == 1
        with anyio.fail_after(5):
            assert await b.receive(uniq("via.sentinel")) == b"hello"
        member = await b.new_channel()
        await a.group_add(uniq("g"), member)
        await a.group_send(uniq("g"), b"group")
        with anyio.fail_after(5):
            assert await b.receive(member) == b"group"


def test_layer_options_are_the_common_ones():
    layer = RedisLayer(parse_url("redis://h/0", {})[0], LayerOptions(expiry=2))
    assert layer.options.expiry == 2


# --- foreign items ------------------------------------------------------------------


async def test_foreign_items_are_moved_aside_and_consumption_goes_on(redis_url, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="svcbus.layers.redis")
    prefix = f"f{time.monotonic_ns() % 10**9}"
    url = f"{redis_url}?prefix={prefix}"
    async with opened(url) as sender, opened(url) as receiver, raw(redis_url) as client:
        key = f"{prefix}:c:jobs"
        # Found by the pop script: garbage among good messages already in the list.
        await sender.send("jobs", b"1")
        await client.rpush(key, b"garbage", b"12345:short", b"")
        await sender.send("jobs", b"2")
        await sender.flush()
        with anyio.fail_after(5):
            assert await receiver.receive("jobs") == b"1"
            assert await receiver.receive("jobs") == b"2"
        # Found by BLPOP: garbage pushed while a receiver waits on the empty list.
        async with anyio.create_task_group() as tg:
            got: list[bytes] = []

            async def take_two() -> None:
                got.append(await receiver.receive("jobs"))
                got.append(await receiver.receive("jobs"))

            tg.start_soon(take_two)
            await anyio.sleep(0.3)
            await client.rpush(key, b"not-a-header:x")
            await anyio.sleep(0.2)
            await sender.send("jobs", b"3")
            await sender.send("jobs", b"4")
            await sender.flush()
        assert got == [b"3", b"4"]
        # A process channel's head list: an item without the local part is foreign too.
        mine = await receiver.new_channel("box")
        head_key = f"{prefix}:p:{mine.split('!')[0]}"
        await client.rpush(head_key, b"9999999999999:no-local-part-colon")
        await sender.send(mine, b"5")
        with anyio.fail_after(5):
            assert await receiver.receive(mine) == b"5"
        assert receiver.foreign == 5
        kept = await client.lrange(f"{key}:foreign", 0, -1)
        assert kept == [b"garbage", b"12345:short", b"", b"not-a-header:x"]
        assert await client.lrange(f"{head_key}:foreign", 0, -1) == [
            b"9999999999999:no-local-part-colon"
        ]
        assert any("foreign item" in r.getMessage() for r in caplog.records)
        # A full channel with a foreign item at its head: the send script moves it too.
        await client.rpush(f"{prefix}:c:full", b"junk")
        async with opened(url, capacity=1) as small:
            await small.send("full", b"6")  # the junk did not count against capacity
            await small.flush()
            assert await small.receive("full") == b"6"
        assert await client.lrange(f"{prefix}:c:full:foreign", 0, -1) == [b"junk"]


# --- the blocking pop -----------------------------------------------------------------


@pytest.mark.parametrize("blocking", [True, False], ids=["blmpop", "script-blpop"])
async def test_a_waiting_pop_drops_expired_items_and_moves_foreign_ones(
    redis_url, uniq, blocking
) -> None:
    """What a waiting receiver's pop takes gets the pop script's checks (BLMPOP or BLPOP)."""
    channel = uniq("waiting")
    async with opened(redis_url) as layer, raw(redis_url) as client:
        layer._receivers._blocking_pop = blocking  # False: as against Redis before 7.0
        key = layer.key_of(channel)[0]
        future = b"%013d:" % (int(time.time() * 1000) + 60_000)
        got: list[bytes] = []
        async with anyio.create_task_group() as tg:

            async def take() -> None:
                got.append(await layer.receive(channel))

            tg.start_soon(take)
            await anyio.sleep(0.3)  # the receiver's pop now waits on the empty list
            # One command, so a waiting pop may take several at once.
            await client.rpush(key, b"0000000000001:expired", b"junk", future + b"good")
        assert got == [b"good"]
        # Good items are handed over before foreign ones are moved aside and counted.
        await eventually(lambda: layer.foreign == 1, 3, "the foreign item counted")
        assert await client.lrange(f"{key}:foreign", 0, -1) == [b"junk"]
        assert await client.pttl(f"{key}:foreign") > 0
        assert await client.llen(key) == 0
        assert layer.lost == 0

        # A process channel's head list: the local part is split off, foreign items go.
        mine = await layer.new_channel("box")
        head_key = f"{key.split(':c:')[0]}:p:{mine.split('!')[0]}"
        await anyio.sleep(0.3)
        local = mine.split("!")[1].encode()
        await client.rpush(
            head_key,
            future + b"no-local-part",
            b"0000000000001:" + local + b":old",
            future + local + b":hi",
        )
        with anyio.fail_after(5):
            assert await layer.receive(mine) == b"hi"
        await eventually(lambda: layer.foreign == 2, 3, "the head's foreign item")
        assert await client.lrange(f"{head_key}:foreign", 0, -1) == [future + b"no-local-part"]


async def test_a_pop_refused_with_wrongtype_is_retried_until_the_key_is_fixed(
    redis_url, uniq, caplog, monkeypatch
) -> None:
    from svcbus.layers.redis import receiving

    monkeypatch.setattr(receiving, "REFUSED_RETRY_SECONDS", 0.2)
    caplog.set_level(logging.ERROR, logger="svcbus.layers.redis")
    channel = uniq("wrongtype")
    async with opened(redis_url) as layer, opened(redis_url) as sender, raw(redis_url) as client:
        key = layer.key_of(channel)[0]
        await client.set(key, "not a list")
        got: list[bytes] = []
        async with anyio.create_task_group() as tg:

            async def take() -> None:
                got.append(await layer.receive(channel))

            tg.start_soon(take)
            await eventually(
                lambda: sum("redis refused to pop" in r.getMessage() for r in caplog.records) >= 2,
                3,
                "the refusal, logged on each retry",
            )
            assert not got  # the receiver keeps waiting
            await client.delete(key)
            await sender.send(channel, b"after")
        assert got == [b"after"]
        refused = [r for r in caplog.records if "redis refused to pop" in r.getMessage()]
        assert all(r.levelno == logging.ERROR for r in refused)
        assert all("fix or delete that key" in r.getMessage() for r in refused)
        assert layer.lost == 0


async def test_a_pop_whose_connection_breaks_counts_what_it_may_have_taken(redis_url, uniq) -> None:
    channel = uniq("broken")
    async with opened(redis_url) as layer, opened(redis_url) as sender, raw(redis_url) as client:
        shard = layer._shards[0]
        handed_out = []
        connection = shard.connection

        async def recorded():
            conn = await connection()
            handed_out.append(conn)
            return conn

        shard.connection = recorded
        got: list[bytes] = []
        async with anyio.create_task_group() as tg:

            async def take() -> None:
                got.append(await layer.receive(channel))

            tg.start_soon(take)
            await anyio.sleep(0.3)  # the receiver's pop now waits on the empty list
            # Break that pop's connection (the one this layer's pop got last).
            host, port = handed_out[-1]._writer.get_extra_info("sockname")[:2]
            await client.client_kill(f"{host}:{port}")
            # The pop may have taken something before its answer was lost: counted.
            await eventually(lambda: layer.lost > 0, 3, "the broken pop counted")
            assert layer.lost <= 2  # a waiting pop asks for little (QUIET_COUNT)
            await sender.send(channel, b"after")
        assert got == [b"after"]


async def test_a_wake_up_for_a_receive_cancelled_meanwhile_goes_to_the_next_one(redis_url):
    async with opened(redis_url) as layer:
        channel = await layer.new_channel()
        receivers = layer._receivers
        await wake_up_of_a_cancelled_receive_goes_on(
            layer, channel, lambda ch, m: receivers.put_members([ch], m, time.monotonic())
        )
        box = receivers.boxes()[channel]
        assert box.signal.idle and not box.waiters
