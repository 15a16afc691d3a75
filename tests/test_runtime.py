"""The async runtime: consuming, replying, bad input, shutdown, and the test harness."""

from __future__ import annotations

import logging

import anyio
import pytest

from svcbus import (
    Bus,
    Context,
    Contract,
    DeadLetter,
    MessageTooLarge,
    RemoteError,
    RequestTimeout,
    Runtime,
    Service,
)
from svcbus.layers.memory import MemoryHub, MemoryLayer
from svcbus.testing import harness

pytestmark = pytest.mark.anyio


class Total(Contract):
    room: str
    count: int


class CountQuery(Contract, channel="rtest.count", reply=Total):
    room: str


class Posted(Contract, channel="rtest.posted"):
    room: str
    text: str


def make_service() -> Service:
    service = Service("counter")
    counts: dict[str, int] = {}

    @service.consumes("rtest.posted", produces=["room.updates"])
    async def posted(message: Posted, ctx: Context) -> None:
        counts[message.room] = counts.get(message.room, 0) + 1
        await ctx.group_send(f"room.{message.room}", {"count": counts[message.room]})

    @service.consumes("rtest.count")
    async def count(query: CountQuery) -> Total:
        if query.room == "boom":
            raise ValueError("no such room")
        return Total(room=query.room, count=counts.get(query.room, 0))

    return service


async def test_harness_drives_a_service():
    async with harness(make_service()) as h:
        watcher = await h.bus.new_channel("watch")
        await h.bus.group_add("room.lobby", watcher)
        await h.send("rtest.posted", Posted(room="lobby", text="hi"))
        call = await h.next_call("rtest.posted")
        assert call.message == Posted(room="lobby", text="hi")
        assert (await h.bus.receive(watcher)).b == {"count": 1}
        reply = await h.request("rtest.count", {"room": "lobby"})
        assert reply == Total(room="lobby", count=1)


async def test_consumer_failure_travels_back_to_the_requester(caplog):
    async with harness(make_service()) as h:
        with pytest.raises(RemoteError, match="ValueError: no such room"):
            await h.request("rtest.count", {"room": "boom"})
        assert h.stats["rtest.count"].failed == 1
        # ...and the consumer keeps serving.
        assert (await h.request("rtest.count", {"room": "x"})).count == 0


async def test_bad_input_is_logged_counted_dead_lettered_and_survived(caplog):
    layer = MemoryLayer(hub=MemoryHub())
    runtime = Runtime(make_service(), layer, concurrency=1, dead_letter="rtest.dead")
    async with runtime.running(), Bus(MemoryLayer(hub=layer.hub)) as client:
        with caplog.at_level(logging.WARNING, logger="svcbus.runtime"):
            await client.layer.send("rtest.posted", b"\xff not json")
            await client.layer.send("rtest.posted", b'{"v":1,"id":"abc1","at":1,"b":{"room":1}}')
            await client.layer.send("rtest.posted", b'{"no":"envelope"}')
            reply = await client.request("rtest.count", {"room": "lobby"})
        assert reply.count == 0
        stats = runtime.stats["rtest.posted"]
        assert (stats.invalid, stats.dead_lettered, stats.processed) == (3, 3, 0)
        messages = [r.getMessage() for r in caplog.records if r.name == "svcbus.runtime"]
        assert len(messages) == 3  # logged once each
        assert "abc1" in messages[1] and "rtest.posted" in messages[1] and "b.text" in messages[1]
        letters = [(await client.receive("rtest.dead", DeadLetter)).b for _ in range(3)]
        assert all(isinstance(letter, DeadLetter) for letter in letters)
        assert letters[1].message_id == "abc1" and letters[1].channel == "rtest.posted"
        assert "not json" in letters[0].payload
        # The consumer is still alive and correct.
        await client.send("rtest.posted", Posted(room="lobby", text="ok"))
        with anyio.fail_after(3):
            while runtime.stats["rtest.posted"].processed < 1:
                await anyio.sleep(0.01)


async def test_expired_messages_are_skipped_and_counted():
    layer = MemoryLayer(hub=MemoryHub())
    runtime = Runtime(make_service(), layer, concurrency=1)
    await layer.send(
        "rtest.posted", b'{"v":1,"id":"old","at":1,"ex":2,"b":{"room":"a","text":"t"}}'
    )
    async with runtime.running():
        with anyio.fail_after(3):
            while runtime.stats["rtest.posted"].expired < 1:
                await anyio.sleep(0.01)
    assert runtime.stats["rtest.posted"].processed == 0


