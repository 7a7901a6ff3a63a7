"""Errors raised by vinecore.

::

    VinecoreError
    ├── ManagerClosedError      the manager was used after close()
    ├── TaskSubmissionError     a task cannot be submitted (not picklable, library missing, ...)
    ├── EngineError             an engine could not start or lost its cluster
    ├── FileFetchError          fetch_file() of something that does not exist (yet)
    ├── UnsatisfiableTaskError  (a task's output, not raised) no worker can ever fit its resources
    └── TempLostError           (a task's output, not raised) an input temp was lost with every copy

A task's own failure is never raised: it is the task's ``result`` and ``output``.
"""

from __future__ import annotations

__all__ = ["VinecoreError", "ManagerClosedError", "TaskSubmissionError", "EngineError", "FileFetchError",
           "UnsatisfiableTaskError", "TempLostError"]


class VinecoreError(Exception):
    """Base class of vinecore's errors."""


class ManagerClosedError(VinecoreError, RuntimeError):
    pass


class TaskSubmissionError(VinecoreError, ValueError):
    pass


class EngineError(VinecoreError, RuntimeError):
    pass


class FileFetchError(VinecoreError, FileNotFoundError):
    pass


class UnsatisfiableTaskError(VinecoreError):
    """The ``output`` of a task that ended as ``unsatisfiable``: no worker can ever fit it."""


class TempLostError(VinecoreError):
    """The ``output`` of a task (result ``exception``) whose input temp is gone for good: every worker
    holding a copy was lost and it cannot be made again. Resubmitting the task cannot help; what made
    the temp has to run again."""
