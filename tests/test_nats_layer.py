"""The NATS layer beyond the conformance suite, against real nats-server processes.

URL handling, an unreachable server, a server restart under a running service,
ChannelFull, bounded memory, group membership through the owning process, the
cost of group_send, and two ``svc run`` worker processes sharing one channel.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import anyio
import pytest
from servers import free_port
from waiter_scenario import wake_up_of_a_cancelled_receive_goes_on

from svcbus import (
    Bus,
    ChannelFull,
    ConfigurationError,
    Durability,
    LayerError,
    MessagesLost,
    Runtime,
    Service,
    open_layer,
)

nats = pytest.importorskip("nats")
from svcbus.durable import Delivery  # noqa: E402
from svcbus.layers.nats import DIRECT_FOR, PREFETCH, NatsLayer  # noqa: E402

pytestmark = [pytest.mark.anyio, pytest.mark.nats]

TESTS = Path(__file__).parent


def isolated(url: str, **params: object) -> str:
    """``url`` with a subject prefix of its own, so tests never see each other's subjects."""
    query = "&".join(
        f"{k}={v}" for k, v in {"prefix": f"t{uuid.uuid4().hex[:8]}", **params}.items()
    )
    return f"{url}?{query}"


async def connected(url: str, **options: object) -> NatsLayer:
    layer = open_layer(url, **options)
    assert isinstance(layer, NatsLayer)
    await layer.connect()
    return layer


# URLs ------------------------------------------------------------------------------------


def test_url_with_seeds_credentials_and_options() -> None:
    layer = open_layer("nats://alice:s%40cret@a.example:4222,b.example:5222?prefix=shop&capacity=7")
    assert isinstance(layer, NatsLayer)
    assert layer.servers == ["nats://a.example:4222", "nats://b.example:5222"]
    assert layer.conn.auth == {"user": "alice", "password": "s@cret", "token": None}
    assert layer.prefix == "shop"
    assert layer.options.capacity == 7


