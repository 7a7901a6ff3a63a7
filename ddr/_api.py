"""The public entry points: :class:`DynamicDataReduction` and its coffea flavour.

``DynamicDataReduction`` is generic: any ``preprocess`` that yields work items
with sizes, any ``postprocess`` that turns an item into the processors' input,
any commutative and associative ``reducer``. ``CoffeaDynamicDataReduction``
fills those in for coffea filesets and NanoEvents.

Every run goes through one path: :meth:`~DynamicDataReduction.submit` starts a
:class:`~ddr.RunHandle` (a driver loop in a background thread) and
:meth:`~DynamicDataReduction.compute` is ``submit().result()``.
"""

from __future__ import annotations

import os
import warnings
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

import vinecore

from ._chunking import ChunkSizer
from ._datasets import Dataset, load_fileset
from ._driver import DatasetProgress, Driver, RunOptions
from ._planner import FilesetPlanner, GenericPlanner, Planner
from ._reducers import accumulate_pair
from ._reduction import Notice, ReductionState
from ._worker import Job
from .exceptions import DDRError, StepsKeptWarning

if TYPE_CHECKING:
    from ._handle import RunHandle

__all__ = ["DynamicDataReduction", "CoffeaDynamicDataReduction", "normalize_processors"]

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
    splitter:
        ``(item, size) -> [(item, size), ...]``: how to split an item that ran
        out of memory or time, for items without a ``split(parts)`` method.
        Without either, such an item fails (clearly) instead of being split.
    accumulation_size:
        how many partial results one accumulation task merges (at least 2).
    manager:
        an open :class:`vinecore.Manager` to reuse (warm workers); otherwise one
        is created with ``engine``, ``workers`` and ``run_dir`` and closed at the end.
        A manager runs one reduction at a time; each run's library (processors,
        open files) is removed from its workers when the run ends.
    cores, memory, time_max:
        resources of each processing task (memory in MB, time in s). A manager
        created here gets workers of ``cores`` cores (local and sync engines).
    skip_bad_files:
        record unreadable input and go on instead of stopping.
    keep_going:
        record chunks on which the processor raised (or that ran out of
        resources even at the smallest split) and finish everything else,
        instead of stopping at the first.
    """

    def __init__(self, data: Any, processors: Any, *, preprocess: Callable[[Any], Iterable[Any]] | None = None,
                 postprocess: Callable[[Any], Any] | None = None,
                 reducer: Callable[[Any, Any], Any] | None = None,
                 splitter: Callable[[Any, int], Iterable[tuple[Any, int]]] | None = None,
                 accumulation_size: int = 8, manager: vinecore.Manager | None = None, engine: Any = "local",
                 workers: int | None = None, run_dir: str | os.PathLike | None = None, cores: int = 1,
                 memory: int | None = None, time_max: float | None = None, retries: int = 3,
                 skip_bad_files: bool = False, keep_going: bool = False,
                 engine_options: Mapping[str, Any] | None = None) -> None:
        if accumulation_size < 2:
            raise ValueError(f"accumulation_size must be at least 2 (partials merged per task), got {accumulation_size}")
        if cores < 1:
            raise ValueError(f"cores must be at least 1, got {cores}")
        self.processors, self._single = normalize_processors(processors)
        self.data = data
        self.preprocess = preprocess
        self.postprocess = postprocess
        self.reducer = reducer or accumulate_pair
        self.splitter = splitter
        self.manager = manager
        self.engine, self.workers, self.run_dir = engine, workers, run_dir
        self.engine_options = dict(engine_options or {})
        self.options = RunOptions(accumulation_size=accumulation_size, cores=cores, memory=memory,
                                  time_max=time_max, retries=retries, skip_bad_files=skip_bad_files,
                                  keep_going=keep_going)
        self.last_run: Driver | None = None
        self.report: dict[str, Any] | None = None
        self.notices: list[str] = []  # what the run told the user (resume started afresh, ...)

    # hooks the coffea flavour overrides
    def _datasets(self) -> Mapping[str, Any]:
        data = self.data
        if isinstance(data, Mapping) and "datasets" in data and isinstance(data["datasets"], Mapping):
            data = data["datasets"]
        if not isinstance(data, Mapping) or not data:
            raise ValueError("data must be {'datasets': {name: spec}} or {name: spec} with at least one dataset")
        return data

    def _planners(self, skip: Mapping[str, Mapping[str, list[tuple[int, int]]]]) -> dict[str, Planner]:
        if self.preprocess is None:
            raise ValueError("DynamicDataReduction needs preprocess=...; for coffea filesets use "
                             "CoffeaDynamicDataReduction")
        return {name: GenericPlanner(name, self.preprocess(spec), splitter=self.splitter,
                                     min_split=self.options.min_split)
                for name, spec in self._datasets().items()}

    def _job(self) -> Job:
        return Job(self.processors, self.postprocess, self.reducer, self.options.cores)

    def _resume(self) -> tuple[dict[str, tuple[Any, Any]], Any]:
        """``({dataset: (value, coverage)} to start from, checkpointer or None)``; none in the generic form."""
        return {}, None

    def _finalize(self, dataset: str, value: Any) -> Any:
        """A merged value as the user sees it (the coffea flavour joins dask-mode array pieces)."""
        return value

    # ---------------------------------------------------------------- run
    def _prefork(self) -> Any:
        """The local engine's zygote (workers forked with everything this process imported, see
        vinecore.engines._zygote), forked now in the caller's thread: the run's own thread would make the
        process multi-threaded. None when the run brings its manager or does not fork."""
        if self.manager is not None or self.engine != "local":
            return None
        from vinecore.engines.local import prefork

        return prefork(self.engine_options.get("start_method"), self.engine_options.get("env"))

    def _open_manager(self, zygote: Any = None) -> tuple[vinecore.Manager, bool]:
        if self.manager is not None:
            return self.manager, False
        options = dict(self.engine_options)
        if zygote is not None:
            options["zygote"] = zygote
        if self.engine in ("local", "sync"):
            options.setdefault("cores_per_worker", self.options.cores)  # tasks ask for what workers have
        m = vinecore.Manager(engine=self.engine, workers=self.workers, run_dir=self.run_dir, **options)
        return m, True

    def _start(self, manager: vinecore.Manager, on_notice: Callable[[Notice], None] | None = None) -> Driver:
        global _run_counter
        _run_counter += 1
        seed, checkpointer = self._resume()
        skip = {ds: {p: list(rs) for p, rs in cov.ranges.items()} for ds, (_, cov) in seed.items()}
        o = self.options
        machine = ReductionState(self._planners(skip), accumulation_size=o.accumulation_size, retries=o.retries,
                                 skip_bad_files=o.skip_bad_files, keep_going=o.keep_going,
                                 seed={ds: cov for ds, (_, cov) in seed.items()})
        run = Driver(manager, self._job(), machine, o, library_name=f"ddr-{os.getpid()}-{_run_counter}",
                     seeds={ds: value for ds, (value, _) in seed.items()}, checkpointer=checkpointer,
                     on_notice=on_notice)
        self.last_run = run
        return run

    def compute(self, *, progress: Callable[[list[DatasetProgress]], None] | None = None,
                progress_interval: float = 0.5) -> dict[str, Any]:
        """Run to the end; ``{dataset: result}`` (one processor) or ``{processor: {dataset: result}}``.

        Exactly ``submit().result()``; an interrupt (Ctrl-C) cancels the run, waits for it to stop
        (its report and checkpoint are written) and is raised again."""
        handle = self.submit(progress=progress, progress_interval=progress_interval)
        try:
            return handle.result()
        except KeyboardInterrupt:
            handle.cancel(timeout=60)
            raise

    def submit(self, *, progress: Callable[[list[DatasetProgress]], None] | None = None,
               progress_interval: float = 0.5) -> "RunHandle":
        """Start without blocking; returns a :class:`~ddr.RunHandle` (works inside Jupyter)."""
        from ._handle import RunHandle

        return RunHandle(self, progress=progress, progress_interval=progress_interval)

    def _assemble(self, results: Mapping[str, Any]) -> dict[str, Any]:
        """``{dataset: {processor: value}}`` -> the shape compute() returns, postprocessed."""
        out: dict[str, dict[str, Any]] = {name: {} for name in self.processors}
        for ds, value in results.items():
            for name, proc in self.processors.items():
                v = None if value is None else self._finalize(ds, value.get(name))
                post = getattr(proc, "postprocess", None)
                if v is not None and callable(post):
                    r = post(v)
                    v = v if r is None else r
                out[name][ds] = v
        if self._single:
            return next(iter(out.values()))
        return out


def _steps_kept_note(datasets: Mapping[str, Dataset], chunk_size: int) -> str | None:
    """What to tell a user whose fixed chunk size files with coffea ``steps`` do not follow (None: all do)."""
    stepped = {name: n for name, ds in datasets.items() if (n := sum(f.steps is not None for f in ds.files))}
    if not stepped:
        return None
    files = sum(stepped.values())
    where = ", ".join(f"{name} ({n})" for name, n in sorted(stepped.items())[:5])
    more = f" and {len(stepped) - 5} more datasets" if len(stepped) > 5 else ""
    return (f"the chunk size {chunk_size} does not apply to the {files} file{'s' if files > 1 else ''} whose "
            f"fileset entry has coffea \"steps\" (datasets: {where}{more}): their steps are processed as given. "
            f"To cut them into {chunk_size}-entry chunks, regenerate the fileset with `ddr preprocess --step-size "
            f"{chunk_size}`, or remove \"steps\" from those entries.")


class CoffeaDynamicDataReduction(DynamicDataReduction):
    """DynamicDataReduction over a coffea fileset with NanoEvents.

    ``fileset`` is a path to a fileset JSON (raw or preprocessed dialect) or the
    loaded dict. Chunks are cut lazily; entries are counted on the workers
    where the fileset lacks them; chunk sizes adapt to measured time and
    memory unless ``chunk_size`` fixes them. Files whose entry has coffea
    ``steps`` are processed in those steps (``chunk_size`` then warns with
    :class:`ddr.StepsKeptWarning`). With ``run_dir`` and
    ``checkpoint_every``, checkpoints are written there; ``resume=True`` starts
    from the run directory's checkpoint (or afresh, saying so, if it has none).

    ``mode`` is how NanoEvents are given to the processors: ``"virtual"``
    (lazy arrays, read on access), ``"eager"``, or ``"dask"`` for processors
    written for coffea's dask mode (dask-awkward, ``hist.dask``; each chunk is
    a dask graph computed on the worker, see :mod:`ddr._daskmode`). The
    default ``"auto"`` picks ``"dask"`` when the processors' code uses
    dask-awkward or hist.dask, ``"virtual"`` otherwise.

    ``remote`` (a :class:`ddr.RemoteOptions` or a dict of its fields) sets
    redirectors for ``/store/...`` names, the read timeout and the node cache
    of remote files (see :mod:`ddr._remote`).
    """

    def __init__(self, fileset: Any, processors: Any, *, schema: Any = "NanoAOD", chunk_size: int | None = None,
                 initial_chunk_size: int = 10_000, target_seconds: float = 30.0, max_chunk_size: int = 2_000_000,
                 uproot_options: Mapping[str, Any] | None = None, mode: str | None = "auto",
                 reducer: Callable[[Any, Any], Any] | None = None, min_split: int = 1,
                 checkpoint_every: float | None = None, resume: bool = False, fingerprint_extra: str = "",
                 remote: Any = None, **kwargs: Any) -> None:
        from ._coffea import NanoEventsOpener
        from ._daskmode import resolve_mode

        mode = resolve_mode(mode, normalize_processors(processors)[0])
        self.mode = mode
        self.datasets: dict[str, Dataset] = load_fileset(fileset) if not isinstance(fileset, Mapping) or not all(
            isinstance(v, Dataset) for v in fileset.values()) else dict(fileset)
        metadata = {name: dict(ds.metadata) for name, ds in self.datasets.items()}
        opener = NanoEventsOpener(schema, mode=mode, uproot_options=dict(uproot_options or {}), metadata=metadata,
                                  remote=remote)  # urls, redirectors, timeouts, node cache: ddr._remote
        super().__init__(self.datasets, processors, postprocess=opener, reducer=reducer, **kwargs)
        self.options.min_split = min_split
        self.chunk_size = chunk_size
        self.sizing = dict(initial=initial_chunk_size, target_seconds=target_seconds, max_size=max_chunk_size)
        if chunk_size is not None:
            note = _steps_kept_note(self.datasets, chunk_size)
            if note:
                warnings.warn(note, StepsKeptWarning, stacklevel=2)
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

    def _resume(self) -> tuple[dict[str, tuple[Any, Any]], Any]:
        from ._journal import Checkpointer, load_checkpoint

        seed: dict[str, tuple[Any, Any]] = {}
        if self.resume:
            if self.run_dir is None:
                raise DDRError("resume=True needs the run_dir of the run to resume")
            found = load_checkpoint(self.run_dir, self.fingerprint())
            if found is None:
                self.notices.append(f"--resume: no checkpoint in {self.run_dir} yet; starting afresh")
            else:
                seed = found
        checkpointer = None
        if self.run_dir is not None and self.checkpoint_every is not None:
            checkpointer = Checkpointer(self.run_dir, self.fingerprint(), self.checkpoint_every)
        return seed, checkpointer

    def _planners(self, skip: Mapping[str, Mapping[str, list[tuple[int, int]]]]) -> dict[str, Planner]:
        planners: dict[str, Planner] = {}
        for name, ds in self.datasets.items():
            sizer = ChunkSizer(initial=min(self.sizing["initial"], self.sizing["max_size"]),
                               target_seconds=self.sizing["target_seconds"], max_size=self.sizing["max_size"],
                               memory_mb=self.options.memory, fixed=self.chunk_size,
                               min_size=min(1000, self.chunk_size or 1000))
            planners[name] = FilesetPlanner(ds, sizer, lookahead=self.options.lookahead,
                                            skip={p: list(rs) for p, rs in skip.get(name, {}).items()},
                                            min_split=self.options.min_split)
        return planners

    def _finalize(self, dataset: str, value: Any) -> Any:
        if self.mode != "dask" or value is None:
            return value
        from ._daskmode import finalize

        files = self.datasets[dataset].files if dataset in self.datasets else []
        return finalize(value, {f.path: i for i, f in enumerate(files)})
