"""One chunk in dask mode: dask-awkward NanoEvents over an open file, one small graph, computed on the worker.

Policy (the costs are measured on a 1,300-branch NanoAOD file):

* **Events** come from the file the worker's
  :class:`~ddr._coffea.NanoEventsOpener` already has open. What coffea builds
  once per file (branch list, base form, the schema's form and form mapping:
  a *template*, about 1 s) is built with coffea's own
  ``from_root(mode="dask")`` once per worker, dataset and file layout (the
  tree's branch names and types; at most ``max_open_files`` are kept). A
  chunk only makes an input layer over its entry range, cut into one
  partition per core of the task, whose reads go to the open tree.
  ``events.metadata`` is what ``apply_to_fileset`` gives: the dataset's
  metadata plus ``dataset``.
* **Graph.** ``process(events)`` of every processor builds one graph;
  dask-awkward optimises it (column projection: only the branches the
  processors touch are read) and it is computed on a local scheduler with
  exactly the task's cores. Building the graph and projecting it costs
  0.1 to 0.3 s whatever the chunk size, so both are done once per key and
  reused:

  - the *graph* per (processors, dataset, file layout, number of
    partitions): a later chunk with the same key is computed with the same
    graph, its input layer pointed at the new entry range. A dask-mode
    ``process`` is a pure graph builder (coffea calls it once per dataset,
    ddr once per key); the graph depends only on the code, the metadata and
    the form, so long as dask-awkward is not told the partitions' lengths:
    it bakes known lengths into the graph (``ak.num(events, axis=0)`` becomes
    a constant), and then every new chunk length (the ramp's sizes, the last
    chunk of every file) would need a graph of its own (0.1 to 0.3 s each).
    So the events' lengths are left unknown to dask-awkward. A processor that
    needs them (``len(events)``, a slice that makes dask-awkward compute the
    lengths) raises while its graph is built: it is built again with known
    lengths, and those processors keep known lengths, with a graph per
    (key, partition lengths), on this worker from then on;
  - the *projection* per (processors, dataset, file layout): a new graph of
    the same key (other partition lengths) is projected to the branches
    found before instead of running the typetracer pass again. Should a
    computation fail under a kept projection, the graph is optimised in full
    and computed once more, and the new projection replaces the kept one.
* **Statistics** per chunk (:class:`ChunkRecord`) are kept on the opener;
  with ``DDR_DASK_STATS=FILE`` in the environment each worker appends them to
  FILE as JSON lines.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from ._daskmode import ArrayPieces, compute_group, local_scheduler, require_dask_awkward
from .exceptions import BadInputError, DDRError

__all__ = ["STATS_ENV", "ChunkRecord", "DaskModeState", "chunk_events", "process_chunk_dask", "opener_state"]

STATS_ENV = "DDR_DASK_STATS"
_ADD_DOC = {"__doc__": "title", "typename": "typename"}


# --------------------------------------------------------------- template
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
        form = udask._get_ttree_form(ak, tree, keys, _ADD_DOC)
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
    io_func = next(layer.io_func for layer in events.dask.layers.values() if hasattr(layer, "io_func"))
    if not hasattr(io_func, "read_tree"):  # pragma: no cover - uproot changed its dask reader
        import uproot

        raise DDRError(f"uproot {uproot.__version__}'s dask reader has no read_tree(); ddr's dask mode needs "
                       "uproot 5.4 to 5.7 (pip install 'uproot<5.8')")
    return _Template(key, io_func, events._meta, len(io_func.common_keys))


# ----------------------------------------------------------- input layer
@dataclass
class _ChunkLog:
    """What one chunk's input layer read (filled while the graph is computed)."""

    keys: set = field(default_factory=set)
    calls: int = 0


@dataclass
class _Binding:
    """Where a graph's input layer reads: shared by the io function and its projections, re-pointed at
    the next chunk when the graph is reused."""

    tree: Any
    base: int  # the chunk's first entry; partitions are given relative to it
    where: tuple  # (dataset, path, tree name, chunk start, chunk stop), for errors
    edges: tuple  # the partitions' first entries, relative to ``base``, and the chunk's length
    log: _ChunkLog
    setup: float = 0.0  # seconds spent building the template for this chunk (0 when it was kept)
    columns: frozenset | None = None  # a kept projection the unprojected io function applies
    lock: threading.Lock = field(default_factory=threading.Lock)


