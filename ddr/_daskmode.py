"""Coffea's dask mode inside one task: each chunk is a small dask-awkward program, built and run on the worker.

A processor written for coffea's dask mode (events from
``NanoEventsFactory.from_root(..., mode="dask")``, ``hist.dask`` histograms,
dask-awkward arrays, run by ``apply_to_fileset`` + ``dask.compute``) runs
unchanged. Policy, per chunk:

* **Events** come from the file the worker's
  :class:`~ddr._coffea.NanoEventsOpener` already has open. What coffea builds
  once per file (the branch list, the base form, the schema's form and its
  form mapping: the *template*, about 1 s for a 1,300-branch file) is built
  once per worker, dataset and file layout (the tree's branch names and
  types), with coffea's own ``from_root(mode="dask")``, and kept. A chunk only
  makes a new input layer over its entry range, cut into one partition per
  core of the task. ``events.metadata`` is what ``apply_to_fileset`` gives:
  the dataset's metadata plus ``dataset``.
* **Graph**: ``process(events)`` of every processor builds one graph, which is
  optimised by dask-awkward (column projection: only the branches the
  processors touch are read) and computed on a local scheduler on exactly the
  task's cores (:func:`local_scheduler`). The branches found by the projection
  are kept per (processors, dataset, file layout): later chunks with the same
  key are projected to them directly instead of running dask-awkward's
  typetracer pass again (it costs as much as building the graph). Should a
  chunk fail under a kept projection, it is recomputed once with the full
  optimisation, which then replaces the kept projection.
* **Outputs** come back eager: ``hist.dask`` -> ``hist.Hist``, dask-awkward
  scalars -> numbers, nested containers kept. A dask-awkward *array* becomes
  :class:`ArrayPieces`, because coffea's ``accumulate`` adds awkward arrays
  element-wise: pieces are merged by ``+`` and concatenated at the end in
  fileset order (file, then entry), as ``dask.compute`` would return them.
* **Statistics** per chunk (:class:`ChunkRecord`: graph and compute seconds,
  branches and bytes read) are kept on the opener; with the environment
  variable ``DDR_DASK_STATS=FILE`` each worker also appends them to FILE as
  JSON lines.

The mode of a run is chosen (``mode="eager" | "virtual" | "dask"``) or, with
``"auto"``, detected from the processors' code (:func:`uses_dask_mode`).
"""

from __future__ import annotations

import inspect
import json
import os
import threading
import time
import types
import uuid
from collections import OrderedDict, deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable

from ._extras import require
from .exceptions import BadInputError, DDRError

__all__ = ["MODES", "DaskModeUnavailable", "require_dask_awkward", "uses_dask_mode", "resolve_mode",
           "local_scheduler", "compute_group", "chunk_events", "process_chunk_dask", "ArrayPieces",
           "finalize", "ChunkRecord", "DaskModeState", "STATS_ENV"]

MODES = ("auto", "eager", "virtual", "dask")
STATS_ENV = "DDR_DASK_STATS"
_DASK_MODULES = ("dask_awkward", "dask_histogram", "hist.dask")
_HINT = "pip install 'ddr-hep[dask-awkward]'"


# ------------------------------------------------------------------ modes
class DaskModeUnavailable(DDRError, ImportError):
    """A dask-mode processor in an environment without dask-awkward (or dask-histogram)."""


def require_dask_awkward() -> Any:
    """``dask_awkward``, or :class:`DaskModeUnavailable` with the install command."""
    for module in ("dask_awkward", "dask_histogram"):
        try:
            require(module, extra="dask-awkward")
        except ImportError as exc:
            raise DaskModeUnavailable(
                f"this processor is written for coffea's dask mode (dask-awkward arrays, hist.dask), but "
                f"{module!r} cannot be imported ({exc.__cause__ or exc}).\n  Install the extra: {_HINT}\n"
                "  (it brings dask-awkward and dask-histogram, which need dask < 2025.4), or choose another "
                "mode for an eager processor: --mode virtual / mode='virtual'", name=module) from exc
    import dask_awkward

    return dask_awkward


def _is_dask_module(name: Any) -> bool:
    return isinstance(name, str) and any(name == m or name.startswith(m + ".") for m in _DASK_MODULES)


