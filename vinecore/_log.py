"""The transactions log: one JSON object per line in ``run_dir/transactions.jsonl``.

Each line is a state change of a task: ``time`` (unix seconds), ``task``,
``category``, ``state`` (waiting, ready, running, done), ``worker``, ``detail``
(attempt number, retry reason, result), and on ``done`` lines the resources
``allocated`` (cores, memory MB, time_max s) and ``measured`` (wall_time s,
memory MB above baseline, peak_rss MB, cpu_time s). Worker joins and removals
are logged with ``event`` instead of ``task``.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

__all__ = ["TransactionLog"]


class TransactionLog:
    def __init__(self, path: str | None) -> None:
        self.path = path
        self._f = open(path, "a", buffering=1 << 16) if path else None

    def write(self, **record: Any) -> None:
        if self._f is None:
            return
        record["time"] = round(time.time(), 6)
        self._f.write(json.dumps(record, default=str) + "\n")

    def transition(self, task: int, category: str | None, state: str, worker: str | None, detail: str) -> None:
        """One state change: the hot path (five per task), written without the generic JSON encoder."""
        if self._f is None:
            return
        self._f.write(f'{{"task": {task}, "category": {_str(category)}, "state": "{state}", '
                      f'"worker": {_str(worker)}, "detail": {_str(detail)}, "time": {time.time():.6f}}}\n')

    def flush(self) -> None:
        if self._f is not None:
            self._f.flush()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 _-./:,()#=+")


def _str(value: str | None) -> str:
    """A JSON string (or null); plain text is quoted directly, anything else through json."""
    if value is None:
        return "null"
    if _PLAIN.issuperset(value):
        return f'"{value}"'
    return json.dumps(str(value))


def read_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
