"""The books of a fault scenario: what was accepted, delivered, refused and reported lost.

Every fault test fills one :class:`Books` and asserts :meth:`Books.check`: no message
delivered twice, none delivered that was not accepted, and none missing without a
report (``accepted - delivered <= reported lost``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))


@dataclass
class Books:
    """Counts of one scenario; ``accepted`` holds the numbers whose ``send`` returned."""

    name: str
    accepted: set[int] = field(default_factory=set)
    refused: int = 0  # sends that raised ChannelFull (or another error) at their own call
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
        )

    def check(self) -> None:
        print(self.summary())
        stray = set(self.delivered) - self.accepted
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
