"""The worker side: run one task in this process, with its limits, and measure it.

Every engine ends up calling :meth:`WorkerRuntime.execute` in some process:
the sync engine in the caller's own process, the local engine in its worker
processes, the dask engine in library processes beside each dask worker.

Enforcement, per attempt
    * memory: in a worker process (``isolated``), the soft ``RLIMIT_AS`` is
      lowered to the process's current virtual size plus the task's
      allocation, so an oversized allocation raises ``MemoryError`` inside the
      task, which ends it as ``resource exhaustion`` while the process, its
      library contexts and its store survive. So does any error that comes
      from running out of memory, however a library wrapped it
      (:func:`is_out_of_memory`: ``ENOMEM``, a thread whose stack could not
      be mapped, a ``MemoryError`` among the causes). The limit is restored
      afterwards. A task whose measured peak resident memory grew by more than
      its allocation is also reported as exhausted (allocations that dodged
      the address-space limit; in-process, this is the only check).
    * time: ``SIGALRM`` interrupts the task after ``time_max`` seconds when it
      runs in the main thread (the previous handler is restored); a task that
      overran anyway is reported as ``max wall time``. The process
      supervisors add a hard kill as backstop.
    * ``os._exit`` in a worker process ends the process, which its supervisor
      reports as ``worker lost``.
In-process (the sync engine, ``isolated=False``) the caller's process is not
changed for the task: no address-space limit, no patched ``os._exit``, and
only the task's own thread has its output captured (other threads, such as a
notebook's, keep printing where they did). Tasks with sandbox files
(``add_input``/``add_output``) are the exception: their relative names need
the working directory to be the sandbox while they run.
Measurement
    wall time, cpu time, and peak RSS from the kernel's high-water mark
    (``VmHWM``, reset before each task through ``/proc/self/clear_refs``),
    plus whatever the task reports with :func:`report_metric` (numbers added
    up per name, carried in the outcome as ``metrics``).
Declared urls
    are materialised through the node cache (:mod:`vinecore._cache`), under
    ``$VINECORE_CACHE_DIR`` (default ``~/.cache/vinecore``), at most
    ``$VINECORE_CACHE_SIZE`` (default 10G), network operations bounded by
    ``$VINECORE_READ_TIMEOUT`` seconds (default 60); a url too large for the
    cache is downloaded into the run's store instead. The copy stays leased
    (not evictable) until the task ends.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import resource
import shutil
import signal
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any

from . import _serialize
from ._events import Result
from ._frozen import fast_init

__all__ = ["TaskSpec", "Outcome", "DirStore", "WorkerRuntime", "library_context", "is_out_of_memory",
           "load_variable_from_library", "current_worker", "report_metric", "node_cache"]

_MB = 1024 * 1024


@fast_init
@dataclass(frozen=True, slots=True)
class TaskSpec:
    """Everything a worker needs to run one attempt of a task."""

    task_id: int
    attempt: int
    payload: bytes  # cloudpickle of (fn | None, args, kwargs)
    library: str | None = None
    function: str | None = None
    inputs: tuple[tuple[str, str, Any, str], ...] = ()  # (kind, cache name, source, sandbox name)
    outputs: tuple[tuple[str, str, Any, str], ...] = ()
    output_temp: str | None = None
    arg_temps: tuple[str, ...] = ()  # temps passed as arguments (resolved from the store on the worker)
    cores: int = 1
    memory: int | None = None  # MB
    time_max: float | None = None
    category: str = "default"


@fast_init
@dataclass(frozen=True, slots=True)
class Outcome:
    task_id: int
    result: Result
    output: bytes | None  # pickled return value or exception; None when kept as a temp
    std_output: str
    wall_time: float
    cpu_time: float
    memory: float  # MB above the resident size at start
    peak_rss: float  # MB
    worker_id: str = ""
    output_size: int = 0  # bytes of the pickled return value (kept as a temp or sent back)
    metrics: dict[str, float] | None = None  # what the task reported with report_metric()


class DirStore:
    """The worker-side store: one directory of content named by cache name.

    Processes on one machine share it, so a temp written by one worker process
    is read by another without passing through the manager. Recently used
    contents are also kept in memory.
    """

    def __init__(self, root: str, memory_cache_mb: int = 256) -> None:
        self.root = root
        os.makedirs(root, exist_ok=True)
        self._mem: dict[str, bytes] = {}
        self._mem_bytes = 0
        self._mem_limit = memory_cache_mb * _MB

    def path(self, cache_name: str) -> str:
        return os.path.join(self.root, cache_name)

    def has(self, cache_name: str) -> bool:
        return cache_name in self._mem or os.path.exists(self.path(cache_name))

    def put(self, cache_name: str, data: bytes) -> None:
        tmp = self.path(f".{cache_name}.{os.getpid()}.{threading.get_ident()}")
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, self.path(cache_name))
        self._remember(cache_name, data)

    def get(self, cache_name: str) -> bytes:
        data = self._mem.get(cache_name)
        if data is None:
            try:
                with open(self.path(cache_name), "rb") as f:
                    data = f.read()
            except FileNotFoundError:
                raise FileNotFoundError(
                    f"{cache_name} is not in the worker store {self.root}: its producer has not "
                    "succeeded, or the file was released") from None
            self._remember(cache_name, data)
        return data

    def delete(self, cache_name: str) -> None:
        data = self._mem.pop(cache_name, None)
        if data is not None:
            self._mem_bytes -= len(data)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path(cache_name))

    def _remember(self, name: str, data: bytes) -> None:
        if len(data) > self._mem_limit // 4:
            return
        while self._mem and self._mem_bytes + len(data) > self._mem_limit:
            _, old = self._mem.popitem()
            self._mem_bytes -= len(old)
        self._mem[name] = data
        self._mem_bytes += len(data)

    def materialise(self, kind: str, cache_name: str, source: Any) -> str:
        """Local path of a declared file's content, fetching it once if needed."""
        if kind == "file":
            return source
        path = self.path(cache_name)
        if os.path.exists(path):
            return path
        if kind == "buffer":
            self.put(cache_name, source)
        elif kind == "url":
            lease = node_cache().get(source)
            if lease is not None:
                rt = _current
                if rt is not None:
                    rt._leases.append(lease)  # released when the task ends
                else:
                    lease.release()
                return lease.path
            from ._fetch import download

            tmp = path + f".{os.getpid()}.part"
            with open(tmp, "wb") as f:
                download(source, f, float(os.environ.get("VINECORE_READ_TIMEOUT", "60")))
            os.replace(tmp, path)
        elif kind == "temp":
            self.get(cache_name)  # raises a clear error when absent
        return path


