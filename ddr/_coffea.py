"""Worker side for coffea: chunks -> NanoEvents -> processor outputs.

A :class:`NanoEventsOpener` is pickled to each worker once and kept for the
whole run, so its caches persist from chunk to chunk:

* an LRU of open uproot files (``max_open_files``): opening a NanoAOD file
  and reading its TTree metadata (about 0.4 s for 2000 branches) happens once
  per file and worker, not once per chunk;
* per (file, tree), the schema built from the tree's base form: coffea's
  ``NanoEventsFactory.from_root`` rebuilds it on every call even when given
  an open file (``known_base_form`` only helps ``mode="dask"``), which costs
  another 0.1 to 0.2 s per chunk. The opener builds it once and makes each
  chunk's events from it with the chunk's entry range and metadata. Schemas
  that need podio metadata (EDM4HEP) go through ``from_root`` with the open
  file instead.
* ``freeze_gc``: an open 2000-branch file and its schema are a few hundred
  thousand long-lived Python objects, and every full garbage collection scans
  them again (pauses of 0.1 to 0.5 s, measured). After building a file's
  schema the opener moves the live objects out of the collector's sight
  (``gc.freeze``). Closed files are reclaimed by an unfreeze and a full
  collection once half of ``max_open_files`` have been closed since the last
  one: collecting at every new file would scan every open file each time
  (0.1 s per new file with a few wide files open, measured), and closed
  files are few between two collections.

Files are opened through a :class:`~ddr._remote.RemoteReader`: urls,
CMS logical file names through redirectors, bounded timeouts and the node
cache (``remote=``, see :mod:`ddr._remote`). The bytes each task reads are
reported with ``vinecore.report_metric`` as ``bytes_remote`` (read from a
server, including downloads into the cache), ``bytes_cache`` and
``bytes_local``.

Errors met while opening or reading input become
:class:`~ddr.exceptions.BadInputError` (with dataset, file, tree, entry
range, cause, kind and server: :func:`~ddr.exceptions.classify_input`),
except ``MemoryError``, which is a resource limit and propagates (the chunk
is split). Errors raised by the processor itself propagate unchanged; the
driver wraps them. A read error that surfaces inside the processor (virtual
arrays load lazily) is told apart by its traceback, which passes through
coffea's column mapping; the file is then closed (and its server tried last
by the next attempt, if it was unreachable).
"""

from __future__ import annotations

import copy
import gc
import threading
from collections import OrderedDict
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any, Callable

from ._planning import Chunk
from ._reducers import accumulate_pair, reduce_all
from ._remote import Opened, RemoteOptions, RemoteReader
from .exceptions import (BadInputError, InputErrorKind, TreeNotFound, classify_input, classify_input_error,
                         format_names, nearest)

__all__ = ["SCHEMAS", "resolve_schema", "NanoEventsOpener", "OpenerStatistics", "count_entries", "run_processor",
           "call_processor", "compute_leaves", "process_chunk", "classify_error"]

# name -> class name in coffea.nanoevents, imported on first use
SCHEMAS: dict[str, str] = {
    "NanoAOD": "NanoAODSchema", "PHYSLITE": "PHYSLITESchema", "Base": "BaseSchema",
    "PFNanoAOD": "PFNanoAODSchema", "ScoutingNanoAOD": "ScoutingNanoAODSchema",
    "TreeMaker": "TreeMakerSchema", "Delphes": "DelphesSchema",
}
_MODES = ("virtual", "eager", "dask")


def resolve_schema(name_or_class: Any) -> Any:
    """A coffea schema class from its name (``"NanoAOD"``, ``"nanoaodschema"``...) or the class itself."""
    if not isinstance(name_or_class, str):
        if callable(name_or_class):
            return name_or_class
        raise TypeError(f"schema must be a name ({', '.join(SCHEMAS)}) or a coffea schema class, "
                        f"got {name_or_class!r}")
    wanted = name_or_class.lower().removesuffix("schema")
    for name, cls_name in SCHEMAS.items():
        if wanted == name.lower():
            from coffea import nanoevents

            return getattr(nanoevents, cls_name)
    raise ValueError(f"unknown schema {name_or_class!r}; valid names (nearest first): "
                     f"{format_names(nearest(name_or_class, SCHEMAS))}, or pass a coffea schema class "
                     "such as coffea.nanoevents.NanoAODSchema")


# ------------------------------------------------------------------ errors
classify_error = classify_input_error  # (permanent?, description) of an input error; see ddr.exceptions


