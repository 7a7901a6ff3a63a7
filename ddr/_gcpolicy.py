"""Garbage collection while a run's manager loop runs.

Policy
------
While at least one run's loop runs in this process (``RunHandle``'s thread,
so ``compute()``, ``submit()`` and ``ddr run``), Python's collector runs less
often: the threshold of the youngest generation (net new container objects
before a young collection) is multiplied by ``YOUNG_COLLECTION_FACTOR``, and
that of the oldest (young-to-middle promotions before a full collection is
considered) by ``FULL_COLLECTION_FACTOR``. Nothing else changes: every
generation is still collected, only rarer, and CPython still holds full
collections back until the long-lived objects have grown by a quarter.
Reference counting frees everything that is not in a cycle at once, as
before; garbage cycles wait longer: until some 21,000 net new container
objects (CPython's default 700 times 30) instead of 700. Whatever such a cycle
holds waits with it, so a reducer whose results form reference cycles, merged
many times on the manager, keeps more memory between collections (the
manager's own path makes no cycles, see below); ``gc.collect()`` in the
reducer, or ``gc.set_threshold`` during the run (kept, see the end), undo it.

Why: a manager keeps two tasks per worker slot in flight, and each is a few
long-lived objects (the task, its temp, the reduction's job, the scheduler's
record), so every collection scans again the ones it finds alive. At 10,000
simulated workers full collections took a fifth to a quarter of the
manager's CPU (``tests/benchmarks/bench_sim_cluster.py``); with the factor
10 they took a few percent. The manager's steady state makes no garbage
cycles (a 10,000-chunk simulated run left 183 cyclic objects, all from
imports), yet with the default young threshold, young and middle collections
still took 12-14 us per chunk at 1,000 simulated workers and about 23 us at
10,000 (measured with ``gc.callbacks``; 6-11 % of the manager's CPU); with
the young threshold 30 times higher, 1-4 us.

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

__all__ = ["FULL_COLLECTION_FACTOR", "YOUNG_COLLECTION_FACTOR", "fewer_collections"]

FULL_COLLECTION_FACTOR = 10
YOUNG_COLLECTION_FACTOR = 30

_lock = threading.Lock()
_active = 0  # loops running now
_saved: tuple[int, ...] | None = None  # the thresholds before the first of them started
_ours: tuple[int, ...] | None = None  # the thresholds set while they run


@contextlib.contextmanager
def fewer_collections() -> Iterator[None]:
    """Run the ``with`` block with young collections ``YOUNG_COLLECTION_FACTOR`` and full ones
    ``FULL_COLLECTION_FACTOR`` times rarer (see above)."""
    global _active, _saved, _ours
    with _lock:
        if _active == 0:
            _saved = t = gc.get_threshold()  # (young, middle, oldest) on CPython
            if len(t) >= 3:
                _ours = (t[0] * YOUNG_COLLECTION_FACTOR, t[1], t[2] * FULL_COLLECTION_FACTOR) + t[3:]
            else:
                _ours = t
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
