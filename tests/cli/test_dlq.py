"""`svc dlq` against a real nats-server and redis-server: dead letters made by the runtime,
listed, shown, replayed, purged; the same scenario and output on both."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import anyio
import pytest

from svcbus import Bus, Context, Durability, Runtime, Service

pytestmark = pytest.mark.anyio

TESTS = Path(__file__).parent.parent
ONCE = Durability(max_attempts=1, ack_wait=2.0)


def svc(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "svcbus.cli", *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=TESTS,
        env={**os.environ, "COLUMNS": "200"},
    )


async def dead_letters(url: str, channel: str, count: int, replayed: int = 0) -> None:
    """Send ``count`` messages to a consumer that always fails once: each is dead-lettered."""

    async def fail(message: dict[str, int], ctx: Context) -> None:
        raise ValueError(f"cannot take {message['n']}")

    service = Service("dlq-test")
    service.consumes(channel)(fail)
    async with Bus(url) as bus:
        await bus.declare_durable(channel, ONCE)
        # One worker: the letters come in the order sent, which the test reads them by
        # (with several, two failures may overtake each other).
        runtime = Runtime(service, bus, concurrency=1)
        async with runtime.running():
            for n in range(count):
                await bus.send(channel, {"n": n})
            with anyio.fail_after(10):
                while runtime.stats[channel].dead_lettered < count + replayed:
                    await anyio.sleep(0.05)


def listed(url: str, channel: str) -> list[dict[str, object]]:
    result = svc("dlq", "list", channel, "--json", "--layer", url)
    assert result.returncode == 0, result.stderr
    letters: list[dict[str, object]] = json.loads(result.stdout)
    return letters


SERVERS = [
    pytest.param("nats", marks=pytest.mark.nats, id="nats"),
    pytest.param("redis", marks=pytest.mark.redis, id="redis"),
]


@pytest.fixture(params=SERVERS)
def server_url(request: pytest.FixtureRequest) -> str:
    """A layer URL on a real server with a key/subject prefix of this test's own."""
    base = str(request.getfixturevalue(f"{request.param}_url"))
    return f"{base}{'&' if '?' in base else '?'}prefix=t{uuid.uuid4().hex[:8]}"


async def test_list_show_replay_and_purge_dead_letters(server_url: str) -> None:
    url = server_url
    channel = f"t{uuid.uuid4().hex[:8]}.orders"
    await dead_letters(url, channel, 3)

    letters = listed(url, channel + ".dlq")
    assert [(x["channel"], x["attempts"], x["error_type"]) for x in letters] == [
        (channel, 1, "ValueError")
    ] * 3
    assert listed(url, channel) == letters  # the durable channel's name finds its letters
    table = svc("dlq", "list", channel + ".dlq", "--layer", url)
    assert str(letters[0]["id"]) in table.stdout and "ValueError" in table.stdout

    shown = svc("dlq", "show", str(letters[1]["id"]), "--layer", url)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(json.loads(shown.stdout)["payload"])["b"] == {"n": 1}

    replayed = svc("dlq", "replay", channel + ".dlq", "--id", str(letters[1]["id"]), "--layer", url)
    assert replayed.returncode == 0, replayed.stderr
    assert [x["id"] for x in listed(url, channel + ".dlq")] == [letters[0]["id"], letters[2]["id"]]
    async with Bus(url) as bus:
        await bus.declare_durable(channel, ONCE)
        with anyio.fail_after(5):
            (delivery,) = await bus.layer.receive_durable(channel, 1)
        assert json.loads(delivery.data)["b"] == {"n": 1}  # back on its channel, as sent
        await delivery.ack()

    assert "replayed 2" in svc("dlq", "replay", channel, "--all", "--layer", url).stdout
    assert listed(url, channel + ".dlq") == []

    # The consumer runs again: the two replayed by --all fail again, with two new ones.
    await dead_letters(url, channel, 2, replayed=2)
    assert "purged 4" in svc("dlq", "purge", channel + ".dlq", "--layer", url).stdout
    assert listed(url, channel + ".dlq") == []
    missing = svc("dlq", "show", str(letters[0]["id"]), "--layer", url)
    assert missing.returncode != 0 and "no dead letter" in missing.stderr


def test_dlq_says_where_it_cannot_work() -> None:
    memory = svc("dlq", "list", "orders.dlq", "--layer", "memory://x")
    assert memory.returncode != 0 and "inside one process" in memory.stderr
    redis = svc("dlq", "purge", "orders.dlq", "--layer", "redis://127.0.0.1:1/0")
    assert redis.returncode != 0 and "cannot connect to redis" in redis.stderr
    other = svc("dlq", "list", "orders.dlq", "--layer", "kafka://x")
    assert other.returncode != 0 and "nats:// and redis://" in other.stderr
    both = svc("dlq", "replay", "orders.dlq", "--layer", "memory://x")
    assert both.returncode != 0 and "--id ID or --all" in both.stderr
