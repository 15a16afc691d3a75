"""`svc run` in one process, `svc request` / `send` / `tail` from others, over real servers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

TESTS = Path(__file__).parent.parent


@pytest.fixture(params=["nats", "redis"])
def server_url(request):
    pytest.importorskip(f"svcbus.layers.{request.param}")
    return request.getfixturevalue(f"{request.param}_url")


def svc(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "svcbus.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=TESTS,
        env={**os.environ, "COLUMNS": "200"},
    )


def start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "svcbus.cli", *args],
        cwd=TESTS,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )


def wait_for_line(stream, text: str, seconds: float = 20) -> str:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        line = stream.readline()
        if text in line:
            return line
    raise AssertionError(f"{text!r} did not appear within {seconds}s")


def stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_run_then_request_send_and_tail(server_url):
    service = start("run", "cli.echo_service", "--layer", server_url)
    try:
        wait_for_line(service.stderr, "consuming clitest.say")
        result = svc("request", "clitest.say", '{"text": "hello"}', "--layer", server_url)
        assert result.returncode == 0, result.stderr
        assert '"text": "HELLO"' in result.stdout

        result = svc("request", "clitest.say", '{"wrong": 1}', "--layer", server_url)
        assert result.returncode == 1 and "text: Field required" in result.stderr

        tail = start("tail", "clitest.room", "--count", "1", "--layer", server_url)
        try:
            wait_for_line(tail.stderr, "waiting for messages")
            time.sleep(0.3)
            sender = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    "import anyio, svcbus, sys\n"
                    "async def main():\n"
                    "    async with svcbus.connect(sys.argv[1]) as bus:\n"
                    "        await bus.group_send('clitest.room', {'hi': 'there'})\n"
                    "        await bus.layer.flush()\n"
                    "anyio.run(main)\n",
                    server_url,
                ],
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert sender.returncode == 0, sender.stderr
            output, _ = tail.communicate(timeout=20)
            assert '{"hi":"there"}' in output and "untyped" in output
            assert tail.returncode == 0
        finally:
            stop(tail)
    finally:
        stop(service)
    assert service.returncode == 0


def test_unreachable_server_is_a_clear_error():
    result = svc("request", "clitest.say", "{}", "--layer", "nats://127.0.0.1:1", timeout=60)
    assert result.returncode in (1, 2)
    assert "Traceback" not in result.stderr
    assert "127.0.0.1:1" in result.stderr