def _functions_of(processor: Any) -> list[types.FunctionType]:
    while hasattr(processor, "func") and callable(processor.func):  # functools.partial
        processor = processor.func
    if inspect.isfunction(processor) or inspect.ismethod(processor):
        return [getattr(processor, "__func__", processor)]
    out = []
    for cls in type(processor).__mro__:
        if cls.__module__.startswith(("coffea.", "builtins")):
            continue
        for value in vars(cls).values():
            value = getattr(value, "__func__", value)  # staticmethod / classmethod
            if inspect.isfunction(value):
                out.append(value)
    return out


def uses_dask_mode(processor: Any) -> bool:
    """Does the processor's code use dask-awkward, dask-histogram or ``hist.dask``?

    Looks at the names its functions (and the module-level functions of its
    module that they call) import or use: ``import hist.dask as hda`` inside
    ``process``, or a module-level ``import dask_awkward as dak`` that the code
    refers to. Code reached otherwise needs ``mode="dask"`` explicitly."""
    todo = _functions_of(processor)
    seen: set[int] = set()
    while todo:
        fn = todo.pop()
        if id(fn.__code__) in seen:
            continue
        seen.add(id(fn.__code__))
        codes = [fn.__code__]
        while codes:
            code = codes.pop()
            codes.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
            for name in code.co_names:
                if _is_dask_module(name):  # an import inside the function
                    return True
                obj = fn.__globals__.get(name)
                if obj is None:
                    continue
                if inspect.ismodule(obj):
                    if _is_dask_module(obj.__name__):
                        return True
                elif _is_dask_module(getattr(obj, "__module__", None)):
                    return True
                elif inspect.isfunction(obj) and obj.__module__ == fn.__module__:
                    todo.append(obj)  # a helper of the same module
    return False


def resolve_mode(mode: str | None, processors: Mapping[str, Any]) -> str:
    """The NanoEvents mode of a run: ``mode`` itself, or for ``"auto"`` (and None) ``"dask"`` when the
    processors use dask-awkward / hist.dask and ``"virtual"`` otherwise. A dask mode needs dask-awkward."""
    mode = "auto" if mode is None else mode
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    if mode == "auto":
        dask_mode = {name: uses_dask_mode(p) for name, p in processors.items()}
        if len(set(dask_mode.values())) > 1:
            names = lambda flag: ", ".join(n for n, d in dask_mode.items() if d is flag)  # noqa: E731
            raise DDRError(f"processors {names(True)} are written for coffea's dask mode and {names(False)} "
                           "for eager arrays; one run reads its events in one mode.\n  Run them separately, "
                           "or choose the mode: --mode dask|virtual (mode= in Python)")
        mode = "dask" if any(dask_mode.values()) else "virtual"
    if mode == "dask":
        require_dask_awkward()
    return mode


# -------------------------------------------------------- local scheduler
def local_scheduler(cores: int) -> dict[str, Any]:
    """``dask.compute`` keywords that use exactly ``cores`` cores: the synchronous scheduler for one
    (no thread pool at all), ``cores`` threads otherwise."""
    if cores <= 1:
        return {"scheduler": "sync"}
    return {"scheduler": "threads", "num_workers": int(cores)}


def compute_group(collection: Any) -> Any:
    """Collections of one group are computed together (shared inputs read once): dask-awkward and
    hist.dask collections are one group; any other type is a group of its own."""
    module = type(collection).__module__
    return "dask-awkward" if _is_dask_module(module) else type(collection)


# ----------------------------------------------------------------- events
class _Template:
    """The input of one (dataset, file layout): coffea's io function and the events' typetracer."""

    def __init__(self, key: tuple, io_func: Any, meta: Any, branches: int) -> None:
        self.key, self.io_func, self.meta, self.branches = key, io_func, meta, branches

    def mock(self) -> Any:
        import awkward as ak

        attrs = {k: v for k, v in (self.meta.attrs or {}).items() if k != "@original_array"}
        return ak.Array(self.meta.layout, behavior=self.meta.behavior, attrs=attrs)


