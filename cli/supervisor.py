"""A process supervisor for ``svc run --workers N`` and ``--reload``.

The supervisor runs each worker as a child process (``python -m svcbus.cli
...``, the same command without ``--workers``/``--reload``), restarts one that
dies with a growing delay, and on SIGTERM/SIGINT asks every worker to finish
its in-flight messages (SIGTERM), waits ``grace`` seconds, then kills what is
left. With a watcher (``--reload``) it restarts all workers when a Python file
under the watched directories changes.

It is plain ``subprocess`` + signals (no event loop): the supervisor handles
no messages, so it cannot be slowed by them, and a worker that crashes (even
with SIGKILL) cannot take it down.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

log = logging.getLogger("svcbus.supervisor")

FIRST_BACKOFF = 0.5
"""Seconds before restarting a worker that died; doubles per quick death."""
MAX_BACKOFF = 15.0
STABLE_AFTER = 10.0
"""A worker that ran this long is healthy again: its next death restarts after FIRST_BACKOFF."""
POLL = 0.1

WORKER_ENV = "SVCBUS_WORKER"
"""Set in each worker's environment to its index (0..N-1)."""


@dataclass
class Worker:
    """One worker slot: its process, and when to (re)start it."""

    index: int
    command: list[str]
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    backoff: float = FIRST_BACKOFF
    restart_at: float = 0.0
    restarts: int = 0
    history: list[int] = field(default_factory=list)
    """Pids of every process this slot ran (tests and logs)."""

    def start(self) -> None:
        self.process = subprocess.Popen(self.command, env=self.env)
        self.started_at = time.monotonic()
        self.history.append(self.process.pid)
        log.info("worker %d started (pid %d)", self.index, self.process.pid)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


class Supervisor:
    """Keeps ``workers`` copies of ``command`` running until told to stop."""

    def __init__(
        self,
        command: Callable[[int], list[str]],
        workers: int,
        *,
        grace: float = 15.0,
        watch: Sequence[Path] = (),
    ) -> None:
        self.grace = grace
        self.watch = list(watch)
        self.workers = [
            Worker(i, command(i), {**os.environ, WORKER_ENV: str(i)}) for i in range(workers)
        ]
        self._stop = threading.Event()
        self._changed = threading.Event()
        self._signalled = False
        """Set by the signal handler, which must not take a lock (see :meth:`_on_signal`)."""

    def run(self) -> int:
        """Supervise until SIGTERM/SIGINT; returns the exit status (0 on a clean stop)."""
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        watcher = self._start_watcher() if self.watch else None
        try:
            for worker in self.workers:
                worker.start()
            while not self._stop.wait(POLL) and not self._signalled:
                if self._changed.is_set():
                    self._changed.clear()
                    log.warning("files changed: restarting the workers")
                    self._stop_workers()
                    for worker in self.workers:
                        worker.backoff = FIRST_BACKOFF
                        worker.start()
                    continue
                self._tend()
        finally:
            self._stop_workers()
            self._stop.set()
            if watcher is not None:
                watcher.join(timeout=2)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 0

    def stop(self) -> None:
        """Stop supervising (as SIGTERM does); callable from any thread."""
        self._stop.set()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Only a flag: the handler runs in the main thread between two bytecodes,
        # possibly while that thread holds the lock of _stop (inside Event.wait),
        # and Event.set would then wait for that lock forever. The loop sees the
        # flag within POLL seconds; the watcher thread learns of the stop from
        # _stop, set by the main thread on its way out.
        self._signalled = True
        log.info("%s: stopping the workers", signal.Signals(signum).name)

    def _tend(self) -> None:
        """Restart dead workers, each after its backoff."""
        now = time.monotonic()
        for worker in self.workers:
            process = worker.process
            if process is None:
                if now >= worker.restart_at:
                    worker.restarts += 1
                    worker.start()
                continue
            code = process.poll()
            if code is None:
                continue
            if now - worker.started_at >= STABLE_AFTER:
                worker.backoff = FIRST_BACKOFF
            delay = worker.backoff
            worker.backoff = min(worker.backoff * 2, MAX_BACKOFF)
            worker.process = None
            worker.restart_at = now + delay
            log.warning(
                "worker %d (pid %d) exited with %s; restarting in %.1fs",
                worker.index,
                process.pid,
                _describe(code),
                delay,
            )

    def _stop_workers(self) -> None:
        """SIGTERM every worker, wait up to ``grace``, then SIGKILL the rest."""
        running = [w.process for w in self.workers if w.alive]
        if running:
            log.info("stopping %d worker(s); they get %ss to finish", len(running), self.grace)
        for process in running:
            assert process is not None
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        for process in running:
            assert process is not None
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error(
                    "worker pid %d did not stop within %ss; killing it", process.pid, self.grace
                )
                process.kill()
                process.wait()
        for worker in self.workers:
            if worker.process is not None and worker.process.returncode is not None:
                log.info(
                    "worker %d (pid %d) stopped with %s",
                    worker.index,
                    worker.process.pid,
                    _describe(worker.process.returncode),
                )
            worker.process = None

    def _start_watcher(self) -> threading.Thread:
        try:
            import watchfiles
        except ImportError:
            raise SystemExit(
                "error: --reload needs watchfiles: pip install 'svcbus[reload]'"
            ) from None

        def watch() -> None:
            for _changes in watchfiles.watch(
                *self.watch,
                watch_filter=watchfiles.PythonFilter(),
                stop_event=self._stop,
                debounce=300,
                raise_interrupt=False,
            ):
                self._changed.set()

        thread = threading.Thread(target=watch, name="svcbus-reload", daemon=True)
        thread.start()
        return thread


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"status {code}"


def worker_command(args: Sequence[str]) -> list[str]:
    """``svc ARGS`` as a child process of this interpreter."""
    return [sys.executable, "-m", "svcbus.cli", *args]


def without_options(argv: Sequence[str], flags: set[str], valued: set[str]) -> list[str]:
    """``argv`` minus boolean ``flags`` and ``valued`` options (``--x V`` or ``--x=V``)."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if arg in flags:
            continue
        if name in valued:
            skip = "=" not in arg
            continue
        kept.append(arg)
    return kept


def reload_command(name: str) -> int:
    """Run this very ``svc`` command line without ``--reload`` under a reloading supervisor."""
    args = without_options(sys.argv[1:], {"--reload"}, set())
    log.warning("svc %s --reload: restarting on changes to .py files under %s", name, Path.cwd())
    return Supervisor(lambda _index: worker_command(args), 1, watch=[Path.cwd()], grace=10).run()