def _cause(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:400] + ' ...' if len(text) > 400 else text}"


def _bad_input(exc: BaseException, dataset: str | None, path: str, tree: str | None, start: int | None,
               stop: int | None, doing: str, url: str | None = None) -> BaseException:
    """The BadInputError for ``exc``, or ``exc`` itself when it is not bad input (MemoryError)."""
    if isinstance(exc, BadInputError):
        return exc
    f = classify_input(exc, url or path)
    if f.kind is InputErrorKind.RESOURCE:
        return exc
    return BadInputError(dataset, path, tree, start, stop, _cause(exc), f.permanent, f.hint,
                         what=f"{doing}: {f.description}", kind=f.kind.value, server=f.server)


def _raise_input_error(exc: BaseException, *where: Any, url: str | None = None) -> None:
    err = _bad_input(exc, *where, url=url)
    if err is exc:
        raise exc
    raise err from exc


def _is_read_error(exc: BaseException) -> bool:
    """Did ``exc`` come from loading a column of the events (coffea's mapping -> uproot)?"""
    tb = exc.__traceback__
    while tb is not None:
        if "/coffea/nanoevents/mapping/" in tb.tb_frame.f_code.co_filename.replace("\\", "/"):
            return True
        tb = tb.tb_next
    return False


# ------------------------------------------------------------ opening files
def _start_io_thread() -> None:
    """Start fsspec's I/O thread (uproot reads through it) now, while the library context is built.

    It is started lazily by the first read otherwise, which runs under the task's memory limit: under
    a tight ``--memory`` its stack cannot be mapped ("can't start new thread", resource exhaustion),
    and fsspec then keeps a loop that never runs, so every later read of the process would hang."""
    try:
        import fsspec.asyn

        fsspec.asyn.get_loop()
    except Exception:  # noqa: BLE001 - an fsspec without get_loop: uproot starts what it needs itself
        pass


def _open(reader: RemoteReader, path: str, options: Mapping[str, Any]) -> Opened:
    # Every chunk's baskets are read once, so uproot's per-file array cache (100 MB each) only costs:
    # filling it grew workers by ~100 MB per file and made the dimuon analysis 25 % slower.
    # (uproot.open is given {path: None}: a ':' in the path is not an object path)
    return reader.open(path, {"array_cache": None, **options})


def _get_tree(file: Any, path: str, tree: str, dataset: str | None, start: int | None, stop: int | None,
              url: str | None = None) -> Any:
    import uproot

    try:
        obj = file[tree]
    except uproot.KeyInFileError:
        try:
            keys = file.keys(recursive=True, cycle=False)
        except Exception:  # noqa: BLE001 - a listing is a courtesy
            keys = []
        raise TreeNotFound(dataset, path, tree, keys, start=start, stop=stop) from None
    except Exception as exc:
        _raise_input_error(exc, dataset, path, tree, start, stop, "cannot read the tree", url=url)
    if not hasattr(obj, "num_entries"):
        raise BadInputError(dataset, path, tree, start, stop, f"TypeError: {tree!r} is a {obj.classname}",
                            True, what=f"{tree!r} is not a TTree",
                            hint="set the tree in the fileset to a TTree of the file")
    return obj


def count_entries(path: str, tree: str, uproot_options: Mapping[str, Any] | None = None,
                  remote: RemoteOptions | Mapping[str, Any] | None = None) -> tuple[int, str]:
    """``(num_entries, uuid)`` of ``tree`` in ``path``; BadInputError or TreeNotFound if unreadable.

    Reads only metadata: the file is not cached unless ``remote`` says ``cache="always"``."""
    options = RemoteOptions.coerce(remote)
    if options.cache == "auto":
        options = RemoteOptions(options.redirectors, options.read_timeout, "never")
    reader = RemoteReader(options)
    try:
        opened = _open(reader, path, uproot_options or {})
    except Exception as exc:
        _raise_input_error(exc, None, path, tree, None, None, "cannot open file")
    try:
        t = _get_tree(opened.file, path, tree, None, None, None, opened.url)
        return int(t.num_entries), str(opened.file.file.uuid)
    finally:
        reader.report(opened)
        opened.close()


@dataclass(frozen=True)
class OpenerStatistics:
    opens: int  # files opened (uproot.open calls)
    schemas_built: int  # (file, tree) base forms and schemas built
    chunks: int  # events built
    open_files: int


