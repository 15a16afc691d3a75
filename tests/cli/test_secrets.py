"""No secret in any output: `svc` shows layer URLs with their credentials redacted.

Every command runs as a real subprocess against a real redis-server started
with ``--requirepass``; stdout and stderr are captured whole and searched for
the secret, on success and on every error path (wrong password, unknown
scheme, unreachable host).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from servers import RedisServer, find_redis_server

from svcbus.redact import RedactingFilter, redact_text, redact_url

TESTS = Path(__file__).parent.parent
ROOT = TESTS.parent
SECRET = f"s3cret{uuid.uuid4().hex[:10]}"


class SecuredRedis(RedisServer):
    """A redis-server that demands a password."""

    def _command(self) -> list[str]:
        return [*super()._command(), "--requirepass", SECRET]

    def _check_ready(self) -> None:
        with socket.create_connection((self.host, self.port), timeout=1) as sock:
            sock.sendall(f"AUTH {SECRET}\r\nPING\r\n".encode())
            reply = b""
            while b"PONG" not in reply:
                chunk = sock.recv(1024)
                if not chunk:
                    raise ConnectionError("closed")
                reply += chunk


@pytest.fixture(scope="module")
def secured() -> Iterator[SecuredRedis]:
    pytest.importorskip("svcbus.layers.redis")
    if find_redis_server() is None:
        pytest.skip("no redis-server binary on PATH")
    server = SecuredRedis()
    try:
        server.start()
        yield server
    finally:
        server.close()


def url_with(server: SecuredRedis, password: str) -> str:
    return f"redis://:{password}@{server.host}:{server.port}/0"


def svc(*args: str, cwd: Path = TESTS, timeout: float = 30) -> str:
    """Run ``svc``; return everything it wrote (stdout and stderr)."""
    done = subprocess.run(
        [sys.executable, "-m", "svcbus.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env={**os.environ, "COLUMNS": "300", "SVCBUS_LAYER": ""},
    )
    return f"exit {done.returncode}\n{done.stdout}{done.stderr}"


def svc_until(ready: str, *args: str, cwd: Path = TESTS, seconds: float = 20) -> str:
    """Start a long-running ``svc``, wait for ``ready`` (or its exit), stop it; return its output."""
    process = subprocess.Popen(
        [sys.executable, "-m", "svcbus.cli", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "COLUMNS": "300", "SVCBUS_LAYER": ""},
    )
    lines: list[str] = []
    deadline = time.monotonic() + seconds
    try:
        assert process.stdout is not None
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line and process.poll() is not None:
                break
            lines.append(line)
            if ready in line:
                time.sleep(0.5)  # let it log whatever it logs once running
                break
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            rest, _ = process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            rest, _ = process.communicate()
    return "".join(lines) + (rest or "")


def assert_no_secret(what: str, output: str) -> None:
    print(f"--- {what}: {len(output)} characters, secret found: {SECRET in output}")
    print(output.strip()[-600:])
    assert SECRET not in output, f"{what} leaked the secret:\n{output}"


def test_redact_url_forms():
    assert redact_url("redis://:pw@h:6379/0") == "redis://:***@h:6379/0"
    assert redact_url("nats://user:pw@h1:4222,user:pw@h2:4222") == (
        "nats://user:***@h1:4222,user:***@h2:4222"
    )
    assert redact_url("nats://tok@h") == "nats://***@h"
    assert redact_url("redis+sentinel://s:26379/m?sentinel_password=pw&db=1") == (
        "redis+sentinel://s:26379/m?sentinel_password=***&db=1"
    )
    assert redact_url("nats://h?token=t&creds=/x/y.creds&capacity=5") == (
        "nats://h?token=***&creds=***&capacity=5"
    )
    assert redact_url("localhost:pw@h") == "localhost:***@h"  # no scheme: still redacted
    assert redact_url("memory://") == "memory://"
    assert redact_text("cannot use 'redis://u:pw@h/0' now") == "cannot use 'redis://u:***@h/0' now"


def test_redacting_filter_cleans_messages_and_tracebacks():
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "lost %s", ("nats://u:pw@h",), None)
    try:
        raise ValueError("bad url redis://:pw@h/0")
    except ValueError:
        record.exc_info = sys.exc_info()
    assert RedactingFilter().filter(record)
    assert record.getMessage() == "lost nats://u:***@h"
    assert "redis://:***@h/0" in record.exc_text and "pw@" not in record.exc_text


def test_svc_run_and_send_show_no_password(secured):
    good = url_with(secured, SECRET)
    wrong = url_with(secured, f"wrong{SECRET}")
    output = svc_until("consuming clitest.say", "run", "cli.echo_service", "--layer", good)
    assert "consuming clitest.say" in output and ":***@" in output
    assert_no_secret("svc run", output)
    output = svc("send", "clitest.say", '{"text": "hi"}', "--layer", good)
    assert output.startswith("exit 0")
    assert_no_secret("svc send", output)
    output = svc_until("consuming", "run", "cli.echo_service", "--layer", wrong)
    assert "Traceback" not in output
    assert_no_secret("svc run, wrong password", output)
    output = svc("send", "clitest.say", '{"text": "hi"}', "--layer", wrong)
    assert not output.startswith("exit 0")
    assert_no_secret("svc send, wrong password", output)


def test_error_paths_show_no_secret():
    cases = {
        "unknown scheme": f"reddis://:{SECRET}@127.0.0.1:6379/0",
        "no scheme": f"admin:{SECRET}@127.0.0.1:6379",
        "unreachable redis": f"redis://:{SECRET}@127.0.0.1:1/0?connect_timeout=1",
        "unreachable nats": f"nats://admin:{SECRET}@127.0.0.1:1?connect_timeout=1",
        "unreachable nats, token": f"nats://{SECRET}@127.0.0.1:1?connect_timeout=1",
        "sentinel password": f"redis+sentinel://127.0.0.1:1/m?sentinel_password={SECRET}"
        "&connect_timeout=1",
    }
    for what, url in cases.items():
        output = svc("send", "clitest.say", '{"text": "hi"}', "--layer", url)
        assert not output.startswith("exit 0"), output
        assert "Traceback" not in output, output
        assert_no_secret(f"svc send, {what}", output)
    output = svc("run", "cli.echo_service", "--layer", cases["unknown scheme"])
    assert "unknown layer URL" in output
    assert_no_secret("svc run, unknown scheme", output)


def test_svc_edge_and_demo_show_no_password(secured):
    pytest.importorskip("uvicorn")
    good = url_with(secured, SECRET)
    wrong = url_with(secured, f"wrong{SECRET}")
    routes = "services.example_chat.routing:routes"
    for what, url in (("", good), (", wrong password", wrong)):
        output = svc_until(
            "Uvicorn running",
            *("edge", routes, "--layer", url, "--bind", "127.0.0.1:0"),
            cwd=ROOT,
        )
        assert "svc edge" in output
        assert_no_secret(f"svc edge{what}", output)
    output = svc_until("open http://", "demo", "--layer", good, "--port", "0", cwd=ROOT)
    assert "svc demo" in output and ":***@" in output
    assert_no_secret("svc demo", output)
    output = svc_until("open http://", "demo", "--layer", wrong, "--port", "0", cwd=ROOT)
    assert_no_secret("svc demo, wrong password", output)
    output = svc("edge", routes, "--layer", f"nope://:{SECRET}@h", cwd=ROOT)
    assert_no_secret("svc edge, unknown scheme", output)