class _TimeLimit(BaseException):
    """Raised by SIGALRM inside a task over its time_max (not an Exception on purpose)."""


_current: WorkerRuntime | None = None
_current_library: str | None = None
_metrics_lock = threading.Lock()
_node_caches: dict[tuple[str, int], Any] = {}


def node_cache(root: str | None = None, max_bytes: int | str | None = None, *, timeout: float | None = None) -> Any:
    """This process's :class:`~vinecore._cache.NodeCache` for ``root`` (default from the environment, see above)."""
    from ._cache import NodeCache, default_cache_dir, parse_size

    root = os.path.abspath(os.path.expanduser(root or os.environ.get("VINECORE_CACHE_DIR") or default_cache_dir()))
    size = parse_size(max_bytes if max_bytes is not None else os.environ.get("VINECORE_CACHE_SIZE", "10G"))
    cache = _node_caches.get((root, size))
    if cache is None:
        cache = _node_caches[(root, size)] = NodeCache(root, size)
    cache.timeout = timeout if timeout is not None else float(os.environ.get("VINECORE_READ_TIMEOUT", "60"))
    return cache


def report_metric(name: str, value: float) -> None:
    """Add ``value`` to the metric ``name`` of the task running in this process (any thread).

    The sums come back with the task (``Task.metrics`` on the manager). Outside
    a task this does nothing, so library code may report unconditionally.
    """
    rt = _current
    if rt is None or rt._metrics is None:
        return
    with _metrics_lock:
        rt._metrics[name] = rt._metrics.get(name, 0) + value


