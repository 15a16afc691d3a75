"""The layer conformance suite: every layer passes these, against a real server.

Each test gets ``make_layer`` (open connected layers; each acts as a separate
process) and ``uniq`` (test-unique names). The memory layer runs them in one
process; NATS and Redis run them against real servers.
"""

from __future__ import annotations

import contextlib

import anyio
import pytest

from svcbus import (
    Bus,
    ChannelFull,
    Context,
    Contract,
    InvalidChannelName,
    MessageTooLarge,
    RequestTimeout,
    Runtime,
    Service,
)

pytestmark = pytest.mark.anyio


async def receive_within(layer, channel: str, seconds: float = 3.0) -> bytes:
    with anyio.fail_after(seconds):
        return await layer.receive(channel)


async def nothing_within(layer, channel: str, seconds: float = 0.3) -> None:
    with anyio.move_on_after(seconds):
        got = await layer.receive(channel)
        pytest.fail(f"expected no message on {channel}, got {got!r}")


async def test_send_receive_round_trip(make_layer, uniq):
    layer = await make_layer()
    await layer.send(uniq("a"), b'{"x":1}')
    assert await receive_within(layer, uniq("a")) == b'{"x":1}'


async def test_binary_safe_payload(make_layer, uniq):
    layer = await make_layer()
    payload = bytes(range(256)) * 4
    await layer.send(uniq("bin"), payload)
    assert await receive_within(layer, uniq("bin")) == payload


async def test_fifo_per_sender_and_channel(make_layer, uniq):
    sender, receiver = await make_layer(), await make_layer()
    for i in range(50):
        await sender.send(uniq("fifo"), str(i).encode())
    got = [int(await receive_within(receiver, uniq("fifo"))) for _ in range(50)]
    assert got == list(range(50))


async def test_receive_many_returns_a_fifo_batch(make_layer, uniq):
    layer = await make_layer()
    for i in range(10):
        await layer.send(uniq("batch"), str(i).encode())
    await layer.flush()
    await anyio.sleep(0.1)
    got: list[bytes] = []
    with anyio.fail_after(3):
        while len(got) < 10:
            batch = await layer.receive_many(uniq("batch"), 4)
            assert 1 <= len(batch) <= 4
            got += batch
    assert got == [str(i).encode() for i in range(10)]


async def test_channel_full_at_capacity(make_layer, uniq):
    sender = await make_layer(capacity=3)
    receiver = await make_layer(capacity=3)
    # A receiver must exist for layers that enforce capacity at the receiving side.
    async with anyio.create_task_group() as tg:
        tg.start_soon(_park_receiver, receiver, uniq("other"))
        for i in range(3):
            await sender.send(uniq("cap"), str(i).encode())
        await sender.flush()
        # The refused send raises itself, and flush has nothing to report.
        with pytest.raises(ChannelFull, match="capacity"):
            await sender.send(uniq("cap"), b"too many")
        await sender.flush()
        # Another channel is unaffected, and the queued messages are intact.
        await sender.send(uniq("other"), b"fine")
        tg.cancel_scope.cancel()
    assert await receive_within(receiver, uniq("cap")) == b"0"


async def _park_receiver(layer, channel: str) -> None:
    await anyio.sleep_forever()


async def test_channel_capacity_patterns(make_layer, uniq):
    layer = await make_layer(capacity=100, channel_capacity={uniq("small.*"): 1})
    assert layer.options.capacity_for(uniq("small.x")) == 1
    assert layer.options.capacity_for(uniq("big")) == 100
    await layer.send(uniq("small.x"), b"1")
    await layer.flush()
    with pytest.raises(ChannelFull):
        for _ in range(3):
            await layer.send(uniq("small.x"), b"2")
            await layer.flush()
            await anyio.sleep(0.05)
    for _ in range(5):
        await layer.send(uniq("big"), b"ok")


async def test_expired_messages_are_not_delivered(make_layer, uniq):
    layer = await make_layer(expiry=0.5)
    async with Bus(layer) as bus:
        await bus.send(uniq("exp"), {"n": 1})
        await anyio.sleep(1.0)
        await bus.send(uniq("exp"), {"n": 2})
        with anyio.fail_after(3):
            envelope = await bus.receive(uniq("exp"))
    assert envelope.b == {"n": 2}


