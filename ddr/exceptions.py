"""Errors raised by ddr.

::

    DDRError
    ├── FilesetError (ValueError)     a fileset JSON or dict is malformed
    ├── DatasetNotFound (KeyError)    a dataset name that the fileset does not have
    ├── BadInputError                 a file, tree or entry range cannot be read
    │   └── TreeNotFound              the tree (object_path) is not in the file
    ├── ProcessorError                the user's processor raised on a chunk
    ├── ChunkResourceError            a chunk ran out of memory or time even at the smallest split,
    │                                 its worker was lost too often, or no worker can fit it
    ├── WorkerSetupError              the workers cannot run anything: a full disk, a missing module
    └── ReducerError                  merging two partial results failed (names processor and key)

Policy: a message names the thing that failed (fileset, dataset, file, tree,
entry range), shows what does exist (nearest names first, like uproot's
``KeyInFileError``) and says how to fix it. Details go on indented lines::

    cannot open file: file is truncated or not a ROOT file
      dataset: DoubleMuon2018
      file:    /data/nano_dimuon.root
      tree:    Events
      entries: 0-40
      error:   OSError: expected Chunk of length 150, received 0 bytes from ...
      hint:    fix or remove the file, or use --skip-bad-files to continue without it

Input errors are classified by exception type, never by words in messages
(:func:`classify_input`, in :mod:`ddr._classify`; the CLI and the API share it):

=========  ==========================================================  ===========================
kind       raised as                                                   what ddr does
=========  ==========================================================  ===========================
missing    FileNotFoundError, ENOENT, HTTP 404/410, XRootD [3011]      stop, naming the file; or
                                                                       skip with --skip-bad-files
                                                                       (next --redirector first)
denied     PermissionError, EACCES, HTTP 401/403, XRootD [3010]        the same
transient  ConnectionError, TimeoutError, connection errnos, EIO,      retry with backoff, then the
           HTTP 408/429/5xx, XRootD socket/connection/expired codes,   next redirector, then fail
           a short read from remote storage                            naming the server
corrupt    a short read of a local file (truncated), zlib and          stop or skip; "fix or
           deserialization errors, ValueError (not a ROOT file),       remove the file"
           a missing object, an error raised by a coffea schema
setup      ImportError; ENOSPC/EDQUOT (a full disk on the worker)      stop (WorkerSetupError), also
                                                                       with --skip-bad-files: "pip
                                                                       install <package>", free space
resource   MemoryError, ENOMEM, a thread that cannot start, raised or  not bad input: the chunk is
           among the causes (vinecore.is_out_of_memory)                split (resource exhaustion)
=========  ==========================================================  ===========================

Every error keeps its attributes through pickling, because errors raised on a
worker travel back to the manager.
"""

from __future__ import annotations

import difflib
from typing import Any, Iterable

from ._classify import _HINTS, InputErrorKind, InputFailure, classify_input, classify_input_error, xrootd_status

__all__ = [
    "DDRError",
    "FilesetError",
    "DatasetNotFound",
    "BadInputError",
    "TreeNotFound",
    "ProcessorError",
    "ChunkResourceError",
    "WorkerSetupError",
    "ReducerError",
    "StepsKeptWarning",
    "nearest",
    "format_names",
    "InputErrorKind",
    "InputFailure",
    "classify_input",
    "classify_input_error",
    "xrootd_status",
]


def nearest(name: str, options: Iterable[str], n: int | None = None) -> list[str]:
    """``options`` sorted by similarity to ``name`` (case-insensitive), closest first.

    Ties keep the original order; ``n`` keeps only the first ``n``.
    """
    opts = list(dict.fromkeys(options))
    low = name.lower()
    ranked = sorted(opts, key=lambda o: -difflib.SequenceMatcher(None, low, o.lower()).ratio())
    return ranked if n is None else ranked[:n]


def format_names(names: Iterable[str], limit: int = 200) -> str:
    """``'a', 'b', 'c' and 4 more``: a listing cut at about ``limit`` characters."""
    names = list(names)
    if not names:
        return "(none)"
    shown: list[str] = []
    length = 0
    for name in names:
        text = repr(name)
        if shown and length + len(text) > limit:
            break
        shown.append(text)
        length += len(text) + 2
    rest = len(names) - len(shown)
    return ", ".join(shown) + (f" and {rest} more" if rest else "")


def _rebuild(cls: type, args: tuple, state: dict) -> BaseException:
    obj = cls.__new__(cls)
    BaseException.__init__(obj, *args)
    obj.__dict__.update(state)
    return obj


