"""Garbage collection while a run's manager loop runs.

Policy
------
While at least one run's loop runs in this process (``RunHandle``'s thread,
so ``compute()``, ``submit()`` and ``ddr run``), Python's full collections are
considered ``FULL_COLLECTION_FACTOR`` times less often: the threshold of the
oldest generation (how many generation-1 collections come before a full one
is considered) is multiplied by that factor. Nothing else changes: young
collections run as often as before, so short-lived garbage (cycles included)
is reclaimed as quickly; full collections still happen, only rarer, and
CPython still holds them back until the long-lived objects have grown by a
quarter.

Why: a manager keeps two tasks per worker slot in flight, and each is a few
long-lived objects (the task, its temp, the reduction's job, the scheduler's
record), so every full collection scans all of them again. At 10,000
simulated workers full collections took a fifth to a quarter of the
manager's CPU (``tests/benchmarks/bench_sim_cluster.py``); with the factor
10 they took a few percent.

Restored on every way out: when the last running loop ends (normally, by an
error or a cancel) the thresholds are set back to what they were when the
first one started, unless someone changed them in the meantime (then their
setting stays). Concurrent runs in one process share one raise.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from typing import Iterator

__all__ = ["FULL_COLLECTION_FACTOR", "fewer_full_collections"]

FULL_COLLECTION_FACTOR = 10

_lock = threading.Lock()
_active = 0  # loops running now
_saved: tuple[int, ...] | None = None  # the thresholds before the first of them started
_ours: tuple[int, ...] | None = None  # the thresholds set while they run


@contextlib.contextmanager
def fewer_full_collections() -> Iterator[None]:
    """Run the ``with`` block with full collections ``FULL_COLLECTION_FACTOR`` times rarer (see above)."""
    global _active, _saved, _ours
    with _lock:
        if _active == 0:
            _saved = t = gc.get_threshold()  # (young, middle, oldest) on CPython
            _ours = t[:2] + (t[2] * FULL_COLLECTION_FACTOR,) + t[3:] if len(t) >= 3 else t
            gc.set_threshold(*_ours)
        _active += 1
    try:
        yield
    finally:
        with _lock:
            _active -= 1
            if _active == 0:
                if gc.get_threshold() == _ours and _saved is not None:
                    gc.set_threshold(*_saved)
                _saved = _ours = None