async def test_process_specific_channels(make_layer, uniq):
    owner, other = await make_layer(), await make_layer()
    first, second = await owner.new_channel("reply"), await owner.new_channel("reply")
    assert first != second and "!" in first and first.startswith("reply.")
    await other.send(first, b"to-first")
    await other.send(second, b"to-second")
    assert await receive_within(owner, second) == b"to-second"
    assert await receive_within(owner, first) == b"to-first"


async def test_process_specific_channel_is_not_received_elsewhere(make_layer, uniq):
    owner, other = await make_layer(), await make_layer()
    mine = await owner.new_channel()
    with contextlib.suppress(InvalidChannelName):  # refusing outright is also correct
        await nothing_within(other, mine)
    await other.send(mine, b"x")
    assert await receive_within(owner, mine) == b"x"


async def test_named_channel_is_load_balanced_exactly_once(make_layer, uniq):
    sender, a, b = await make_layer(capacity=1000), await make_layer(), await make_layer()
    received: dict[str, list[bytes]] = {"a": [], "b": []}
    total = 200

    async def drain(name: str, layer) -> None:
        while True:
            received[name].append(await layer.receive(uniq("work")))

    async with anyio.create_task_group() as tg:
        tg.start_soon(drain, "a", a)
        tg.start_soon(drain, "b", b)
        await anyio.sleep(0.2)  # both receivers are waiting
        for i in range(total):
            await sender.send(uniq("work"), str(i).encode())
        with anyio.fail_after(5):
            while len(received["a"]) + len(received["b"]) < total:
                await anyio.sleep(0.02)
        await anyio.sleep(0.2)  # nothing extra arrives
        tg.cancel_scope.cancel()
    everything = received["a"] + received["b"]
    assert sorted(everything, key=int) == [str(i).encode() for i in range(total)]
    assert received["a"] and received["b"], "both receivers should share the work"


async def test_cancelled_receive_loses_nothing(make_layer, uniq):
    layer = await make_layer()
    with anyio.move_on_after(0.2):
        await layer.receive(uniq("cancel"))
    await layer.send(uniq("cancel"), b"kept")
    assert await receive_within(layer, uniq("cancel")) == b"kept"


async def test_group_send_reaches_every_member_across_processes(make_layer, uniq):
    a, b, sender = await make_layer(), await make_layer(), await make_layer()
    a1, a2, b1 = await a.new_channel(), await a.new_channel(), await b.new_channel()
    # Membership is added by a process that owns none of the channels.
    for channel in (a1, a2, b1):
        await sender.group_add(uniq("room"), channel)
    await sender.group_send(uniq("room"), b"hello")
    assert await receive_within(a, a1) == b"hello"
    assert await receive_within(a, a2) == b"hello"
    assert await receive_within(b, b1) == b"hello"
    await nothing_within(a, a1)


async def test_group_members_waiting_receives_keep_working_across_many_messages(make_layer, uniq):
    # Each member re-arms its receive as soon as it has a message (as an edge's
    # connection tasks do): every message reaches every member once, in order.
    owner, sender = await make_layer(), await make_layer()
    members = [await owner.new_channel() for _ in range(5)]
    for channel in members:
        await sender.group_add(uniq("many"), channel)
    total = 200
    received: dict[str, list[bytes]] = {channel: [] for channel in members}

    async def member(channel: str) -> None:
        for _ in range(total):
            received[channel].append(await owner.receive(channel))

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            for channel in members:
                tg.start_soon(member, channel)
            for i in range(total):
                await sender.group_send(uniq("many"), str(i).encode())
                if i % 20 == 0:
                    await anyio.sleep(0.01)  # members catch up and wait again
    expected = [str(i).encode() for i in range(total)]
    assert all(got == expected for got in received.values())


