"""Serialization envelopes: cloudpickle for code, arguments and results, and a
picklable stand-in for exceptions that cannot cross a process boundary."""

from __future__ import annotations

import pickle
import traceback
from typing import Any

import cloudpickle

__all__ = ["dumps", "loads", "RemoteError", "exception_payload"]


def dumps(obj: Any) -> bytes:
    return cloudpickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


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
