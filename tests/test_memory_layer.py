"""Memory-layer specifics beyond the conformance suite: sharing, sweeping, closing."""

from __future__ import annotations

import asyncio

import anyio
import pytest

from svcbus import InvalidChannelName, LayerOptions, open_layer
from svcbus.layers import memory
from svcbus.layers.memory import MemoryHub, MemoryLayer

pytestmark = pytest.mark.anyio


async def test_abandoned_channels_are_swept(monkeypatch):
    monkeypatch.setattr(memory, "SWEEP_INTERVAL", 0.2)
    hub = MemoryHub()
    sender = MemoryLayer(LayerOptions(expiry=0.3), hub=hub)
    owner = MemoryLayer(LayerOptions(expiry=0.3), hub=hub)
    abandoned = [await owner.new_channel() for _ in range(20)]
    for channel in abandoned:
        await sender.send(channel, b"late reply")  # its requester gave up long ago
    await sender.send("mtest.unread", b"x")
    assert len(hub.queues) == 21
    await anyio.sleep(0.5)
    await sender.send("mtest.other", b"y")  # any send may sweep once the interval passed
    assert set(hub.queues) == {"mtest.other"}


async def test_waiting_receivers_keep_their_queue_through_a_sweep(monkeypatch):
    monkeypatch.setattr(memory, "SWEEP_INTERVAL", 0.0)
    layer = MemoryLayer(LayerOptions(expiry=0.1))
    got = []

    async def receive() -> None:
        got.append(await layer.receive("mtest.wait"))

    async with anyio.create_task_group() as tg:
        tg.start_soon(receive)
        await anyio.sleep(0.05)
        await layer.send("mtest.elsewhere", b"sweeps")  # sweep runs: the waiter stays
        await layer.send("mtest.wait", b"delivered")
    assert got == [b"delivered"]


async def test_memory_urls_share_a_hub_by_name():
    a, b = open_layer("memory://mtest-shared"), open_layer("memory://mtest-shared")
    other = open_layer("memory://mtest-other")
    assert a.hub is b.hub and a.hub is not other.hub
    await a.send("mtest.x", b"1")
    assert await b.receive("mtest.x") == b"1"


async def test_closing_drops_the_layers_process_channels_and_memberships():
    hub = MemoryHub()
    layer, other = MemoryLayer(hub=hub), MemoryLayer(hub=hub)
    mine = await layer.new_channel()
    await other.send(mine, b"unread")
    await other.group_add("mtest.group", mine)
    await layer.close()
    assert mine not in hub.queues and "mtest.group" not in hub.groups
    with pytest.raises(Exception, match="closed"):
        await layer.send("mtest.x", b"1")


class Gate:
    """A layer listener that takes what it is offered while ``accept`` is True."""

    def __init__(self) -> None:
        self.accept = True
        self.taken: list[object] = []

    def __call__(self, message: object) -> bool:
        if self.accept:
            self.taken.append(message)
        return self.accept


async def test_a_listener_takes_messages_while_nothing_is_queued():
    layer = MemoryLayer()
    hub = layer.hub
    other = MemoryLayer(hub=hub)
    mine = await layer.new_channel("edge")
    listener = Gate()
    taken = listener.taken

    layer.listen(mine, listener)
    await other.send(mine, b"1")  # another "process" on the hub sends: taken at once
    assert taken == [b"1"]
    listener.accept = False
    await other.send(mine, b"2")  # refused: queued for the receivers
    listener.accept = True
    await other.send(mine, b"3")  # something is queued: 3 queues behind 2, in order
    assert taken == [b"1"]
    assert await layer.receive_many(mine, 10) == [b"2", b"3"]
    await other.send(mine, b"4")
    assert taken == [b"1", b"4"]
    layer.unlisten(mine)
    await other.send(mine, b"5")
    assert await layer.receive(mine) == b"5"
    with pytest.raises(InvalidChannelName):
        other.listen(mine, listener)  # not its channel
    with pytest.raises(InvalidChannelName):
        layer.listen("named.channel", listener)
    layer.listen(mine, listener)
    await layer.close()
    assert mine not in hub.listeners


async def test_a_message_listener_takes_objects_only_while_nothing_is_queued():
    """deliver_locally: a message handed over unencoded must not overtake queued ones."""
    layer = MemoryLayer()
    other = MemoryLayer(hub=layer.hub)
    mine = await layer.new_channel("edge")
    take = Gate()
    objects = take.taken

    assert not other.deliver_locally(mine, "early")  # nobody listens yet
    layer.listen(mine, lambda data: False, take)
    assert other.deliver_locally(mine, "one")  # another layer on the hub sends
    take.accept = False
    assert not other.deliver_locally(mine, "two")  # declined: the sender encodes it
    await other.send(mine, b"queued")  # the bytes listener declines: queued
    take.accept = True
    assert not other.deliver_locally(mine, "three")  # would overtake what is queued
    assert await layer.receive_many(mine, 10) == [b"queued"]
    assert other.deliver_locally(mine, "four")
    assert objects == ["one", "four"]
    layer.unlisten(mine)
    assert not other.deliver_locally(mine, "five")
    layer.listen(mine, lambda data: False, take)
    await layer.close()  # its channels' listeners go with it
    assert not other.deliver_locally(mine, "six") and objects == ["one", "four"]


