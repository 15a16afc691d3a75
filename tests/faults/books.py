"""The books of a fault scenario: what was accepted, delivered, refused and reported lost.

Every fault test fills one :class:`Books` and asserts :meth:`Books.check`: no message
delivered twice, none delivered that was not accepted (or whose send is in doubt),
and none missing without a report (``accepted - delivered <= reported lost``).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import anyio

from svcbus import Bus
from svcbus.errors import LayerError

HERE = os.path.dirname(os.path.abspath(__file__))


@dataclass
class Books:
    """Counts of one scenario; ``accepted`` holds the numbers whose ``send`` returned."""

    name: str
    accepted: set[int] = field(default_factory=set)
    refused: int = 0  # sends that raised ChannelFull (or another error) at their own call
    # Sends that raised LayerError or timed out while a connection broke: they may
    # have reached the server before it went (README, "Delivery guarantees"), so
    # delivering one is allowed, but it is not counted as accepted.
    in_doubt: set[int] = field(default_factory=set)
    delivered: list[int] = field(default_factory=list)
    reported_lost: int = 0

    @property
    def duplicates(self) -> int:
        return sum(n - 1 for n in Counter(self.delivered).values() if n > 1)

    @property
    def unreported(self) -> int:
        return len(self.accepted - set(self.delivered)) - self.reported_lost

    def summary(self) -> str:
        return (
            f"{self.name}: accepted {len(self.accepted)}, refused {self.refused}, "
            f"delivered {len(self.delivered)}, reported lost {self.reported_lost}, "
            f"duplicates {self.duplicates}, unreported loss {max(0, self.unreported)}"
            + (
                f"; sends in doubt {len(self.in_doubt)}, of them delivered "
                f"{len(self.in_doubt & set(self.delivered))}"
                if self.in_doubt
                else ""
            )
        )

    def check(self) -> None:
        print(self.summary())
        stray = set(self.delivered) - self.accepted - self.in_doubt
        assert not stray, f"{len(stray)} delivered that no send accepted: {sorted(stray)[:10]}"
        assert self.duplicates == 0, self.summary()
        assert self.unreported <= 0, self.summary()


def stop(processes: Iterable[subprocess.Popen[Any]], timeout: float = 10.0) -> None:
    """SIGTERM every process, then wait for each (SIGKILL one that outlives ``timeout``)."""
    processes = list(processes)
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def send_numbered(
    send: Callable[[int], Awaitable[None]],
    total: int,
    senders: int,
    *,
    stored: Callable[[int], None],
    failed: Callable[[int, LayerError], None],
    retry_pause: float = 0.05,
    pace: float = 0.0,
) -> None:
    """Send items 0..total-1 from ``senders`` concurrent tasks until each send returns.

    ``stored(n)`` is called when ``send(n)`` returned; a send that raised LayerError
    is reported to ``failed(n, exc)`` and sent again after ``retry_pause`` (it may have
    been stored all the same, so the resend may become a duplicate). Each task
    waits ``pace`` seconds between its items.
    """
    numbers = iter(range(total))

    async def sender() -> None:
        for n in numbers:
            while True:
                try:
                    await send(n)
                except LayerError as exc:
                    failed(n, exc)
                    if retry_pause:
                        await anyio.sleep(retry_pause)
                    continue
                stored(n)
                break
            if pace:
                await anyio.sleep(pace)

    async with anyio.create_task_group() as tg:
        for _ in range(senders):
            tg.start_soon(sender)


async def take_confirmations(
    bus: Bus, channel: str, seen: set[str], done: dict[int, list[tuple[int, int]]]
) -> None:
    """Take workers' confirmations from durable ``channel`` into ``done``; runs until cancelled.

    Each confirmation's body holds the item ``n``, the worker's ``pid`` and the
    attempt ``a``: ``done[n]`` gets ``(pid, a)``. A confirmation redelivered to the
    test (its ack was lost in an outage) is the same message again, recognised by
    its envelope id (kept in ``seen``): it is not a second handling. Rides out a
    server that is away (the layer reconnects).
    """
    while True:
        try:
            deliveries = await bus.layer.receive_durable(channel, 256)
        except LayerError:
            await anyio.sleep(0.1)  # the server is away; the layer reconnects
            continue
        for delivery in deliveries:
            envelope = json.loads(delivery.data)
            if envelope["id"] not in seen:
                seen.add(envelope["id"])
                body = envelope["b"]
                done.setdefault(body["n"], []).append((body["pid"], body["a"]))
            # A lost ack: redelivered later, and recognised then.
            with contextlib.suppress(LayerError):
                await delivery.ack()


class ConsumerProcess:
    """``slow_consumer.py`` (or another ``script`` with the same report) in a process of its own."""

    def __init__(
        self,
        url: str,
        channel: str,
        delay: float,
        idle: float = 2.0,
        script: str = "slow_consumer.py",
    ) -> None:
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([HERE, os.environ.get("PYTHONPATH", "")]),
        }
        self.process = subprocess.Popen(
            [
                sys.executable,
                os.path.join(HERE, script),
                url,
                channel,
                str(delay),
                str(idle),
            ],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env=env,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line.strip() == "ready", f"consumer did not start: {line!r}"

    def result(self, timeout: float) -> dict:
        """Wait for the consumer's report (after it went idle)."""
        out, _ = self.process.communicate(timeout=timeout)
        return json.loads(out.strip().splitlines()[-1])

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
