"""The reusable receive waiter (layers/_waiter.py) under asyncio's Task, with real tasks."""

from __future__ import annotations

import asyncio
import contextvars
import gc

import anyio
import pytest

from svcbus.layers._waiter import Waiter, Wakeups


async def _wait(waiter: Waiter) -> str:
    await waiter.arm()
    return "woken"


def test_one_waiter_serves_many_waits_in_turn() -> None:
    async def main() -> None:
        waiter = Waiter(Wakeups())
        for _ in range(100):
            task = asyncio.ensure_future(_wait(waiter))
            await asyncio.sleep(0)
            assert not task.done() and not waiter.done()
            waiter.set_result(None)
            assert await task == "woken"
            assert waiter.idle

    asyncio.run(main())


def test_cancel_while_waiting_then_wait_again() -> None:
    async def main() -> None:
        waiter = Waiter(Wakeups())
        task = asyncio.ensure_future(_wait(waiter))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert waiter.cancelled() and not waiter.cancel()  # ended: a second cancel is refused
        waiter.reset()
        # wait_for's timeout and an anyio cancel scope both end the wait the same way.
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(_wait(waiter), 0.02)
        waiter.reset()
        with anyio.move_on_after(0.02) as scope:
            await waiter.arm()
        assert scope.cancelled_caught
        waiter.reset()
        task = asyncio.ensure_future(_wait(waiter))
        await asyncio.sleep(0)
        waiter.set_result(None)
        assert await task == "woken"

    asyncio.run(main())


def test_woken_then_cancelled_is_seen_as_woken() -> None:
    # The owner must hand such a wake-up to the next receiver: done, not cancelled.
    async def main() -> None:
        waiter = Waiter(Wakeups())
        task = asyncio.ensure_future(_wait(waiter))
        await asyncio.sleep(0)
        waiter.set_result(None)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert waiter.done() and not waiter.cancelled() and waiter.exception() is None

    asyncio.run(main())


def test_set_exception_raises_in_the_waiting_receive() -> None:
    async def main() -> None:
        waiter = Waiter(Wakeups())
        task = asyncio.ensure_future(_wait(waiter))
        await asyncio.sleep(0)
        waiter.set_exception(RuntimeError("closed"))
        with pytest.raises(RuntimeError, match="closed"):
            await task
        assert isinstance(waiter.exception(), RuntimeError)

    asyncio.run(main())


def test_wake_ups_run_in_the_tasks_context_from_one_callback() -> None:
    var: contextvars.ContextVar[int] = contextvars.ContextVar("var")

    async def member(waiter: Waiter, value: int) -> int:
        var.set(value)
        await waiter.arm()
        return var.get()

    async def main() -> None:
        wakeups = Wakeups()
        waiters = [Waiter(wakeups) for _ in range(50)]
        tasks = [asyncio.ensure_future(member(w, i)) for i, w in enumerate(waiters)]
        await asyncio.sleep(0)
        loop = asyncio.get_running_loop()
        ready = len(loop._ready)  # type: ignore[attr-defined]  # the loop's run queue
        for waiter in waiters:
            waiter.set_result(None)
        assert len(loop._ready) == ready + 1  # type: ignore[attr-defined]  # one callback
        assert await asyncio.gather(*tasks) == list(range(50))

    asyncio.run(main())


def test_a_fan_out_keeps_the_gc_allocation_count_level() -> None:
    # 2,000 members woken at once: nothing is allocated per member before they
    # run, and each one's wake-up is freed before the next runs, so no young
    # collection is triggered (the count would climb by >= 1 per member).
    members = 2_000
    peak = [0]

    async def member(waiter: Waiter) -> None:
        while True:
            await waiter.arm()
            peak[0] = max(peak[0], gc.get_count()[0] - start[0])

    start = [0]

    async def main() -> None:
        wakeups = Wakeups()
        waiters = [Waiter(wakeups) for _ in range(members)]
        tasks = [asyncio.ensure_future(member(w)) for w in waiters]
        await asyncio.sleep(0)
        for _ in range(3):  # reach a steady state
            for waiter in waiters:
                waiter.set_result(None)
            await asyncio.sleep(0)
            await asyncio.sleep(0)
        gc.disable()
        try:
            start[0] = gc.get_count()[0]
            peak[0] = 0
            for waiter in waiters:
                waiter.set_result(None)
            await asyncio.sleep(0)
            await asyncio.sleep(0)
        finally:
            gc.enable()
        assert all(w.idle is False for w in waiters)  # every member waits again
        assert peak[0] < members // 10, peak[0]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(main())


def test_an_exception_in_a_wake_up_is_reported_and_the_others_still_run() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        reported: list[dict[str, object]] = []
        loop.set_exception_handler(lambda _loop, context: reported.append(context))
        wakeups = Wakeups()
        broken, fine = Waiter(wakeups).arm(), Waiter(wakeups).arm()
        ran: list[Waiter] = []

        def fail(_: object) -> None:
            raise ValueError("boom")

        broken.add_done_callback(fail)
        fine.add_done_callback(ran.append)
        broken.set_result(None)
        fine.set_result(None)
        await asyncio.sleep(0)
        assert ran == [fine]
        assert isinstance(reported[0]["exception"], ValueError)

    asyncio.run(main())


def test_claim_queues_one_receive_at_a_time_and_wake_ends_it_once() -> None:
    async def main() -> None:
        from collections import deque

        waiter = Waiter(Wakeups())
        queue: deque[object] = deque()
        assert waiter.claim(queue) is waiter and list(queue) == [waiter]
        assert waiter.claim(queue) is None and len(queue) == 1  # in use: the caller makes a future
        task = asyncio.ensure_future(_await(waiter))
        await asyncio.sleep(0)
        assert waiter.wake() and not waiter.wake()  # a second wake-up finds it ended
        await task
        assert waiter.idle and waiter.claim(queue) is waiter
        # A cancelled wait is not woken: its owner passes the wake-up to the next one.
        task = asyncio.ensure_future(_await(waiter))
        await asyncio.sleep(0)
        task.cancel()
        assert not waiter.wake()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())


async def _await(waiter: Waiter) -> None:
    await waiter
