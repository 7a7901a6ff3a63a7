"""What runs on the workers: the library each run installs in vinecore.

The library context is a :class:`Job`, unpickled once per worker process: the
processors, the ``postprocess`` callable (for coffea a
:class:`~ddr._coffea.NanoEventsOpener`, whose open files and forms therefore
persist across chunks on that worker), the reducer and the cores per task.
Three functions are served by FunctionCalls:

``process(item)``      postprocess the item, run every processor on it, compute
                       any dask collections locally; returns ``{name: partial}``
``accumulate(*parts)`` merge partials with the reducer (the output stays on the worker)
``count(*args)``       ``postprocess.count(*args)``: entries and uuid of a file, for planning

The worker side knows no item types. A ``postprocess`` object may take over
``process`` entirely with a ``process_item(item, processors, cores=, reducer=)``
method (the coffea opener does: it reads a chunk once for all processors and
splits it over the task's cores), and answers ``count`` requests if its
planner asks for them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import vinecore

from .exceptions import ReducerError

__all__ = ["Job", "build_context", "process", "accumulate", "merge_parts", "count"]


@dataclass
class Job:
    processors: Mapping[str, Any]
    postprocess: Callable[[Any], Any] | None
    reducer: Callable[[Any, Any], Any]
    cores: int = 1

    def close(self) -> None:
        """Called by vinecore when the run's library is removed: close the open files."""
        close = getattr(self.postprocess, "close", None)
        if callable(close):
            close()


def build_context(payload: bytes) -> Job:
    import dask

    job = vinecore._serialize.loads(payload)
    # worker-local dask: exactly the task's cores (one: no threads at all)
    if job.cores > 1:
        dask.config.set(scheduler="threads", num_workers=job.cores)
    else:
        dask.config.set(scheduler="sync")
    return job


def _job() -> Job:
    return vinecore.library_context()


def process(item: Any) -> dict[str, Any]:
    job = _job()
    take_over = getattr(job.postprocess, "process_item", None)
    if take_over is not None:
        out = take_over(item, job.processors, cores=job.cores, reducer=job.reducer)
    else:
        from ._coffea import run_processor

        data = job.postprocess(item) if job.postprocess is not None else item
        out = {name: run_processor(proc, data, cores=job.cores)  # worker-local dask on exactly the task's cores
               for name, proc in job.processors.items()}
    for name, value in out.items():
        if value is None:
            raise TypeError(f"processor {name!r} returned None. Probably its process() does not end with "
                            "`return output`; return the partial result (a dict of histograms, counts...), "
                            "an empty dict if there is nothing to report")
    return out


def accumulate(*parts: dict[str, Any]) -> dict[str, Any]:
    return merge_parts(_job(), parts)


def merge_parts(job: Job, parts: Any) -> dict[str, Any]:
    """Merge ``{processor: partial}`` dicts with the job's reducer (also used on the manager).

    A reducer that fails raises :class:`ReducerError` naming the processor and, for dict outputs,
    the first key whose values cannot be merged."""
    out: dict[str, Any] = {}
    for name in job.processors:
        values = [p[name] for p in parts if p is not None and name in p]
        if not values:
            out[name] = None
            continue
        acc = values[0]
        for v in values[1:]:
            try:
                acc = job.reducer(acc, v)
            except Exception as exc:
                raise ReducerError(_reducer_failure(name, acc, v, exc)) from exc
        out[name] = acc
    return out


def _reducer_failure(name: str, a: Any, b: Any, exc: BaseException) -> str:
    path = _first_unmergeable(a, b, ())
    where = f" at key {'/'.join(map(repr, path))}" if path else ""
    return (f"merging the partial results of processor {name!r} failed{where}: {type(exc).__name__}: {exc}\n"
            "  the reducer must merge any two partial results (same keys, compatible values: histograms with "
            "the same axes, numbers, arrays); check what process() returns for that key")


def _first_unmergeable(a: Any, b: Any, path: tuple) -> tuple:
    """The key path where two nested dict partials first disagree in type or keys' value types."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        for k in a:
            if k in b:
                deeper = _first_unmergeable(a[k], b[k], (*path, k))
                if deeper:
                    return deeper
        return ()
    if type(a) is not type(b):
        return path or ("<top>",)
    try:
        from ._reducers import accumulate_pair

        accumulate_pair(a, b)
    except Exception:  # noqa: BLE001 - this is the probe
        return path or ("<top>",)
    return ()


def count(*args: Any) -> tuple[int, str | None]:
    counter = getattr(_job().postprocess, "count", None)
    if counter is None:
        raise TypeError("this run's postprocess has no count() method, but its planner asked for a count")
    return counter(*args)
