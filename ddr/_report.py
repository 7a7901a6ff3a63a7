"""The run report: what ``ddr run --report`` writes and ``RunHandle.report`` returns.

Per dataset it accounts for every event: ``events_expected``, ``events_processed`` (what the
result covers, resumed events included), ``events_resumed``, ``complete``, the failed chunks
with their kind, file and entry range, unreadable files, splits, chunk sizes, and ``files``:
per file its tree, the ``expected`` entry ranges (None while unknown) and the ``covered`` ones.
``expected`` minus ``covered`` is exactly what is missing (see ``failed_fileset``), and the
``files`` sections of several reports are what ``ddr merge`` checks for overlaps and completeness.

At the top level: ``status`` (finished, failed, cancelled or interrupted), ``complete`` (every
dataset complete), ``error``, wall time, events per second and the time to the first result.
"""

from __future__ import annotations

from typing import Any

from ._driver import Driver
from ._reduction import RunStatus

__all__ = ["build_report"]


def build_report(run: Driver, *, status: str | None = None) -> dict[str, Any]:
    machine = run.machine
    wall = run.clock() - run.started
    datasets = {}
    processed = resumed = 0
    for name, d in machine.datasets.items():
        led = d.ledger
        led.events_expected = d.planner.events_expected
        coverage = led.final if d.final else machine.held(name)[1]
        rep = led.to_report(coverage, d.planner.expected_files())
        rep["finished"] = d.final
        datasets[name] = rep
        processed += rep["events_processed"]
        resumed += rep["events_resumed"]
    error = machine.error
    return {
        "status": status or machine.status.value,
        "complete": machine.status is RunStatus.FINISHED and all(d["complete"] for d in datasets.values()),
        "error": None if error is None else f"{type(error).__name__}: {error}",
        "datasets": datasets,
        "wall_time": round(wall, 3),
        "events_processed": processed,
        "events_per_second": round((processed - resumed) / wall, 1) if wall > 0 else None,
        "first_result_seconds": None if run.first_result_at is None else round(run.first_result_at - run.started, 3),
    }
