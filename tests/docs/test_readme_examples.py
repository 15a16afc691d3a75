"""The code in README.md and docs/sync.md runs, so the examples cannot drift from the SDK.

Each check runs in a subprocess of its own: the examples declare contracts on
channels (``stats.get``) that the repository's own contracts also declare.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent.parent


def python_blocks(page: str) -> list[str]:
    """The ```python blocks of a Markdown page, dedented."""
    text = (ROOT / page).read_text("utf-8")
    return [textwrap.dedent(b) for b in re.findall(r"^ *```python\n(.*?)^ *```", text, re.S | re.M)]


def block(page: str, marker: str) -> str:
    found = [b for b in python_blocks(page) if marker in b]
    assert len(found) == 1, f"{page}: {len(found)} python blocks contain {marker!r}"
    return found[0]


def run(args: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SVCBUS_LAYER": ""}
    return subprocess.run(
        args, cwd=ROOT, capture_output=True, text=True, timeout=60, env=env, **kwargs
    )


def test_the_readme_tour_is_a_passing_test(tmp_path):
    """The contracts, the service and the test of the tour, as a user would paste them."""
    source = "\n\n".join(
        [
            block("README.md", "class StatsQuery(Contract"),
            block("README.md", 'service = Service("stats")'),
            block("README.md", "async def test_stats"),
        ]
    )
    (tmp_path / "test_tour.py").write_text(source)
    result = run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            str(tmp_path / "test_tour.py"),
        ]
    )
    assert "1 passed" in result.stdout, result.stdout + result.stderr


@pytest.mark.redis
def test_the_clients_in_readme_and_sync_doc_talk_to_a_running_service(redis_server, tmp_path):
    """README's connect/connect_blocking blocks and docs/sync.md's BlockingBus block, on Redis."""
    url = redis_server.url
    examples = [
        block("docs/sync.md", "with BlockingBus("),
        block("README.md", "with connect_blocking("),
        "import anyio\n\nasync def main():\n"
        + textwrap.indent(block("README.md", "async with connect("), "    ")
        + "\nanyio.run(main)\n",
    ]
    checks = [
        "assert stats.messages == 1 and event.b, (stats, event)\n",
        "assert reply.messages == 1, reply\n",
        "",
    ]
    script = ""
    for code, check in zip(examples, checks, strict=True):
        for written in ("nats://localhost:4222", "redis://localhost:6379/0"):
            code = code.replace(written, url)
        script += code + check
    (tmp_path / "examples.py").write_text(script)
    service = subprocess.Popen(
        [sys.executable, "-m", "svcbus.cli", "run", "services.example_stats", "--layer", url],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        deadline = time.monotonic() + 20
        line = ""
        while "consuming" not in line and time.monotonic() < deadline:
            line = service.stderr.readline()
        assert "consuming" in line, line
        result = run([sys.executable, str(tmp_path / "examples.py")])
        assert result.returncode == 0, result.stderr
    finally:
        service.terminate()
        service.wait(timeout=15)
