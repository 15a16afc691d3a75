"""`svc run --workers N`: a supervisor that restarts crashed workers and drains on SIGTERM."""

from __future__ import annotations

import os
import signal
import time

import pytest
from svc_process import SvcProcess

pytestmark = pytest.mark.redis


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is dead for us once its parent reaped it.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def test_two_workers_a_killed_one_is_restarted_and_sigterm_stops_all(redis_url):
    with SvcProcess(
        "run", "ops.ops_service", "--workers", "2", "--layer", redis_url, "--shutdown-timeout", "3"
    ) as svc:
        first = {int(svc.wait_for(rf"worker {i} started \(pid (\d+)\)").group(1)) for i in (0, 1)}
        assert len(first) == 2
        svc.wait_for(r"\(worker 0\): consuming opstest.work")
        svc.wait_for(r"\(worker 1\): consuming opstest.work")
        victim = int(svc.wait_for(r"worker 0 started \(pid (\d+)\)").group(1))
        os.kill(victim, signal.SIGKILL)
        svc.wait_for(rf"worker 0 \(pid {victim}\) exited with signal SIGKILL; restarting")
        marker = len(svc.lines)
        replacement = int(svc.wait_for(r"worker 0 started \(pid (\d+)\)", after=marker).group(1))
        assert replacement not in first
        svc.wait_for(r"\(worker 0\): consuming opstest.work", after=marker)  # it is up
        workers = (first - {victim}) | {replacement}
        assert all(_alive(pid) for pid in workers)

        started = time.monotonic()
        assert svc.terminate(timeout=20) == 0, svc.output
        assert time.monotonic() - started < 10, "draining took longer than the shutdown bound"
        assert not any(_alive(pid) for pid in workers), svc.output
        for index in (0, 1):
            assert f"worker {index} (pid" in svc.output
            assert svc.output.count("stopped with status 0") == 2, svc.output


def test_a_worker_that_keeps_dying_is_restarted_with_growing_delays(tmp_path):
    # A module that exits at import: the worker dies at once, every time.
    (tmp_path / "dies_at_once.py").write_text("raise SystemExit(3)\n")
    with SvcProcess(
        "run", "dies_at_once", "--workers", "2", env={"PYTHONPATH": str(tmp_path)}
    ) as svc:
        svc.wait_for(r"worker 0 \(pid \d+\) exited with status 3; restarting in 0\.5s")
        svc.wait_for(r"exited with status 3; restarting in 1\.0s")
        # Each restart starts a Python process that imports svcbus first: seconds
        # apiece on a loaded machine, hence the generous wait.
        svc.wait_for(r"exited with status 3; restarting in 2\.0s", timeout=30)
        assert svc.terminate() == 0


def test_reload_restarts_the_worker_when_a_python_file_changes(tmp_path):
    pytest.importorskip("watchfiles")
    module = tmp_path / "reloadme.py"
    consumer = 'from svcbus import consumes\n\n@consumes("{0}")\nasync def on_{1}(m: dict) -> None:\n    pass\n'
    module.write_text(consumer.format("reload.one", "one"))
    with SvcProcess("run", "reloadme", "--reload", cwd=tmp_path) as svc:
        svc.wait_for(r"consuming reload\.one on memory://")
        time.sleep(0.5)  # the watcher is up
        module.write_text(
            consumer.format("reload.one", "one") + consumer.format("reload.two", "two")
        )
        svc.wait_for("files changed: restarting the workers")
        svc.wait_for(r"consuming reload\.one, reload\.two on memory://")
        assert svc.terminate() == 0, svc.output
