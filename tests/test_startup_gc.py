"""``svc run`` freezes its startup objects out of full gc scans (sdk/startup_gc.py)."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_freeze_startup_objects_freezes_once_and_collects_garbage_first() -> None:
    # In a child process: freezing is process-wide and would outlive this test.
    script = textwrap.dedent(
        """
        import gc
        import weakref
        from svcbus.startup_gc import freeze_startup_objects

        class Cycle:
            pass

        doomed = Cycle()
        doomed.me = doomed  # garbage once dropped, freed only by a collection
        gone = weakref.ref(doomed)
        del doomed
        frozen = freeze_startup_objects()
        assert frozen > 1000 and gc.get_freeze_count() == frozen, frozen
        assert gone() is None, "startup garbage was frozen instead of freed"
        assert freeze_startup_objects() == 0 and gc.get_freeze_count() == frozen
        gc.collect()
        assert len(gc.get_objects()) < frozen  # later collections skip the frozen ones
        print("ok")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