def _base_form(tree: Any, typenames: dict) -> Any:
    """The base form coffea's ``from_root(mode="dask")`` would read from the file, built from the open tree
    (``known_base_form`` spares coffea opening the file a second time: 0.5 s for 1,600 branches). None if
    uproot's or coffea's internals moved; coffea then opens the file itself."""
    try:
        import awkward as ak
        import uproot._dask as udask
        from coffea.nanoevents.factory import _is_interpretable

        keys = tree.keys(recursive=True, filter_branch=_is_interpretable, full_paths=True, ignore_duplicates=True)
        if hasattr(udask, "_normalize_grouped_keys"):
            keys = udask._normalize_grouped_keys(tree, keys, True)
        form = udask._get_ttree_form(ak, tree, keys, {"__doc__": "title", "typename": "typename"})
        form.parameters["typenames"] = typenames
        return form
    except (ImportError, AttributeError, TypeError):  # pragma: no cover - depends on library versions
        return None


def _build_template(key: tuple, path: str, tree: Any, typenames: dict, schemaclass: Any, metadata: dict,
                    uproot_options: Mapping[str, Any]) -> _Template:
    import dask_awkward as dak
    from coffea.nanoevents import NanoEventsFactory

    options = {k: v for k, v in uproot_options.items() if k != "allow_read_errors_with_report"}
    spec = {path: {"object_path": tree.object_path, "steps": [[0, tree.num_entries]]}}
    events = NanoEventsFactory.from_root(spec, mode="dask", schemaclass=schemaclass, metadata=metadata,
                                         uproot_options=options,
                                         known_base_form=_base_form(tree, typenames)).events()
    if not isinstance(events, dak.Array):
        name = getattr(schemaclass, "__name__", str(schemaclass))
        raise DDRError(f"the {name} schema cannot build dask-mode events (coffea gave {type(events).__name__}); "
                       "run this analysis with mode='virtual' (--mode virtual)")
    layers = [layer for layer in events.dask.layers.values() if hasattr(layer, "io_func")]
    io_func = layers[0].io_func
    if not hasattr(io_func, "read_tree"):  # pragma: no cover - uproot changed its dask reader
        import uproot

        raise DDRError(f"uproot {uproot.__version__}'s dask reader has no read_tree(); ddr's dask mode needs "
                       "uproot 5.4 to 5.7 (pip install 'uproot<5.8')")
    return _Template(key, io_func, events._meta, len(io_func.common_keys))


@dataclass
class _ChunkLog:
    """What one chunk's input layer read (filled while the graph is computed)."""

    columns: frozenset | None = None  # a kept projection to apply, or None
    keys: set = field(default_factory=set)
    calls: int = 0


class _ChunkRead:
    """dask-awkward io function for one chunk: coffea's reader over the worker's open tree.

    Implements dask-awkward's mocking and projection protocols by delegation;
    reads go straight to ``read_tree`` with the open tree (uproot's own path
    would open the file again, or wrap the tree in a way coffea's mapping
    cannot read)."""

    def __init__(self, template: _Template, inner: Any, tree: Any, where: tuple, log: _ChunkLog,
                 projected: bool = False) -> None:
        self.template, self.inner, self.tree, self.where, self.log = template, inner, tree, where, log
        self.projected = projected
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:  # pragma: no cover - graphs never leave the worker
        raise TypeError("a ddr dask-mode chunk graph is computed where it is built; it cannot be pickled")

    def __call__(self, bounds: tuple[int, int]) -> Any:
        inner = self.inner
        if not self.projected and self.log.columns is not None:
            inner = inner.project_manually(self.log.columns)
        with self._lock:
            self.log.keys.update(inner.common_keys)
            self.log.calls += 1
        start, stop = bounds
        try:
            return inner.read_tree(self.tree, start, stop)[0]
        except Exception as exc:
            from ._coffea import _bad_input

            dataset, path, tree = self.where
            raise _bad_input(exc, dataset, path, tree, start, stop, "cannot read the events") from exc

    @property
    def return_report(self) -> bool:
        return False

    def mock(self) -> Any:
        return self.template.mock()

    def mock_empty(self, backend: Any = "cpu") -> Any:
        return self.inner.mock_empty(backend)

    def prepare_for_projection(self) -> Any:
        return self.inner.prepare_for_projection()

    def project(self, report: Any, state: Any) -> "_ChunkRead":
        inner = self.inner.project(report=report, state=state)
        return _ChunkRead(self.template, inner, self.tree, self.where, self.log, projected=True)

    def necessary_columns(self, report: Any, state: Any) -> frozenset:
        return self.inner.necessary_columns(report=report, state=state)