class DDRError(Exception):
    """Base class of ddr's errors."""

    def __reduce__(self) -> tuple:
        # Subclasses take keyword arguments that ``args`` does not hold: rebuild
        # from the message and the attributes instead of calling __init__ again.
        return (_rebuild, (type(self), self.args, dict(self.__dict__)))


class FilesetError(DDRError, ValueError):
    """A fileset (JSON file or dict) that ddr cannot use.

    ``source`` is the JSON file (or "the fileset dict"), ``dataset`` and ``key``
    point at the offending entry; ``problem`` and ``fix`` are the two halves of
    the message.
    """

    def __init__(self, problem: str, *, source: str | None = None, dataset: str | None = None,
                 file: str | None = None, key: str | None = None, fix: str | None = None) -> None:
        self.problem, self.source, self.dataset, self.file, self.key, self.fix = (
            problem, source, dataset, file, key, fix)
        where = [f"fileset {source}" if source else "fileset"]
        if dataset is not None:
            where.append(f"dataset {dataset!r}")
        if file is not None:
            where.append(f"file {file!r}")
        if key is not None:
            where.append(f"key {key!r}")
        message = f"{', '.join(where)}: {problem}"
        if fix:
            message += f"\n  fix: {fix}"
        super().__init__(message)


class DatasetNotFound(DDRError, KeyError):
    """A dataset name that is not in the fileset; lists the names that are, nearest first."""

    def __init__(self, name: str, available: Iterable[str], *, source: str | None = None) -> None:
        self.name = name
        self.available = list(available)
        self.source = source
        where = f" in {source}" if source else " in the fileset"
        super().__init__(
            f"dataset {name!r} not found{where}\n"
            f"  available (nearest first): {format_names(nearest(name, self.available))}\n"
            f"  fix: use one of the names above, or add {name!r} to the fileset")

    def __str__(self) -> str:  # KeyError would show the repr of the message
        return str(self.args[0])


class BadInputError(DDRError):
    """An input that cannot be read: names the dataset, file, tree and entry range.

    ``cause`` is ``"<type>: <message>"`` of the underlying error; ``permanent``
    says whether retrying can help (a timeout can, a truncated file cannot);
    ``kind`` is an :class:`InputErrorKind` value (``"missing"``, ``"transient"``,
    ``"corrupt"``, ``"denied"``, ``"setup"``); ``server`` the remote server
    involved, if any; ``what`` is the one-line summary that opens the message.
    """

    def __init__(self, dataset: str | None, file: str, tree: str | None, start: int | None, stop: int | None,
                 cause: str, permanent: bool = True, hint: str | None = None, *, what: str | None = None,
                 kind: str | None = None, server: str | None = None) -> None:
        self.dataset, self.file, self.tree = dataset, file, tree
        self.start, self.stop = start, stop
        self.cause, self.permanent = cause, bool(permanent)
        if kind is None:
            kind = "corrupt" if self.permanent else "transient"
        self.kind, self.server = str(InputErrorKind(kind).value), server
        if what is None:
            what = "cannot read input" if self.permanent else "transient error while reading input"
        if hint is None:
            hint = _HINTS.get(InputErrorKind(self.kind), _HINTS[InputErrorKind.CORRUPT])
        self.what, self.hint = what, hint
        super().__init__(self._message())

    def _message(self) -> str:
        lines = [self.what]
        if self.dataset is not None:
            lines.append(f"  dataset: {self.dataset}")
        lines.append(f"  file:    {self.file}")
        if self.server is not None and self.server not in self.file:
            lines.append(f"  server:  {self.server}")
        if self.tree is not None:
            lines.append(f"  tree:    {self.tree}")
        if self.start is not None or self.stop is not None:
            lines.append(f"  entries: {self.start}-{self.stop}")
        lines.extend(self._extra_lines())
        lines.append(f"  error:   {self.cause}")
        lines.append(f"  hint:    {self.hint}")
        return "\n".join(lines)

    def _extra_lines(self) -> list[str]:
        return []


class TreeNotFound(BadInputError):
    """The tree (object_path) is not in the file; ``available`` holds the keys that are."""

    def __init__(self, dataset: str | None, file: str, tree: str, available: Iterable[str], *,
                 start: int | None = None, stop: int | None = None) -> None:
        self.available = nearest(tree, available)
        super().__init__(
            dataset, file, tree, start, stop, f"KeyInFileError: not found: {tree!r}", True,
            hint=("set the tree in the fileset (the value of the file entry, \"object_path\", or \"treename\") "
                  "to one of the available keys, or use --skip-bad-files to continue without the file"),
            what=f"tree {tree!r} not found in the file")

    def _extra_lines(self) -> list[str]:
        return [f"  available (nearest first): {format_names(self.available)}"]