def test_url_with_token_default_port_and_tls_scheme() -> None:
    layer = open_layer("tls://t0ken@nats.example")
    assert isinstance(layer, NatsLayer)
    assert layer.servers == ["tls://nats.example:4222"]
    assert layer.conn.auth["token"] == "t0ken"
    assert layer.conn.tls is not None


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("nats://h:4222?bogus=1&other=2", "bogus, other"),
        ("nats://h:4222?tls_ca=/no/such/ca.pem", "tls_ca"),
        ("nats://h:4222?creds=/no/such.creds", "creds"),
        ("nats://h:4222?prefix=a.b", "prefix"),
        ("nats://h:4222?prefix=UP", "prefix"),
        ("nats://h:port", "host:port"),
        ("nats://h:4222?connect_timeout=soon", "connect_timeout"),
    ],
)
def test_bad_urls_say_what_is_wrong(url: str, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        open_layer(url)


async def test_unreachable_server_fails_fast_and_clearly() -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    layer = open_layer(url)
    started = time.monotonic()
    with pytest.raises(LayerError, match=r"cannot reach NATS at .*is nats-server running"):
        await layer.connect()
    assert time.monotonic() - started < 5


# ChannelFull and bounded memory ---------------------------------------------------------


async def test_full_channel_raises_channel_full_at_the_refused_send(nats_url: str) -> None:
    url = isolated(nats_url)
    sender = await connected(url, capacity=5)
    try:
        for i in range(5):
            await sender.send("jobs", str(i).encode())
        await sender.flush()
        # Nobody listens: the stream holds 5, and the sixth send itself is refused.
        with pytest.raises(ChannelFull, match="capacity"):
            await sender.send("jobs", b"refused")
        with pytest.raises(ChannelFull, match="capacity"):
            await sender.send("jobs", b"again")
        assert sender.lost == 0  # refused at its own send: nothing to report later
        # The stored messages are intact and in order.
        assert [await sender.receive("jobs") for _ in range(5)] == [b"0", b"1", b"2", b"3", b"4"]
        await sender.send("jobs", b"fits")  # room again: accepted
    finally:
        await sender.close()


async def test_a_group_members_buffer_is_kept_and_a_reply_channels_is_not(
    nats_url: str,
) -> None:
    url = isolated(nats_url)
    owner, other = await connected(url), await connected(url)
    try:
        member, reply = await owner.new_channel("ws"), await owner.new_channel("reply")
        await owner.group_add("room", member)
        await other.group_send("room", b"g")
        await other.send(reply, b"r")
        with anyio.fail_after(5):
            assert await owner.receive(member) == b"g"
            assert await owner.receive(reply) == b"r"
        # The member receives again at once: its emptied buffer waits for the sweep.
        assert member in owner.processes.locals
        assert reply not in owner.processes.locals
        owner.processes.sweep(time.monotonic())
        assert member not in owner.processes.locals
    finally:
        await owner.close()
        await other.close()


async def test_process_channel_buffer_is_bounded_by_capacity(nats_url: str) -> None:
    url = isolated(nats_url)
    owner, other = await connected(url, capacity=10), await connected(url)
    try:
        mine = await owner.new_channel("edge")
        for i in range(1000):
            await other.send(mine, str(i).encode())
        with anyio.fail_after(5):
            while owner.dropped < 990:
                await anyio.sleep(0.02)
        assert len(owner.processes.locals[mine].items) == 10
        assert await owner.receive_many(mine, 100) == [str(i).encode() for i in range(10)]
        with anyio.fail_after(5):  # the owner told the sender, which counts what it lost
            while other.lost < 990:
                await anyio.sleep(0.02)
        assert other.lost == 990
        with pytest.raises(MessagesLost) as lost:  # and its next flush says so, once
            await other.flush()
        assert (lost.value.count, lost.value.channel) == (990, mine)
        await other.flush()
    finally:
        await owner.close()
        await other.close()


async def test_slow_named_receiver_leaves_the_backlog_on_the_server(nats_url: str) -> None:
    url = isolated(nats_url)
    sender, receiver = await connected(url, capacity=5000), await connected(url)
    try:
        for i in range(2000):
            await sender.send("backlog", str(i).encode())
        await sender.flush()
        for i in range(5):  # a slow consumer: one message at a time
            assert await receiver.receive("backlog") == str(i).encode()
            await anyio.sleep(0.05)
        box = receiver.receivers.inboxes["backlog"]
        # Its demand plus the prefetch window, no more: the rest waits at the server.
        assert len(box.items) + box.requested <= 1 + PREFETCH
        info = await sender.connection.jetstream().stream_info(sender.subjects.stream("backlog"))
        assert info.state.messages == 2000 - 5 - len(box.items) - box.requested
    finally:
        await sender.close()
        await receiver.close()


def _flood_from_thread(url: str, subject: str, count: int) -> threading.Thread:
    """Publish ``count`` messages from another thread (its own loop and connection)."""

    async def flood() -> None:
        nc = await nats.connect(url.split("?")[0])
        for i in range(count):
            await nc.publish(subject, b"%d" % i)
        await nc.flush()
        await nc.close()

    thread = threading.Thread(target=asyncio.run, args=(flood(),))
    thread.start()
    return thread


async def test_pending_limits_bound_memory_when_the_loop_is_stalled(nats_url: str) -> None:
    url = isolated(nats_url, pending_msgs=50)
    owner = await connected(url, capacity=20)
    try:
        mine = await owner.new_channel("slow")
        head, _, local = mine.partition("!")
        thread = _flood_from_thread(url, f"{owner.prefix}.p.{head}.{local}", 3000)
        time.sleep(1.0)  # block this event loop: messages pile up in the socket
        thread.join(10)
        with anyio.fail_after(5):
            while owner.dropped + owner.slow_consumer_drops < 3000 - 20:
                await anyio.sleep(0.02)
        assert owner.slow_consumer_drops > 0  # nats-py's pending limit cut in
        assert len(owner.processes.locals[mine].items) <= 20  # the local buffer stayed at capacity
        assert owner.processes.heads[head].pending_msgs <= 50
    finally:
        await owner.close()


# groups ------------------------------------------------------------------------------------


async def test_group_add_by_a_non_owner_is_effective_on_return(nats_url: str) -> None:
    url = isolated(nats_url)
    owner, admin, sender = await connected(url), await connected(url), await connected(url)
    try:
        for i in range(20):
            member = await owner.new_channel()
            await admin.group_add(f"room.r{i}", member)  # the owner confirms it
            await sender.group_send(f"room.r{i}", b"hi %d" % i)
            with anyio.fail_after(3):
                assert await owner.receive(member) == b"hi %d" % i
        # Discard through the owner is effective on return as well.
        await admin.group_discard("room.r0", member := await owner.new_channel())
        await admin.group_add("room.x", member)
        await admin.group_discard("room.x", member)
        await sender.group_send("room.x", b"gone")
        with anyio.move_on_after(0.3):
            pytest.fail(f"discarded member got {await owner.receive(member)!r}")
    finally:
        for layer in (owner, admin, sender):
            await layer.close()


async def test_group_add_to_a_vanished_process_is_a_no_op(nats_url: str) -> None:
    url = isolated(nats_url)
    gone, admin = await connected(url), await connected(url)
    try:
        channel = await gone.new_channel()
        await gone.close()
        await anyio.sleep(0.2)  # the server notices the closed connection
        with anyio.fail_after(2):
            await admin.group_add("room.empty", channel)
    finally:
        await admin.close()


async def test_group_send_costs_one_publish(nats_url: str) -> None:
    url = isolated(nats_url)
    a, b, sender = await connected(url), await connected(url), await connected(url)
    spy = await nats.connect(nats_url)
    seen: list[str] = []

    async def count(msg) -> None:
        seen.append(msg.subject)

    try:
        members = [await a.new_channel() for _ in range(50)] + [
            await b.new_channel() for _ in range(50)
        ]
        for member in members:
            await sender.group_add("fanout", member)
        await spy.subscribe(f"{a.prefix}.>", cb=count)
        await spy.flush()
        await spy.flush()
        published = sender.connection.stats["out_msgs"]
        await sender.group_send("fanout", b"one")
        await sender.flush()
        with anyio.fail_after(3):
            for member in members:
                owner = a if a.processes.owns(member) else b
                assert await owner.receive(member) == b"one"
        assert sender.connection.stats["out_msgs"] - published == 1
        with anyio.fail_after(2):
            while not seen:
                await anyio.sleep(0.01)
        await anyio.sleep(0.2)  # and nothing else is published on the layer's subjects
        assert seen == [f"{a.prefix}.g.fanout"]
    finally:
        await spy.close()
        for layer in (a, b, sender):
            await layer.close()


async def test_named_channel_as_group_member_gets_one_copy(nats_url: str) -> None:
    url = isolated(nats_url)
    x, y, sender = await connected(url), await connected(url), await connected(url)
    try:
        await x.group_add("news", "archive")
        await y.group_add("news", "archive")  # two holders: still one copy
        await sender.group_send("news", b"headline")
        with anyio.fail_after(3):
            assert await sender.receive("archive") == b"headline"
        with anyio.move_on_after(0.3):
            pytest.fail(f"second copy: {await sender.receive('archive')!r}")
    finally:
        for layer in (x, y, sender):
            await layer.close()


# reconnection ---------------------------------------------------------------------------------


async def test_service_keeps_consuming_across_a_server_restart(nats_server, caplog) -> None:
    caplog.set_level(logging.INFO, logger="svcbus.layers.nats")
    url = isolated(nats_server.url)
    processed: list[int] = []
    service = Service("restart")

    @service.consumes("ticks")
    async def tick(message: dict) -> None:
        processed.append(message["n"])

    worker_layer = open_layer(url)
    async with Runtime(service, worker_layer, concurrency=2).running(), Bus(url) as bus:
        for n in range(20):
            await bus.send("ticks", {"n": n})
        with anyio.fail_after(5):
            while len(processed) < 20:
                await anyio.sleep(0.02)
        await anyio.to_thread.run_sync(nats_server.restart)
        # Sent during or right after the restart: buffered, then retried into the new stream.
        for n in range(20, 40):
            await bus.send("ticks", {"n": n})
            await anyio.sleep(0.01)
        with anyio.fail_after(15):
            while not set(range(20, 40)) <= set(processed):
                await anyio.sleep(0.05)
    assert sorted(set(processed)) == list(range(40))
    assert len(processed) == len(set(processed)), "a message was processed twice"
    messages = [r.getMessage() for r in caplog.records if r.name == "svcbus.layers.nats"]
    # Two layers (worker and bus): each logs its disconnect and its reconnect once.
    assert sum("disconnected from NATS" in m for m in messages) == 2
    assert sum("reconnected to NATS" in m for m in messages) == 2


async def test_a_send_during_an_outage_waits_then_fails_clearly(nats_server) -> None:
    url = isolated(nats_server.url)
    layer = await connected(url)
    layer.ack_timeout = 1.0
    try:
        await layer.send("outage", b"before")  # nobody listens: it bounces to the stream
        await layer.flush()
        await anyio.to_thread.run_sync(nats_server.stop)
        started = time.monotonic()
        # Stored sends wait for the server's acknowledgement: no server, a clear error
        # within ack_timeout (the message was not sent), no hang.
        with pytest.raises(LayerError, match="down"):
            await layer.send("outage", b"during")
        assert time.monotonic() - started < 3
        await anyio.to_thread.run_sync(nats_server.start)
        layer.ack_timeout = 10.0
        await layer.send("outage", b"after")  # reconnected; the stream is made again
        await layer.flush()
        with anyio.fail_after(5):
            assert await layer.receive("outage") == b"after"
        assert layer.lost == 0
    finally:
        await layer.close()


# several processes ------------------------------------------------------------------------------


async def test_two_worker_processes_share_a_channel_exactly_once(nats_url: str) -> None:
    url = isolated(nats_url, capacity=5000)
    env = {**os.environ, "PYTHONPATH": f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    command = [sys.executable, "-m", "svcbus.cli", "run", "nats_workers", "--layer", url]
    command += ["--log-level", "warning"]
    workers = [
        subprocess.Popen(command, cwd=TESTS, env=env, stdin=subprocess.DEVNULL) for _ in range(2)
    ]
    total = 2000
    try:
        async with Bus(url) as bus:
            with anyio.fail_after(20):
                ready = {(await bus.receive("work.ready")).b["pid"] for _ in range(2)}
            assert ready == {w.pid for w in workers}
            await anyio.sleep(0.3)  # both are pulling
            for i in range(total):
                await bus.send("work.item", {"id": i})
            await bus.layer.flush()
            done: dict[int, list[int]] = {}
            with anyio.fail_after(30):
                while sum(map(len, done.values())) < total:
                    for data in await bus.layer.receive_many("work.done", 256):
                        body = json.loads(data)["b"]
                        done.setdefault(body["id"], []).append(body["pid"])
            with anyio.move_on_after(0.5):  # nothing is confirmed twice
                for data in await bus.layer.receive_many("work.done", 256):
                    pytest.fail(f"extra confirmation {data!r}")
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            try:
                worker.wait(10)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
    assert sorted(done) == list(range(total))
    assert all(len(pids) == 1 for pids in done.values())
    share = {pid: sum(1 for pids in done.values() if pids == [pid]) for pid in ready}
    assert all(count > 0 for count in share.values()), f"one worker did nothing: {share}"


# live delivery: core NATS while receivers listen, the stream as the waiting room ---------


async def _stream_state(layer: NatsLayer, channel: str):
    info = await layer.connection.jetstream().stream_info(layer.subjects.stream(channel))
    return info.state


async def _receive(layer: NatsLayer, channel: str, count: int) -> list[bytes]:
    got: list[bytes] = []
    with anyio.fail_after(10):
        while len(got) < count:
            got += await layer.receive_many(channel, count - len(got))
    return got


async def _sent_to_a_waiting_receiver(
    sender: NatsLayer, receiver: NatsLayer, channel: str, count: int
) -> list[bytes]:
    """Send ``count`` numbered messages while ``receiver`` waits for them; what it got."""
    got: list[bytes] = []

    async def drain() -> None:
        got.extend(await _receive(receiver, channel, count))

    def waiting() -> bool:
        box = receiver.receivers.inboxes.get(channel)
        return box is not None and bool(box.waiters) and (box.live is not None or not receiver.live)

    async with anyio.create_task_group() as tg:
        tg.start_soon(drain)
        with anyio.fail_after(5):
            while not waiting():
                await anyio.sleep(0.01)
        await anyio.sleep(0.1)  # the server knows its subscription and pull request
        for i in range(count):
            await sender.send(channel, str(i).encode())
        await sender.flush()
    return got


async def test_listening_receiver_gets_messages_without_the_stream(nats_url: str) -> None:
    url = isolated(nats_url)
    sender, receiver = await connected(url, capacity=1000), await connected(url, capacity=1000)
    try:
        got = await _sent_to_a_waiting_receiver(sender, receiver, "live", 300)
        assert got == [str(i).encode() for i in range(300)]
        assert not sender.sender.unconfirmed  # every live publish was settled by a marker
        state = await _stream_state(sender, "live")
        assert state.last_seq == 0  # JetStream never stored one of them
    finally:
        await sender.close()
        await receiver.close()


async def test_without_a_listening_receiver_messages_wait_in_the_stream(nats_url: str) -> None:
    url = isolated(nats_url)
    sender = await connected(url, capacity=1000)
    receiver = await connected(url)
    try:
        for i in range(40):
            await sender.send("later", str(i).encode())
        await sender.flush()  # the bounces are republished to the stream and acknowledged
        assert not sender.sender.unconfirmed and not sender.publisher.in_flight
        bounced = sender.bounced
        assert 1 <= bounced <= 40
        # Right after a bounce the sender publishes straight to the stream: no more bounces.
        for i in range(40, 80):
            await sender.send("later", str(i).encode())
        await sender.flush()
        assert sender.bounced == bounced
        assert (await _stream_state(sender, "later")).messages == 80
        assert await _receive(receiver, "later", 80) == [str(i).encode() for i in range(80)]
        # A moment later, with a receiver listening, messages go live again.
        await anyio.sleep(DIRECT_FOR + 0.1)
        got = await _sent_to_a_waiting_receiver(sender, receiver, "later", 10)
        assert got == [str(i).encode() for i in range(10)]
        assert (await _stream_state(sender, "later")).last_seq == 80
    finally:
        await sender.close()
        await receiver.close()


async def test_a_full_receiver_spills_into_the_stream_and_nothing_is_lost(nats_url: str) -> None:
    url = isolated(nats_url)
    sender = await connected(url, capacity=1000)
    busy = await connected(url, capacity=10)  # its live buffer holds 10
    idle = await connected(url)
    busy.linger = 60  # it stays in the queue group while this test runs
    try:
        with anyio.move_on_after(0.3):
            await busy.receive("spill")  # now listening, but nobody reads any more
        for i in range(100):
            await sender.send("spill", str(i).encode())
        await sender.flush()
        box = busy.receivers.inboxes["spill"]
        with anyio.fail_after(5):
            while busy.spilled < 90:
                await anyio.sleep(0.02)
        # Its buffer holds its capacity of live messages plus at most one pull.
        assert len(box.items) <= 20
        # The spilled ones wait in the stream for any process: both drain, nothing is lost.
        got: dict[str, list[bytes]] = {"busy": [], "idle": []}

        async def drain(name: str, layer: NatsLayer) -> None:
            while True:
                got[name] += await layer.receive_many("spill", 100)

        async with anyio.create_task_group() as tg:
            tg.start_soon(drain, "busy", busy)
            tg.start_soon(drain, "idle", idle)
            with anyio.fail_after(10):
                while len(got["busy"]) + len(got["idle"]) < 100:
                    await anyio.sleep(0.02)
            await anyio.sleep(0.2)  # and no duplicate turns up
            tg.cancel_scope.cancel()
        assert sorted(got["busy"] + got["idle"], key=int) == [str(i).encode() for i in range(100)]
        assert got["idle"], "spilled messages should reach the other process"
    finally:
        for layer in (sender, busy, idle):
            await layer.close()


async def test_spill_into_a_full_stream_raises_channel_full_at_the_sender(nats_url: str) -> None:
    url = isolated(nats_url)
    sender = await connected(url, capacity=5)  # the stream holds 5
    busy = await connected(url, capacity=5)  # and so does the receiver's buffer
    try:
        with anyio.move_on_after(0.3):
            await busy.receive("full")
        accepted: list[bytes] = []
        with pytest.raises(ChannelFull, match="capacity"):
            with anyio.fail_after(5):
                for i in range(1000):
                    await sender.send("full", str(i).encode())
                    accepted.append(str(i).encode())
                    if i % 10 == 9:
                        await sender.flush()
                        await anyio.sleep(0.02)  # the listener's answer comes back
        await sender.flush()
        await busy.flush()
        # Every accepted message is in the listener's buffer or in the stream: the
        # listener kept what the full stream refused (a few over its capacity).
        box = busy.receivers.inboxes["full"]
        stored = (await _stream_state(sender, "full")).messages
        assert stored <= 5
        assert len(box.items) + stored == len(accepted)
        assert len(box.items) <= 5 + 20
        assert sender.lost == busy.lost == 0
    finally:
        await sender.close()
        await busy.close()


async def test_an_idle_receiver_leaves_and_returns_what_it_buffered(nats_url: str) -> None:
    url = isolated(nats_url)
    sender, first, second = [await connected(url) for _ in range(3)]
    try:
        first.linger = 0.2
        with anyio.move_on_after(0.3):
            await first.receive("linger")
        for i in range(5):
            await sender.send("linger", str(i).encode())
        await sender.flush()
        box = first.receivers.inboxes["linger"]
        assert len(box.items) == 5  # delivered live to the only listener
        with anyio.fail_after(8):  # linger, then the outstanding pull expires
            while box.live is not None or box.items:
                await anyio.sleep(0.05)
        # Back in the stream, in order, for whoever receives next.
        assert await _receive(second, "linger", 5) == [str(i).encode() for i in range(5)]
    finally:
        for layer in (sender, first, second):
            await layer.close()


async def test_live_false_sends_everything_through_the_stream(nats_url: str) -> None:
    url = isolated(nats_url, live="false")
    sender, receiver = await connected(url), await connected(url)
    assert not sender.live
    try:
        got = await _sent_to_a_waiting_receiver(sender, receiver, "stored", 20)
        assert got == [str(i).encode() for i in range(20)]
        assert receiver.receivers.inboxes["stored"].live is None
        assert (await _stream_state(sender, "stored")).last_seq == 20
    finally:
        await sender.close()
        await receiver.close()
    with pytest.raises(ConfigurationError, match="live=true or live=false"):
        open_layer(isolated(nats_url, live="maybe"))


async def _hold_channels(url: str, count: int) -> None:
    """Make ``count`` channel-like streams (each with its consumer) on the server at ``url``."""
    from nats.js import api

    nc = await nats.connect(url)
    try:
        js = nc.jetstream()

        async def one(i: int) -> None:
            await js.add_stream(
                api.StreamConfig(
                    name=f"held{i}", subjects=[f"held.{i}"], storage=api.StorageType.MEMORY
                )
            )
            await js.add_consumer(
                f"held{i}", api.ConsumerConfig(durable_name="c", ack_policy=api.AckPolicy.NONE)
            )

        for start in range(0, count, 50):
            await asyncio.gather(*(one(i) for i in range(start, min(start + 50, count))))
    finally:
        await nc.close()


async def test_processes_making_a_channel_at_once_store_each_message_once(nats_server) -> None:
    """Three receiving and three sending processes (each with its own capacity) make
    one channel's stream at the same moment; then every publish is stored once.

    Concurrent stream updates that add a subject can leave nats-server taking each
    publish in twice, so a message reaches two receivers. Only the process that
    created the stream gives it its subject; senders wait for that before applying
    their settings. The server holds a thousand other channels, as a busy one does:
    that makes updates slow enough for the race to show (without the rule, about one
    channel in five here came out doubled).
    """
    await _hold_channels(nats_server.url, 1000)
    url = isolated(nats_server.url, live="false")
    receivers = [await connected(url) for _ in range(3)]
    senders = [await connected(url, capacity=500 + i) for i in range(3)]
    try:
        doubled = []
        for n in range(24):
            channel = f"made.{n}"
            await asyncio.gather(
                *(layer.streams.ensure(channel, for_send=False) for layer in receivers),
                *(layer.streams.ensure(channel, for_send=True) for layer in senders),
            )
            for i in range(3):
                await senders[i].send(channel, b"%d" % i)  # stored: acknowledged
            state = await _stream_state(senders[0], channel)
            if state.messages != 3:
                doubled.append((channel, state.messages))
        assert not doubled, f"stored more than sent (3 each): {doubled}"
        # The messages reach the receivers once each, and the settings are a sender's.
        got = await _receive(receivers[0], "made.0", 3)
        assert sorted(got) == [b"0", b"1", b"2"]
        with anyio.move_on_after(0.3):
            extra = await receivers[1].receive_many("made.0", 10)
            pytest.fail(f"received again: {extra}")
        js = senders[0].connection.jetstream()
        config = (await js.stream_info(senders[0].subjects.stream("made.0"))).config
        assert config.max_msgs in (500, 501, 502) and not config.description
    finally:
        for layer in receivers + senders:
            await layer.close()


async def test_a_stream_whose_maker_died_half_way_is_finished_by_a_sender(
    nats_url: str, monkeypatch
) -> None:
    """A process created a channel's stream and died before giving it its subject:
    the next sender waits for it (MAKER_WAIT), then sets the subject itself."""
    from svcbus.layers.nats import streams

    monkeypatch.setattr(streams, "MAKER_WAIT", 0.3)
    url = isolated(nats_url)
    sender, receiver = await connected(url), await connected(url)
    try:
        js = sender.connection.jetstream()
        config = sender.streams.config("orphan")
        await js.add_stream(
            dataclasses.replace(
                config,
                subjects=[f"{sender.subjects.prefix}.newch.orphan"],
                description="svcbus: being made by a process that died",
            )
        )
        started = time.monotonic()
        await sender.send("orphan", b"kept")
        waited = time.monotonic() - started
        assert waited >= 0.3, "the sender should have given the maker its time"
        assert await _receive(receiver, "orphan", 1) == [b"kept"]
        info = await js.stream_info(sender.subjects.stream("orphan"))
        assert info.config.subjects == [sender.subjects.channel_root + "orphan"]
    finally:
        await sender.close()
        await receiver.close()


async def test_giving_back_to_a_full_channel_counts_and_logs_the_loss(
    nats_url: str, caplog
) -> None:
    caplog.set_level(logging.WARNING, logger="svcbus.layers.nats")
    url = isolated(nats_url)
    sender = await connected(url, capacity=2)  # the stream holds 2
    receiver = await connected(url, capacity=5)  # the live buffer holds 5
    try:
        receiver.linger = 0.2
        with anyio.move_on_after(0.3):
            await receiver.receive("giveback")
        for i in range(5):
            await sender.send("giveback", str(i).encode())
        await sender.flush()
        box = receiver.receivers.inboxes["giveback"]
        assert len(box.items) == 5
        for i in range(5, 7):  # spilled: the stream is now full
            await sender.send("giveback", str(i).encode())
        await sender.flush()
        with anyio.fail_after(8):  # linger, the pull expires, the buffer goes back
            while box.live is not None or box.returns is None:
                await anyio.sleep(0.05)
            await receiver.flush()
        stored = (await _stream_state(sender, "giveback")).messages
        assert stored == 2
        # The full stream refused them back: the receiver keeps them (and tries again)...
        assert len(box.items) == 5 and receiver.lost == 0
        await receiver.close()
        # ...and only what it still holds when it closes is lost: counted and logged.
        assert receiver.lost == 5
        assert any("closed with the channel full" in r.getMessage() for r in caplog.records)
    finally:
        await sender.close()
        await receiver.close()


def test_the_nats_py_private_hooks_the_layer_uses_are_there() -> None:
    """layers/nats/wire.py uses two private nats-py hooks (with public fallbacks).

    When a nats-py release moves them this fails: check the fallbacks still keep
    the order they promise, then move the pin in pyproject.toml.
    """
    import inspect

    from nats.aio.client import Client

    assert inspect.iscoroutinefunction(Client._flush_pending)
    assert "force_flush" in inspect.signature(Client._flush_pending).parameters
    assert inspect.iscoroutinefunction(Client._send_unsubscribe)
    assert list(inspect.signature(Client._send_unsubscribe).parameters)[:2] == ["self", "sid"]


# Durable settings from the layer URL -------------------------------------------------------


async def test_durable_settings_from_the_url_reach_the_stream_and_consumer(nats_url: str) -> None:
    url = isolated(
        nats_url,
        durable_max_age="orders.*:3600",
        durable_duplicate_window="orders.*:30",
        durable_ack_wait="orders.*:7",
        durable_replicas="orders.big:3",
    )
    layer = await connected(url)
    try:
        await layer.declare_durable("orders.place", Durability())  # 7 days, 120 s, 30 s, R1
        js = (await layer.conn.client()).jetstream()
        stream = layer.durable.stream("orders.place")
        config = (await js.stream_info(stream)).config
        consumer = (await js.consumer_info(stream, "workers")).config
        assert (config.max_age, config.duplicate_window, consumer.ack_wait) == (3600, 30, 7)
        # R3 asked of a single server: JetStream's refusal names the replicas.
        with pytest.raises(ConfigurationError, match=r"(?i)replica"):
            await layer.declare_durable("orders.big", Durability())
    finally:
        await layer.close()


async def test_a_durable_send_stored_by_a_foreign_stream_raises(nats_url: str) -> None:
    """Publishes carry no ``Nats-Expected-Stream``: the PubAck's stream name is checked.

    The channel's stream deleted and another stream made on its subject: JetStream
    stores the publish there and says so in the PubAck; the send must not return
    as if the channel had it.
    """
    layer = await connected(isolated(nats_url))
    try:
        await layer.declare_durable("orders.place", Durability())
        await layer.send("orders.place", b'{"v":1,"id":"a"}')  # our stream: returns
        js = (await layer.conn.client()).jetstream()
        await js.delete_stream(layer.durable.stream("orders.place"))
        foreign = f"foreign{uuid.uuid4().hex[:8]}"
        await js.add_stream(name=foreign, subjects=[layer.durable.subject("orders.place")])
        try:
            with pytest.raises(LayerError, match=rf"stored by stream '{foreign}'.*declare"):
                await layer.send("orders.place", b'{"v":1,"id":"b"}')
            assert (await js.stream_info(foreign)).state.messages == 1
        finally:
            await js.delete_stream(foreign)
        # Declared again, the channel's own stream takes the subject back.
        await layer.declare_durable("orders.place", Durability())
        await layer.send("orders.place", b'{"v":1,"id":"c"}')
    finally:
        await layer.close()


# The continuous pull ----------------------------------------------------------------------

QUICK_ACK = Durability(ack_wait=1.0)


async def test_messages_held_ahead_of_the_receivers_are_kept_alive(nats_url: str) -> None:
    """A receiver of one asks for two: the one held meanwhile is not redelivered elsewhere."""
    url = isolated(nats_url)
    holder, other = await connected(url), await connected(url)
    try:
        for layer in (holder, other):
            await layer.declare_durable("jobs", QUICK_ACK)
        for n in (1, 2):
            await holder.send("jobs", b'{"v":1,"id":"m%d"}' % n)
        (first,) = await holder.receive_durable("jobs", 1)
        await first.ack()
        await asyncio.sleep(0.3)  # the second arrives and is held
        # Held for over twice ack_wait: its +WPI signals keep it here.
        with anyio.move_on_after(2.5):
            got = await other.receive_durable("jobs", 1)
            pytest.fail(f"a held message was redelivered elsewhere: {got[0].data!r}")
        (second,) = await holder.receive_durable("jobs", 1)
        assert (second.data, second.attempt) == (b'{"v":1,"id":"m2"}', 1)
        await second.ack()
    finally:
        await holder.close()
        await other.close()


async def test_closing_gives_held_messages_back_at_once(nats_url: str) -> None:
    """Held, never handed out: ``close`` naks them, another process gets them before ack_wait."""
    url = isolated(nats_url)
    holder, other = await connected(url), await connected(url)
    try:
        for layer in (holder, other):
            await layer.declare_durable("jobs", Durability(ack_wait=30.0))
        for n in range(4):
            await holder.send("jobs", b'{"v":1,"id":"m%d"}' % n)
        first: list[Delivery] = []
        with anyio.fail_after(5):  # a receive returns what is there: m1 may still be on its way
            while len(first) < 2:
                first += await holder.receive_durable("jobs", 2 - len(first))  # asks for more
        assert [d.data for d in first] == [b'{"v":1,"id":"m0"}', b'{"v":1,"id":"m1"}']
        for delivery in first:
            await delivery.ack()
        await asyncio.sleep(0.3)
        await holder.close()
        got: list[bytes] = []
        with anyio.fail_after(5):  # well inside the 30 s ack_wait
            while len(got) < 2:
                got += [d.data for d in await other.receive_durable("jobs", 2)]
        assert sorted(got) == [b'{"v":1,"id":"m2"}', b'{"v":1,"id":"m3"}']
    finally:
        await holder.close()
        await other.close()


async def test_a_wake_up_for_a_receive_cancelled_meanwhile_goes_to_the_next_one(
    nats_url: str,
) -> None:
    layer = await connected(isolated(nats_url))
    try:
        channel = await layer.new_channel()
        await wake_up_of_a_cancelled_receive_goes_on(
            layer,
            channel,
            lambda ch, m: layer.processes.put_members([ch], m, time.monotonic()),
        )
        box = layer.processes.locals.get(channel)
        assert box is None or (box.signal.idle and not box.waiters)
    finally:
        await layer.close()