def is_out_of_memory(exc: BaseException) -> bool:
    """Did ``exc`` come from running out of memory (or under a task's address-space limit)?

    True for a ``MemoryError``, an ``OSError`` with ``ENOMEM``, and a thread that could not be
    started (its stack could not be mapped: ``RuntimeError: can't start new thread``, told by the
    frame that raised it, ``threading.Thread.start``), whether raised or among the causes and
    contexts of what was raised (libraries wrap what they meet: uproot's first read starts
    fsspec's I/O thread, and a reader wraps the failure in an input error).
    """
    e: BaseException | None = exc
    for _ in range(8):
        if e is None:
            return False
        if isinstance(e, MemoryError) or (isinstance(e, OSError) and e.errno == errno.ENOMEM):
            return True
        if isinstance(e, RuntimeError) and _raised_by_thread_start(e):
            return True
        e = e.__cause__ or e.__context__
    return False


def _raised_by_thread_start(exc: BaseException) -> bool:
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    code = tb.tb_frame.f_code
    if code.co_name != "start" or os.path.basename(code.co_filename) != "threading.py":
        return False
    thread = tb.tb_frame.f_locals.get("self")  # a thread that never started ("started once" is a misuse)
    started = getattr(thread, "_started", None)
    return bool(getattr(thread, "_initialized", False)) and started is not None and not started.is_set()


def current_worker() -> "WorkerRuntime | None":
    """The runtime executing the current task, or None outside a task."""
    return _current


def library_context(name: str | None = None) -> Any:
    """The context of the library serving the current FunctionCall (or ``name``)."""
    rt = _current
    lib = name or _current_library
    if rt is None or lib is None:
        raise RuntimeError("library_context() is only available inside a FunctionCall running on a worker")
    if lib not in rt.contexts:
        raise RuntimeError(f"library {lib!r} has no context on worker {rt.worker_id}")
    return rt.contexts[lib]


def load_variable_from_library(variable: str) -> Any:
    """TaskVine's accessor: ``variable`` from the current library's context dict."""
    ctx = library_context()
    try:
        return ctx[variable]
    except (KeyError, TypeError):
        have = sorted(ctx) if isinstance(ctx, dict) else type(ctx).__name__
        raise KeyError(f"library context has no variable {variable!r}; it has {have}") from None


def _resolve_file(kind: str, cache_name: str, source: Any) -> Any:
    rt = _current
    if rt is None:
        from ._files import File
        return File(kind, cache_name, source)
    if kind == "temp":
        return _serialize.loads(rt.store.get(cache_name))
    return rt.store.materialise(kind, cache_name, source)


def _vm_kb() -> tuple[int, int]:
    """(virtual size, resident size) of this process in kB."""
    with open("/proc/self/statm") as f:
        parts = f.read().split()
    page = os.sysconf("SC_PAGE_SIZE") // 1024
    return int(parts[0]) * page, int(parts[1]) * page


def _hwm_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM"):
                return int(line.split()[1])
    return 0


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:  # pragma: no cover - kernels without clear_refs
        return False