async def test_cancelled_waiting_receive_on_a_process_channel_loses_nothing(make_layer, uniq):
    owner, sender = await make_layer(), await make_layer()
    channel = await owner.new_channel()
    await sender.group_add(uniq("cancel"), channel)
    # A waiting receive is cancelled, again and again, with a second one waiting behind it.
    for i in range(3):
        async with anyio.create_task_group() as tg:
            tg.start_soon(owner.receive, channel)
            await anyio.sleep(0.05)
            tg.cancel_scope.cancel()
        await sender.group_send(uniq("cancel"), b"m%d" % i)
        await sender.send(channel, b"d%d" % i)
        assert await receive_within(owner, channel) == b"m%d" % i
        assert await receive_within(owner, channel) == b"d%d" % i
    # Two receivers wait on one channel; the first is cancelled: the other gets the message.
    got: list[bytes] = []

    async def keep(into: list[bytes]) -> None:
        into.append(await owner.receive(channel))

    async with anyio.create_task_group() as outer:
        async with anyio.create_task_group() as first:
            first.start_soon(owner.receive, channel)
            await anyio.sleep(0.05)
            outer.start_soon(keep, got)
            await anyio.sleep(0.05)
            first.cancel_scope.cancel()
        await sender.group_send(uniq("cancel"), b"last")
        with anyio.fail_after(3):
            while not got:
                await anyio.sleep(0.01)
    assert got == [b"last"]
    await nothing_within(owner, channel)


async def test_group_discard(make_layer, uniq):
    a, sender = await make_layer(), await make_layer()
    stays, leaves = await a.new_channel(), await a.new_channel()
    await sender.group_add(uniq("g"), stays)
    await sender.group_add(uniq("g"), leaves)
    await sender.group_discard(uniq("g"), leaves)
    await sender.group_discard(uniq("g"), "never.added")  # no error
    await sender.group_send(uniq("g"), b"m")
    assert await receive_within(a, stays) == b"m"
    await nothing_within(a, leaves)


async def test_group_membership_expires(make_layer, uniq):
    a = await make_layer(group_expiry=1.0)
    member = await a.new_channel()
    await a.group_add(uniq("g"), member)
    await anyio.sleep(1.6)
    await a.group_send(uniq("g"), b"late")
    await a.send(member, b"direct")
    assert await receive_within(a, member) == b"direct"


async def test_group_add_again_renews_membership(make_layer, uniq):
    a = await make_layer(group_expiry=1.5)
    member = await a.new_channel()
    await a.group_add(uniq("g"), member)
    await anyio.sleep(1.0)
    await a.group_add(uniq("g"), member)
    await anyio.sleep(1.0)
    await a.group_send(uniq("g"), b"still")
    assert await receive_within(a, member) == b"still"


async def test_group_send_never_raises_channel_full(make_layer, uniq):
    a = await make_layer(capacity=2)
    member = await a.new_channel()
    await a.group_add(uniq("g"), member)
    for i in range(6):
        await a.group_send(uniq("g"), str(i).encode())
    await a.flush()
    await anyio.sleep(0.2)
    got = []
    with anyio.move_on_after(0.5):
        while True:
            got.append(await a.receive(member))
    assert 1 <= len(got) <= 2
    assert got[0] == b"0"


async def test_a_process_channel_is_one_queue_for_direct_and_group_messages(make_layer, uniq):
    owner = await make_layer(capacity=3)
    sender = await make_layer(capacity=3)
    mine = await owner.new_channel("one")
    await owner.group_add(uniq("g1q"), mine)
    # One sender: a direct message, then four through the group. Nobody receives yet.
    await sender.send(mine, b"0")
    for i in range(1, 5):
        await sender.group_send(uniq("g1q"), str(i).encode())
    await sender.flush()
    await anyio.sleep(0.5)  # everything has arrived (or been dropped) at the owner
    got: list[bytes] = []
    with anyio.move_on_after(0.5):
        while True:
            got += await owner.receive_many(mine, 10)
    # One capacity for both paths, and the sender's order kept across them.
    assert got == [b"0", b"1", b"2"]


async def test_group_send_to_empty_group_is_fine(make_layer, uniq):
    a = await make_layer()
    await a.group_send(uniq("nobody"), b"x")


@pytest.mark.parametrize(
    "name",
    [
        "",
        "has space",
        "a.*",
        "a.>",
        ">",
        "a..b",
        ".a",
        "a.",
        "UPPER",
        "tab\tname",
        "x" * 101,
        "a!b!c",
    ],
)
async def test_bad_channel_names_are_rejected(make_layer, name):
    layer = await make_layer()
    with pytest.raises(InvalidChannelName):
        await layer.send(name, b"x")
    with pytest.raises(InvalidChannelName):
        await layer.receive(name)
    with pytest.raises(InvalidChannelName):
        await layer.group_add("ok.group", name)