class _Tree:
    """An open tree, its file (uproot ReadOnlyDirectory) and, once built, its schema."""

    def __init__(self, tree: Any, directory: Any) -> None:
        self.tree, self.directory = tree, directory
        self.schema: Any = None
        self.layout: Any = None  # dask mode: a digest of the tree's branch names and types


class NanoEventsOpener:
    """``chunk -> NanoEvents``, keeping files open and schemas built across chunks.

    ``metadata`` maps dataset names to user metadata; ``events.metadata`` holds
    it plus ``dataset``, ``filename``, ``treename``, ``entrystart``,
    ``entrystop`` and ``fileuuid`` (as coffea's Runner sets them).
    Thread-safe: ``process_chunk`` uses it from several threads.

    ``mode`` is NanoEvents' ``"virtual"``, ``"eager"`` or ``"dask"``: dask-awkward
    events over the same open files, with ``apply_to_fileset``'s metadata
    (:mod:`ddr._daskchunk`; needs the dask-awkward extra).
    """

    def __init__(self, schema: Any = "NanoAOD", *, mode: str = "virtual",
                 uproot_options: Mapping[str, Any] | None = None, max_open_files: int = 16,
                 metadata: Mapping[str, Mapping[str, Any]] | None = None, freeze_gc: bool = True,
                 remote: RemoteOptions | Mapping[str, Any] | None = None) -> None:
        if mode not in _MODES:
            raise ValueError(f"mode {mode!r} is not supported; use one of {', '.join(_MODES)}")
        if max_open_files < 1:
            raise ValueError(f"max_open_files must be at least 1, got {max_open_files}")
        schemaclass = resolve_schema(schema)  # fail early, on the manager
        if mode == "dask":
            from ._daskmode import require_dask_awkward

            require_dask_awkward()
            if not getattr(schemaclass, "__dask_capable__", True):
                raise ValueError(f"the {getattr(schemaclass, '__name__', schema)} schema has no dask mode in "
                                 "coffea; use mode='virtual'")
        self.schema, self.mode, self.max_open_files, self.freeze_gc = schema, mode, max_open_files, freeze_gc
        self.uproot_options = dict(uproot_options or {})
        self.metadata = {name: dict(meta) for name, meta in (metadata or {}).items()}
        self.remote = RemoteOptions.coerce(remote)
        self._reset()

    def _reset(self) -> None:
        self._reader = RemoteReader(self.remote)
        self._files: OrderedDict[str, tuple[Opened, dict[str, _Tree]]] = OrderedDict()
        self._lock = threading.RLock()
        self.opens = self.schemas_built = self.chunks = 0
        self._closed_since_collect = 0
        self.daskmode: Any = None  # ddr._daskchunk.DaskModeState, made on first use

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()
                if k in ("schema", "mode", "max_open_files", "uproot_options", "metadata", "freeze_gc", "remote")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        state.setdefault("remote", RemoteOptions())
        self.__dict__.update(state)
        self._reset()
        _start_io_thread()

    def statistics(self) -> OpenerStatistics:
        return OpenerStatistics(self.opens, self.schemas_built, self.chunks, len(self._files))

    def warm_paths(self) -> list[str]:
        """Paths of the files currently open, most recently used first."""
        with self._lock:
            return list(reversed(self._files))

    def close(self) -> None:
        with self._lock:
            while self._files:
                self._evict(next(iter(self._files)))
            self._reader.close()
        if self.freeze_gc:
            gc.unfreeze()

    def _evict(self, path: str) -> None:
        entry = self._files.pop(path, None)
        if entry is not None:
            self._reader.report(entry[0])
            entry[0].close()
            self._closed_since_collect += 1

    def forget(self, path: str, exc: BaseException | None = None) -> str | None:
        """Close ``path`` after a read error (a handle that failed is not reused); an unreachable
        server is tried last by the next attempt. Returns the url it was read from, if it was open."""
        with self._lock:
            entry = self._files.get(path)
            if entry is None:
                return None
            if exc is not None and not classify_input(exc, entry[0].url).permanent:
                self._reader.mark_down(entry[0].url)
            self._evict(path)
            return entry[0].url

    def report_reads(self, path: str) -> None:
        """Report the bytes read from ``path`` since the last report (``vinecore.report_metric``)."""
        with self._lock:
            entry = self._files.get(path)
            if entry is not None:
                self._reader.report(entry[0])

    def count(self, path: str, tree: str) -> tuple[int, str]:
        """``(num_entries, uuid)`` like :func:`count_entries`, leaving the file open for the chunks that
        follow (the manager sends them to this worker first): a wide file is then opened once per worker,
        not once to count it and again to process it."""
        t = self._tree(path, tree, None, None, None)
        self.report_reads(path)
        return int(t.tree.num_entries), str(t.tree.file.uuid)

    def open_tree(self, path: str, tree: str, *, dataset: str | None = None, start: int | None = None,
                  stop: int | None = None) -> Any:
        """The uproot TTree, from the cache when the file is open already."""
        return self._tree(path, tree, dataset, start, stop).tree

    def _tree(self, path: str, tree: str, dataset: str | None, start: int | None, stop: int | None) -> _Tree:
        with self._lock:
            entry = self._files.get(path)
            if entry is None:
                try:
                    opened = _open(self._reader, path, self.uproot_options)
                except Exception as exc:
                    _raise_input_error(exc, dataset, path, tree, start, stop, "cannot open file")
                self.opens += 1
                entry = self._files[path] = (opened, {})
                while len(self._files) > self.max_open_files:
                    self._evict(next(iter(self._files)))
            self._files.move_to_end(path)
            opened, trees = entry
            if tree not in trees:
                obj = _get_tree(opened.file, path, tree, dataset, start, stop, opened.url)
                trees[tree] = _Tree(obj, opened.file)
            return trees[tree]

    def process_item(self, chunk: Chunk, processors: Mapping[str, Any], *, cores: int = 1,
                     reducer: Callable[[Any, Any], Any] = accumulate_pair) -> dict[str, Any]:
        """Run every processor on the chunk's events (see :func:`process_chunk`); ddr's worker calls this."""
        return process_chunk(self, processors, chunk, cores=cores, reducer=reducer)

    def __call__(self, chunk: Chunk, *, partitions: int = 1, lengths: bool = True) -> Any:
        """The chunk's events; in dask mode a dask-awkward array of ``partitions`` partitions, whose
        lengths are known to dask-awkward unless ``lengths=False`` (see ddr._daskchunk)."""
        where = (chunk.dataset, chunk.path, chunk.tree, chunk.start, chunk.stop)
        t = self._tree(chunk.path, chunk.tree, chunk.dataset, chunk.start, chunk.stop)
        try:
            return self._events(t, chunk, partitions, lengths)
        except BadInputError:
            raise
        except Exception as exc:
            url = self.forget(chunk.path, exc)  # a handle that failed is not reused
            _raise_input_error(exc, *where, "cannot build the events", url=url)

    def _events(self, t: _Tree, chunk: Chunk, partitions: int = 1, lengths: bool = True) -> Any:
        from coffea.nanoevents import NanoEventsFactory

        tree = t.tree
        uuid = str(tree.file.uuid)
        if chunk.uuid is not None and chunk.uuid != uuid:
            raise BadInputError(chunk.dataset, chunk.path, chunk.tree, chunk.start, chunk.stop,
                                f"ValueError: uuid {uuid} differs from {chunk.uuid} in the fileset", True,
                                what="the file changed since the fileset was preprocessed",
                                hint="run `ddr preprocess` again, or remove the uuid from the fileset")
        if chunk.stop > tree.num_entries:
            raise BadInputError(chunk.dataset, chunk.path, chunk.tree, chunk.start, chunk.stop,
                                f"IndexError: the tree has {tree.num_entries} entries", True,
                                what="entry range beyond the end of the tree",
                                hint="the fileset's num_entries or steps do not match the file; run "
                                     "`ddr preprocess` again")
        with self._lock:
            self.chunks += 1
        if self.mode == "dask":
            from ._daskchunk import chunk_events

            return chunk_events(self, t, chunk, partitions, lengths)
        meta = dict(self.metadata.get(chunk.dataset, {}))
        meta.update(dataset=chunk.dataset, filename=chunk.path, treename=chunk.tree, entrystart=chunk.start,
                    entrystop=chunk.stop, fileuuid=uuid)
        schemaclass = resolve_schema(self.schema)
        if not _fast_path(schemaclass):
            return NanoEventsFactory.from_root(
                t.directory, treepath=chunk.tree, mode=self.mode, entry_start=chunk.start, entry_stop=chunk.stop,
                schemaclass=schemaclass, metadata=meta, uproot_options=self.uproot_options).events()
        with self._lock:  # threads of one chunk wait for the first to build it
            if t.schema is None:
                t.schema = self._build_schema(tree, schemaclass, chunk)
        return _events_from_schema(t, chunk, meta, self.mode, self.uproot_options)

    def _build_schema(self, tree: Any, schemaclass: Any, chunk: Chunk) -> Any:
        from coffea.nanoevents.mapping.uproot import UprootSourceMapping

        base_form = UprootSourceMapping._extract_base_form(tree)
        base_form["typenames"] = tree.typenames()
        try:
            schema = schemaclass(base_form)
        except Exception as exc:
            name = getattr(schemaclass, "__name__", str(schemaclass)).removesuffix("Schema")
            raise BadInputError(chunk.dataset, chunk.path, chunk.tree, chunk.start, chunk.stop, _cause(exc), True,
                                what=f"the {name} schema rejected the file",
                                hint="choose the schema that matches the file (--schema), fix the file, or use "
                                     "--skip-bad-files to continue without it") from exc
        self.schemas_built += 1
        if self.freeze_gc:
            if self._closed_since_collect >= max(1, self.max_open_files // 2):
                gc.unfreeze()  # let what earlier freezes kept (closed files) be collected now
                gc.collect()
                self._closed_since_collect = 0
            gc.freeze()
        return schema


def _fast_path(schemaclass: Any) -> bool:
    try:
        from coffea.nanoevents.factory import _reads_podio_metadata
    except ImportError:  # pragma: no cover - coffea changed its internals: use the public path
        return False
    return not _reads_podio_metadata(schemaclass)


def _events_from_schema(t: _Tree, chunk: Chunk, meta: dict[str, Any], mode: str,
                        uproot_options: Mapping[str, Any]) -> Any:
    """Events of one entry range from a schema built once (what ``from_root`` does, minus the rebuild)."""
    from coffea.nanoevents import NanoEventsFactory
    from coffea.nanoevents.mapping.uproot import TrivialUprootOpener, UprootSourceMapping
    from coffea.nanoevents.util import tuple_to_key

    tree, schema = t.tree, t.schema
    uuid = str(tree.file.uuid)
    mapping = UprootSourceMapping(TrivialUprootOpener({uuid: tree.file.file_path}, dict(uproot_options)),
                                  chunk.start, chunk.stop, cache={}, file_handle=t.directory, use_ak_forth=True,
                                  virtual=mode == "virtual")
    mapping.preload_column_source(uuid, tree.object_path, tree)
    form = schema.form
    params = dict(form["parameters"])
    params["metadata"] = {**meta, **(params.get("metadata") or {})}  # the schema's keys win, as in coffea
    chunk_schema = copy.copy(schema)
    chunk_schema._form = {**form, "parameters": params}
    key = tuple_to_key((uuid, tree.object_path, f"{chunk.start}-{chunk.stop}"))
    return NanoEventsFactory(chunk_schema, mapping, key, mode=mode).events()


# ------------------------------------------------------------- processors
def _map_leaves(obj: Any, fn: Callable[[Any], Any]) -> Any:
    """``obj`` with ``fn`` applied to every leaf of nested mappings, lists and tuples; copies only what changes."""
    if isinstance(obj, Mapping):
        new = {k: _map_leaves(v, fn) for k, v in obj.items()}
        if all(new[k] is obj[k] for k in new):
            return obj
        if isinstance(obj, MutableMapping):
            out = copy.copy(obj)
            for k, v in new.items():
                out[k] = v
            return out
        return new
    if isinstance(obj, (list, tuple)):
        items = [_map_leaves(v, fn) for v in obj]
        if all(a is b for a, b in zip(items, obj)):
            return obj
        if isinstance(obj, list):
            return type(obj)(items) if type(obj) is not list else items
        return type(obj)(*items) if hasattr(obj, "_fields") else type(obj)(items)
    return fn(obj)


def _is_dask(obj: Any) -> bool:
    # looked up on the type: an awkward array's __getattr__ would search its fields
    return not isinstance(obj, type) and callable(getattr(type(obj), "__dask_graph__", None))


def _materialize(obj: Any) -> Any:
    import awkward as ak

    if not hasattr(ak, "materialize"):  # pragma: no cover - awkward < 2.8 has no virtual arrays
        return obj
    if isinstance(obj, ak.Array):
        return ak.materialize(obj)
    if isinstance(obj, ak.Record):
        layout = obj.layout
        one = ak.Array(layout.array[layout.at: layout.at + 1], behavior=obj.behavior, attrs=obj.attrs)
        return ak.materialize(one)[0]
    return obj


def run_processor(processor: Any, events: Any, *, cores: int = 1) -> Any:
    """Run one processor on ``events``; compute any dask collections in the output on exactly ``cores``
    cores (see :func:`ddr._daskmode.local_scheduler`); load lazy arrays."""
    out = call_processor(processor, events)
    return _map_leaves(compute_leaves(out, cores), _materialize)


def call_processor(processor: Any, events: Any) -> Any:
    """``processor.process(events)`` for a coffea processor, ``processor(events)`` for a callable."""
    if isinstance(processor, type):
        raise TypeError(f"got the class {processor.__name__}, not an instance. Probably you wrote "
                        f"processors={{...: {processor.__name__}}}; instead pass an instance: "
                        f"{processor.__name__}()")
    if callable(getattr(processor, "process", None)):
        return processor.process(events)
    if callable(processor):
        return processor(events)
    raise TypeError(f"a processor must be a coffea ProcessorABC or a callable taking the events, "
                    f"got {type(processor).__name__}")


def compute_leaves(out: Any, cores: int, *, optimize_graph: bool = True) -> Any:
    """``out`` with every dask collection among its leaves computed, on a local scheduler of ``cores``."""
    from ._daskmode import compute_group, local_scheduler

    found: list[Any] = []

    def collect(leaf: Any) -> Any:
        if _is_dask(leaf):
            found.append(leaf)
        return leaf

    _map_leaves(out, collect)
    if not found:
        return out
    import dask

    # One compute per group: dask 2026.8 returns the results of a compute that mixes Delayed with
    # expression-backed collections (arrays, ...) in the wrong order. Within a group (all of
    # dask-awkward and hist.dask are one), shared inputs are read once.
    groups: dict[Any, list[Any]] = {}
    for c in found:
        groups.setdefault(compute_group(c), []).append(c)
    by_id: dict[int, Any] = {}
    for items in groups.values():
        computed = dask.compute(*items, optimize_graph=optimize_graph, **local_scheduler(cores))
        by_id.update((id(c), v) for c, v in zip(items, computed))
    return _map_leaves(out, lambda leaf: by_id.get(id(leaf), leaf) if _is_dask(leaf) else leaf)


def process_chunk(opener: Callable[[Chunk], Any], processors: Mapping[str, Any], chunk: Chunk, *, cores: int = 1,
                  reducer: Callable[[Any, Any], Any] = accumulate_pair) -> dict[str, Any]:
    """Run every processor on the chunk's events, read once; ``{processor name: result}``.

    With ``cores > 1`` the chunk is split into ``cores`` entry ranges run on
    dask's threaded scheduler, and their results are merged here with ``reducer``.
    An opener in dask mode makes one graph of ``cores`` partitions instead
    (:func:`ddr._daskchunk.process_chunk_dask`).
    """
    try:
        if getattr(opener, "mode", None) == "dask":
            from ._daskchunk import process_chunk_dask

            return process_chunk_dask(opener, processors, chunk, cores, call_processor)
        if cores <= 1 or chunk.size < 2:
            return _process(opener, processors, chunk, cores)
        import dask

        if hasattr(opener, "open_tree"):  # open once, in this thread: the parts share the file
            opener.open_tree(chunk.path, chunk.tree, dataset=chunk.dataset, start=chunk.start, stop=chunk.stop)
        parts = [dask.delayed(_process)(opener, processors, part, 1) for part in chunk.split(cores)]
        results = dask.compute(*parts, scheduler="threads", num_workers=cores)
        return {name: reduce_all((r[name] for r in results), reducer) for name in processors}
    except BadInputError:
        raise
    except Exception as exc:
        if _is_read_error(exc):
            url = opener.forget(chunk.path, exc) if hasattr(opener, "forget") else None
            _raise_input_error(exc, chunk.dataset, chunk.path, chunk.tree, chunk.start, chunk.stop,
                               "cannot read the events", url=url)
        raise
    finally:
        if hasattr(opener, "report_reads"):  # bytes this chunk read, per source (see the module docstring)
            opener.report_reads(chunk.path)


def _process(opener: Callable[[Chunk], Any], processors: Mapping[str, Any], chunk: Chunk,
             cores: int) -> dict[str, Any]:
    events = opener(chunk)
    return {name: run_processor(p, events, cores=cores) for name, p in processors.items()}
