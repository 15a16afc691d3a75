"""The legacy runtime and the async SDK on one bus, over real NATS and Redis servers.

The legacy worker runs in a subprocess of ``sys.executable -S`` (no site-packages,
so no svcbus, no pydantic) with only a copy of sdk/legacy on its path, importable
as ``svcbus_legacy``: proof that the package needs nothing else.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from svcbus import Bus, Contract, RemoteError, Runtime, Service
from svcbus.envelope import Envelope
from svcbus.legacy_export import export_schemas

pytestmark = pytest.mark.anyio

HERE = Path(__file__).parent
LEGACY = HERE.parent.parent / "sdk" / "legacy"


class LSum(Contract):
    total: int


class LAdd(Contract, channel="lg.add", reply=LSum):
    a: int
    b: int


class LAsk(Contract, channel="lg.ask", reply=LSum):
    a: int
    b: int


class LEcho(Contract, channel="lg.echo"):
    text: str


class LRoom(Contract, channel="lg.fail"):
    room: str


class ASeen(Contract, channel="as.seen"):
    text: str
    via: str


class AMul(Contract, channel="as.mul", reply=LSum):
    a: int
    b: int


CHANNELS = ["lg.add", "lg.ask", "lg.echo", "lg.fail", "as.seen", "as.mul"]


class LegacyWorker:
    """``tests/legacy/legacy_app.py`` in a subprocess, with a private copy of sdk/legacy."""

    def __init__(self, url: str, root: Path) -> None:
        self.url = url
        self.root = root
        shutil.copytree(
            LEGACY, root / "svcbus_legacy", ignore=shutil.ignore_patterns("__pycache__")
        )
        shutil.copy(HERE / "legacy_app.py", root / "legacy_app.py")
        self.schemas = export_schemas(root / "contracts.json", channels=CHANNELS)
        self.log = root / "worker.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(self.root)}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-S",
                    str(self.root / "legacy_app.py"),
                    self.url,
                    str(self.schemas),
                ],
                stdout=log,
                stderr=log,
                env=env,
                cwd=self.root,
            )
        self.wait_for_log("legacy worker consuming")

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def wait_for_log(self, text: str, timeout: float = 15.0, count: int = 1) -> None:
        deadline = time.monotonic() + timeout
        while self.log_text().count(text) < count:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"legacy worker exited:\n{self.log_text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not in the worker log:\n{self.log_text()}")
            time.sleep(0.05)

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(
    scope="module",
    params=[
        pytest.param("nats", marks=pytest.mark.nats),
        pytest.param("redis", marks=pytest.mark.redis),
    ],
)
def legacy(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LegacyWorker]:
    """A running legacy worker on a shared server, isolated by a unique key/subject prefix."""
    base = request.getfixturevalue(f"{request.param}_url")
    url = f"{base}?prefix=t{uuid.uuid4().hex[:10]}"
    worker = LegacyWorker(url, tmp_path_factory.mktemp(f"legacy-{request.param}"))
    worker.start()
    yield worker
    worker.stop()
    assert worker.proc is not None and worker.proc.returncode == 0, worker.log_text()
    assert "unexpected error" not in worker.log_text(), worker.log_text()


Seen = list[tuple[str, Any]]


def async_service(seen: Seen) -> Service:
    service = Service("interop")

    @service.consumes("as.seen")
    async def on_seen(message: ASeen) -> None:
        seen.append(("as.seen", message))

    @service.consumes("as.mul")
    async def multiply(message: AMul) -> LSum:
        return LSum(total=message.a * message.b)

    @service.consumes("as.counted")
    def counted(message: dict) -> None:  # a plain def consumer, in a worker thread
        seen.append(("as.counted", message["n"]))

    return service


async def wait_until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    with anyio.fail_after(timeout):
        while not check():
            await anyio.sleep(0.02)


async def receive(bus: Bus, channel: str, timeout: float = 5.0) -> Envelope[Any]:
    with anyio.fail_after(timeout):
        return await bus.receive(channel)


async def test_async_request_to_legacy_gets_typed_reply(legacy: LegacyWorker) -> None:
    async with Bus(legacy.url) as bus:
        assert await bus.request("lg.add", LAdd(a=2, b=3)) == LSum(total=5)
        async with anyio.create_task_group() as tg:
            results: list[LSum] = []

            async def one(i: int) -> None:
                results.append(await bus.request("lg.add", LAdd(a=i, b=i)))

            for i in range(20):
                tg.start_soon(one, i)
        assert sorted(r.total for r in results) == [2 * i for i in range(20)]


async def test_async_to_legacy_consumer_and_legacy_to_async_consumer(legacy: LegacyWorker) -> None:
    seen: Seen = []
    async with Runtime(async_service(seen), legacy.url).running() as runtime:
        await runtime.bus.send("lg.echo", LEcho(text="naïve ✓ 🚀"))
        await wait_until(lambda: bool(seen))
    assert seen == [("as.seen", ASeen(text="naïve ✓ 🚀", via="legacy"))]


async def test_legacy_consumer_requests_an_async_consumer(legacy: LegacyWorker) -> None:
    async with Runtime(async_service([]), legacy.url).running() as runtime:
        assert await runtime.bus.request("lg.ask", LAsk(a=6, b=7)) == LSum(total=43)


async def test_legacy_failure_is_an_error_reply(legacy: LegacyWorker) -> None:
    async with Bus(legacy.url) as bus:
        with pytest.raises(RemoteError) as caught:
            await bus.request("lg.fail", LRoom(room="x"))
    assert caught.value.error_type == "ValueError"
    assert 'room "x" is unknown' in str(caught.value)


async def test_group_fanout_from_legacy_to_async_members(legacy: LegacyWorker) -> None:
    group = f"room.g{uuid.uuid4().hex[:8]}"
    async with Bus(legacy.url) as bus:
        members = [await bus.new_channel("member") for _ in range(3)]
        for channel in members:
            await bus.group_add(group, channel)
        assert await bus.request("lg.fanout", {"group": group, "text": "hello"}) == {"ok": True}
        for channel in members:
            assert (await receive(bus, channel)).b == {"text": "hello"}


async def test_group_fanout_from_async_to_legacy_members(legacy: LegacyWorker) -> None:
    async with Bus(legacy.url) as bus:
        # The legacy worker adds its own channel.
        group = f"room.g{uuid.uuid4().hex[:8]}"
        joined = await bus.request("lg.join", {"group": group})
        await bus.group_send(group, {"n": 1})
        assert await bus.request("lg.collect", {"channel": joined["channel"]}) == {"body": {"n": 1}}
        # The async side adds the legacy worker's channel: a control request to its owner.
        other = f"room.g{uuid.uuid4().hex[:8]}"
        await bus.group_add(other, joined["channel"])
        await bus.group_send(other, {"n": 2})
        assert await bus.request("lg.collect", {"channel": joined["channel"]}) == {"body": {"n": 2}}
        # The legacy worker adds the async side's channel: a control request the other way.
        mine = await bus.new_channel("member")
        third = f"room.g{uuid.uuid4().hex[:8]}"
        assert await bus.request("lg.addto", {"group": third, "channel": mine}) == {"ok": True}
        await bus.group_send(third, {"n": 3})
        assert (await receive(bus, mine)).b == {"n": 3}


async def test_bad_input_is_logged_and_skipped(legacy: LegacyWorker) -> None:
    async with Bus(legacy.url) as bus:
        await bus.layer.send("lg.add", b"not json at all")
        await bus.layer.send("lg.add", b'{"v":1,"id":"bad1","at":1,"b":{"a":"x","b":1}}')
        await bus.layer.send("lg.add", b'{"v":1,"id":"bad2","at":1}')
        assert await bus.request("lg.add", LAdd(a=1, b=1)) == LSum(total=2)
    log = legacy.log_text()
    assert "invalid message (no id) on lg.add dropped: undecodable" in log
    assert "bad1" in log and "does not fit LAdd: a: expected integer, got string" in log
    assert "bad2" in log and "b: missing" in log


@pytest.mark.parametrize(
    "kind",
    [pytest.param("nats", marks=pytest.mark.nats), pytest.param("redis", marks=pytest.mark.redis)],
)
async def test_server_restart_mid_stream_legacy_worker_reconnects(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    server = request.getfixturevalue(f"{kind}_server")
    worker = LegacyWorker(server.url, tmp_path)
    worker.start()
    seen: Seen = []
    sent_after_restart: list[int] = []
    restarted = False
    try:
        async with Runtime(async_service(seen), server.url).running() as runtime:

            async def produce() -> None:
                n = 0
                while True:
                    try:
                        await runtime.bus.send("lg.count", {"n": n})
                        if restarted:
                            sent_after_restart.append(n)
                    except Exception:  # the server is down: at-most-once, try the next one
                        pass
                    n += 1
                    await anyio.sleep(0.01)

            async with anyio.create_task_group() as tg:
                tg.start_soon(produce)
                await wait_until(lambda: len(seen) >= 20)
                await anyio.to_thread.run_sync(server.stop)
                await anyio.sleep(1.0)  # the worker notices and backs off meanwhile
                await anyio.to_thread.run_sync(server.start)
                restarted = True
                await wait_until(
                    lambda: any(n in sent_after_restart for _, n in seen if isinstance(n, int)),
                    timeout=30,
                )
                tg.cancel_scope.cancel()
    finally:
        worker.stop()
    log = worker.log_text()
    assert log.count("lost connection") == 1, log  # logged once, not once per retry
    assert "reconnected" in log, log
    assert worker.proc is not None and worker.proc.returncode == 0, log
