"""A fresh machine: the run ends with what was skipped and how to get it; Chromium is found."""

from __future__ import annotations

import stat
from types import SimpleNamespace

import browser_support
import skip_summary


class Reporter:
    def __init__(self, reasons: list[str]) -> None:
        self.stats = {
            "skipped": [SimpleNamespace(longrepr=("file.py", 1, f"Skipped: {r}")) for r in reasons]
        }
        self.lines: list[str] = []

    def write_line(self, line: str, **markup: bool) -> None:
        self.lines.append(line)


def test_summary_line_names_the_missing_servers_and_browsers():
    reporter = Reporter(
        [
            "no redis-server binary on PATH (install the OS redis-server package)",
            "no redis-server binary on PATH (install the OS redis-server package)",
            "no Chromium on PATH (chromium, ...)",
            "the nats layer is not built yet",
        ]
    )
    skip_summary.write_summary(reporter)
    (line,) = reporter.lines
    assert line.startswith("skipped: 2 Redis tests (no redis-server: apt-get install redis-server")
    assert "1 browser tests (no Chromium: apt-get install chromium, or set SVCBUS_CHROMIUM)" in line
    assert "1 for other reasons" in line


def test_no_summary_line_when_nothing_was_skipped():
    reporter = Reporter([])
    skip_summary.write_summary(reporter)
    assert reporter.lines == []


def test_chromium_from_the_environment_or_path(tmp_path, monkeypatch):
    browser = tmp_path / "chromium-browser"
    browser.write_text("#!/bin/sh\n")
    browser.chmod(browser.stat().st_mode | stat.S_IEXEC)
    monkeypatch.delenv("SVCBUS_CHROMIUM", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert browser_support.find_chromium() == browser
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert browser_support.find_chromium() is None
    monkeypatch.setenv("SVCBUS_CHROMIUM", str(browser))
    assert browser_support.find_chromium() == browser
