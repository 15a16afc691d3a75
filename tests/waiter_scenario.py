"""A scenario both process-channel layers (NATS, Redis) must pass with their reusable waiter."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio


async def wake_up_of_a_cancelled_receive_goes_on(
    layer: Any, channel: str, wake: Callable[[str, bytes], None]
) -> None:
    """The first receive waits on the channel's reusable waiter, the second on a future.

    ``wake(channel, message)`` delivers a message the way a group fan-out does. It
    wakes the first receive, which is cancelled before it runs: the wake-up (and
    the message) must go to the second, and the waiter must serve the next receive.
    """
    got: list[bytes] = []

    async def second() -> None:
        got.append(await layer.receive(channel))

    async with anyio.create_task_group() as tg:
        first_scope = anyio.CancelScope()

        async def first() -> None:
            with first_scope:
                got.append(b"first:" + await layer.receive(channel))

        tg.start_soon(first)
        await anyio.sleep(0.05)
        tg.start_soon(second)
        await anyio.sleep(0.05)
        wake(channel, b"m")  # wakes the first
        first_scope.cancel()  # before it ran
    assert got == [b"m"]
    await layer.send(channel, b"again")
    with anyio.fail_after(3):
        assert await layer.receive(channel) == b"again"