class _ChunkRead:
    """dask-awkward io function: coffea's reader over the worker's open tree.

    Implements dask-awkward's mocking and projection protocols by delegation;
    reads go straight to ``read_tree`` with the open tree (uproot's own path
    would open the file again, or wrap the tree in a way coffea's mapping
    cannot read)."""

    def __init__(self, template: _Template, inner: Any, binding: _Binding, projected: bool = False) -> None:
        self.template, self.inner, self.binding, self.projected = template, inner, binding, projected

    def __getstate__(self) -> dict:  # pragma: no cover - graphs never leave the worker
        raise TypeError("a ddr dask-mode chunk graph is computed where it is built; it cannot be pickled")

    def __call__(self, part: int) -> Any:
        b = self.binding
        inner = self.inner
        if not self.projected and b.columns is not None:
            inner = inner.project_manually(b.columns)
        with b.lock:
            b.log.keys.update(inner.common_keys)
            b.log.calls += 1
        start, stop = b.base + b.edges[part], b.base + b.edges[part + 1]
        try:
            return inner.read_tree(b.tree, start, stop)[0]
        except Exception as exc:  # named by the chunk's range: the chunk is what is retried or skipped
            from ._coffea import _raise_input_error

            _raise_input_error(exc, *b.where, "cannot read the events")  # (a MemoryError propagates as is)

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
        return _ChunkRead(self.template, self.inner.project(report=report, state=state), self.binding, True)

    def necessary_columns(self, report: Any, state: Any) -> frozenset:
        return self.inner.necessary_columns(report=report, state=state)


