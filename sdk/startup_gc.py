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
"""

from __future__ import annotations

import gc

_frozen = False


def freeze_startup_objects() -> int:
    """Collect, then freeze every tracked object (the first call only); how many were frozen."""
    global _frozen
    if _frozen:
        return 0
    _frozen = True
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
