"""Serialization envelopes: cloudpickle for code, arguments and results, and a
picklable stand-in for exceptions that cannot cross a process boundary.

Code pickled by value (functions and classes of ``__main__``, of an analysis
file, of modules registered with ``cloudpickle.register_pickle_by_value``)
keeps its file name: cloudpickle replaces it with ``<dynamic-code>`` to make
payloads independent of where code was defined, which leaves a worker's
traceback pointing nowhere. Here it stays, so a remote traceback reads
``File "/abs/path/analysis.py", line 12, in process``.
"""

from __future__ import annotations

import io
import pickle
import threading
import traceback
import types
from collections import ChainMap
from typing import Any

import cloudpickle

__all__ = ["dumps", "loads", "RemoteError", "exception_payload", "register_reduce"]


_cloudpickle_code_reduce = cloudpickle.Pickler.dispatch_table[types.CodeType]


def _code_at(constructor: Any, args: tuple, filename: str) -> types.CodeType:
    """Rebuild a code object as cloudpickle does, then give it back its file name."""
    return constructor(*args).replace(co_filename=filename)


def _reduce_code(code: types.CodeType) -> tuple:
    constructor, args = _cloudpickle_code_reduce(code)
    return _code_at, (constructor, args, code.co_filename)


class _Dispatch(ChainMap):
    """cloudpickle's dispatch table (itself a ChainMap over copyreg's, so later registrations count),
    flattened and searched without raising KeyError in every map: the C pickler asks it about every
    object of a class it does not know (a task's work items, Files)."""

    def __getitem__(self, key):
        for m in self.maps:
            r = m.get(key, _MISSING)
            if r is not _MISSING:
                return r
        raise KeyError(key)


_MISSING = object()
_OURS: dict[Any, Any] = {types.CodeType: _reduce_code}
_base_table = cloudpickle.Pickler.dispatch_table


class _Pickler(cloudpickle.Pickler):
    dispatch_table = _Dispatch(_OURS, *(_base_table.maps if isinstance(_base_table, ChainMap) else [_base_table]))


def register_reduce(cls: type, reduce: Any) -> None:
    """Pickle instances of exactly ``cls`` with ``reduce(obj)`` (found first, before copyreg's table)."""
    _OURS[cls] = reduce


class _Reused(threading.local):
    """One pickler and buffer per thread, used again for every ``dumps`` (the manager pickles several
    small payloads per task; building a cloudpickle Pickler each time costs more than pickling them)."""

    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.pickler = _Pickler(self.buf, protocol=pickle.HIGHEST_PROTOCOL)
        self.busy = False


_reused = _Reused()


def dumps(obj: Any) -> bytes:
    r = _reused
    if r.busy:  # called from inside a dump (a reducer pickling something itself): a fresh pickler
        with io.BytesIO() as buf:
            _Pickler(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(obj)
            return buf.getvalue()
    r.busy = True
    buf, p = r.buf, r.pickler
    try:
        p.dump(obj)
        return buf.getvalue()
    finally:  # forget everything this dump saw: the next payload is pickled as if by a new pickler
        buf.seek(0)
        buf.truncate()
        p.clear_memo()
        if p.globals_ref:
            p.globals_ref = {}
        r.busy = False


def loads(data: bytes) -> Any:
    return pickle.loads(data)


class RemoteError(Exception):
    """An exception raised in a task that could not be sent back as itself."""

    def __init__(self, type_name: str, message: str, remote_traceback: str = "") -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.remote_traceback = remote_traceback


def exception_payload(exc: BaseException) -> bytes:
    """Pickle ``exc`` with its traceback text attached as ``remote_traceback``."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        exc.remote_traceback = tb  # type: ignore[attr-defined]
    except Exception:  # pragma: no cover - exotic exception types
        pass
    try:
        data = dumps(exc)
        loads(data)  # some exceptions pickle but cannot be rebuilt
        return data
    except Exception:
        return dumps(RemoteError(type(exc).__qualname__, str(exc), tb))