async def test_request_timeout_is_clear():
    async with Bus(MemoryLayer()) as bus:
        with pytest.raises(RequestTimeout, match=r"no reply on 'rtest.nobody' within 0.2s"):
            await bus.request("rtest.nobody", {}, timeout=0.2)


async def test_oversize_message_is_refused_before_sending():
    layer = MemoryLayer()
    layer.options = layer.options.__class__(max_message_size=200)
    async with Bus(layer) as bus:
        with pytest.raises(MessageTooLarge, match="limit is 200"):
            await bus.send("rtest.posted", Posted(room="r", text="x" * 500))


async def test_concurrency_limit_per_consumer():
    service = Service("slow")
    running = 0
    peak = 0

    @service.consumes("rtest.slow", concurrency=3)
    async def slow(message) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await anyio.sleep(0.05)
        running -= 1

    async with harness(service, concurrency=50) as h:
        for i in range(12):
            await h.send("rtest.slow", {"i": i})
        for _ in range(12):
            await h.next_call("rtest.slow")
    assert peak == 3


async def test_graceful_stop_finishes_in_flight_messages():
    service = Service("graceful")
    finished: list[int] = []
    started = anyio.Event()

    @service.consumes("rtest.work")
    async def work(message) -> None:
        started.set()
        await anyio.sleep(0.3)
        finished.append(message["i"])

    layer = MemoryLayer(hub=MemoryHub())
    runtime = Runtime(service, layer, concurrency=2, shutdown_timeout=5)
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: runtime.run(handle_signals=False))
        await runtime.started.wait()
        async with Bus(MemoryLayer(hub=layer.hub)) as client:
            await client.send("rtest.work", {"i": 1})
            await started.wait()
            runtime.stop()
            await client.send("rtest.work", {"i": 2})  # after stop: not taken
    assert finished == [1]
    assert "rtest.work" in layer.hub.queues  # message 2 still waits for the next consumer


async def test_startup_and_shutdown_hooks_run_in_order():
    service = Service("hooks")
    events: list[str] = []

    @service.on_startup
    async def boot(bus: Bus) -> None:
        assert isinstance(bus, Bus)
        events.append("start")

    @service.on_shutdown
    def down() -> None:
        events.append("stop")

    @service.consumes("rtest.noop")
    async def noop(message) -> None: ...

    async with harness(service):
        events.append("running")
    assert events == ["start", "running", "stop"]


async def test_ctx_reply_and_metadata():
    service = Service("meta")
    seen = {}

    @service.consumes("rtest.meta")
    async def meta(message, ctx: Context) -> str:
        seen.update(channel=ctx.channel, id=ctx.message_id, rc=ctx.reply_channel, at=ctx.sent_at)
        await ctx.reply({"early": True})
        return "ignored: already replied"

    async with harness(service) as h:
        assert await h.request("rtest.meta", {"x": 1}) == {"early": True}
    assert seen["channel"] == "rtest.meta" and seen["rc"].startswith("reply.")
    assert seen["id"] and seen["at"] > 0


async def test_undeclared_sends_warn_in_development_mode():
    from svcbus.undeclared import UndeclaredSendWarning, set_enabled

    service = Service("leaky")

    @service.consumes("rtest.in", produces=["rtest.declared"])
    async def relay(message, ctx: Context) -> None:
        await ctx.send("rtest.declared", message)
        await ctx.send("rtest.undeclared", message)

    set_enabled(True)
    try:
        with pytest.warns(UndeclaredSendWarning, match="'rtest.undeclared'") as caught:
            async with harness(service) as h:
                await h.send("rtest.in", {"x": 1})
                await h.next_call("rtest.in")
        assert all("rtest.declared'" not in str(w.message) for w in caught)
    finally:
        set_enabled(None)


async def test_an_invalid_request_gets_an_error_reply_at_once():
    from svcbus.contract import ContractRegistry

    async with harness(make_service()) as h:
        # A client that does not know the contract (another runtime, an old
        # version) sends a request that does not fit it.
        client = Bus(MemoryLayer(hub=h.bus.layer.hub), contracts=ContractRegistry())
        async with client:
            with anyio.fail_after(2):  # well before the 5 s request timeout
                with pytest.raises(RemoteError, match=r"MessageInvalid: .*rtest.count.*room"):
                    await client.request("rtest.count", {"rooom": "typo"})
