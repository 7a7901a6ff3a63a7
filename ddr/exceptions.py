"""Errors raised by ddr.

::

    DDRError
    ├── FilesetError (ValueError)     a fileset JSON or dict is malformed
    ├── DatasetNotFound (KeyError)    a dataset name that is not in the fileset
    ├── BadInputError                 a file/tree/entry range cannot be read
    │   └── TreeNotFound              the tree is not in the file
    └── ProcessorError                the user's processor raised on a chunk
"""

from __future__ import annotations

import difflib
from typing import Any, Iterable

__all__ = ["DDRError", "FilesetError", "DatasetNotFound", "BadInputError", "TreeNotFound", "ProcessorError",
           "nearest"]


def nearest(name: str, options: Iterable[str], n: int = 5) -> list[str]:
    opts = list(options)
    close = difflib.get_close_matches(name, opts, n=n, cutoff=0.0)
    return close + [o for o in opts if o not in close][: max(0, n - len(close))]


class DDRError(Exception):
    """Base class of ddr's errors."""


class FilesetError(DDRError, ValueError):
    pass


class DatasetNotFound(DDRError, KeyError):
    def __init__(self, name: str, available: Iterable[str]) -> None:
        self.name = name
        self.available = list(available)
        super().__init__(name)

    def __str__(self) -> str:
        return (f"no dataset {self.name!r} in the fileset; nearest: "
                f"{', '.join(nearest(self.name, self.available)) or 'none'}")


class BadInputError(DDRError):
    """An input that cannot be read: names the dataset, file, tree and entry range."""

    def __init__(self, dataset: str | None, file: str, tree: str | None, start: int | None, stop: int | None,
                 cause: str, permanent: bool = True, hint: str | None = None) -> None:
        self.dataset, self.file, self.tree = dataset, file, tree
        self.start, self.stop, self.cause, self.permanent = start, stop, cause, permanent
        self.hint = hint
        super().__init__(self._message())

    def __reduce__(self):
        return (type(self)._rebuild, (self.__dict__.copy(),))

    @classmethod
    def _rebuild(cls, state: dict) -> "BadInputError":
        obj = cls.__new__(cls)
        obj.__dict__.update(state)
        Exception.__init__(obj, obj._message())
        return obj

    def _message(self) -> str:
        kind = "cannot read input" if self.permanent else "transient read error"
        lines = [kind]
        if self.dataset:
            lines.append(f"  dataset: {self.dataset}")
        lines.append(f"  file:    {self.file}")
        if self.tree:
            lines.append(f"  tree:    {self.tree}")
        if self.start is not None:
            lines.append(f"  entries: {self.start}-{self.stop}")
        lines.append(f"  error:   {self.cause}")
        lines.append(f"  hint:    {self.hint or 'fix or remove the file, or pass --skip-bad-files to continue without it'}")
        return "\n".join(lines)


class TreeNotFound(BadInputError):
    pass


class ProcessorError(DDRError):
    """The processor raised while processing a chunk."""

    def __init__(self, message: str, dataset: str | None = None, item: Any = None, remote_traceback: str = "") -> None:
        super().__init__(message)
        self.dataset, self.item, self.remote_traceback = dataset, item, remote_traceback

    @classmethod
    def from_task(cls, dataset: str, item: Any, exc: BaseException) -> "ProcessorError":
        label = item.label() if hasattr(item, "label") else repr(item)[:200]
        tb = getattr(exc, "remote_traceback", "") or ""
        msg = (f"the processor raised on dataset {dataset!r}, {label}:\n  {type(exc).__name__}: {exc}\n"
               f"remote traceback:\n{tb}")
        return cls(msg, dataset, item, tb)

    def __reduce__(self):
        return (type(self), (self.args[0], self.dataset, self.item, self.remote_traceback))