class WorkerRuntime:
    """Runs tasks in this process; keeps library contexts and the store."""

    def __init__(self, worker_id: str, store: DirStore, *, isolated: bool,
                 sandbox_root: str | None = None) -> None:
        self.worker_id = worker_id
        self.store = store
        self.isolated = isolated
        self.sandbox_root = sandbox_root or store.root
        self.libraries: dict[str, Any] = {}
        self.contexts: dict[str, Any] = {}
        self.library_errors: dict[str, str] = {}
        self.context_builds: dict[str, int] = {}
        self._metrics: dict[str, float] | None = None  # of the task running now
        self._leases: list[Any] = []  # node cache copies the running task uses

    # -------------------------------------------------------------- libraries
    def install_library(self, name: str, payload: bytes) -> None:
        """Import the hoisted modules and build the context, once."""
        global _current
        if name in self.libraries:
            return
        prev, _current = _current, self
        try:
            lib = _serialize.loads(payload)
            self.libraries[name] = lib
            for mod in lib.hoisting_modules:
                __import__(mod)
            if lib.context is not None:
                fn, args, kwargs = lib.context
                self.contexts[name] = fn(*args, **kwargs)
            else:
                self.contexts[name] = None
            self.context_builds[name] = self.context_builds.get(name, 0) + 1
        except BaseException as exc:  # noqa: BLE001 - reported on every call
            self.library_errors[name] = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        finally:
            _current = prev

    def uninstall_library(self, name: str) -> None:
        """Drop a library and its context (its ``close()`` is called if it has one), then collect."""
        import gc

        self.libraries.pop(name, None)
        self.library_errors.pop(name, None)
        context = self.contexts.pop(name, None)
        close = getattr(context, "close", None)
        if callable(close):
            try:
                close()
            except Exception:  # noqa: BLE001 - a failing close must not take the worker down
                traceback.print_exc()
        del context, close
        gc.collect()

    # ------------------------------------------------------------------ tasks
    def execute(self, spec: TaskSpec) -> Outcome:
        global _current, _current_library
        buf = io.StringIO()
        result = Result.SUCCESS
        output: bytes | None = None
        output_size = 0
        sandbox = None
        old_cwd = None
        old_limit = None
        alarm = False
        old_handler: Any = None
        _reset_hwm()
        vsize0, rss0 = _vm_kb()
        t0 = time.perf_counter()
        c0 = time.process_time()
        prev, _current = _current, self
        prev_lib, _current_library = _current_library, spec.library
        prev_metrics, self._metrics = self._metrics, {}
        try:
            with _capture_output(buf, whole_process=self.isolated):
                try:
                    fn, args, kwargs = self._load(spec)
                    if spec.inputs or spec.outputs:
                        sandbox = tempfile.mkdtemp(prefix=f"t{spec.task_id}.", dir=self.sandbox_root)
                        self._stage_inputs(spec, sandbox)
                        old_cwd = os.getcwd()
                        os.chdir(sandbox)
                    if spec.memory and self.isolated:
                        old_limit = resource.getrlimit(resource.RLIMIT_AS)
                        cap = vsize0 * 1024 + spec.memory * _MB
                        hard = old_limit[1]
                        if hard != resource.RLIM_INFINITY:
                            cap = min(cap, hard)
                        resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
                    if spec.time_max and threading.current_thread() is threading.main_thread():
                        old_handler = signal.signal(signal.SIGALRM, _raise_time_limit)
                        signal.setitimer(signal.ITIMER_REAL, spec.time_max)
                        alarm = True
                    value = fn(*args, **kwargs)
                    if alarm:
                        signal.setitimer(signal.ITIMER_REAL, 0)
                        signal.signal(signal.SIGALRM, old_handler)
                        alarm = False
                    if old_limit is not None:
                        resource.setrlimit(resource.RLIMIT_AS, old_limit)
                        old_limit = None
                    if sandbox:
                        self._collect_outputs(spec, sandbox)
                    data = _serialize.dumps(value)
                    output_size = len(data)
                    if spec.output_temp:
                        self.store.put(spec.output_temp, data)
                    else:
                        output = data
                except MemoryError as exc:
                    result, output = Result.RESOURCE_EXHAUSTION, _serialize.exception_payload(exc)
                    traceback.print_exc()
                except _TimeLimit:
                    result = Result.MAX_WALL_TIME
                    output = _serialize.exception_payload(
                        TimeoutError(f"task {spec.task_id} ran over its time_max of {spec.time_max} s"))
                except BaseException as exc:  # noqa: BLE001 - the task's failure is its result
                    # out of memory however a library reports it (see is_out_of_memory): exhaustion too
                    result = Result.RESOURCE_EXHAUSTION if is_out_of_memory(exc) else Result.EXCEPTION
                    output = _serialize.exception_payload(exc)
                    traceback.print_exc()
        finally:
            if alarm:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, old_handler)
            if old_limit is not None:
                resource.setrlimit(resource.RLIMIT_AS, old_limit)
            if old_cwd is not None:
                os.chdir(old_cwd)
            if sandbox:
                shutil.rmtree(sandbox, ignore_errors=True)
            while self._leases:
                self._leases.pop().release()
            metrics, self._metrics = self._metrics, prev_metrics
            _current, _current_library = prev, prev_lib
        wall = time.perf_counter() - t0
        cpu = time.process_time() - c0
        peak = max(_hwm_kb(), rss0)
        grew = max(0.0, (peak - rss0) / 1024)
        if result is Result.SUCCESS:
            if spec.memory and grew > spec.memory:
                result = Result.RESOURCE_EXHAUSTION
                output = _serialize.exception_payload(MemoryError(
                    f"task {spec.task_id} grew by {grew:.0f} MB, over its allocation of {spec.memory} MB"))
            elif spec.time_max and wall > spec.time_max:
                result = Result.MAX_WALL_TIME
                output = _serialize.exception_payload(TimeoutError(
                    f"task {spec.task_id} ran {wall:.2f} s, over its time_max of {spec.time_max} s"))
        return Outcome(spec.task_id, result, output, buf.getvalue(), wall, cpu, grew, peak / 1024,
                       self.worker_id, output_size if result is Result.SUCCESS else 0, metrics or None)

    def _load(self, spec: TaskSpec):
        fn, args, kwargs = _serialize.loads(spec.payload)
        if spec.library is None:
            return fn, args, kwargs
        if spec.library in self.library_errors:
            raise RuntimeError(f"library {spec.library!r} failed to start on worker {self.worker_id}:\n"
                               + self.library_errors[spec.library])
        lib = self.libraries.get(spec.library)
        if lib is None:
            raise RuntimeError(f"library {spec.library!r} is not installed on worker {self.worker_id}; "
                               f"installed: {sorted(self.libraries)}. Call Manager.install_library first.")
        try:
            return lib.functions[spec.function], args, kwargs
        except KeyError:
            raise AttributeError(f"library {spec.library!r} has no function {spec.function!r}; "
                                 f"it has {sorted(lib.functions)}") from None

    def _stage_inputs(self, spec: TaskSpec, sandbox: str) -> None:
        for kind, cache_name, source, name in spec.inputs:
            src = self.store.materialise(kind, cache_name, source)
            dst = os.path.join(sandbox, name)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            os.symlink(os.path.abspath(src), dst)

    def _collect_outputs(self, spec: TaskSpec, sandbox: str) -> None:
        for kind, cache_name, source, name in spec.outputs:
            path = os.path.join(sandbox, name)
            if not os.path.exists(path):
                raise FileNotFoundError(f"the task did not write its declared output {name!r} "
                                        f"(sandbox has {sorted(os.listdir(sandbox))})")
            if kind == "temp":
                with open(path, "rb") as f:
                    self.store.put(cache_name, f.read())
            else:
                shutil.copyfile(path, source)


