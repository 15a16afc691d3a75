"""An older commit of svcbus, importable next to this one (for before/after rows in one run).

``checkout(ref)`` makes a detached git worktree of ``ref`` in the temp dir and
a shim directory that maps the ``svcbus`` package onto it (``svcbus`` -> its
``sdk/``, ``svcbus/layers`` -> its ``layers/``, as pyproject's package-dir
does), without touching the worktree. Put the shim first on ``PYTHONPATH`` in
a child process and that child imports the old code. ``remove`` undoes it.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def checkout(ref: str, name: str) -> tuple[Path, Path]:
    """A worktree of ``ref`` (``<tmp>/<name>``) and the shim dir to put on PYTHONPATH."""
    worktree = Path(tempfile.gettempdir()) / name
    if worktree.exists():
        subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], cwd=ROOT)
    subprocess.run(
        ["git", "worktree", "add", "--detach", "--quiet", str(worktree), ref],
        cwd=ROOT,
        check=True,
    )
    package = Path(tempfile.mkdtemp(prefix=f"{name}-shim-")) / "svcbus"
    package.mkdir()
    for entry in (worktree / "sdk").iterdir():
        package.joinpath(entry.name).symlink_to(entry)
    package.joinpath("layers").symlink_to(worktree / "layers")
    return worktree, package.parent


def remove(worktree: Path, shim: Path) -> None:
    """Remove the worktree and the shim made by :func:`checkout`."""
    subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], cwd=ROOT)
    shutil.rmtree(shim, ignore_errors=True)
