"""Timeouts that end a stuck test, and never the run by hanging it.

pytest-timeout's signal method fails a test by raising from its SIGALRM handler.
For an ``async def`` test that leaves anyio's test runner still awaiting the
stuck coroutine, and the next test (or fixture teardown) on that runner then
waits behind it forever: one slow test would hang the whole run. So:

* every async test runs inside ``anyio.fail_after(timeout - CANCEL_MARGIN)``: a
  stuck one is cancelled the anyio way (its ``finally`` blocks and fixtures run)
  and fails with a TimeoutError whose chained traceback shows where it waited;
* a watchdog thread per test dumps every thread's stack and ends the run
  (``os._exit``) if the test is still going ``WATCHDOG_MARGIN`` seconds past its
  timeout: a failed run with a traceback beats a run that never ends.
"""

from __future__ import annotations

import faulthandler
import functools
import inspect
import os
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import anyio
import pytest

CANCEL_MARGIN = 10.0
"""Seconds before pytest-timeout's own signal that an async test is cancelled."""
WATCHDOG_MARGIN = 60.0
"""Seconds past a test's timeout after which the run is ended with a stack dump."""


def timeout_of(item: pytest.Item) -> float:
    """The test's timeout: its ``@pytest.mark.timeout(N)``, else the ini ``timeout`` (0: none)."""
    marker = item.get_closest_marker("timeout")
    if marker is not None:
        value = marker.args[0] if marker.args else marker.kwargs.get("timeout", 0)
        return float(value or 0)
    given = item.config.getoption("timeout", None)  # pytest --timeout N
    return float(given if given is not None else item.config.getini("timeout") or 0)


def cancelled_after(
    test: Callable[..., Awaitable[Any]], seconds: float
) -> Callable[..., Awaitable[None]]:
    """``test`` run inside ``anyio.fail_after(seconds)``, with a message saying so."""

    @functools.wraps(test)
    async def run(**kwargs: Any) -> None:
        try:
            with anyio.fail_after(seconds) as scope:
                await test(**kwargs)
        except TimeoutError as exc:
            if not scope.cancel_called:
                raise  # the test's own TimeoutError
            raise TimeoutError(
                f"the test ran past {seconds:g}s and was cancelled (its timeout less "
                f"{CANCEL_MARGIN:g}s); the chained traceback shows where it waited"
            ) from exc

    return run


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if not isinstance(item, pytest.Function) or not inspect.iscoroutinefunction(item.obj):
            continue
        seconds = timeout_of(item)
        if seconds > CANCEL_MARGIN:
            item.obj = cancelled_after(item.obj, seconds - CANCEL_MARGIN)


def end_the_run(item: pytest.Item, seconds: float) -> None:
    """Dump every thread's stack to the real stderr and end the process."""
    capture = item.config.pluginmanager.getplugin("capturemanager")
    if capture is not None:
        capture.suspend_global_capture(in_=True)
    sys.stderr.write(
        f"\n{item.nodeid} is still running {seconds:g}s after it started, past its "
        "timeout, and did not stop when failed: ending the run. Every thread's stack:\n"
    )
    sys.stderr.flush()
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    sys.stderr.flush()
    os._exit(1)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Iterator[None]:
    seconds = timeout_of(item)
    watchdog = None
    if seconds > 0:
        limit = seconds + WATCHDOG_MARGIN
        watchdog = threading.Timer(limit, end_the_run, (item, limit))
        watchdog.daemon = True
        watchdog.start()
    try:
        yield
    finally:
        if watchdog is not None:
            watchdog.cancel()
