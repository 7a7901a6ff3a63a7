"""vinecore: a TaskVine-style execution core on local processes or dask.distributed.

Layers (each module uses only the ones above it)::

    _events   events in / actions out, Result and TaskState enums
    _state    Scheduler: the pure scheduling state machine
    _files    File handles (file, buffer, url, temp) and cache names
    _tasks    Task, PythonTask, FunctionCall, Library (TaskVine's API)
    _fetch    reading urls: version stamps and whole-file downloads (root://, http(s)://, file://)
    _cache    NodeCache: whole copies of urls shared by a node's worker processes, LRU-bounded
    _runtime  worker side: run one task in a process, enforce limits, measure, report_metric
    engines/  thin adapters: sync (in-process), local (processes), dask
    _manager  Manager: moves events and actions between _state and an engine
    _associative  @associative and the pure planner of reduction trees
    _graph    dask graphs -> a plan of jobs; the worker side of a graph run
    _graphrun the pure state of one graph run (submission, task groups, release)
    _daskvine DaskVine: a Manager whose get() runs dask graphs

Public names follow TaskVine's Python API where the concept exists there.
"""

from ._associative import associative
from ._daskvine import DaskNodeError, DaskVine, GetStatistics
from ._events import Result, TaskState
from ._files import File
from ._manager import Manager, ManagerState, Statistics
from ._cache import Lease, NodeCache, default_cache_dir, parse_size
from ._fetch import RemoteFileError, RemoteStat, apply_xrootd_settings, server_of, stat_url
from ._runtime import (current_worker, is_out_of_memory, library_context, load_variable_from_library, node_cache,
                       report_metric)
from ._tasks import FunctionCall, Library, PythonTask, ResourcesMeasured, Task
from .exceptions import (
    EngineError,
    FileFetchError,
    ManagerClosedError,
    TaskSubmissionError,
    TempLostError,
    UnsatisfiableTaskError,
    VinecoreError,
)

__all__ = [
    "DaskNodeError",
    "DaskVine",
    "EngineError",
    "File",
    "FileFetchError",
    "FunctionCall",
    "GetStatistics",
    "Lease",
    "Library",
    "Manager",
    "ManagerClosedError",
    "ManagerState",
    "NodeCache",
    "PythonTask",
    "RemoteFileError",
    "RemoteStat",
    "ResourcesMeasured",
    "Result",
    "Statistics",
    "Task",
    "TaskState",
    "TaskSubmissionError",
    "TempLostError",
    "UnsatisfiableTaskError",
    "VinecoreError",
    "associative",
    "apply_xrootd_settings",
    "current_worker",
    "default_cache_dir",
    "is_out_of_memory",
    "library_context",
    "load_variable_from_library",
    "node_cache",
    "parse_size",
    "report_metric",
    "server_of",
    "stat_url",
]

__version__ = "0.1.0"