async def test_a_bus_hands_contracts_to_a_message_listener_and_encodes_the_rest():
    from svcbus import Bus, Contract

    class Note(Contract):
        text: str

    async with Bus("memory://deliver-test") as bus:
        layer = bus.layer
        assert isinstance(layer, MemoryLayer)
        mine = await layer.new_channel("edge")
        objects: list[object] = []
        layer.listen(
            mine, lambda data: False, lambda m: isinstance(m, Note) and not objects.append(m)
        )
        note = Note(text="hi")
        assert await bus.send(mine, note)  # an id, as for any send
        assert objects == [note]  # the object itself: nothing encoded, nothing queued
        await bus.send(mine, {"text": "a dict"})  # not a contract instance: encoded
        envelope = await bus.receive(mine)
        assert envelope.b == {"text": "a dict"}
        with pytest.raises(InvalidChannelName):
            await bus.send("bad name!x", Note(text="no listener: the name is checked"))


async def test_in_process_requests_queue_behind_waiting_messages():
    """svcbus.local: a channel's in-process consumer is offered only while nothing waits there."""
    from svcbus.local import LocalConsumer

    hub = MemoryHub()
    layer, other = MemoryLayer(hub=hub), MemoryLayer(hub=hub)
    consumer = LocalConsumer("mtest.local", dict, 1, layer.options)
    assert layer.serve_locally("mtest.local", consumer)
    assert not other.serve_locally(
        "mtest.local", LocalConsumer("mtest.local", dict, 1, layer.options)
    )
    assert other.local_consumer("mtest.local") is consumer  # one hub: any layer on it
    await other.send("mtest.local", b"first")  # nobody receives yet: it waits
    assert other.local_consumer("mtest.local") is None  # a request must not overtake it
    assert await layer.receive("mtest.local") == b"first"
    assert other.local_consumer("mtest.local") is consumer
    layer.unserve_locally("mtest.local", consumer)
    assert other.local_consumer("mtest.local") is None


async def test_in_process_requests_time_out_on_one_timer_whoever_holds_them():
    """A request not answered within its timeout fails with RequestTimeout, waiting or running.

    Answered ones, finished ones and cancelled ones leave the timer's books; one the
    runtime dropped (a drain that ran out of time) still times out for its requester.
    """
    from svcbus.errors import RequestTimeout
    from svcbus.local import LocalConsumer, LocalReply

    consumer = LocalConsumer("mtest.local", dict, 1, LayerOptions(capacity=10))
    slow = consumer.call({"n": 0}, timeout=0.2)
    quick = consumer.call({"n": 1}, timeout=0.2)
    given_up = consumer.call({"n": 2}, timeout=0.2)
    dropped = consumer.call({"n": 3}, timeout=0.05)  # a shorter timeout: the timer moves up
    later = consumer.call({"n": 4}, timeout=5)
    assert slow and quick and given_up and dropped and later
    consumer.waiting.clear()  # as a drain cancelled mid-way leaves them
    quick.set_result(LocalReply({"ok": True}, b'{"ok":true}'))
    consumer.finished(quick)
    given_up.cancel()
    with pytest.raises(RequestTimeout):
        await asyncio.wait_for(dropped, 1)
    assert not slow.done()  # its own deadline is later
    with pytest.raises(RequestTimeout, match=r"mtest\.local"):
        await asyncio.wait_for(slow, 1)
    assert quick.result().value == {"ok": True}
    assert list(consumer.deadlines.pending) == [later]
    consumer.finished(later)
    assert consumer.deadlines.pending == {} and not later.done()


async def test_in_process_requests_wait_in_order_up_to_the_capacity():
    """One handled at once (concurrency 1) and two waiting (capacity 2); the workers wake in turn."""
    from svcbus.errors import ChannelFull, MessageTooLarge
    from svcbus.local import LocalConsumer, LocalWorker

    options = LayerOptions(capacity=2, max_message_size=100)
    consumer = LocalConsumer("mtest.local", dict, 1, options)

    async def wait_for_work() -> object:
        return await consumer.wait_for_work(LocalWorker())

    worker = asyncio.ensure_future(wait_for_work())
    await asyncio.sleep(0)  # the worker waits
    futures = [consumer.call({"n": n}) for n in range(3)]
    assert [m for m, _ in consumer.waiting] == [{"n": 0}, {"n": 1}, {"n": 2}]  # oldest first
    assert consumer.pending == 3
    await asyncio.wait_for(worker, 1)  # the first call woke it
    with pytest.raises(ChannelFull):
        consumer.call({"n": 3})  # one to handle, two waiting: the capacity
    with pytest.raises(MessageTooLarge):
        consumer.call({"text": "x" * 200})
    assert consumer.call(["not", "a", "dict"]) is None  # another type: through the layer
    assert consumer.pending == 3 and len(consumer.waiting) == 3
    # A worker that was cancelled is not woken (the latest idle, woken first): the next one is.
    idle, gone = (asyncio.ensure_future(wait_for_work()) for _ in range(2))
    await asyncio.sleep(0)
    gone.cancel()
    await asyncio.sleep(0)
    consumer.wake(1)
    await asyncio.wait_for(idle, 1)
    assert all(f is not None and not f.done() for f in futures)  # the runtime settles them
