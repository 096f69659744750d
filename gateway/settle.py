"""Keep what start-up built out of the garbage collector's full collections.

A running agent holds some 70,000 objects from start-up for the life of the process: imported
modules, the configuration models, the compiled revision. CPython's full (oldest-generation)
collection walks every one of them each time it runs: in one benchmark process that was once
in 18,000 requests, 40 ms of CPU, all of it a pause of the event loop
(benchmarks/pipeline-report.md). :func:`settle`, called once the agent is ready, collects the
start-up garbage (parsed documents, validator state) and moves every survivor into the permanent
generation (``gc.freeze``): full collections then walk only what was created since (3.5 ms in
the same process).

Frozen objects are never examined by the collector again: one that later ends up in a reference
cycle is not freed. Objects freed by reference counting (most of a retired revision) are not
affected. :func:`resettle` thaws, collects and freezes again, for the agent to call once a
reload's old revision is closed, so that a cycle through it cannot outlive it.

What was measured and not done: glibc's ``malloc_trim(0)`` after start-up gave back 0.5 MiB,
which the running agent took again within seconds (idle RSS unchanged, ``bench_memory.py``).
"""

from __future__ import annotations

import gc

__all__ = ["resettle", "settle"]


def settle() -> int:
    """Collect the start-up garbage and freeze every object that survived; returns how many
    objects are frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def resettle() -> int:
    """Thaw the frozen objects, collect (one full collection) and freeze the survivors again;
    returns how many objects are frozen."""
    gc.unfreeze()
    return settle()
