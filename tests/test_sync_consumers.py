"""Plain ``def`` consumers: run in worker threads with a blocking context."""

from __future__ import annotations

import threading
import time

import anyio
import pytest

from svcbus import Contract, Runtime, Service
from svcbus.context import BlockingContext
from svcbus.layers.memory import MemoryHub, MemoryLayer
from svcbus.testing import harness

pytestmark = pytest.mark.anyio


class Sum(Contract):
    total: int


class Add(Contract, channel="stest.add", reply=Sum):
    a: int
    b: int


def make_service() -> Service:
    service = Service("mixed")

    @service.consumes("stest.add")
    def add(message: Add) -> Sum:
        assert threading.current_thread() is not threading.main_thread()
        return Sum(total=message.a + message.b)

    @service.consumes("stest.fanout")
    def fanout(message: dict, ctx: BlockingContext) -> None:
        reply = ctx.request("stest.add", Add(a=message["n"], b=1))
        ctx.group_send("stest.watchers", {"n": reply.total})

    @service.consumes("stest.async")
    async def asynchronous(message: dict) -> dict:
        return {"echo": message}

    @service.consumes("stest.fail")
    def fail(message: dict) -> None:
        raise RuntimeError("sync consumer broke")

    return service


async def test_sync_consumer_replies():
    async with harness(make_service()) as h:
        assert await h.request("stest.add", Add(a=2, b=3)) == Sum(total=5)


async def test_sync_and_async_consumers_mix_and_sync_context_works():
    async with harness(make_service(), concurrency=2) as h:
        watcher = await h.bus.new_channel("watch")
        await h.bus.group_add("stest.watchers", watcher)
        await h.send("stest.fanout", {"n": 41})
        with anyio.fail_after(5):
            assert (await h.bus.receive(watcher)).b == {"n": 42}
        assert await h.request("stest.async", {"x": 1}) == {"echo": {"x": 1}}


async def test_sync_failure_is_reported_and_survived():
    async with harness(make_service()) as h:
        with pytest.raises(Exception, match="sync consumer broke"):
            await h.request("stest.fail", {})
        await h.bus.layer.send("stest.add", b"not json")
        assert (await h.request("stest.add", Add(a=1, b=1))).total == 2
        assert h.stats["stest.fail"].failed == 1
        assert h.stats["stest.add"].invalid == 1


async def test_sync_consumers_do_not_block_the_event_loop():
    service = Service("slow-sync")

    @service.consumes("stest.sleep", concurrency=4)
    def sleepy(message: dict) -> None:
        time.sleep(0.3)

    layer = MemoryLayer(hub=MemoryHub())
    runtime = Runtime(service, layer, threads=4)
    async with runtime.running():
        for i in range(4):
            await layer.send("stest.sleep", b'{"v":1,"id":"%d","at":1,"b":{}}' % i)
        ticks = 0
        started = time.monotonic()
        while runtime.stats["stest.sleep"].processed < 4:
            await anyio.sleep(0.01)
            ticks += 1
        elapsed = time.monotonic() - started
    assert ticks > 10, "the loop kept running while threads slept"
    assert elapsed < 1.0, f"4 sleeps of 0.3 s on 4 threads took {elapsed:.2f}s"
