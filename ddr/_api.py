"""The public entry points: :class:`DynamicDataReduction` and its coffea flavour.

``DynamicDataReduction`` is generic: any ``preprocess`` that yields work items
with sizes, any ``postprocess`` that turns an item into the processors' input,
any commutative and associative ``reducer``. ``CoffeaDynamicDataReduction``
fills those in for coffea filesets and NanoEvents.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

import vinecore

from ._chunking import ChunkSizer
from ._datasets import Dataset, load_fileset
from ._driver import DatasetProgress, Reduction, RunOptions
from ._reducers import accumulate_pair
from ._sources import FilesetSource, GenericSource
from ._worker import Job
from .exceptions import DDRError

if TYPE_CHECKING:
    from ._handle import RunHandle

__all__ = ["DynamicDataReduction", "CoffeaDynamicDataReduction", "build_report", "normalize_processors"]

_run_counter = 0


def normalize_processors(processors: Any) -> tuple[dict[str, Any], bool]:
    """``{name: processor}`` and whether a single processor was given."""
    if isinstance(processors, Mapping):
        if not processors:
            raise ValueError("no processors given: pass a processor, a list or a dict of them")
        return {str(k): v for k, v in processors.items()}, False
    if isinstance(processors, (list, tuple)):
        if not processors:
            raise ValueError("no processors given: the list is empty")
        out: dict[str, Any] = {}
        for p in processors:
            name = _name_of(p)
            n, i = name, 2
            while n in out:
                n, i = f"{name}#{i}", i + 1
            out[n] = p
        return out, False
    return {_name_of(processors): processors}, True


def _name_of(p: Any) -> str:
    if hasattr(p, "process"):
        return type(p).__name__
    return getattr(p, "__name__", None) or type(p).__name__


class DynamicDataReduction:
    """Reduce ``processors`` over ``data`` with streaming, on-worker reduction.

    Parameters
    ----------
    data:
        ``{"datasets": {name: spec}}`` or ``{name: spec}``.
    processors:
        a callable or coffea ``ProcessorABC``, or a list or dict of them.
    preprocess:
        ``spec -> iterable of (item, size)``, run lazily on the manager.
    postprocess:
        ``item -> input`` of the processors, run on the worker. It is shipped
        once per worker and kept for the whole run (cache open files in it);
        if it has a ``close()`` method, each worker calls it when the run ends.
    reducer:
        ``(a, b) -> merged``; commutative and associative. Default: coffea's
        ``accumulate`` semantics (dicts of hist, numbers, sets, accumulators).
    accumulation_size:
        how many partial results one accumulation task merges.
    manager:
        an open :class:`vinecore.Manager` to reuse (warm workers); otherwise one
        is created with ``engine``, ``workers`` and ``run_dir`` and closed at the end.
        A reused manager keeps its workers; each run's library (processors,
        open files) is removed from them when the run ends.
    cores, memory, time_max:
        resources of each processing task (memory in MB, time in s).
    """

    def __init__(self, data: Any, processors: Any, *, preprocess: Callable[[Any], Iterable[Any]] | None = None,
                 postprocess: Callable[[Any], Any] | None = None,
                 reducer: Callable[[Any, Any], Any] | None = None, accumulation_size: int = 8,
                 manager: vinecore.Manager | None = None, engine: Any = "local", workers: int | None = None,
                 run_dir: str | os.PathLike | None = None, cores: int = 1, memory: int | None = None,
                 time_max: float | None = None, retries: int = 3, skip_bad_files: bool = False,
                 engine_options: Mapping[str, Any] | None = None) -> None:
        self.processors, self._single = normalize_processors(processors)
        self.data = data
        self.preprocess = preprocess
        self.postprocess = postprocess
        self.reducer = reducer or accumulate_pair
        self.manager = manager
        self.engine, self.workers, self.run_dir = engine, workers, run_dir
        self.engine_options = dict(engine_options or {})
        self.options = RunOptions(accumulation_size=accumulation_size, cores=cores, memory=memory,
                                  time_max=time_max, retries=retries, skip_bad_files=skip_bad_files)
        self.last_run: Reduction | None = None
        self.report: dict[str, Any] | None = None

    # hooks the coffea flavour overrides
    def _datasets(self) -> Mapping[str, Any]:
        data = self.data
        if isinstance(data, Mapping) and "datasets" in data and isinstance(data["datasets"], Mapping):
            data = data["datasets"]
        if not isinstance(data, Mapping) or not data:
            raise ValueError("data must be {'datasets': {name: spec}} or {name: spec} with at least one dataset")
        return data

    def _sources(self) -> tuple[dict[str, Any], dict[str, ChunkSizer]]:
        if self.preprocess is None:
            raise ValueError("DynamicDataReduction needs preprocess=...; for coffea filesets use "
                             "CoffeaDynamicDataReduction")
        return {name: GenericSource(name, self.preprocess(spec)) for name, spec in self._datasets().items()}, {}

    def _job(self) -> Job:
        return Job(self.processors, self.postprocess, self.reducer, self.options.cores, coffea=False)

    # ---------------------------------------------------------------- run
    def _open_manager(self) -> tuple[vinecore.Manager, bool]:
        if self.manager is not None:
            return self.manager, False
        m = vinecore.Manager(engine=self.engine, workers=self.workers, run_dir=self.run_dir,
                             **self.engine_options)
        return m, True

    def _start(self, manager: vinecore.Manager, on_event=None) -> Reduction:
        global _run_counter
        _run_counter += 1
        sources, sizers = self._sources()
        run = Reduction(manager, self._job(), sources, sizers, self.options,
                        library_name=f"ddr-{os.getpid()}-{_run_counter}", on_event=on_event)
        self.last_run = run
        return run

    def compute(self, *, progress: Callable[[list[DatasetProgress]], None] | None = None,
                progress_interval: float = 0.5) -> dict[str, Any]:
        """Run to the end; ``{dataset: result}`` (one processor) or ``{processor: {dataset: result}}``."""
        m, own = self._open_manager()
        run = None
        try:
            run = self._start(m)
            last = 0.0
            while not run.step(0.25):
                if progress is not None and time.monotonic() - last >= progress_interval:
                    progress(run.progress())
                    last = time.monotonic()
            if progress is not None:
                progress(run.progress())
            if run.error is not None:
                raise run.error
            return self._assemble(run)
        finally:
            if own:
                m.close()
            elif run is not None:
                run.close()  # the manager stays: drop this run's library context from its workers

    def submit(self) -> "RunHandle":
        """Start without blocking; returns a :class:`~ddr.RunHandle` (works inside Jupyter)."""
        from ._handle import RunHandle

        return RunHandle(self)

    def _assemble(self, run: Reduction) -> dict[str, Any]:
        self.report = build_report(run)
        out: dict[str, dict[str, Any]] = {name: {} for name in self.processors}
        for ds, value in run.results.items():
            for name, proc in self.processors.items():
                v = None if value is None else value.get(name)
                post = getattr(proc, "postprocess", None)
                if v is not None and callable(post):
                    r = post(v)
                    v = v if r is None else r
                out[name][ds] = v
        if self._single:
            return next(iter(out.values()))
        return out


class CoffeaDynamicDataReduction(DynamicDataReduction):
    """DynamicDataReduction over a coffea fileset with NanoEvents.

    ``fileset`` is a path to a fileset JSON (raw or preprocessed dialect) or the
    loaded dict. Chunks are cut lazily; entries are counted on the workers
    where the fileset lacks them; chunk sizes adapt to measured time and
    memory unless ``chunk_size`` fixes them. ``remote`` (a
    :class:`ddr.RemoteOptions` or a dict of its fields) sets redirectors for
    ``/store/...`` names, the read timeout and the node cache of remote files.
    """

    def __init__(self, fileset: Any, processors: Any, *, schema: Any = "NanoAOD", chunk_size: int | None = None,
                 initial_chunk_size: int = 10_000, target_seconds: float = 30.0, max_chunk_size: int = 2_000_000,
                 uproot_options: Mapping[str, Any] | None = None, mode: str = "virtual",
                 reducer: Callable[[Any, Any], Any] | None = None, min_split: int = 1,
                 checkpoint_every: float | None = None, resume: bool = False, fingerprint_extra: str = "",
                 remote: Any = None, **kwargs: Any) -> None:
        from ._coffea import NanoEventsOpener

        self.datasets: dict[str, Dataset] = load_fileset(fileset) if not isinstance(fileset, Mapping) or not all(
            isinstance(v, Dataset) for v in fileset.values()) else dict(fileset)
        metadata = {name: dict(ds.metadata) for name, ds in self.datasets.items()}
        opener = NanoEventsOpener(schema, mode=mode, uproot_options=dict(uproot_options or {}), metadata=metadata,
                                  remote=remote)  # urls, redirectors, timeouts, node cache: ddr._remote
        super().__init__(self.datasets, processors, postprocess=opener, reducer=reducer, **kwargs)
        self.options.min_split = min_split
        self.chunk_size = chunk_size
        self.sizing = dict(initial=initial_chunk_size, target_seconds=target_seconds, max_size=max_chunk_size)
        self.skip_ranges: dict[str, dict[str, list[tuple[int, int]]]] = {}
        self.schema = schema
        self.checkpoint_every = checkpoint_every
        self.resume = resume
        self.fingerprint_extra = fingerprint_extra

    def fingerprint(self) -> str:
        """What decides this run's result: datasets, processors, schema (see ddr._journal)."""
        from ._journal import fingerprint

        datasets = {name: [[f.path, f.tree, f.steps] for f in ds.files] for name, ds in self.datasets.items()}
        procs = {name: f"{type(p).__module__}.{type(p).__qualname__}" if hasattr(p, "process")
                 else getattr(p, "__qualname__", repr(p)) for name, p in self.processors.items()}
        return fingerprint(datasets=datasets, processors=procs, schema=str(self.schema),
                           extra=self.fingerprint_extra)

    def _start(self, manager: vinecore.Manager, on_event=None) -> Reduction:
        from ._journal import Checkpointer, load_checkpoint

        seed = {}
        if self.resume:
            if self.run_dir is None:
                raise DDRError("resume=True needs the run_dir of the run to resume")
            seed = load_checkpoint(self.run_dir, self.fingerprint())
            self.skip_ranges = {ds: {p: list(rs) for p, rs in cov.ranges.items()} for ds, (_, cov) in seed.items()}
        run = super()._start(manager, on_event)
        if seed:
            run.resume_from(seed)
        if self.run_dir is not None and self.checkpoint_every is not None:
            run.checkpointer = Checkpointer(self.run_dir, self.fingerprint(), self.checkpoint_every)
        return run

    def _sources(self):
        sources, sizers = {}, {}
        for name, ds in self.datasets.items():
            sizer = ChunkSizer(initial=min(self.sizing["initial"], self.sizing["max_size"]),
                               target_seconds=self.sizing["target_seconds"], max_size=self.sizing["max_size"],
                               memory_mb=self.options.memory, fixed=self.chunk_size,
                               min_size=min(1000, self.chunk_size or 1000))
            skip = self.skip_ranges.get(name)
            sources[name] = FilesetSource(ds, sizer, lookahead=self.options.lookahead,
                                          skip=(lambda path, s=skip: s.get(path, [])) if skip else None)
            sizers[name] = sizer
        return sources, sizers

    def _job(self) -> Job:
        return Job(self.processors, self.postprocess, self.reducer, self.options.cores, coffea=True)


def build_report(run: Reduction) -> dict[str, Any]:
    wall = time.monotonic() - run.started
    datasets = {}
    total = 0
    for ds, led in run.ledgers.items():
        led.events_expected = run.sources[ds].events_expected
        rep = led.to_report()
        datasets[ds] = rep
        total += rep["events_processed"]
    return {
        "datasets": datasets,
        "wall_time": round(wall, 3),
        "events_processed": total,
        "events_per_second": round(total / wall, 1) if wall > 0 else None,
        "first_result_seconds": None if run.first_result_at is None else round(run.first_result_at - run.started, 3),
        "complete": all(d["complete"] for d in datasets.values()) and run.error is None,
        "error": None if run.error is None else f"{type(run.error).__name__}: {run.error}",
    }
