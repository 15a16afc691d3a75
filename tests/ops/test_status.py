"""`svc status`: channel backlogs and groups read from real NATS and Redis servers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from svcbus import connect_blocking

ROOT = Path(__file__).parent.parent.parent


def svc(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "svcbus.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "SVCBUS_LAYER": "", "COLUMNS": "200"},
    )


@pytest.mark.redis
def test_status_on_redis_shows_backlog_groups_and_processes(redis_server):
    url = redis_server.url
    with connect_blocking(url) as bus:
        bus.send("status.work", {"n": 1})
        bus.send("status.work", {"n": 2})
        bus.group_add("status.room", bus.new_channel("sock"))
        bus.group_add("status.room", "status.audit")
        result = svc("status", "--layer", url, "--json")
        assert result.returncode == 0, result.stderr
        snapshot = json.loads(result.stdout)
        assert {"channel": "status.work", "waiting": 2} in snapshot["channels"]
        assert {"group": "status.room", "channels": 1, "processes": 1} in snapshot["groups"]
        assert snapshot["processes"] >= 1

        table = svc("status", "--layer", url)
        assert table.returncode == 0, table.stderr
        assert "status.work" in table.stdout and "status.room" in table.stdout


@pytest.mark.nats
def test_status_on_nats_shows_messages_waiting_in_a_channel_stream(nats_url, uniq):
    channel = uniq("waiting")
    with connect_blocking(nats_url) as bus:
        for n in range(3):
            bus.send(channel, {"n": n})  # nobody listens: they wait in the stream
        bus.flush()
    result = svc("status", "--layer", nats_url, "--json")
    assert result.returncode == 0, result.stderr
    rows = [c for c in json.loads(result.stdout)["channels"] if c["channel"] == channel]
    assert rows and rows[0]["waiting"] == 3, rows


def test_status_on_memory_says_why_not():
    result = svc("status", "--layer", "memory://")
    assert result.returncode == 2 and "lives inside one process" in result.stderr
