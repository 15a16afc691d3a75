"""`svc` as a user runs it: a real subprocess, real exit codes, one-line errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

TESTS = Path(__file__).parent.parent


def svc(*args: str, timeout: float = 30, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "svcbus.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=TESTS,
        env={**os.environ, "SVCBUS_LAYER": "", "COLUMNS": "200"},
        **kwargs,
    )


def test_help_lists_the_commands():
    result = svc("--help")
    assert result.returncode == 0
    for command in ("run", "send", "request"):
        assert command in result.stdout


def test_version():
    result = svc("--version")
    assert result.returncode == 0 and result.stdout.startswith("svcbus ")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("run", "no_such_module"), "cannot import 'no_such_module'"),
        (("run", "cli.echo_service:missing"), "has no attribute 'missing'"),
        (("run", "cli.echo_service", "--layer", "bogus://x"), "unknown layer URL"),
        (("send", "clitest.say", "{not json"), "not valid JSON"),
        (("send", "bad name", "{}"), "contains whitespace"),
        (("request", "clitest.say", "[]", "--layer", "ftp://x"), "unknown layer URL"),
        (("run", "cli.echo_service", "--layer", "memory://?capacity=lots"), "not a number"),
        (("send", "clitest.say", '{"wrong": 1}', "-i", "cli.echo_service"), "text: Field required"),
        (("request", "clitest.say", "{}", "--import", "no_such_contracts"), "--import"),
        (("run", "cli.echo_service", "--loop", "trio"), "use one of auto, asyncio, uvloop"),
    ],
)
def test_usage_errors_are_one_line_with_exit_code_2(args, message):
    result = svc(*args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_request_without_a_consumer_times_out_clearly():
    result = svc("request", "clitest.say", '{"text": "hi"}', "--timeout", "0.3")
    assert result.returncode == 1
    assert "no reply on 'clitest.say'" in result.stderr
    assert "memory:// reaches only this process" in result.stderr


def test_send_with_a_message_that_breaks_the_contract():
    # The CLI imports no contracts, so validation happens in the consumer; an
    # untyped send succeeds and prints the message id.
    result = svc("send", "clitest.free", '{"a": 1}')
    assert result.returncode == 0 and result.stdout.strip()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_run_starts_and_stops_gracefully_on_sigterm(loop: str):
    process = subprocess.Popen(
        [sys.executable, "-m", "svcbus.cli", "run", "cli.echo_service", "--loop", loop],
        cwd=TESTS,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "SVCBUS_LAYER": ""},
    )
    try:
        deadline = time.monotonic() + 20
        line = ""
        while "consuming" not in line and time.monotonic() < deadline:
            line = process.stderr.readline()
        assert "echo_service: consuming clitest.say on memory://" in line
        assert f"(event loop: {loop})" in line
        time.sleep(0.3)
        process.send_signal(signal.SIGTERM)
        rest = process.communicate(timeout=15)[1]
        assert process.returncode == 0, rest
        assert "SIGTERM" in rest and "stopped" in rest
    finally:
        if process.poll() is None:
            process.kill()
