"""Bus hot paths: the send fast path, typed receive on process channels, ``messages()``."""

from __future__ import annotations

import contextlib
import json

import anyio
import pytest

from svcbus import (
    Bus,
    Context,
    Contract,
    Durability,
    MessageInvalid,
    RequestTimeout,
    Runtime,
    Service,
)
from svcbus.envelope import encode, encode_plain, peek_contract
from svcbus.layer import LayerOptions
from svcbus.layers.memory import MemoryHub, MemoryLayer

pytestmark = pytest.mark.anyio


class Note(Contract, channel="ptest.note", version=2):
    text: str
    n: int = 0


class Reading(Contract):
    """No channel: the kind of contract a reply or an event on a process channel uses."""

    value: float


async def test_repeated_sends_write_the_same_bytes_as_the_first():
    layer = MemoryLayer()
    async with Bus(layer) as bus:
        first = await bus.send("ptest.note", Note(text="a", n=1))  # the long way
        second = await bus.send("ptest.note", Note(text="a", n=1))  # the route
        raw = [await layer.receive("ptest.note") for _ in range(2)]
    for message_id, data in zip((first, second), raw, strict=True):
        sent = json.loads(data)
        expected = encode_plain(
            b'{"text":"a","n":1}', message_id, "Note", 2, sent["at"], sent["ex"]
        )
        assert data == expected
        assert sent["ex"] - sent["at"] == int(layer.options.expiry * 1000)


async def test_the_fast_path_still_checks_what_it_must():
    async with Bus(MemoryLayer()) as bus:
        await bus.send("ptest.note", Note(text="warm"))
        with pytest.raises(MessageInvalid, match="expects Note, got Reading"):
            await bus.send("ptest.note", Reading(value=1.0))
        with pytest.raises(MessageInvalid):
            await bus.send("ptest.note", {"text": 3})
        await bus.send("ptest.note", {"text": "dict"})  # a dict still validates into Note
        await bus.send("ptest.note", Note(text="traced"), trace={"traceparent": "00-x"})
        bodies = [(await bus.receive("ptest.note")) for _ in range(3)]
        assert [e.b.text for e in bodies] == ["warm", "dict", "traced"]
        assert bodies[2].tc == {"traceparent": "00-x"}


async def test_declaring_a_channel_durable_later_changes_the_expiry_of_its_sends():
    layer = MemoryLayer()
    async with Bus(layer) as bus:
        await bus.send("ptest.note", Note(text="at most once"))
        await bus.declare_durable("ptest.note", Durability(max_age=3600))
        await bus.send("ptest.note", Note(text="durable"))
        plain = json.loads(await layer.receive("ptest.note"))
        (delivery,) = await layer.receive_durable("ptest.note", 1)
        stored = json.loads(delivery.data)
    assert plain["ex"] - plain["at"] == int(layer.options.expiry * 1000)
    assert stored["ex"] - stored["at"] == 3_600_000


async def test_a_process_channel_gives_the_contract_its_message_names():
    async with Bus(MemoryLayer()) as bus:
        inbox = await bus.new_channel("inbox")
        await bus.send(inbox, Reading(value=2.5))
        await bus.send(inbox, Note(text="hi"))
        await bus.send(inbox, {"plain": True})
        assert (await bus.receive(inbox)).b == Reading(value=2.5)
        assert (await bus.receive(inbox)).b == Note(text="hi")
        assert (await bus.receive(inbox)).b == {"plain": True}
        await bus.send(inbox, Reading(value=1.0))
        # An explicit body_type still wins.
        assert (await bus.receive(inbox, dict)).b == {"value": 1.0}


async def test_a_process_message_that_breaks_its_named_contract_is_invalid():
    layer = MemoryLayer()
    async with Bus(layer) as bus:
        inbox = await bus.new_channel("inbox")
        await layer.send(
            inbox, b'{"v":1,"id":"x1","ct":"Reading","cv":1,"at":1,"b":{"value":"no"}}'
        )
        with pytest.raises(MessageInvalid, match="does not fit Reading"):
            await bus.receive(inbox)


def test_peek_reads_only_the_head_svcbus_writes():
    assert peek_contract(b'{"v":1,"id":"a1","ct":"Note","cv":2,"at":1,"b":{}}') == ("Note", 2)
    assert peek_contract(b'{"v":1,"id":"a1","at":1,"b":{"ct":"Note"}}') is None
    assert peek_contract(b'{"id":"a1","v":1,"ct":"Note","cv":2,"b":{}}') is None
    assert peek_contract(b'{"v":1,"id":"a\\"","ct":"Note","cv":2,"b":{}}') is None
    assert peek_contract(b'{"v":1,"id":"a1","ct":"Note","cv":x}') is None
    assert peek_contract(b'{"v":1,"id":"a1","ct":"N') is None


async def test_messages_iterates_and_leaves_the_rest_on_the_channel():
    layer = MemoryLayer()
    async with Bus(layer) as bus:
        for n in range(5):
            await bus.send("ptest.note", Note(text="m", n=n))
        seen = []
        async for envelope in bus.messages("ptest.note"):
            seen.append(envelope.b.n)
            if len(seen) == 3:
                break
        assert seen == [0, 1, 2]
        # Nothing was taken ahead: the next receive gets the fourth.
        assert (await bus.receive("ptest.note")).b.n == 3