class ProcessorError(DDRError):
    """The processor raised while processing a chunk.

    Carries the dataset, the work item, the file and entry range when the item
    is a chunk, the ``cause`` (``"<type>: <message>"``) and the traceback text
    from the worker.
    """

    def __init__(self, message: str, dataset: str | None = None, item: Any = None,
                 remote_traceback: str = "") -> None:
        super().__init__(message)
        self.dataset, self.item, self.remote_traceback = dataset, item, remote_traceback
        self.file: str | None = getattr(item, "path", None)
        self.tree: str | None = getattr(item, "tree", None)
        self.start: int | None = getattr(item, "start", None)
        self.stop: int | None = getattr(item, "stop", None)
        self.cause: str | None = None

    @classmethod
    def from_task(cls, dataset: str, item: Any, exc: BaseException) -> "ProcessorError":
        """Wrap the exception ``exc`` that the processor raised on ``item``."""
        tb = getattr(exc, "remote_traceback", "") or ""
        # vinecore's stand-in for unpicklable exceptions already reads "<type>: <message>"
        cause = str(exc) if hasattr(exc, "type_name") else f"{type(exc).__name__}: {exc}"
        lines = [f"the processor raised on dataset {dataset!r}"]
        if hasattr(item, "path"):
            lines.append(f"  file:    {item.path}")
            lines.append(f"  tree:    {getattr(item, 'tree', None)}")
            lines.append(f"  entries: {getattr(item, 'start', None)}-{getattr(item, 'stop', None)}")
        else:
            lines.append(f"  item:    {repr(item)[:200]}")
        lines.append(f"  error:   {cause}")
        if tb:
            lines.append("  remote traceback:")
            lines.extend("    " + line for line in tb.rstrip().splitlines())
        err = cls("\n".join(lines), dataset, item, tb)
        err.cause = cause
        return err


class ChunkResourceError(DDRError):
    """A work item that could not be processed for lack of resources, not because of its content.

    ``kind`` is ``resource exhaustion``, ``max wall time``, ``worker lost`` or ``unsatisfiable``;
    the message names the dataset, the file and entry range (or the item), the cause and the fix."""

    _HINTS = {
        "resource exhaustion": "raise the memory per task (--memory MB, memory=) or lower --chunk-size; the "
                               "chunk could not be split any further",
        "max wall time": "raise the time limit per task (--time-max S, time_max=) or lower --chunk-size; the "
                         "chunk could not be split any further",
        "worker lost": "the worker process died while running this chunk every time it was tried (a crash in "
                       "compiled code, or the machine's out-of-memory killer); check the worker logs",
        "unsatisfiable": "ask for fewer cores or less memory per task (--cores, --memory), or use larger workers",
    }

    def __init__(self, kind: str, dataset: str | None, item: Any, cause: str) -> None:
        self.kind, self.dataset, self.item, self.cause = kind, dataset, item, cause
        self.file: str | None = getattr(item, "path", None)
        self.start: int | None = getattr(item, "start", None)
        self.stop: int | None = getattr(item, "stop", None)
        lines = [f"a chunk could not be processed: {kind}"]
        if dataset is not None:
            lines.append(f"  dataset: {dataset}")
        if self.file is not None:
            lines += [f"  file:    {self.file}", f"  tree:    {getattr(item, 'tree', None)}",
                      f"  entries: {self.start}-{self.stop}"]
        elif item is not None:
            lines.append(f"  item:    {repr(item)[:200]}")
        lines.append(f"  error:   {' '.join(cause.split())[:400]}")
        lines.append(f"  hint:    {self._HINTS.get(kind, 'see the run report')}")
        super().__init__("\n".join(lines))


class WorkerSetupError(DDRError):
    """The workers' environment cannot run the analysis (every chunk would fail the same way)."""

    def __init__(self, what: str, cause: str, hint: str, remote_traceback: str = "") -> None:
        self.what, self.cause, self.hint, self.remote_traceback = what, cause, hint, remote_traceback
        super().__init__(f"{what}\n  error:   {' '.join(cause.split())[:400]}\n  hint:    {hint}")


class ReducerError(DDRError):
    """The reducer failed to merge two partial results of a dataset (see ``ddr._worker.merge_parts``)."""

    def __init__(self, message: str, dataset: str | None = None, remote_traceback: str = "") -> None:
        super().__init__(message if dataset is None else f"dataset {dataset!r}: {message}")
        self.dataset, self.remote_traceback = dataset, remote_traceback


class StepsKeptWarning(UserWarning):
    """A fixed chunk size was asked for, but some fileset entries come with coffea ``steps``: those files
    are processed in their steps, not cut to the chunk size."""