def _raise_time_limit(signum, frame):  # pragma: no cover - signal handler
    raise _TimeLimit()


class _ThreadOutput(io.TextIOBase):
    """A stand-in for ``sys.stdout``/``sys.stderr`` while an in-process task runs: writes from the
    task's thread go to the task's buffer, writes from any other thread to the stream it replaced."""

    def __init__(self, buf: io.StringIO, other: Any) -> None:
        self._buf, self._other, self._thread = buf, other, threading.get_ident()

    def write(self, text: str) -> int:
        if threading.get_ident() == self._thread:
            return self._buf.write(text)
        return self._other.write(text) if self._other is not None else len(text)

    def flush(self) -> None:
        if threading.get_ident() != self._thread and self._other is not None:
            self._other.flush()

    def __getattr__(self, name: str) -> Any:  # encoding, isatty, fileno... of the real stream
        return getattr(self._other, name)


@contextlib.contextmanager
def _capture_output(buf: io.StringIO, *, whole_process: bool):
    """Send the task's stdout and stderr to ``buf``: the whole process's in a worker process, only the
    task thread's in-process (other threads of the caller keep their output)."""
    if whole_process:
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            yield
        return
    import sys

    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _ThreadOutput(buf, saved[0]), _ThreadOutput(buf, saved[1])
    try:
        yield
    finally:
        # restore only what is still ours: another in-process task may have swapped it meanwhile
        if isinstance(sys.stdout, _ThreadOutput) and sys.stdout._buf is buf:
            sys.stdout = saved[0]
        if isinstance(sys.stderr, _ThreadOutput) and sys.stderr._buf is buf:
            sys.stderr = saved[1]
