"""The commands docs/contracts.md tells users to run in CI work exactly as written."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent.parent
PAGE = ROOT / "docs" / "contracts.md"


def _workflow() -> dict:
    yaml = pytest.importorskip("yaml")
    text = PAGE.read_text("utf-8")
    block = re.search(r"```yaml\n(# \.github/workflows/contracts\.yml.*?)```", text, re.S)
    assert block, "the CI recipe is gone from docs/contracts.md"
    return yaml.safe_load(block.group(1))


def _steps() -> dict[str, str]:
    steps = _workflow()["jobs"]["check"]["steps"]
    return {step.get("name", step.get("run", "")): step.get("run", "") for step in steps}


def _svc(command: str) -> subprocess.CompletedProcess[str]:
    argv = shlex.split(command)
    assert argv[0] == "svc", command
    return subprocess.run(
        [sys.executable, "-m", "svcbus.cli", *argv[1:]],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )


def test_the_recipe_installs_the_extra_svc_docs_needs():
    installs = [run for run in _steps().values() if run.startswith("pip install")]
    assert installs and "[docs]" in installs[0], installs


def test_the_docs_check_step_passes_on_the_committed_docs():
    result = _svc(_steps()["Docs are current"])
    assert result.returncode == 0, result.stderr
    assert "up to date" in result.stderr


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_the_breaking_change_step_runs_against_a_git_ref():
    if subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True).returncode:
        pytest.skip("not a git checkout")
    # CI compares with the base branch; here the committed HEAD stands in for it.
    command = " ".join(_steps()["No breaking contract changes"].split("\\\n"))
    command = command.replace("origin/${{ github.base_ref }}", "HEAD")
    result = _svc(command)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 breaking" in result.stdout or "no contract changes" in result.stdout