async def test_runtime_runs_on_an_open_bus_and_leaves_it_open():
    hub = MemoryHub()
    service = Service("borrower")
    got = []

    @service.consumes("ptest.note")
    async def note(message: Note) -> None:
        got.append(message.n)

    async with Bus(MemoryLayer(hub=hub)) as bus:
        runtime = Runtime(service, bus, concurrency=1)
        assert runtime.bus is bus
        async with runtime.running():
            await bus.send("ptest.note", Note(text="x", n=7))
            with anyio.fail_after(5):
                while not got:
                    await anyio.sleep(0.01)
        # The runtime stopped; the bus it borrowed is still open and usable.
        await bus.send("ptest.note", Note(text="after", n=8))
        assert (await bus.receive("ptest.note")).b.n == 8
    assert got == [7]


async def test_a_receive_loop_on_a_full_channel_still_lets_other_tasks_run():
    layer = MemoryLayer(LayerOptions(capacity=500))
    for n in range(200):
        await layer.send("ptest.flood", b"%d" % n)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await anyio.sleep(0)

    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        await anyio.sleep(0)
        before = ticks
        for _ in range(200):
            await layer.receive("ptest.flood")
        # Every message is there at once, yet the loop yielded along the way.
        assert ticks - before >= 200 // 32
        tg.cancel_scope.cancel()


async def test_messages_on_a_process_channel_types_each_by_its_contract():
    async with Bus(MemoryLayer()) as bus:
        inbox = await bus.new_channel("inbox")
        await bus.send(inbox, Reading(value=0.5))
        await bus.send(inbox, {"plain": 1})
        bodies = []
        async for envelope in bus.messages(inbox):
            bodies.append(envelope.b)
            if len(bodies) == 2:
                break
        assert bodies == [Reading(value=0.5), {"plain": 1}]


async def test_a_reply_channel_serves_again_only_after_its_reply_came():
    service = Service("ptest-reuse")
    release = anyio.Event()

    @service.consumes("ptest.ask")
    async def ask(message: dict, ctx: Context) -> dict:
        if message.get("wait"):
            await release.wait()
        return {"rc": ctx.reply_channel}

    layer = MemoryLayer(LayerOptions(expiry=0.5))
    async with Bus(layer) as bus, Runtime(service, bus).running():
        first = (await bus.request("ptest.ask", {}))["rc"]
        assert (await bus.request("ptest.ask", {}))["rc"] == first
        with pytest.raises(RequestTimeout):
            await bus.request("ptest.ask", {"wait": True}, timeout=0.2)
        release.set()
        # The channel of the request that gave up is not used again: its late reply
        # lands there, unread, and expires counted as lost.
        assert (await bus.request("ptest.ask", {}))["rc"] != first
        await anyio.sleep(0.7)
        await bus.request("ptest.ask", {})  # a send sweeps expired messages
        assert layer.lost == 1


async def test_a_request_cancelled_from_outside_is_cancelled_not_timed_out():
    service = Service("ptest-cancel")

    @service.consumes("ptest.never")
    async def never(message: dict) -> dict:
        await anyio.sleep(10)
        return {}

    async with Bus(MemoryLayer()) as bus, Runtime(service, bus, shutdown_timeout=0).running():
        with anyio.move_on_after(0.1) as outer:
            await bus.request("ptest.never", {}, timeout=5)
        assert outer.cancelled_caught
        # The caller's deadline and the request's at the same moment: either
        # outcome, but the caller's cancellation is never swallowed into a hang.
        started = anyio.current_time()
        with anyio.move_on_after(0.2), contextlib.suppress(RequestTimeout):
            await bus.request("ptest.never", {}, timeout=0.2)
        assert anyio.current_time() - started < 1.0
        started = anyio.current_time()
        with pytest.raises(RequestTimeout):
            await bus.request("ptest.never", {}, timeout=0.1)
        assert anyio.current_time() - started < 1.0


async def test_repeated_requests_write_the_same_bytes_as_the_first():
    layer = MemoryLayer()
    asked: list[bytes] = []
    async with Bus(layer) as bus, anyio.create_task_group() as tg:

        async def answer() -> None:
            while True:
                data = await layer.receive("ptest.asked")
                asked.append(data)
                sent = json.loads(data)
                await bus.reply(sent["rc"], sent["id"], {"ok": len(asked)})

        tg.start_soon(answer)
        for n in (1, 2, 3):  # the long way, then the route
            assert await bus.request("ptest.asked", Reading(value=n), reply_type=dict) == {"ok": n}
        tg.cancel_scope.cancel()
    for n, data in enumerate(asked, 1):
        sent = json.loads(data)
        expected = encode(
            b'{"value":%d.0}' % n,
            id=sent["id"],
            contract="Reading",
            version=1,
            sent_at=sent["at"],
            expires_at=sent["at"] + int(layer.options.expiry * 1000),
            reply_channel=sent["rc"],
        )
        assert data == expected


async def test_replies_write_what_encode_writes():
    layer = MemoryLayer()
    async with Bus(layer) as bus:
        inbox = await bus.new_channel("inbox")
        await bus.reply(inbox, "req-1", Reading(value=1.5))
        await bus.reply(inbox, 'odd "id"', {"plain": True})
        await bus.reply(inbox, "req-3", {"value": 2}, contract=Reading)  # validated the long way
        raw = [await layer.receive(inbox) for _ in range(3)]
    bodies = [
        (b'{"value":1.5}', "Reading"),
        (b'{"plain":true}', None),
        (b'{"value":2.0}', "Reading"),
    ]
    for data, (body, contract), request_id in zip(
        raw, bodies, ("req-1", 'odd "id"', "req-3"), strict=True
    ):
        sent = json.loads(data)
        assert sent["re"] == request_id
        expected = encode(
            body,
            id=sent["id"],
            contract=contract,
            version=1,
            sent_at=sent["at"],
            expires_at=sent["at"] + int(layer.options.expiry * 1000),
            reply_to=request_id,
        )
        assert data == expected
