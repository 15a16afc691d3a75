"""The edge's in-place stepping (svcbus.edge.stepping) and the bus sends built on it.

A send that finishes at once needs no timer; one that waits gets the
patience that is left and no more; a cancelled one sees its cancellation
where it awaited, like a task would.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import anyio
import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from svcbus import Bus, LayerOptions
from svcbus.edge import EdgeApp, Limits
from svcbus.edge.delivery import DELIVERED, TRY_AGAIN_LATER, Delivery
from svcbus.edge.stepping import DONE, coroutine_of, finish, first_step
from svcbus.layer import Layer
from svcbus.layers.memory import MemoryLayer

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]


async def test_a_coroutine_that_never_waits_is_done_in_one_step() -> None:
    ran: list[int] = []

    async def quick() -> None:
        ran.append(1)

    assert first_step(coroutine_of(quick())) is DONE
    assert ran == [1]


async def test_a_suspended_coroutine_is_finished_in_the_callers_task() -> None:
    gate: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    got: list[int] = []

    async def waits() -> None:
        await asyncio.sleep(0)
        got.append(await gate)

    coro = coroutine_of(waits())
    waiting_on = first_step(coro)
    assert waiting_on is None  # the bare yield of sleep(0)
    asyncio.get_running_loop().call_later(0.01, gate.set_result, 7)
    await finish(coro, waiting_on)
    assert got == [7]


async def test_cancelling_the_caller_cancels_the_awaited_future() -> None:
    gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    seen: list[str] = []

    async def waits() -> None:
        try:
            await gate
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    coro = coroutine_of(waits())
    waiting_on = first_step(coro)
    with anyio.move_on_after(0.05) as scope:
        await finish(coro, waiting_on)
    assert scope.cancelled_caught
    assert seen == ["cancelled"]
    assert gate.cancelled()  # whoever would complete it sees nobody waits


class _Layer(MemoryLayer):
    """A memory layer whose sends take ``delay`` seconds (0: never suspend)."""

    def __init__(self, delay: float) -> None:
        super().__init__(LayerOptions())
        self.delay = delay
        self.sent: list[bytes] = []

    async def send(self, channel: str, message: bytes) -> None:
        if self.delay:
            await asyncio.sleep(self.delay)
        self.sent.append(message)


def _delivery(layer: Layer) -> Delivery:
    edge: Any = SimpleNamespace(bus=SimpleNamespace(layer=layer), stats=SimpleNamespace(retried=0))
    return Delivery(edge)


@pytest.mark.parametrize("delay", [0.0, 0.01])
async def test_a_send_within_the_patience_is_delivered(delay: float) -> None:
    layer = _Layer(delay)
    assert await _delivery(layer).send("chat.receive", b"x", 1.0) == DELIVERED
    assert layer.sent == [b"x"]


async def test_a_send_that_hangs_past_the_patience_earns_1013() -> None:
    layer = _Layer(5.0)
    started = asyncio.get_running_loop().time()
    assert await _delivery(layer).send("chat.receive", b"x", 0.1) == TRY_AGAIN_LATER
    assert asyncio.get_running_loop().time() - started < 1.0
    assert layer.sent == []


async def test_a_hanging_bus_gets_503_for_http_and_websocket_within_the_patience(serve) -> None:
    """The patience still bounds sends that suspend: the edge answers 503, it does not hang."""
    from edge_service import routes

    layer = _Layer(30.0)
    async with Bus(layer) as bus:
        limits = Limits(accept_timeout=0.3, request_timeout=0.3)
        addr = await serve(EdgeApp(routes, layer=bus, limits=limits))
        started = asyncio.get_running_loop().time()
        async with httpx.AsyncClient(base_url=f"http://{addr}", timeout=10) as client:
            response = await client.get("/api/add/1?b=1")
        assert response.status_code == 503
        with pytest.raises(InvalidStatus) as info:
            async with connect(f"ws://{addr}/ws/lobby"):
                pass
        assert info.value.response.status_code == 503
        assert asyncio.get_running_loop().time() - started < 5.0
        assert layer.sent == []


# -- the shared deadline timer of HTTP requests (svcbus.deadlines) -------------


async def test_a_watched_region_past_its_deadline_is_cancelled_and_told_so() -> None:
    from svcbus.deadlines import Deadlines

    deadlines = Deadlines()
    early = deadlines.watch(5.0)
    watch = deadlines.watch(0.05)  # an earlier deadline than the armed one re-arms the timer
    started = asyncio.get_running_loop().time()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.sleep(5)
    assert watch.expired()
    deadlines.release(watch)
    assert asyncio.get_running_loop().time() - started < 1.0
    assert not early.fired
    deadlines.release(early)
    await asyncio.sleep(0)  # the task goes on: the cancellation was taken back


async def test_a_released_watch_cancels_nothing() -> None:
    from svcbus.deadlines import Deadlines

    deadlines = Deadlines()
    watch = deadlines.watch(0.02)
    deadlines.release(watch)
    await asyncio.sleep(0.1)
    assert not watch.fired
    assert not watch.expired()


async def test_a_cancellation_from_elsewhere_is_not_taken_for_the_deadline() -> None:
    from svcbus.deadlines import Deadlines

    deadlines = Deadlines()
    outcome: list[str] = []

    async def request() -> None:
        watch = deadlines.watch(0.05)
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            outcome.append("deadline" if watch.expired() else "cancelled")
            raise
        finally:
            deadlines.release(watch)

    task = asyncio.get_running_loop().create_task(request())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert outcome == ["cancelled"]