def _split(start: int, stop: int, parts: int) -> list[tuple[int, int]]:
    parts = max(1, min(parts, stop - start))
    edges = [start + (stop - start) * i // parts for i in range(parts + 1)]
    return list(zip(edges[:-1], edges[1:]))


def chunk_events(opener: Any, t: Any, chunk: Any, partitions: int = 1) -> Any:
    """The chunk's dask-awkward NanoEvents over the open tree ``t.tree``, in ``partitions`` partitions."""
    dak = require_dask_awkward()
    from ._coffea import resolve_schema

    state = opener_state(opener)
    tree = t.tree
    typenames = None
    if getattr(t, "layout", None) is None:
        typenames = tree.typenames()
        t.layout = hash(frozenset(typenames.items()))
    key = (chunk.dataset, tree.object_path, t.layout)
    template = state.templates.get(key)
    if template is None:
        metadata = {**opener.metadata.get(chunk.dataset, {}), "dataset": chunk.dataset}
        template = _build_template(key, chunk.path, tree, typenames or tree.typenames(),
                                   resolve_schema(opener.schema), metadata, opener.uproot_options)
        state.templates[key] = template
        while len(state.templates) > state.max_templates:
            state.templates.popitem(last=False)
    state.templates.move_to_end(key)
    bounds = _split(chunk.start, chunk.stop, partitions)
    divisions = (0, *[b - chunk.start for _, b in bounds])
    read = _ChunkRead(template, template.io_func, tree, (chunk.dataset, chunk.path, chunk.tree), _ChunkLog())
    cache = getattr(getattr(dak, "lib", None), "core", None)
    if cache is not None and hasattr(cache, "dak_cache"):
        cache.dak_cache.clear()  # as coffea does: earlier chunks' graphs must not stay alive
    events = dak.from_map(read, bounds, divisions=divisions, label="from-uproot", token=uuid.uuid4().hex)
    events._meta.attrs["@original_array"] = events  # NanoEvents cross-references (as coffea sets it)
    return events


# ----------------------------------------------------------------- outputs
class ArrayPieces:
    """An awkward-array output of a dask-mode processor, kept in pieces until the end.

    ``+`` merges the pieces (so coffea's ``accumulate`` works); :meth:`concatenate`
    joins them ordered by file (``file_order``, then path) and first entry, the
    order in which ``dask.compute`` returns a dask-awkward array of a fileset."""

    def __init__(self, pieces: Iterable[tuple[tuple[str, int], Any]] = ()) -> None:
        self.pieces = list(pieces)

    def __add__(self, other: Any) -> "ArrayPieces":
        if not isinstance(other, ArrayPieces):
            return NotImplemented
        return ArrayPieces(self.pieces + other.pieces)

    def __iadd__(self, other: Any) -> "ArrayPieces":
        if not isinstance(other, ArrayPieces):
            return NotImplemented
        self.pieces.extend(other.pieces)
        return self

    def __len__(self) -> int:
        return sum(len(a) for _, a in self.pieces)

    def __repr__(self) -> str:
        return f"ArrayPieces({len(self.pieces)} pieces, {len(self)} entries; .concatenate() joins them)"

    def concatenate(self, file_order: Mapping[str, int] | None = None) -> Any:
        import awkward as ak

        order = file_order or {}
        pieces = sorted(self.pieces, key=lambda p: (order.get(p[0][0], len(order)), p[0][0], p[0][1]))
        return ak.concatenate([a for _, a in pieces]) if pieces else None


def finalize(value: Any, file_order: Mapping[str, int] | None = None) -> Any:
    """``value`` with every :class:`ArrayPieces` concatenated into one awkward array."""
    from ._coffea import _map_leaves

    return _map_leaves(value, lambda v: v.concatenate(file_order) if isinstance(v, ArrayPieces) else v)


# ------------------------------------------------------------- statistics
@dataclass
class ChunkRecord:
    dataset: str
    file: str
    start: int
    stop: int
    partitions: int
    graph_seconds: float  # events, process() and optimisation
    compute_seconds: float
    branches_read: list[str]
    branches_in_file: int
    bytes_read: int | None
    projection_kept: bool  # the chunk used the projection found for an earlier chunk


class DaskModeState:
    """Per-opener (so per worker and run) dask-mode caches and statistics."""

    def __init__(self, max_templates: int = 16) -> None:
        self.templates: OrderedDict[tuple, _Template] = OrderedDict()  # LRU: a wide one holds a few MB
        self.max_templates = max_templates
        self.columns: dict[tuple, frozenset] = {}
        self.records: deque[ChunkRecord] = deque(maxlen=10_000)
        self.fallbacks = 0  # chunks recomputed because a kept projection failed


def opener_state(opener: Any) -> DaskModeState:
    state = getattr(opener, "daskmode", None)
    if state is None:
        state = opener.daskmode = DaskModeState(max(1, getattr(opener, "max_open_files", 16)))
    return state


def _bytes_read(tree: Any) -> int | None:
    source = getattr(getattr(tree, "file", None), "source", None)
    return getattr(source, "num_requested_bytes", None)


def process_chunk_dask(opener: Any, processors: Mapping[str, Any], chunk: Any, cores: int,
                       call: Callable[[Any, Any], Any]) -> dict[str, Any]:
    """Every processor on the chunk's dask events, one graph computed here on ``cores`` cores."""
    import dask_awkward as dak

    from ._coffea import _is_dask, _map_leaves, compute_leaves

    require_dask_awkward()  # before the opener, which would report a missing module as bad input
    t0 = time.perf_counter()
    partitions = max(1, min(cores, chunk.size))
    events = opener(chunk, partitions=partitions)
    read = next(layer.io_func for layer in events.dask.layers.values() if isinstance(
        getattr(layer, "io_func", None), _ChunkRead))
    out = {name: call(p, events) for name, p in processors.items()}
    found: list[Any] = []

    def collect(leaf: Any) -> Any:
        if _is_dask(leaf) and compute_group(leaf) == "dask-awkward":
            found.append(leaf)
        return leaf

    _map_leaves(out, collect)
    state = opener_state(opener)
    key = (tuple(processors), read.template.key)
    kept = state.columns.get(key)
    t1 = time.perf_counter()
    graph = t1 - t0
    before = _bytes_read(read.tree)
    values: tuple = ()
    if found:
        try:
            values, g, c = _optimize_and_compute(found, read.log, kept, cores)
        except BadInputError:
            raise
        except Exception:
            if kept is None:
                raise
            state.fallbacks += 1  # the kept projection missed a branch: redo with the full optimisation
            kept = None
            read.log.keys.clear()
            values, g, c = _optimize_and_compute(found, read.log, None, cores)
        graph += g
        if kept is None and read.log.calls:
            state.columns[key] = frozenset(read.log.keys)
    else:
        c = 0.0
    after = _bytes_read(read.tree)
    by_id = {id(leaf): value for leaf, value in zip(found, values)}
    where = (chunk.path, chunk.start)

    def eager(leaf: Any) -> Any:
        if id(leaf) not in by_id:
            return leaf
        value = by_id[id(leaf)]
        return ArrayPieces([(where, value)]) if isinstance(leaf, dak.Array) else value

    out = compute_leaves(_map_leaves(out, eager), cores)  # other dask collections (delayed, arrays...)
    record = ChunkRecord(chunk.dataset, chunk.path, chunk.start, chunk.stop, partitions, round(graph, 6),
                         round(c, 6), sorted(read.log.keys), read.template.branches,
                         None if before is None or after is None else after - before, kept is not None)
    state.records.append(record)
    _log_record(record)
    return out


def _optimize_and_compute(collections: list[Any], log: _ChunkLog, kept: frozenset | None,
                          cores: int) -> tuple[tuple, float, float]:
    import dask

    t0 = time.perf_counter()
    log.columns = kept
    which = list(dask.config.get("awkward.optimization.which", ["columns", "layer-chains"]))
    if kept is not None:
        which = [w for w in which if w != "columns"]  # projected by the io function itself
    with dask.config.set({"awkward.optimization.which": which}):
        optimized = dask.optimize(*collections)
    t1 = time.perf_counter()
    values = dask.compute(*optimized, optimize_graph=False, **local_scheduler(cores))
    return values, t1 - t0, time.perf_counter() - t1


def _log_record(record: ChunkRecord) -> None:
    path = os.environ.get(STATS_ENV)
    if not path:
        return
    line = json.dumps({**asdict(record), "branches_read": len(record.branches_read), "pid": os.getpid()})
    with open(path, "a") as f:
        f.write(line + "\n")
