"""Keep a long-running process's startup objects out of the garbage collector's full scans.

A full (generation-2) collection visits every object the collector tracks. In a
service most of them are made at startup and live until exit: modules,
functions, classes, pydantic schemas and validators, the layer's connections
(some 50,000 objects for a Redis service, ~20 ms per full collection on the
2-core development machine, more when other processes compete for the cores).
``gc.freeze()`` moves the objects alive at that moment to a permanent generation
that collections skip, so a full collection then pays only for what the
service made since.

Used by ``svc run`` once its runtime has started. It collects first, so
garbage made during startup is freed rather than frozen; an object frozen here
that later becomes part of unreachable cycle is never freed (startup objects
rarely are). It runs once per process.

A serving process also collects its young generation less often
(:func:`tune_for_serving`): see :data:`YOUNG_THRESHOLD`.
"""

from __future__ import annotations

import gc

_frozen = False

YOUNG_THRESHOLD = 10_000
"""Net allocations between young-generation collections in a serving process.

Python's default (700) is less than what a busy server holds in flight: an
HTTP request in the edge keeps about 30 tracked objects alive while it is
answered, so with a few dozen requests in flight every young collection
scans the same live objects again and promotes them, and the older
generations' collections follow. Measured on the edge in process (48
requests in flight, ``bench/edge_inprocess.py``'s app), the collector took
4.6 µs of a 29 µs request at 700 (413 young, 38 middle and 4 full collections
per 21,440 requests) and almost nothing from 2,000 up. Short-lived cycles
wait at most this many allocations longer to be freed.
"""


def freeze_startup_objects() -> int:
    """Collect, then freeze every tracked object (the first call only); how many were frozen."""
    global _frozen
    if _frozen:
        return 0
    _frozen = True
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def tune_for_serving() -> None:
    """Set a serving process's collector up: startup objects frozen, young collections rarer.

    Called by ``svc run``, ``svc edge`` and ``svc demo`` once they serve.
    Process-wide, so a library never calls it by itself: an application that
    serves an :class:`~svcbus.edge.EdgeApp` or a :class:`~svcbus.Runtime` with
    its own server may call it once started. A threshold already higher, or a
    disabled collector, is left alone.
    """
    freeze_startup_objects()
    young, *older = gc.get_threshold()
    if 0 < young < YOUNG_THRESHOLD:
        gc.set_threshold(YOUNG_THRESHOLD, *older)
