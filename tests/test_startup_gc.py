"""Serving processes set their collector up (sdk/startup_gc.py): startup frozen, young scans rarer."""

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


def test_tune_for_serving_freezes_and_makes_young_collections_rarer() -> None:
    script = textwrap.dedent(
        """
        import gc
        from svcbus.startup_gc import YOUNG_THRESHOLD, tune_for_serving

        gc.set_threshold(700, 10, 10)
        tune_for_serving()
        assert gc.get_threshold() == (YOUNG_THRESHOLD, 10, 10), gc.get_threshold()
        assert gc.get_freeze_count() > 1000
        gc.set_threshold(50_000, 5, 5)  # the application's own, higher: kept
        tune_for_serving()
        assert gc.get_threshold() == (50_000, 5, 5)
        gc.set_threshold(0)  # collection turned off: left off
        tune_for_serving()
        assert gc.get_threshold()[0] == 0
        print("ok")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
