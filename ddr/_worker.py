"""What runs on the workers: the ``ddr`` library installed in vinecore.

The library context is a :class:`Job`, unpickled once per worker process: the
processors, the postprocess callable (for coffea a
:class:`~ddr._coffea.NanoEventsOpener` whose open files and forms therefore
persist across chunks on that worker), the reducer and the cores per task.
Three functions are served by FunctionCalls:

``process(item)``      postprocess the item, run every processor on it, compute
                       any dask collections locally; returns ``{name: partial}``
``accumulate(*parts)`` merge partials with the reducer (the output stays on the worker)
``count(path, tree)``  number of entries and uuid of a file, for planning
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import vinecore

__all__ = ["Job", "build_context", "process", "accumulate", "merge_parts", "count", "LIBRARY"]

LIBRARY = "ddr"


@dataclass
class Job:
    processors: Mapping[str, Any]
    postprocess: Callable[[Any], Any] | None
    reducer: Callable[[Any, Any], Any]
    cores: int = 1
    coffea: bool = False

    def close(self) -> None:
        """Called by vinecore when the run's library is removed: close the open files."""
        close = getattr(self.postprocess, "close", None)
        if callable(close):
            close()


def build_context(payload: bytes) -> Job:
    import dask

    job = vinecore._serialize.loads(payload)
    if job.cores > 1:
        dask.config.set(scheduler="threads", num_workers=job.cores)
    else:
        dask.config.set(scheduler="sync")
    return job


def _job() -> Job:
    return vinecore.library_context()


def process(item: Any) -> dict[str, Any]:
    job = _job()
    if job.coffea:
        from ._coffea import process_chunk

        return process_chunk(job.postprocess, job.processors, item, cores=job.cores, reducer=job.reducer)
    from ._coffea import run_processor

    data = job.postprocess(item) if job.postprocess is not None else item
    return {name: run_processor(proc, data, cores=job.cores) for name, proc in job.processors.items()}


def accumulate(*parts: dict[str, Any]) -> dict[str, Any]:
    return merge_parts(_job(), parts)


def merge_parts(job: Job, parts: Any) -> dict[str, Any]:
    """Merge ``{processor: partial}`` dicts with the job's reducer (also used on the manager)."""
    out: dict[str, Any] = {}
    for name in job.processors:
        values = [p[name] for p in parts if p is not None and name in p]
        out[name] = functools.reduce(job.reducer, values) if values else None
    return out


def count(path: str, tree: str) -> tuple[int, str | None]:
    from ._coffea import NanoEventsOpener, count_entries

    opener = _job().postprocess
    if isinstance(opener, NanoEventsOpener):
        return opener.count(path, tree)  # keeps the file open for its chunks
    return count_entries(path, tree)

