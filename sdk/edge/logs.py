"""Logging of the edge: rate-limited per-message warnings, and access logs without tokens.

A public edge sees whatever clients send; one warning per bad frame would let
a single client flood the log. :class:`Quiet` logs the first message of a
kind, counts the rest, and logs one summary per window. The access log
filter keeps credentials that browsers put in the query (``?access_token=``)
out of the server's log.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Iterable
from typing import Any

SUMMARY_WINDOW = 10.0
"""Seconds over which repeats of one kind of warning are counted, then summarised."""

TOKEN_QUERY_PARAMS: frozenset[str] = frozenset(
    {
        "access_token",
        "token",
        "id_token",
        "refresh_token",
        "auth",
        "authorization",
        "api_key",
        "apikey",
        "key",
        "jwt",
        "session",
        "sessionid",
        "password",
        "secret",
        "signature",
        "sig",
    }
)
"""Query parameters whose values the access log never shows (compared case-insensitively)."""

REDACTED = "[redacted]"

ACCESS_LOGGERS = ("uvicorn.access", "uvicorn.error")
"""uvicorn logs request paths, query included, on these loggers."""


class Quiet:
    """Warnings that repeat per message, logged at most once per kind and window.

    ``quiet.warning("bad-frame", "closed %s: ...", path)`` logs the first one;
    later ones with the same kind within :data:`SUMMARY_WINDOW` seconds are
    counted and reported as one line, ``N more like this in the last 10 s``,
    when the window ends.
    """

    def __init__(self, logger: logging.Logger, window: float = SUMMARY_WINDOW) -> None:
        self.logger = logger
        self.window = window
        self._kinds: dict[str, list[Any]] = {}
        """kind -> [window start, repeats counted, first message (for the summary)]."""

    def warning(self, kind: str, message: str, *args: Any) -> None:
        """Log ``message % args`` at WARNING unless ``kind`` was logged in this window."""
        self.log(logging.WARNING, kind, message, *args)

    def log(self, level: int, kind: str, message: str, *args: Any) -> None:
        """Log at ``level``, rate-limited per ``kind``."""
        now = time.monotonic()
        state = self._kinds.get(kind)
        if state is not None and now - state[0] < self.window:
            state[1] += 1
            if state[1] == 1:
                self._schedule_summary(kind, state[0] + self.window - now)
            return
        if state is not None and state[1]:
            self._summarise(kind)  # no loop to run the timer: report on the next call
        self._kinds[kind] = [now, 0, message % args if args else message]
        self.logger.log(level, message, *args)

    def _schedule_summary(self, kind: str, delay: float) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        loop.call_later(max(delay, 0.0), self._summarise, kind)

    def _summarise(self, kind: str) -> None:
        state = self._kinds.get(kind)
        if state is None or not state[1]:
            return
        count, first = state[1], state[2]
        state[1] = 0
        self.logger.warning(
            "%d more like this in the last %g s: %s", count, self.window, first[:200]
        )


def redact_query(text: str, names: Iterable[str] = TOKEN_QUERY_PARAMS) -> str:
    """``text`` with the values of the query parameters ``names`` replaced by [redacted]."""
    if "?" not in text:
        return text
    return _pattern(frozenset(n.lower() for n in names)).sub(rf"\1{REDACTED}", text)


_patterns: dict[frozenset[str], re.Pattern[str]] = {}


def _pattern(names: frozenset[str]) -> re.Pattern[str]:
    found = _patterns.get(names)
    if found is None:
        alternatives = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
        # A name after ? or & (or their percent-encodings), up to the next separator.
        found = _patterns[names] = re.compile(
            rf"((?:[?&;]|%3[fF]|%26)(?:{alternatives})=)[^&;#\s\"']*", re.IGNORECASE
        )
    return found


class RedactTokens(logging.Filter):
    """A logging filter that removes token values from request paths in log records."""

    def __init__(self, names: Iterable[str] = TOKEN_QUERY_PARAMS) -> None:
        super().__init__("svcbus.edge.redact")
        self.names = frozenset(n.lower() for n in names)

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and any(isinstance(a, str) and "?" in a for a in args):
            record.args = tuple(
                redact_query(a, self.names) if isinstance(a, str) else a for a in args
            )
        if isinstance(record.msg, str) and "?" in record.msg:
            record.msg = redact_query(record.msg, self.names)
        return True


def redact_access_logs(extra: Iterable[str] = ()) -> RedactTokens:
    """Install (once per process) the filter that keeps tokens out of uvicorn's logs.

    ``extra`` adds parameter names (the authentication hook's); a later call
    with more names widens the installed filter.
    """
    names = TOKEN_QUERY_PARAMS | {n.lower() for n in extra}
    for name in ACCESS_LOGGERS:
        logger = logging.getLogger(name)
        for existing in logger.filters:
            if isinstance(existing, RedactTokens):
                existing.names = existing.names | names
                break
        else:
            logger.addFilter(RedactTokens(names))
    found = next(
        f for f in logging.getLogger(ACCESS_LOGGERS[0]).filters if isinstance(f, RedactTokens)
    )
    return found
