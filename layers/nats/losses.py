"""Counting what was lost after its ``send`` returned, and reporting it once."""

from __future__ import annotations

import logging

from svcbus.errors import MessagesLost
from svcbus.ratelog import RateLimitedLog

log = logging.getLogger("svcbus.layers.nats")


class Losses:
    """The layer's loss books: ``lost`` in all, and what ``flush()`` still has to report."""

    def __init__(self) -> None:
        self.lost = 0
        """Messages lost after their ``send`` returned, each logged (rate-limited)."""
        self._sent = 0  # lost after this process's own sends returned ...
        self._reported = 0  # ... of which flush() has raised MessagesLost
        self._channels: set[str] = set()
        self._log = RateLimitedLog(log, "reports of lost messages")

    def count(self, count: int, channel: str, reason: str, *, sent: bool = True) -> None:
        """Count ``count`` messages for ``channel`` as lost, and say why (rate-limited).

        ``sent``: this process sent them, so its next ``flush()`` reports them.
        """
        self.lost += count
        if sent:
            self._sent += count
            self._channels.add(channel)
        self._log.log(
            channel,
            "%d message(s) for %s lost: %s (%d lost by this process so far)",
            count,
            channel,
            reason,
            self.lost,
        )

    def count_quietly(self, count: int = 1) -> None:
        """Count receiving-side losses another log line already reports."""
        self.lost += count

    def report(self) -> MessagesLost | None:
        """The error for what was lost since the last report, or None."""
        count = self._sent - self._reported
        if not count:
            return None
        self._reported = self._sent
        channels, self._channels = self._channels, set()
        channel = next(iter(channels)) if len(channels) == 1 else None
        return MessagesLost(
            f"{count} message(s) sent earlier were lost (in flight when the connection "
            "broke, or refused by a full channel after a bounce); see the log",
            count=count,
            channel=None if channel == "named channels" else channel,
        )

    def flush_log(self) -> None:
        """Write the summaries of rate-limited log lines whose window is over."""
        self._log.flush()
