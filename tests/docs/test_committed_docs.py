"""The example system's generated docs in docs/contracts/ are current.

Regenerate them with the command in DOCS_COMMAND (also in the README) after
changing a contract or a service.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent.parent

DOCS_COMMAND = [
    "docs",
    "services.example_chat",
    "services.example_stats",
    "--routes",
    "services.example_chat.routing:routes",
    "--server",
    "nats://localhost:4222",
    "--server",
    "redis://localhost:6379/0",
    "--title",
    "svcbus example chat",
    "--out",
    "docs/contracts",
]


def test_committed_contract_docs_are_current():
    result = subprocess.run(
        [sys.executable, "-m", "svcbus.cli", *DOCS_COMMAND, "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert result.returncode == 0, (
        "docs/contracts is out of date; regenerate with: svc "
        + " ".join(DOCS_COMMAND)
        + f"\n{result.stdout}{result.stderr}"
    )


def test_the_readme_gives_the_same_command():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "svc docs services.example_chat services.example_stats --routes" in readme
