"""The blocking client: the async Bus for scripts, views and tasks, from many threads."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import pytest

from svcbus import Contract, MessageInvalid, RemoteError, Service, SvcbusError
from svcbus.blocking import BlockingBus, connect_blocking


class BSum(Contract):
    total: int


class BAdd(Contract, channel="btest.add", reply=BSum):
    a: int
    b: int


class BNote(Contract, channel="btest.note"):
    text: str


def make_service(notes: list[str]) -> Service:
    service = Service("blocking-test")

    @service.consumes("btest.add")
    async def add(message: BAdd) -> BSum:
        return BSum(total=message.a + message.b)

    @service.consumes("btest.slow_add")
    def slow_add(message: dict) -> dict:  # a plain def consumer, in a worker thread
        return {"total": message["a"] + message["b"]}

    @service.consumes("btest.note")
    async def note(message: BNote) -> None:
        notes.append(message.text)

    @service.consumes("btest.fail")
    async def fail(message: dict) -> None:
        raise LookupError("no such thing")

    return service


LAYERS = [
    pytest.param("memory", id="memory"),
    pytest.param("nats", id="nats", marks=pytest.mark.nats),
    pytest.param("redis", id="redis", marks=pytest.mark.redis),
]


@pytest.fixture(params=LAYERS)
def url(request: pytest.FixtureRequest) -> str:
    if request.param == "memory":
        return f"memory://blocking-{uuid.uuid4().hex[:8]}"
    base = request.getfixturevalue(f"{request.param}_url")
    return f"{base}?prefix=b{uuid.uuid4().hex[:10]}"


@pytest.fixture
def served(url: str) -> Iterator[tuple[BlockingBus, list[str]]]:
    """A client, and the test service running in a client's loop.

    On NATS and Redis the service runs in another client (another "process"). A
    memory:// hub lives in one event loop, so there the service's Runtime runs in
    the client's own portal loop.
    """
    notes: list[str] = []
    with BlockingBus(url) as host, host.serve(make_service(notes)):
        if url.startswith("memory://"):
            yield host, notes
        else:
            with BlockingBus(url) as client:
                yield client, notes


def test_request_send_and_errors(served: tuple[BlockingBus, list[str]]) -> None:
    bus, notes = served
    assert bus.request("btest.add", BAdd(a=2, b=3)) == BSum(total=5)
    assert bus.request("btest.add", {"a": 1, "b": 1}) == BSum(total=2)  # coerced and validated
    assert bus.request("btest.slow_add", {"a": 4, "b": 4}) == {"total": 8}
    bus.send("btest.note", BNote(text="hello"))
    bus.flush()
    with pytest.raises(RemoteError, match="LookupError: no such thing"):
        bus.request("btest.fail", {})
    with pytest.raises(MessageInvalid, match=r"btest\.add"):
        bus.request("btest.add", {"a": "not a number", "b": 1})
    deadline = threading.Event()
    while not notes and not deadline.wait(0.02):
        pass
    assert notes == ["hello"]


def test_groups_and_receive(served: tuple[BlockingBus, list[str]]) -> None:
    bus, _ = served
    group = f"room.b{uuid.uuid4().hex[:8]}"
    members = [bus.new_channel("member") for _ in range(2)]
    for channel in members:
        bus.group_add(group, channel)
    bus.group_send(group, {"n": 1})
    for channel in members:
        assert bus.receive(channel, timeout=5).b == {"n": 1}
    bus.group_discard(group, members[0])
    bus.group_send(group, {"n": 2})
    assert bus.receive(members[1], timeout=5).b == {"n": 2}
    with pytest.raises(TimeoutError):
        bus.receive(members[0], timeout=0.3)


def test_eight_threads_share_one_client(served: tuple[BlockingBus, list[str]]) -> None:
    bus, notes = served
    errors: list[BaseException] = []
    totals: list[tuple[int, int]] = []

    def work(worker: int) -> None:
        try:
            for i in range(25):
                reply = bus.request("btest.add", BAdd(a=worker, b=i))
                totals.append((worker + i, reply.total))
                bus.send("btest.note", BNote(text=f"{worker}.{i}"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    assert len(totals) == 200
    assert all(expected == got for expected, got in totals)
    done = threading.Event()
    while len(notes) < 200 and not done.wait(0.02):
        pass
    assert sorted(notes) == sorted(f"{w}.{i}" for w in range(8) for i in range(25))


def test_lifecycle() -> None:
    bus = BlockingBus("memory://blocking-lifecycle")
    with pytest.raises(SvcbusError, match="not open"):
        bus.send("btest.note", BNote(text="x"))
    bus.open()
    bus.open()  # idempotent
    channel = bus.new_channel("x")
    bus.send(channel, {"k": 1})
    assert bus.receive(channel, timeout=1).b == {"k": 1}
    bus.close()
    bus.close()  # idempotent
    with connect_blocking("memory://blocking-lifecycle", capacity=5) as other:
        assert other.layer.options.capacity == 5
    with pytest.raises(SvcbusError, match="layer URL"):
        BlockingBus(other.layer, capacity=3)
