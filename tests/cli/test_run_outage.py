"""`svc run` survives its server crashing: it waits, retries, and serves again, quietly."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest

from svcbus import Bus, SvcbusError

TESTS = Path(__file__).parent.parent


def start_service(url: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "svcbus.cli", "run", "cli.echo_service", "--layer", url],
        cwd=TESTS,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )


def wait_for_line(stream, text: str, seconds: float = 20) -> list[str]:
    lines: list[str] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        line = stream.readline()
        lines.append(line)
        if text in line:
            return lines
    raise AssertionError(f"{text!r} did not appear within {seconds}s: {lines}")


def ask(url: str, text: str, *, within: float) -> tuple[str, int]:
    """Request until a reply comes (the service may still be reconnecting); returns it and the tries."""

    async def go() -> tuple[str, int]:
        async with anyio.create_task_group() as group:
            group.start_soon(report_stuck_tries)
            try:
                return await tries_until_served()
            finally:
                group.cancel_scope.cancel()

    began = time.monotonic()

    async def report_stuck_tries() -> None:
        # A try that outlives its bound means an await that ignored cancellation (seen
        # once on a loaded CI machine): print where every task waits, once.
        while time.monotonic() - began < 12:
            await anyio.sleep(1)
        print(f"a try of ask({text!r}) has run for 12s; the tasks and where they wait:")
        for task in asyncio.all_tasks():
            print(f"- {task!r}")
            for frame in task.get_stack():
                print(f"    {frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}")

    async def tries_until_served() -> tuple[str, int]:
        nonlocal began
        deadline = time.monotonic() + within
        tries: list[str] = []  # how each try ended, and how long it took
        while True:
            began = time.monotonic()
            try:
                # One try: open a Bus, ask (2 s), close. Bounded as a whole, so one
                # slow open or close cannot eat the whole wait.
                with anyio.fail_after(8):
                    async with Bus(url) as bus:
                        reply = await bus.request("clitest.say", {"text": text}, timeout=2)
                        return reply["text"], len(tries) + 1
            except (SvcbusError, TimeoutError) as exc:  # the service may still be reconnecting
                tries.append(f"{type(exc).__name__} after {time.monotonic() - began:.1f}s")
                if time.monotonic() > deadline:
                    raise AssertionError(f"no reply within {within}s; tries: {tries}") from exc
                await anyio.sleep(0.2)

    return anyio.run(go)


@pytest.fixture(params=["redis", "nats"])
def server(request):
    pytest.importorskip(f"svcbus.layers.{request.param}")
    return request.getfixturevalue(f"{request.param}_server")


def stop_service(service: subprocess.Popen[str]) -> str:
    """SIGTERM ``svc run`` (if still running) and return the rest of its stderr."""
    if service.poll() is None:
        service.send_signal(signal.SIGTERM)
    try:
        _, rest = service.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        service.kill()
        _, rest = service.communicate()
    return rest


def warning_lines(output: str, service: subprocess.Popen[str], tries: int) -> list[str]:
    """The WARNING and ERROR lines of ``output``, printed with how the run went."""
    warnings = [line for line in output.splitlines() if " WARNING " in line or " ERROR " in line]
    print(f"requests until served again: {tries}; exit {service.returncode}; warning lines:")
    print("\n".join(warnings))
    return warnings


def test_svc_run_survives_its_server_crashing_and_restarting(server):
    url = server.url
    service = start_service(url)
    try:
        early = wait_for_line(service.stderr, "consuming clitest.say")
        assert ask(url, "before", within=10)[0] == "BEFORE"
        server.kill()  # SIGKILL: no goodbye to the clients
        time.sleep(1.0)
        assert service.poll() is None, "svc run died when its server did"
        server.start()  # same port, empty data
        reply, tries = ask(url, "after", within=20)
        assert reply == "AFTER"
        assert service.poll() is None
    finally:
        rest = stop_service(service)
    output = "".join(early) + rest
    warnings = warning_lines(output, service, tries)
    assert service.returncode == 0, output
    assert "Traceback" not in output
    assert 1 <= len(warnings) <= 10, output


def test_svc_run_retries_receives_that_redis_refuses(redis_server):
    """A receive that fails (here: Redis answers WRONGTYPE) is retried with backoff, not fatal."""
    pytest.importorskip("svcbus.layers.redis")
    import redis

    url = redis_server.url
    raw = redis.Redis(host=redis_server.host, port=redis_server.port)
    service = start_service(url)
    try:
        early = wait_for_line(service.stderr, "consuming clitest.say")
        assert ask(url, "before", within=10)[0] == "BEFORE"
        # Another program's string where the channel's list should be: every pop fails.
        raw.set("svcbus:c:clitest.say", "not a list")
        # Its pops now fail: wait until it says so (a loaded machine may take a while).
        early += wait_for_line(service.stderr, "redis refused to pop", seconds=30)
        assert service.poll() is None, "svc run died of a failing receive"
        raw.delete("svcbus:c:clitest.say")
        reply, tries = ask(url, "after", within=20)
        assert reply == "AFTER"
    finally:
        raw.close()
        rest = stop_service(service)
    output = "".join(early) + rest
    warnings = warning_lines(output, service, tries)
    assert service.returncode == 0, output
    assert "Traceback" not in output
    # The Redis layer itself keeps its receivers waiting and retries the pop, saying
    # which key is wrong and what to do (the Runtime's own retry covers other layers).
    assert any(
        "redis refused to pop svcbus:c:clitest.say" in line and "fix or delete" in line
        for line in warnings
    ), output
    assert len(warnings) <= 4, output
