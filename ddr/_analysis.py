"""Loading an analysis file for ``ddr run``: find the processor(s) it defines.

An analysis file may define, at module level:

* a ``coffea.processor.ProcessorABC`` subclass (built with no arguments),
* an instance of one,
* a function whose first parameter is named ``events``.

Only objects defined in the file itself count (imports are ignored). A module
attribute named ``processor`` wins over everything else.

Imports beside the analysis
    The analysis file's folder goes first on ``sys.path`` unless it is on it
    already (as ``python analysis.py`` would put it), so ``from selections
    import ...`` finds ``selections.py`` next to it; local engine workers
    inherit the manager's path.
    Workers of other engines may not see the folder at all (a dask worker on
    another machine), so the analysis module and every module it imports,
    directly or through each other, whose file lies in that folder (not in a
    virtual environment or site-packages there) are pickled by value: their
    code travels with the processor. An ``import`` run inside a function at
    task time is not shipped; it needs the module on the worker's path.
    Code shipped this way keeps its real file name (see vinecore._serialize),
    so a worker's traceback points at the user's file and line.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import os
import sys
import sysconfig
from typing import Any, Iterable

import cloudpickle

from .exceptions import DDRError

__all__ = ["load_analysis", "local_modules", "AnalysisError"]


class AnalysisError(DDRError):
    pass


def _is_processor_class(obj: Any, modname: str) -> bool:
    try:
        from coffea.processor import ProcessorABC
    except ImportError:  # pragma: no cover
        return False
    return (inspect.isclass(obj) and issubclass(obj, ProcessorABC) and obj is not ProcessorABC
            and obj.__module__ == modname and not inspect.isabstract(obj))


def _is_processor_instance(obj: Any) -> bool:
    from coffea.processor import ProcessorABC

    return isinstance(obj, ProcessorABC)


def _is_event_function(obj: Any, modname: str) -> bool:
    if not inspect.isfunction(obj) or obj.__module__ != modname or obj.__name__.startswith("_"):
        return False
    params = list(inspect.signature(obj).parameters)
    return bool(params) and params[0] == "events"


def _import_file(path: str) -> Any:
    """Import the analysis file as a module; its folder first on sys.path; ship its local modules by value."""
    path = os.path.abspath(path)  # code objects keep this name: tracebacks show the absolute path
    folder = os.path.dirname(path)
    modname = "ddr_analysis_" + "".join(c if c.isalnum() else "_" for c in os.path.splitext(os.path.basename(path))[0])
    spec = importlib.util.spec_from_file_location(modname, path)
    if spec is None or spec.loader is None:
        raise AnalysisError(f"{path!r} is not a Python file ddr can import")
    if folder not in sys.path:
        sys.path.insert(0, folder)
    before = set(sys.modules)
    module = importlib.util.module_from_spec(spec)
    sys.modules[modname] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(modname, None)
        hint = ""
        if isinstance(exc, ImportError) and any(m in f"{exc.name} {exc}" for m in ("dask_awkward", "dask_histogram")):
            hint = "\n  a dask-mode analysis needs the extra: pip install 'ddr-hep[dask-awkward]'"
        elif isinstance(exc, ModuleNotFoundError) and exc.name:
            hint = (f"\n  {exc.name!r} is neither installed nor beside the analysis in {folder}; "
                    f"install it (pip install ...) or copy {exc.name}.py next to {os.path.basename(path)}")
        raise AnalysisError(f"importing the analysis {path!r} failed: {type(exc).__name__}: {exc}{hint}") from exc
    new = [sys.modules[n] for n in set(sys.modules) - before if n in sys.modules]
    cloudpickle.register_pickle_by_value(module)  # workers cannot import it by name
    for local in local_modules(module, folder, extra=new):
        cloudpickle.register_pickle_by_value(local)  # nor, perhaps, the modules beside it
    return module


def local_modules(module: Any, folder: str, extra: Iterable[Any] = ()) -> list[Any]:
    """``module`` and the modules it uses, directly or through each other, whose file lies under ``folder``.

    "Uses" means: a module-level name bound to the module, or to an object
    defined in it (``from selections import cut``); ``extra`` modules (e.g.
    those imported while ``module`` ran) are candidates too. Files of an
    installed package (site-packages, dist-packages, the running Python's own
    prefix) never count, even inside ``folder``, nor do ddr and vinecore.
    """
    found: dict[str, Any] = {}
    todo = [module, *extra]
    while todo:
        m = todo.pop()
        name = getattr(m, "__name__", None)
        if not isinstance(name, str) or name in found or not _is_local(m, folder):
            continue
        found[name] = m
        for value in list(vars(m).values()):
            if inspect.ismodule(value):
                todo.append(value)
                continue
            try:
                owner = getattr(value, "__module__", None)
            except Exception:  # noqa: BLE001 - proxies may raise anything
                continue
            if isinstance(owner, str) and owner in sys.modules:
                todo.append(sys.modules[owner])
    return list(found.values())


@functools.lru_cache(maxsize=1)
def _installed_paths() -> list[str]:
    paths = sysconfig.get_paths()
    return sorted({os.path.realpath(paths[k]) for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths})


def _is_local(module: Any, folder: str) -> bool:
    file = getattr(module, "__file__", None)
    if not isinstance(file, str) or module.__name__.split(".")[0] in ("ddr", "vinecore"):
        return False
    file = os.path.realpath(file)
    folder = os.path.realpath(folder)
    if os.path.commonpath([file, folder]) != folder:
        return False
    if {"site-packages", "dist-packages"} & set(file.split(os.sep)):
        return False  # an installed package, e.g. in a virtual environment inside the folder
    return not any(os.path.commonpath([file, p]) == p for p in _installed_paths())


def load_analysis(path: str | os.PathLike, name: str | None = None) -> dict[str, Any]:
    """``{name: processor}`` from an analysis file; ``name`` picks one."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise AnalysisError(f"analysis file {path!r} does not exist (working directory: {os.getcwd()})")
    module = _import_file(path)
    modname = module.__name__

    found: dict[str, Any] = {}
    explicit = getattr(module, "processor", None)
    if explicit is not None and not inspect.ismodule(explicit):
        found["processor"] = explicit
    else:
        for attr, obj in vars(module).items():
            if attr.startswith("_"):
                continue
            if _is_processor_class(obj, modname):
                found[attr] = obj
            elif _is_processor_instance(obj) and type(obj).__module__ == modname:
                found[attr] = obj
            elif _is_event_function(obj, modname):
                found[attr] = obj
        # an instance of a class also listed: keep the instance only
        for attr, obj in list(found.items()):
            if inspect.isclass(obj) and any(isinstance(o, obj) for o in found.values() if not inspect.isclass(o)):
                del found[attr]
    if not found:
        defined = sorted(f"{a} ({type(o).__name__})" for a, o in vars(module).items()
                         if not a.startswith("_") and not inspect.ismodule(o)
                         and getattr(o, "__module__", modname) == modname)
        raise AnalysisError(
            f"{path} defines no processor.\n"
            f"  found: {', '.join(defined) or 'nothing at module level'}\n"
            "  ddr looks for a coffea.processor.ProcessorABC subclass (built with no arguments), an instance of "
            "one, or a function whose first parameter is `events`.")
    if name is not None:
        if name not in found:
            raise AnalysisError(f"{path} has no processor named {name!r}; it has: {', '.join(sorted(found))}")
        found = {name: found[name]}
    elif len(found) > 1:
        raise AnalysisError(f"{path} defines several processors: {', '.join(sorted(found))}.\n"
                            "  pick one with --processor NAME")
    out = {}
    for attr, obj in found.items():
        if inspect.isclass(obj):
            try:
                obj = obj()
            except TypeError as exc:
                raise AnalysisError(f"{path}: {attr}() cannot be built without arguments ({exc}); "
                                    f"create an instance in the file, e.g. `processor = {attr}(...)`") from exc
        out[attr] = obj
    return out
