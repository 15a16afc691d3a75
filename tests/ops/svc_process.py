"""`svc` as a background process whose output lines a test can wait for."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

TESTS = Path(__file__).parent.parent


class SvcProcess:
    """``python -m svcbus.cli ARGS`` from tests/, its stdout and stderr read line by line."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, cwd: Path = TESTS) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "svcbus.cli", *args],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "SVCBUS_LAYER": "", "COLUMNS": "200", **(env or {})},
        )
        self.lines: list[str] = []
        self._new: queue.Queue[str] = queue.Queue()
        self._readers = [
            threading.Thread(target=self._read, args=(stream,), daemon=True)
            for stream in (self.process.stdout, self.process.stderr)
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, stream) -> None:
        for line in stream:
            self._new.put(line.rstrip("\n"))

    def wait_for(self, pattern: str, timeout: float = 20.0, *, after: int = 0) -> re.Match[str]:
        """The first line (from index ``after``) matching ``pattern``; fails after ``timeout``."""
        compiled = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            for line in self.lines[after:]:
                found = compiled.search(line)
                if found:
                    return found
            after = max(after, len(self.lines))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no line matching {pattern!r}; output:\n" + self.output)
            try:
                self.lines.append(self._new.get(timeout=min(remaining, 0.2)))
            except queue.Empty:
                if self.process.poll() is not None and self._new.empty():
                    time.sleep(0.1)
                    if self._new.empty():
                        raise AssertionError(
                            f"svc exited ({self.process.returncode}) before {pattern!r}:\n"
                            + self.output
                        ) from None

    def drain(self) -> None:
        if self.process.poll() is not None:
            # Children of svc may hold the pipes a moment longer: read to the end.
            for reader in self._readers:
                reader.join(timeout=5)
        while not self._new.empty():
            self.lines.append(self._new.get())

    @property
    def output(self) -> str:
        self.drain()
        return "\n".join(self.lines)

    def terminate(self, timeout: float = 20.0) -> int:
        """SIGTERM, then wait; kills (and fails the wait) after ``timeout``."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> SvcProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
