"""The legacy package stays Python 2.7 compatible and self-contained.

* ``vermin`` checks the syntax and library use against Python 2.7 and 3.2
  (``-t=3-`` would demand Python 3.0, which nobody runs: argparse and
  OrderedDict arrived in 3.1/3.2).
* The package's own stdlib-only tests (``legacy_selftest.py``) run on this
  CPython 3 and on PyPy3 when ``/usr/bin/pypy3`` exists, from a copy of
  sdk/legacy alone with site-packages disabled.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
LEGACY = HERE.parent.parent / "sdk" / "legacy"
VERMIN_TARGETS = ["-t=2.7-", "-t=3.2-"]


def vermin() -> str:
    found = shutil.which("vermin") or str(Path(sys.executable).with_name("vermin"))
    if not Path(found).exists():
        pytest.skip("vermin is not installed (pip install vermin)")
    return found


def test_vermin_finds_no_violation_for_python_2_7_and_3() -> None:
    result = subprocess.run(
        [vermin(), *VERMIN_TARGETS, "--no-tips", "--violations", str(LEGACY)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Minimum required versions: 2.7, 3.2" in result.stdout, result.stdout


def test_the_package_imports_nothing_of_svcbus() -> None:
    for path in LEGACY.glob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"^\s*(from|import) svcbus(?!_legacy)\b", text, re.M), path
        assert "from __future__ import absolute_import" in text, path


def test_the_shared_redis_wire_module_is_copied_byte_for_byte() -> None:
    # svcbus.redis_wire holds the Lua scripts both runtimes load; the legacy package
    # carries a copy so that it still stands alone (see the module's docstring).
    shared = (LEGACY.parent / "redis_wire.py").read_bytes()
    assert (LEGACY / "redis_wire.py").read_bytes() == shared, (
        "sdk/legacy/redis_wire.py differs from sdk/redis_wire.py: "
        "cp sdk/redis_wire.py sdk/legacy/redis_wire.py"
    )


@pytest.mark.parametrize(
    "interpreter",
    [
        pytest.param(sys.executable, id="cpython3"),
        pytest.param(
            "/usr/bin/pypy3",
            id="pypy3",
            marks=pytest.mark.skipif(
                not Path("/usr/bin/pypy3").exists(), reason="no /usr/bin/pypy3 on this host"
            ),
        ),
    ],
)
def test_selftest_passes_from_a_lone_copy(interpreter: str, tmp_path: Path) -> None:
    shutil.copytree(LEGACY, tmp_path / "svcbus_legacy")
    result = subprocess.run(
        # -S: no site-packages, so neither svcbus nor pydantic can sneak in.
        [interpreter, "-S", str(HERE / "legacy_selftest.py")],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(tmp_path)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stderr, result.stderr
