"""Loading an analysis file for ``ddr run``: find the processor(s) it defines.

An analysis file may define, at module level:

* a ``coffea.processor.ProcessorABC`` subclass (built with no arguments),
* an instance of one,
* a function whose first parameter is named ``events``.

Only objects defined in the file itself count (imports are ignored). A module
attribute named ``processor`` wins over everything else.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import sys
from typing import Any

import cloudpickle

from .exceptions import DDRError

__all__ = ["load_analysis", "AnalysisError"]


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


def load_analysis(path: str | os.PathLike, name: str | None = None) -> dict[str, Any]:
    """``{name: processor}`` from an analysis file; ``name`` picks one."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise AnalysisError(f"analysis file {path!r} does not exist (working directory: {os.getcwd()})")
    modname = "ddr_analysis_" + "".join(c if c.isalnum() else "_" for c in os.path.splitext(os.path.basename(path))[0])
    spec = importlib.util.spec_from_file_location(modname, path)
    if spec is None or spec.loader is None:
        raise AnalysisError(f"{path!r} is not a Python file ddr can import")
    module = importlib.util.module_from_spec(spec)
    sys.modules[modname] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(modname, None)
        hint = ""
        if isinstance(exc, ImportError) and any(m in f"{exc.name} {exc}" for m in ("dask_awkward", "dask_histogram")):
            hint = "\n  a dask-mode analysis needs the extra: pip install 'ddr-hep[dask-awkward]'"
        raise AnalysisError(f"importing the analysis {path!r} failed: {type(exc).__name__}: {exc}{hint}") from exc
    cloudpickle.register_pickle_by_value(module)  # workers cannot import it by name

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
