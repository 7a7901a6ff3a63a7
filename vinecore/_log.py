"""The transactions log: one JSON object per line in ``run_dir/transactions.jsonl``.

Each line is a state change of a task: ``time`` (unix seconds), ``task``,
``category``, ``state`` (waiting, ready, running, done), ``worker``, ``detail``
(attempt number, retry reason, result), and on ``done`` lines the resources
``allocated`` (cores, memory MB, time_max s) and ``measured`` (wall_time s,
memory MB above baseline, peak_rss MB, cpu_time s). Worker joins and removals
are logged with ``event`` instead of ``task``.

The hot lines (:meth:`TransactionLog.transition`, :meth:`TransactionLog.result`)
are formatted by hand, byte for byte as ``json.dumps`` writes them, because the
manager writes several per task. Lines are buffered: :meth:`TransactionLog.flush`
writes them out, :meth:`TransactionLog.flush_if_stale` only once the oldest
unwritten line is ``STALE_SECONDS`` old (for callers that poll in a busy loop).
"""

from __future__ import annotations

import json
import math
import os
import time
from time import time_ns
from typing import Any

__all__ = ["TransactionLog"]

STALE_SECONDS = 1.0


class TransactionLog:
    def __init__(self, path: str | None) -> None:
        self.path = path
        self._f = open(path, "a", buffering=1 << 16) if path else None
        self._flushed = time.monotonic()

    def write(self, **record: Any) -> None:
        if self._f is None:
            return
        record["time"] = round(time.time(), 6)
        self._f.write(json.dumps(record, default=str) + "\n")

    def transition(self, task: int, category: str | None, state: str, worker: str | None, detail: str,
                   stamp: str | None = None) -> None:
        """One state change: the hot path (four per task), written without the generic JSON encoder.
        ``stamp``: the time as :meth:`stamp` wrote it, for several lines of one instant (now if None)."""
        if self._f is None:
            return
        q = _QUOTED.get
        self._f.write(_TRANSITION % (task, q(category) or _str(category), state, q(worker) or _str(worker),
                                     q(detail) or _str(detail), stamp or self.stamp()))

    @staticmethod
    def stamp() -> str:
        """Now, as a transition line's time: ``"%.6f" % time.time()``, from integer microseconds."""
        us = "%d" % (time_ns() // 1000)  # seconds since 1970 have ten digits: no padding needed
        return f"{us[:-6]}.{us[-6:]}"

    def result(self, task: int, category: str | None, worker: str | None, detail: str | None, attempts: int,
               cores: Any, memory: Any, time_max: Any, measured: tuple[Any, Any, Any, Any] | None,
               stamp: str | None = None) -> None:
        """A task's result line, as ``write(task=..., state="result", ...)`` would write it, without the
        generic JSON encoder. ``measured``: (wall_time, memory, peak_rss, cpu_time), written rounded to
        6, 3, 3 and 6 decimals. ``stamp``: the time as :meth:`stamp` wrote it (now if None)."""
        if self._f is None:
            return
        if measured is None:
            m = "null"
        else:
            a, b, c, d = measured
            m = _MEASURED % (_decimals(a, 6), _decimals(b, 3), _decimals(c, 3), _decimals(d, 6))
        key = (cores, memory, time_max, type(cores), type(memory), type(time_max))  # 1 == 1.0, but not as text
        alloc = _ALLOCATED.get(key)
        if alloc is None:
            alloc = f'{{"cores": {_num(cores)}, "memory": {_num(memory)}, "time_max": {_num(time_max)}}}'
            if len(_ALLOCATED) < 256:
                _ALLOCATED[key] = alloc
        q = _QUOTED.get
        now = (stamp or self.stamp()).rstrip("0")  # as repr(round(time.time(), 6)): trailing zeros dropped
        self._f.write(_RESULT % (repr(task) if type(task) is int else _num(task), q(category) or _str(category),
                                 q(worker) or _str(worker), q(detail) or _str(detail),
                                 repr(attempts) if type(attempts) is int else _num(attempts), alloc, m,
                                 now + "0" if now[-1] == "." else now))

    def flush(self) -> None:
        if self._f is not None:
            self._f.flush()
            self._flushed = time.monotonic()

    def flush_if_stale(self) -> None:
        """Flush if the last flush was ``STALE_SECONDS`` ago or more."""
        if self._f is not None and time.monotonic() - self._flushed >= STALE_SECONDS:
            self.flush()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 _-./:,()#=+")


# times are formatted from integer microseconds (float formatting costs several times more):
# transition lines as "%.6f" % time.time() writes them, result lines as repr(round(time.time(), 6)) does
_TRANSITION = '{"task": %d, "category": %s, "state": "%s", "worker": %s, "detail": %s, "time": %s}\n'
_RESULT = ('{"task": %s, "category": %s, "state": "result", "worker": %s, "detail": %s, "attempts": %s, '
           '"allocated": %s, "measured": %s, "time": %s}\n')
_MEASURED = '{"wall_time": %s, "memory": %s, "peak_rss": %s, "cpu_time": %s}'
_FIXED = {3: "%.3f", 6: "%.6f"}
_ALLOCATED: dict[tuple, str] = {}  # (cores, memory, time_max and their types) -> JSON text: a run has few
_QUOTED: dict[str | None, str] = {None: "null"}  # str -> its JSON text: categories, details, worker names repeat
_QUOTED_MAX = 16384  # bounded: the log's memory does not grow with the tasks run


def _decimals(x: Any, places: int) -> str:
    """``json.dumps(round(x, places))`` (places 3 or 6). For a float below 1e9 in size (and, at 6
    places, 0 or at least 1e-4 in size) that is ``"%.<places>f"`` without its trailing zeros: both
    round the exact binary value to the same decimal, doubles that size are closer together than
    1e-6 so no shorter decimal reads back as the same one, and repr writes no exponent there. The
    fixed-point formatting costs half of round() followed by repr."""
    if type(x) is float:
        if x == 0.0:
            return repr(x)  # 0.0 or -0.0
        if 1e-4 <= x < 1e9 or -1e9 < x <= -1e-4 or (places == 3 and -1e9 < x < 1e9):
            text = (_FIXED[places] % x).rstrip("0")
            return text + "0" if text[-1] == "." else text
    return _num(round(x, places))


def _str(value: str | None) -> str:
    """A JSON string (or null); plain text is quoted directly, anything else through json."""
    if value is None:
        return "null"
    if type(value) is str:
        q = _QUOTED.get(value)
        if q is None:
            q = f'"{value}"' if _PLAIN.issuperset(value) else json.dumps(value)
            if len(_QUOTED) < _QUOTED_MAX:
                _QUOTED[value] = q
        return q
    return json.dumps(value if isinstance(value, str) else str(value))


def _num(value: Any) -> str:
    """A JSON number (or null) as ``json.dumps(value, default=str)`` writes it."""
    if value is None:
        return "null"
    t = type(value)
    if t is int or (t is float and math.isfinite(value)):
        return repr(value)
    return json.dumps(value, default=str)


def read_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
