"""Tasks: what to run, with which resources, and how it ended.

:class:`PythonTask` ships a function and its arguments with cloudpickle;
:class:`FunctionCall` names a function of an installed :class:`Library`, whose
context is built once per worker. The setters follow TaskVine's Python API.
After ``Manager.wait`` returns a task, its outcome is in ``result``,
``output``, ``std_output``, ``resources_measured``, ``output_size`` (bytes of
the pickled return value, also when it stayed on the worker as a temp), ``metrics``
(sums of what the task reported with :func:`vinecore.report_metric`) and ``worker``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from ._files import File, new_temp
from ._frozen import fast_init

__all__ = ["Task", "PythonTask", "FunctionCall", "Library", "ResourcesMeasured"]


@fast_init  # one per finished task
@dataclass(frozen=True, slots=True)
class ResourcesMeasured:
    """What one attempt used: wall time (s), peak memory above the worker's
    baseline (MB), peak resident memory of the process (MB), cpu time (s)."""

    wall_time: float = 0.0
    memory: float = 0.0
    peak_rss: float = 0.0
    cpu_time: float = 0.0


class Task:
    """Common resources, scheduling hints and outcome of every task."""

    def __init__(self) -> None:
        self.id: int | None = None
        self.cores: int | None = None
        self.memory: int | None = None
        self.disk: int | None = None
        self.time_max: float | None = None
        self.retries: int = 0
        self.priority: float = 0.0
        self.category: str = "default"
        self.tag: str | None = None
        self.locality: str | None = None
        # () until the first add_input/add_output: most tasks have none, and a list per task is one more
        # object for the garbage collector to scan while thousands are in flight
        self.inputs: list[tuple[File, str]] | tuple = ()
        self.outputs: list[tuple[File, str]] | tuple = ()
        self.output_file: File | None = None
        # outcome
        self.result: str | None = None
        self.output: Any = None
        self.std_output: str = ""
        self.resources_measured: ResourcesMeasured | None = None
        self.output_size: int = 0  # bytes of the pickled return value, also when kept as a temp
        self.metrics: dict[str, float] = {}  # sums of what the task reported with vinecore.report_metric
        self.worker: str | None = None
        self.attempts: int = 0
        self.manager = None

    # -- TaskVine-style setters -------------------------------------------
    def set_cores(self, cores: int) -> None:
        self.cores = _positive_int(cores, "cores")

    def set_memory(self, memory_mb: int) -> None:
        self.memory = _positive_int(memory_mb, "memory (MB)")

    def set_disk(self, disk_mb: int) -> None:
        self.disk = _positive_int(disk_mb, "disk (MB)")

    def set_time_max(self, seconds: float) -> None:
        if seconds <= 0:
            raise ValueError(f"time_max must be positive seconds, got {seconds!r}")
        self.time_max = float(seconds)

    def set_retries(self, retries: int) -> None:
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries!r}")
        self.retries = int(retries)

    def set_priority(self, priority: float) -> None:
        p = float(priority)
        if p != p:
            raise ValueError(f"set_priority({priority!r}): a priority must be a number, not NaN; higher runs first")
        self.priority = p

    def set_category(self, category: str) -> None:
        self.category = str(category)

    def set_tag(self, tag: str) -> None:
        self.tag = str(tag)

    def set_locality(self, key: str | None) -> None:
        """Prefer a worker that recently ran a task with the same key (vinecore extension)."""
        self.locality = None if key is None else str(key)

    def add_input(self, file: File, remote_name: str) -> None:
        _check_file(file, "add_input")
        if type(self.inputs) is tuple:
            self.inputs = list(self.inputs)
        self.inputs.append((file, _sandbox_name(remote_name)))

    def add_output(self, file: File, remote_name: str) -> None:
        _check_file(file, "add_output")
        if file.kind != "temp" and file.kind != "file":
            raise ValueError(f"a task can only write temps or local files, not a {file.kind}")
        if type(self.outputs) is tuple:
            self.outputs = list(self.outputs)
        self.outputs.append((file, _sandbox_name(remote_name)))

    # -- outcome ----------------------------------------------------------
    @property
    def successful(self) -> bool:
        return self.result == "success"

    @property
    def completed(self) -> bool:
        return self.result is not None

    def __repr__(self) -> str:
        state = self.result or ("submitted" if self.id is not None else "new")
        return f"<{type(self).__name__} id={self.id} {self._describe()} {state}>"

    def _describe(self) -> str:  # pragma: no cover - overridden
        return ""


class PythonTask(Task):
    """Run ``fn(*args, **kwargs)`` on a worker; ``output`` is its return value."""

    def __init__(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        if not callable(fn):
            raise TypeError(f"PythonTask needs a callable, got {type(fn).__name__}: {fn!r}")
        super().__init__()
        self.fn = fn
        self.args = args
        self.kwargs = kwargs

    def enable_temp_output(self) -> File:
        """Keep the return value on the worker as a temp (``self.output_file``)
        instead of sending it to the manager. Pass that File to later tasks."""
        if self.output_file is None:
            self.output_file = new_temp()
        return self.output_file

    def _describe(self) -> str:
        return getattr(self.fn, "__qualname__", repr(self.fn))


class FunctionCall(PythonTask):
    """Call ``function_name`` of the installed library ``library_name``."""

    def __init__(self, library_name: str, function_name: str, *args: Any, **kwargs: Any) -> None:
        Task.__init__(self)
        self.library_name = str(library_name)
        self.function_name = str(function_name)
        self.fn = None
        self.args = args
        self.kwargs = kwargs

    def _describe(self) -> str:
        return f"{self.library_name}.{self.function_name}"


@dataclass
class Library:
    """Functions served by a long-lived context on every worker.

    ``context`` is ``(fn, args, kwargs)``: it runs once per worker process and its
    return value is what :func:`vinecore.library_context` gives the calls there.
    ``hoisting_modules`` are imported once per worker before the context is built.
    """

    name: str
    functions: dict[str, Callable[..., Any]]
    context: tuple[Callable[..., Any], tuple, dict] | None = None
    hoisting_modules: tuple[str, ...] = ()
    function_slots: int | None = None
    installed: bool = field(default=False, repr=False)

    @classmethod
    def from_functions(cls, name: str, *functions: Callable[..., Any],
                       library_context_info=None, hoisting_modules=()) -> "Library":
        if not functions:
            raise ValueError(f"library {name!r} needs at least one function")
        table: dict[str, Callable[..., Any]] = {}
        for fn in functions:
            if not callable(fn):
                raise TypeError(f"library {name!r}: {fn!r} is not callable")
            fname = getattr(fn, "__name__", None)
            if not fname or fname == "<lambda>":
                raise ValueError(f"library {name!r}: functions need a name; lambdas cannot be called by name")
            table[fname] = fn
        ctx = None
        if library_context_info:
            info = list(library_context_info) + [(), {}][len(library_context_info) - 1:]
            fn, args, kwargs = info[0], tuple(info[1] or ()), dict(info[2] or {})
            if not callable(fn):
                raise TypeError(f"library {name!r}: the context function {fn!r} is not callable")
            ctx = (fn, args, kwargs)
        mods = []
        for m in hoisting_modules:
            mods.append(m if isinstance(m, str) else getattr(m, "__name__", None) or str(m))
        return cls(name, table, ctx, tuple(mods))


def _positive_int(value: Any, what: str) -> int:
    try:
        v = int(value)
    except (TypeError, ValueError):
        raise TypeError(f"{what} must be an integer, got {value!r}") from None
    if v <= 0:
        raise ValueError(f"{what} must be positive, got {v}")
    return v


def _check_file(file: Any, where: str) -> None:
    if not isinstance(file, File):
        raise TypeError(f"{where} takes a vinecore.File from Manager.declare_*(), got {file!r}")


def _sandbox_name(name: str) -> str:
    if not name or name.startswith("/") or ".." in name.split("/"):
        raise ValueError(f"{name!r} is not a relative name inside the task's sandbox")
    return name