@pytest.mark.parametrize("name", ["", "a.*", "a b", "a!b", "g.>"])
async def test_bad_group_names_are_rejected(make_layer, name):
    layer = await make_layer()
    with pytest.raises(InvalidChannelName):
        await layer.group_add(name, "ok.channel")
    with pytest.raises(InvalidChannelName):
        await layer.group_send(name, b"x")


async def test_message_size_limit(make_layer, uniq):
    layer = await make_layer(max_message_size=1000)
    with pytest.raises(MessageTooLarge, match="1000"):
        await layer.send(uniq("big"), b"x" * 1001)
    with pytest.raises(MessageTooLarge):
        await layer.group_send(uniq("big"), b"x" * 1001)
    await layer.send(uniq("big"), b"x" * 1000)
    assert len(await receive_within(layer, uniq("big"))) == 1000


class Mixed(Contract):
    text: str
    data: bytes
    nested: dict[str, list[int]]


async def test_copy_semantics_and_types_round_trip(make_layer, uniq):
    layer = await make_layer()
    async with Bus(layer) as bus:
        message = {"items": [1, 2], "name": "before"}
        await bus.send(uniq("copy"), message)
        message["items"].append(3)
        message["name"] = "after"
        envelope = await bus.receive(uniq("copy"))
        assert envelope.b == {"items": [1, 2], "name": "before"}

        original = Mixed(
            text="nul\x00 unicode ✓ 日本語 \U0001f680", data=b"\x00\xff\xfe", nested={"k": [1]}
        )
        await bus.send(uniq("types"), original)
        received = (await bus.receive(uniq("types"), Mixed)).b
        assert received == original
        assert type(received.text) is str and type(received.data) is bytes


class Echo(Contract):
    text: str


async def test_request_reply_across_processes(make_layer, uniq):
    server_layer, client_layer = await make_layer(), await make_layer()
    service = Service("echo")

    @service.consumes(uniq("echo"))
    async def echo(message: dict) -> Echo:
        return Echo(text=message["text"].upper())

    async with Runtime(service, server_layer, concurrency=2).running(), Bus(client_layer) as bus:
        replies = await _gather(
            [bus.request(uniq("echo"), {"text": f"hi {i}"}, reply_type=Echo) for i in range(10)]
        )
    assert [r.text for r in replies] == [f"HI {i}" for i in range(10)]


async def test_a_late_reply_never_answers_a_later_request(make_layer, uniq):
    server_layer, client_layer = await make_layer(), await make_layer()
    service = Service("late")
    release = anyio.Event()

    @service.consumes(uniq("late"))
    async def answer(message: dict) -> Echo:
        if message["text"] == "late":
            await release.wait()  # answers once its requester has given up
        return Echo(text=message["text"])

    async with Runtime(service, server_layer, concurrency=2).running(), Bus(client_layer) as bus:
        assert (await bus.request(uniq("late"), {"text": "warm"}, reply_type=Echo)).text == "warm"
        with pytest.raises(RequestTimeout):
            await bus.request(uniq("late"), {"text": "late"}, reply_type=Echo, timeout=0.3)
        release.set()
        for i in range(5):
            reply = await bus.request(uniq("late"), {"text": f"next {i}"}, reply_type=Echo)
            assert reply.text == f"next {i}"


async def test_messages_after_a_reply_do_not_disturb_the_next_request(make_layer, uniq):
    """A requester's reply channel may serve its next request: what else lands there is dropped."""
    server_layer, client_layer = await make_layer(), await make_layer()
    service = Service("chatty")

    @service.consumes(uniq("chatty"))
    async def chatty(message: dict, ctx: Context) -> None:
        assert ctx.reply_channel is not None
        await ctx.send(ctx.reply_channel, {"before": "the reply"})
        await ctx.reply(Echo(text=message["text"]))
        await ctx.send(ctx.reply_channel, {"after": "the reply"})  # fits no Echo

    async with Runtime(service, server_layer).running(), Bus(client_layer) as bus:
        for i in range(5):
            reply = await bus.request(uniq("chatty"), {"text": f"n{i}"}, reply_type=Echo)
            assert reply.text == f"n{i}"


async def _gather(coroutines):
    results = [None] * len(coroutines)

    async def run(i, coroutine):
        results[i] = await coroutine

    async with anyio.create_task_group() as tg:
        for i, coroutine in enumerate(coroutines):
            tg.start_soon(run, i, coroutine)
    return results
