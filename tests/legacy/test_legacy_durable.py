"""The stand-alone legacy worker on durable NATS channels, with async senders and readers.

Acknowledgements after the handler, retries with ``ctx.attempt`` and the backoff,
dead letters the async side reads, durable sends from a handler, and the URL's
per-channel settings; on redis:// it refuses durable consumers with a clear error.
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from test_interop import HERE, LEGACY, LegacyWorker

from svcbus import Bus, Contract, DeadLetter, Durability, RemoteError
from svcbus.legacy_export import export_schemas

pytestmark = pytest.mark.anyio

QUICK = Durability(max_attempts=3, backoff_first=0.2, backoff_max=0.4, ack_wait=2.0)


class LgdFlaky(Contract, channel="lgd.flaky", durable=QUICK):
    n: int


class LgdBroken(Contract, channel="lgd.broken", durable=Durability(max_attempts=5)):
    n: int


class AsdDone(Contract, channel="asd.done", durable=True):
    n: int
    attempt: int


CHANNELS = ["lgd.flaky", "lgd.broken", "asd.done"]


class DurableLegacyWorker(LegacyWorker):
    """``legacy_durable_app.py`` in a subprocess, with a private copy of sdk/legacy."""

    def __init__(self, url: str, root: Path) -> None:
        self.url = url
        self.root = root
        shutil.copytree(
            LEGACY, root / "svcbus_legacy", ignore=shutil.ignore_patterns("__pycache__")
        )
        shutil.copy(HERE / "legacy_durable_app.py", root / "legacy_app.py")
        self.schemas = export_schemas(root / "contracts.json", channels=CHANNELS)
        self.log = root / "worker.log"
        self.proc = None


@pytest.fixture
def legacy_url(nats_url: str) -> str:
    # The URL's per-channel settings: lgd.broken gets 2 attempts and a quick backoff
    # instead of its contract's 5 attempts with 1 s doubling.
    return (
        f"{nats_url}?prefix=t{uuid.uuid4().hex[:10]}&durable_max_attempts=lgd.broken:2"
        "&durable_backoff_first=lgd.broken:0.2&durable_backoff_max=lgd.broken:0.2"
    )


@pytest.fixture
def legacy(legacy_url: str, tmp_path: Path) -> Iterator[DurableLegacyWorker]:
    worker = DurableLegacyWorker(legacy_url, tmp_path)
    worker.start()
    yield worker
    worker.stop()
    assert worker.proc is not None and worker.proc.returncode == 0, worker.log_text()
    assert "unexpected error" not in worker.log_text(), worker.log_text()


@pytest.mark.nats
async def test_legacy_worker_retries_acks_and_dead_letters(legacy: DurableLegacyWorker) -> None:
    async with Bus(legacy.url) as bus:
        await bus.declare_durable("asd.done", AsdDone.__durability__ or Durability())
        for n in range(3):
            await bus.send("lgd.flaky", LgdFlaky(n=n))
        broken_id = await bus.send("lgd.broken", LgdBroken(n=7))

        done: list[tuple[int, int]] = []
        with anyio.fail_after(15):
            while len(done) < 3:
                for delivery in await bus.layer.receive_durable("asd.done", 3):
                    body = json.loads(delivery.data)["b"]
                    done.append((body["n"], body["attempt"]))
                    await delivery.ack()
        assert sorted(done) == [(0, 3), (1, 3), (2, 3)]  # third attempt, each once

        await bus.declare_durable("lgd.broken.dlq", Durability())
        with anyio.fail_after(10):
            (letter,) = await bus.layer.receive_durable("lgd.broken.dlq", 1)
        dead = bus.decode("lgd.broken.dlq", letter.data, DeadLetter).b
        await letter.ack()
        assert (dead.channel, dead.message_id, dead.attempts) == ("lgd.broken", broken_id, 2)
        assert dead.error_type == "ValueError" and "cannot take 7" in dead.reason
        assert json.loads(dead.payload)["b"] == {"n": 7}

        # A requester waiting on a durable channel gets the error after the last attempt.
        with pytest.raises(RemoteError, match="cannot take 8"):
            await bus.request("lgd.broken", LgdBroken(n=8), timeout=10)
        with anyio.fail_after(5):
            (second,) = await bus.layer.receive_durable("lgd.broken.dlq", 1)
        assert bus.decode("lgd.broken.dlq", second.data, DeadLetter).b.attempts == 2
        await second.ack()

        # Acknowledged and terminated: nothing comes back after the ack wait.
        await anyio.sleep(QUICK.ack_wait + 1.0)
        with anyio.move_on_after(0.5):
            extra = await bus.layer.receive_durable("asd.done", 1)
            pytest.fail(f"a handled message came back: {extra[0].data!r}")
    legacy.stop()
    log = legacy.log_text()
    assert log.count("retrying in") == 3 * 2 + 2  # two retries per flaky message, one per broken
    assert "dead-lettered to lgd.broken.dlq" in log


@pytest.mark.redis
def test_legacy_worker_refuses_durable_channels_on_redis(redis_url: str, tmp_path: Path) -> None:
    worker = DurableLegacyWorker(f"{redis_url}?prefix=t{uuid.uuid4().hex[:10]}", tmp_path)
    with pytest.raises(AssertionError, match="on nats:// only"):
        worker.start()
    worker.stop()
