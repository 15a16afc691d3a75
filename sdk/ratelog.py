"""Rate-limited log lines: a flood of bad input makes a few lines and a summary.

A service fed garbage (by a bug or on purpose) must not drown its log or spend
its time formatting lines: per key (a channel), :class:`RateLimitedLog` writes
the first ``burst`` lines of each ``window`` and counts the rest, then writes
one summary line, "… and 123 more invalid messages on chat.receive in the last
10 s", when the window is over (at the next event, or from :meth:`flush`,
which the runtime calls periodically).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

DEFAULT_BURST = 5
"""Lines written per key and window before lines are only counted."""
DEFAULT_WINDOW = 10.0
"""Seconds of one window."""


class _Window:
    __slots__ = ("logged", "started", "suppressed")

    def __init__(self, started: float) -> None:
        self.started = started
        self.logged = 0
        self.suppressed = 0


class RateLimitedLog:
    """Writes at most ``burst`` lines per key every ``window`` seconds, and a summary of the rest.

    ``what`` names the events in the summary ("invalid messages"). Keys should
    be few (channel names a service consumes): each keeps a small record.
    """

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        *,
        level: int = logging.WARNING,
        burst: int = DEFAULT_BURST,
        window: float = DEFAULT_WINDOW,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.what = what
        self.level = level
        self.burst = burst
        self.window = window
        self._clock = clock
        self._windows: dict[str, _Window] = {}

    def log(self, key: str, message: str, *args: Any) -> None:
        """Log ``message % args`` about ``key``, unless this window's burst is used up."""
        now = self._clock()
        window = self._windows.get(key)
        if window is None or now - window.started >= self.window:
            if window is not None:
                self._summarize(key, window)
            window = self._windows[key] = _Window(now)
        if window.logged < self.burst:
            window.logged += 1
            self.logger.log(self.level, message, *args)
        else:
            window.suppressed += 1

    def flush(self, *, force: bool = False) -> None:
        """Write the summary of every window that is over (of every window, with ``force``)."""
        now = self._clock()
        for key, window in list(self._windows.items()):
            if force or now - window.started >= self.window:
                self._summarize(key, window)
                del self._windows[key]

    def _summarize(self, key: str, window: _Window) -> None:
        if window.suppressed:
            self.logger.log(
                self.level,
                "... and %d more %s on %s in the last %g s",
                window.suppressed,
                self.what,
                key,
                self.window,
            )
