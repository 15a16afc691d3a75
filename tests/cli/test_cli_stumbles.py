"""What a newcomer tripped over: each one as the user meets it, through `svc` itself."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).parent.parent
ROOT = TESTS.parent


def svc(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None, timeout: float = 30):
    return subprocess.run(
        [sys.executable, "-m", "svcbus.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env={**os.environ, "SVCBUS_LAYER": "", "COLUMNS": "200", **(env or {})},
    )


def _one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def _without(module: str, tmp_path: Path) -> dict[str, str]:
    """An environment where importing ``module`` fails as if it were not installed."""
    (tmp_path / f"{module}.py").write_text(
        f"raise ModuleNotFoundError(\"No module named '{module}'\", name={module!r})\n"
    )
    return {"PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}


def test_square_brackets_in_an_error_survive_the_console():
    result = svc("request", "chat.history", '{"room": "BAD ROOM"}', "-i", "contracts.chat")
    line = _one_line_error(result)
    assert "pattern '^[a-z0-9][a-z0-9-]{0,31}$'" in line


def test_install_hint_keeps_its_extra(tmp_path):
    result = svc(
        "run",
        "services.example_stats",
        "--layer",
        "nats://127.0.0.1:1",
        env=_without("nats", tmp_path),
    )
    assert "pip install 'svcbus[nats]'" in _one_line_error(result)


def test_svc_docs_without_pyyaml_is_one_line_with_the_hint(tmp_path):
    result = svc(
        "docs",
        "services.example_stats",
        "--out",
        str(tmp_path / "out"),
        env=_without("yaml", tmp_path),
    )
    line = _one_line_error(result)
    assert "pip install 'svcbus[docs]'" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("ref", ["greet.py", "./greet.py", "greet.py:service"])
def test_svc_run_with_a_file_path_says_to_name_the_module(tmp_path, ref):
    (tmp_path / "greet.py").write_text(
        'from svcbus import consumes\n\n@consumes("greet.hi")\nasync def hi(m: dict) -> None:\n    pass\n'
    )
    line = _one_line_error(svc("run", ref, cwd=tmp_path))
    assert "is a file path" in line and "svc run greet" in line and "no .py" in line


def test_svc_edge_on_a_busy_port_fails_cleanly():
    pytest.importorskip("uvicorn")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = svc(
            "edge", "edge_service:routes", "--bind", f"127.0.0.1:{port}", cwd=TESTS / "edge"
        )
    line = _one_line_error(result)
    assert f"cannot listen on 127.0.0.1:{port}" in line and "try another port" in line


@pytest.mark.parametrize("command", ["run", "edge", "send", "tail", "docs", "demo", "request"])
def test_help_has_readable_metavars(command):
    result = svc(command, "--help")
    assert result.returncode == 0, result.stderr
    for noise in ("<bool>", "<str>", "<int>", "<float>", "<path>"):
        assert noise not in result.stdout, result.stdout
    usage = next(line for line in result.stdout.splitlines() if "Usage:" in line)
    assert not re.search(r"\{\w+\}", usage), usage


def test_an_unreachable_nats_is_one_line_without_a_reconnect_warning():
    pytest.importorskip("nats")
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = svc("send", "x.y", "{}", "--layer", f"nats://127.0.0.1:{port}")
    assert result.returncode != 0
    assert "disconnected" not in result.stdout + result.stderr
    assert "cannot reach NATS" in _one_line_error(result)


def test_svc_demo_from_a_regular_install_finds_the_examples_in_the_clone(tmp_path):
    """`pip install .` (not editable) copies svcbus away from the examples; run from a
    clone, `svc demo` still finds them."""
    target = tmp_path / "site"
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(target),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert build.returncode == 0, build.stderr
    assert (target / "svcbus" / "cli" / "demo.py").is_file()
    env = {**os.environ, "PYTHONPATH": str(target), "SVCBUS_LAYER": ""}
    demo = subprocess.Popen(
        [sys.executable, "-m", "svcbus.cli", "demo", "--port", "0"],
        cwd=ROOT / "docs",  # somewhere inside the clone
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert demo.stdout is not None
        line = demo.stdout.readline()
        assert line.startswith("open http://"), line + demo.stderr.read() if demo.stderr else line
    finally:
        demo.terminate()
        demo.wait(10)
    # The installed copy was the one running, not the checkout's.
    check = subprocess.run(
        [sys.executable, "-c", "import svcbus; print(svcbus.__file__)"],
        env=env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert check.stdout.strip().startswith(str(target)), check.stdout