def _lengths(size: int, parts: int) -> tuple[int, ...]:
    parts = max(1, min(parts, size))
    edges = [size * i // parts for i in range(parts + 1)]
    return tuple(b - a for a, b in zip(edges[:-1], edges[1:]))


def chunk_events(opener: Any, t: Any, chunk: Any, partitions: int = 1, known_lengths: bool = True) -> Any:
    """The chunk's dask-awkward NanoEvents over the open tree ``t.tree``, in ``partitions`` partitions
    whose lengths dask-awkward knows unless ``known_lengths=False``."""
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
    setup = 0.0
    if template is None:
        t0 = time.perf_counter()
        metadata = {**opener.metadata.get(chunk.dataset, {}), "dataset": chunk.dataset}
        template = _build_template(key, chunk.path, tree, typenames or tree.typenames(),
                                   resolve_schema(opener.schema), metadata, opener.uproot_options)
        state.templates[key] = template
        setup = time.perf_counter() - t0
        while len(state.templates) > state.max_templates:
            state.templates.popitem(last=False)
    state.templates.move_to_end(key)
    lengths = _lengths(chunk.stop - chunk.start, partitions)
    edges = [0]
    for n in lengths:
        edges.append(edges[-1] + n)
    binding = _Binding(tree, chunk.start, (chunk.dataset, chunk.path, chunk.tree, chunk.start, chunk.stop),
                       tuple(edges), _ChunkLog(), setup)
    cache = getattr(getattr(dak, "lib", None), "core", None)
    if cache is not None and hasattr(cache, "dak_cache"):
        cache.dak_cache.clear()  # as coffea does: earlier chunks' graphs must not stay alive
    divisions = tuple(edges) if known_lengths else (None,) * len(edges)
    events = dak.from_map(_ChunkRead(template, template.io_func, binding), list(range(len(lengths))),
                          divisions=divisions, label="from-uproot", token=uuid.uuid4().hex)
    events._meta.attrs["@original_array"] = events  # NanoEvents cross-references (as coffea sets it)
    return events


# ------------------------------------------------------------------ state
@dataclass
class ChunkRecord:
    dataset: str
    file: str
    start: int
    stop: int
    partitions: int
    setup_seconds: float  # opening the file and building its template, when this chunk was the first
    graph_seconds: float  # events, and when the graph is new: process() and the optimisation
    compute_seconds: float
    branches_read: list[str]
    branches_in_file: int
    bytes_read: int | None
    graph_reused: bool  # computed with the graph of an earlier chunk
    projection_kept: bool  # a new graph projected to the branches found for an earlier one


@dataclass
class _Graph:
    out: dict  # {processor: output} as process() returned it
    found: list  # its dask-awkward / hist.dask collections
    optimized: tuple  # ... optimised, in the same order
    binding: _Binding


class DaskModeState:
    """Per opener (so per worker and run): templates, graphs and projections kept, statistics."""

    def __init__(self, max_templates: int = 16, max_graphs: int = 32) -> None:
        self.templates: OrderedDict[tuple, _Template] = OrderedDict()  # LRU: a wide one holds a few MB
        self.graphs: OrderedDict[tuple, _Graph] = OrderedDict()
        self.max_templates, self.max_graphs = max_templates, max_graphs
        self.columns: dict[tuple, frozenset] = {}
        self.sized: set[tuple] = set()  # processors (names) whose graphs need known partition lengths
        self.records: deque[ChunkRecord] = deque(maxlen=10_000)
        self.fallbacks = 0  # graphs re-optimised in full because a kept projection failed
        self.lock = threading.Lock()  # one chunk at a time per opener (a reused graph has one binding)


def opener_state(opener: Any) -> DaskModeState:
    state = getattr(opener, "daskmode", None)
    if state is None:
        state = opener.daskmode = DaskModeState(max(1, getattr(opener, "max_open_files", 16)))
    return state


def _bytes_read(tree: Any) -> int | None:
    source = getattr(getattr(tree, "file", None), "source", None)
    return getattr(source, "num_requested_bytes", None)


# ------------------------------------------------------------------- run
def process_chunk_dask(opener: Any, processors: Mapping[str, Any], chunk: Any, cores: int,
                       call: Callable[[Any, Any], Any]) -> dict[str, Any]:
    """Every processor on the chunk's dask events: one graph, computed here on ``cores`` cores."""
    require_dask_awkward()  # before the opener, which would report a missing module as bad input
    state = opener_state(opener)
    with state.lock:
        return _process(state, opener, processors, chunk, cores, call)


def _process(state: DaskModeState, opener: Any, processors: Mapping[str, Any], chunk: Any, cores: int,
             call: Callable[[Any, Any], Any]) -> dict[str, Any]:
    import awkward as ak
    import dask_awkward as dak

    from ._coffea import _is_dask, _map_leaves, compute_leaves

    t0 = time.perf_counter()
    opener.open_tree(chunk.path, chunk.tree, dataset=chunk.dataset, start=chunk.start, stop=chunk.stop)
    opened = time.perf_counter() - t0  # ~0 unless this chunk opened the file
    lengths = _lengths(chunk.size, cores)
    names = tuple(processors)
    sized = names in state.sized
    events = opener(chunk, partitions=len(lengths), lengths=sized)
    read = _read_of(events)
    ckey = (names, read.template.key)
    gkey = (*ckey, lengths if sized else len(lengths))  # a graph over unknown lengths serves any chunk
    graph = state.graphs.get(gkey)
    reused = graph is not None
    kept = None
    if reused:
        state.graphs.move_to_end(gkey)
        b, new = graph.binding, read.binding
        b.tree, b.base, b.where, b.edges, b.log = new.tree, new.base, new.where, new.edges, new.log
    else:
        out = None
        if not sized:
            try:
                with _lengths_unknown_to_dask():
                    out = {name: call(p, events) for name, p in processors.items()}
            except Exception:  # noqa: BLE001 - built again with known lengths: a real error is raised there
                events = opener(chunk, partitions=len(lengths), lengths=True)
                read = _read_of(events)
                gkey = (*ckey, lengths)
        if out is None:
            out = {name: call(p, events) for name, p in processors.items()}
            if not sized:
                state.sized.add(names)  # built with known lengths only: these processors need them
        found: list[Any] = []

        def collect(leaf: Any) -> Any:
            if _is_dask(leaf) and compute_group(leaf) == "dask-awkward":
                found.append(leaf)
            return leaf

        _map_leaves(out, collect)
        kept = state.columns.get(ckey)
        graph = _Graph(out, found, _optimize(found, read.binding, kept), read.binding)
        state.graphs[gkey] = graph
        while len(state.graphs) > state.max_graphs:
            state.graphs.popitem(last=False)
    t1 = time.perf_counter()
    before = _bytes_read(graph.binding.tree)
    values: tuple = ()
    if graph.found:
        try:
            values = dask_compute(graph.optimized, cores)
        except BadInputError:
            raise
        except Exception:
            if graph.binding.columns is None:
                raise
            state.fallbacks += 1  # the kept projection missed a branch: optimise in full, once more
            graph.binding.log = _ChunkLog()
            graph.optimized = _optimize(graph.found, graph.binding, None)
            kept = None
            values = dask_compute(graph.optimized, cores)
        log = graph.binding.log
        if graph.binding.columns is None and log.calls:
            state.columns[ckey] = graph.binding.columns = frozenset(log.keys)
    t2 = time.perf_counter()
    after = _bytes_read(graph.binding.tree)
    by_id = {id(leaf): value for leaf, value in zip(graph.found, values)}
    where = (chunk.path, chunk.start)

    def eager(leaf: Any) -> Any:
        if id(leaf) not in by_id:
            return copy.deepcopy(leaf) if reused else leaf  # the same graph's plain values, not shared
        value = by_id[id(leaf)]
        if not isinstance(leaf, dak.Array):
            return value
        # packed: a selection is a view into the chunk's whole columns, and a view pickles with them
        return ArrayPieces([(where, ak.to_packed(value))])

    out = compute_leaves(_map_leaves(graph.out, eager), cores)  # other dask collections (delayed, arrays...)
    setup = opened + read.binding.setup
    record = ChunkRecord(chunk.dataset, chunk.path, chunk.start, chunk.stop, len(lengths), round(setup, 6),
                         round(t1 - t0 - setup, 6), round(t2 - t1, 6), sorted(graph.binding.log.keys), read.template.branches,
                         None if before is None or after is None else after - before, reused, kept is not None)
    state.records.append(record)
    _log_record(record)
    return out


def _read_of(events: Any) -> _ChunkRead:
    return next(layer.io_func for layer in events.dask.layers.values()
                if isinstance(getattr(layer, "io_func", None), _ChunkRead))


class _NeedsLengths(Exception):
    """dask-awkward was about to compute the partitions' lengths while a graph was built."""


@contextlib.contextmanager
def _lengths_unknown_to_dask():
    """While a graph is built over events of unknown lengths, dask-awkward may not compute them on its
    own (it would read the chunk once to build the graph): it raises instead (once per worker)."""
    import dask_awkward as dak

    def refuse(self: Any) -> None:
        raise _NeedsLengths("this processor needs the partitions' lengths")

    original = dak.Array.eager_compute_divisions
    dak.Array.eager_compute_divisions = refuse
    try:
        yield
    finally:
        dak.Array.eager_compute_divisions = original


def _optimize(collections: list[Any], binding: _Binding, kept: frozenset | None) -> tuple:
    """dask-awkward's optimisations; with a kept projection, all but the column projection (the io
    function applies the kept one itself)."""
    import dask

    binding.columns = kept
    if not collections:
        return ()
    which = list(dask.config.get("awkward.optimization.which", ["columns", "layer-chains"]))
    if kept is not None:
        which = [w for w in which if w != "columns"]
    with dask.config.set({"awkward.optimization.which": which}):
        return dask.optimize(*collections)


def dask_compute(collections: tuple, cores: int) -> tuple:
    import dask

    return dask.compute(*collections, optimize_graph=False, **local_scheduler(cores))


def _log_record(record: ChunkRecord) -> None:
    path = os.environ.get(STATS_ENV)
    if not path:
        return
    line = json.dumps({**asdict(record), "branches_read": len(record.branches_read), "pid": os.getpid()})
    with open(path, "a") as f:
        f.write(line + "\n")
