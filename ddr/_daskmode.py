"""Coffea's dask mode under ddr: choosing the mode, the local scheduler, eager outputs.

A processor written for coffea's dask mode (events from
``NanoEventsFactory.from_root(..., mode="dask")``, ``hist.dask`` histograms,
dask-awkward arrays, run by ``apply_to_fileset`` + ``dask.compute``) runs
under ddr unchanged. Policy:

* **Mode.** A run reads its events in one mode: chosen
  (``mode="eager" | "virtual" | "dask"``), or with ``"auto"`` detected from the
  processors' code (:func:`uses_dask_mode`: it imports or refers to
  dask-awkward, dask-histogram or ``hist.dask``). Dask mode needs the
  ``dask-awkward`` extra; without it the error says how to install it.
* **Cores.** Any dask collection a task computes, in any mode, runs on a local
  scheduler with exactly the task's cores (:func:`local_scheduler`): the
  synchronous scheduler for one core, ``N`` threads for ``N``, never dask's
  default pool of one thread per CPU of the machine.
* **Outputs** come back eager: ``hist.dask`` -> ``hist.Hist``, dask-awkward
  scalars -> numbers, nested containers kept. A dask-awkward *array* becomes
  :class:`ArrayPieces`, because coffea's ``accumulate`` adds awkward arrays
  element-wise: pieces are merged by ``+`` and joined at the end
  (:func:`finalize`) in fileset order (file, then entry), as ``dask.compute``
  returns them.

How a chunk becomes a graph that the worker computes is in
:mod:`ddr._daskchunk`.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Mapping
from typing import Any, Iterable

from ._extras import require
from .exceptions import DDRError

__all__ = ["MODES", "DaskModeUnavailable", "require_dask_awkward", "uses_dask_mode", "resolve_mode",
           "local_scheduler", "compute_group", "ArrayPieces", "finalize"]

MODES = ("auto", "eager", "virtual", "dask")
_DASK_MODULES = ("dask_awkward", "dask_histogram", "hist.dask")
_HINT = "pip install 'ddr-hep[dask-awkward]'"


# ------------------------------------------------------------------ modes
class DaskModeUnavailable(DDRError, ImportError):
    """A dask-mode processor in an environment without dask-awkward (or dask-histogram)."""


def require_dask_awkward() -> Any:
    """``dask_awkward``, or :class:`DaskModeUnavailable` with the install command."""
    for module in ("dask_awkward", "dask_histogram"):
        try:
            require(module, extra="dask-awkward")
        except ImportError as exc:
            raise DaskModeUnavailable(
                f"this processor is written for coffea's dask mode (dask-awkward arrays, hist.dask), but "
                f"{module!r} cannot be imported ({exc.__cause__ or exc}).\n  Install the extra: {_HINT}\n"
                "  (it brings dask-awkward and dask-histogram, which need dask < 2025.4), or choose another "
                "mode for an eager processor: --mode virtual / mode='virtual'", name=module) from exc
    import dask_awkward

    return dask_awkward


def _is_dask_module(name: Any) -> bool:
    return isinstance(name, str) and any(name == m or name.startswith(m + ".") for m in _DASK_MODULES)


def _functions_of(processor: Any) -> list[types.FunctionType]:
    while hasattr(processor, "func") and callable(processor.func):  # functools.partial
        processor = processor.func
    if inspect.isfunction(processor) or inspect.ismethod(processor):
        return [getattr(processor, "__func__", processor)]
    out = []
    for cls in type(processor).__mro__:
        if cls.__module__.startswith(("coffea.", "builtins")):
            continue
        for value in vars(cls).values():
            value = getattr(value, "__func__", value)  # staticmethod / classmethod
            if inspect.isfunction(value):
                out.append(value)
    return out


def uses_dask_mode(processor: Any) -> bool:
    """Does the processor's code use dask-awkward, dask-histogram or ``hist.dask``?

    Looks at the names its functions (and the module-level functions of its
    module that they call) import or use: ``import hist.dask as hda`` inside
    ``process``, or a module-level ``import dask_awkward as dak`` that the code
    refers to. Code reached otherwise needs ``mode="dask"`` explicitly."""
    todo = _functions_of(processor)
    seen: set[int] = set()
    while todo:
        fn = todo.pop()
        if id(fn.__code__) in seen:
            continue
        seen.add(id(fn.__code__))
        codes = [fn.__code__]
        while codes:
            code = codes.pop()
            codes.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
            for name in code.co_names:
                if _is_dask_module(name):  # an import inside the function
                    return True
                obj = fn.__globals__.get(name)
                if obj is None:
                    continue
                if inspect.ismodule(obj):
                    if _is_dask_module(obj.__name__):
                        return True
                elif _is_dask_module(getattr(obj, "__module__", None)):
                    return True
                elif inspect.isfunction(obj) and obj.__module__ == fn.__module__:
                    todo.append(obj)  # a helper of the same module
    return False


def resolve_mode(mode: str | None, processors: Mapping[str, Any]) -> str:
    """The NanoEvents mode of a run: ``mode`` itself, or for ``"auto"`` (and None) ``"dask"`` when the
    processors use dask-awkward / hist.dask and ``"virtual"`` otherwise. A dask mode needs dask-awkward."""
    mode = "auto" if mode is None else mode
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    if mode == "auto":
        dask_mode = {name: uses_dask_mode(p) for name, p in processors.items()}
        if len(set(dask_mode.values())) > 1:
            names = lambda flag: ", ".join(n for n, d in dask_mode.items() if d is flag)  # noqa: E731
            raise DDRError(f"processors {names(True)} are written for coffea's dask mode and {names(False)} "
                           "for eager arrays; one run reads its events in one mode.\n  Run them separately, "
                           "or choose the mode: --mode dask|virtual (mode= in Python)")
        mode = "dask" if any(dask_mode.values()) else "virtual"
    if mode == "dask":
        require_dask_awkward()
    return mode


# -------------------------------------------------------- local scheduler
def local_scheduler(cores: int) -> dict[str, Any]:
    """``dask.compute`` keywords that use exactly ``cores`` cores: the synchronous scheduler for one
    (no thread pool at all), ``cores`` threads otherwise."""
    if cores <= 1:
        return {"scheduler": "sync"}
    return {"scheduler": "threads", "num_workers": int(cores)}


def compute_group(collection: Any) -> Any:
    """Collections of one group are computed together (shared inputs read once): dask-awkward and
    hist.dask collections are one group; any other type is a group of its own."""
    module = type(collection).__module__
    return "dask-awkward" if _is_dask_module(module) else type(collection)


# ----------------------------------------------------------------- outputs
class ArrayPieces:
    """An awkward-array output of a dask-mode processor, kept in pieces until the end.

    ``+`` merges the pieces (so coffea's ``accumulate`` works); :meth:`concatenate`
    joins them ordered by file (``file_order``, then path) and first entry, the
    order in which ``dask.compute`` returns a dask-awkward array of a fileset."""

    def __init__(self, pieces: Iterable[tuple[tuple[str, int], Any]] = ()) -> None:
        self.pieces = list(pieces)

    def __add__(self, other: Any) -> "ArrayPieces":
        if not isinstance(other, ArrayPieces):
            return NotImplemented
        return ArrayPieces(self.pieces + other.pieces)

    def __iadd__(self, other: Any) -> "ArrayPieces":
        if not isinstance(other, ArrayPieces):
            return NotImplemented
        self.pieces.extend(other.pieces)
        return self

    def __deepcopy__(self, memo: dict) -> "ArrayPieces":
        # coffea's accumulate deep-copies a value present in one input only (a dataset the other partial
        # lacks); the pieces are awkward arrays, which no operation changes in place, so a copy shares them
        return ArrayPieces(self.pieces)

    def __reduce__(self) -> tuple:
        # Each piece carries the NanoEvents behavior: a dict of ~1,400 classes and functions, ~600 of
        # them lambdas (vector's) that cloudpickle copies by value, so that every unpickled piece has a
        # behavior of its own, equal to no other. Pickled with every piece it was most of an
        # accumulation's time (0.2-0.5 s to pickle 16 pieces of a few kB). Pickled here once for the
        # pieces whose behaviors have the same names (one processor's pieces: the same code made them).
        import awkward as ak

        behaviors: list[Any] = []
        pieces = []
        for where, array in self.pieces:
            behavior = array.behavior
            for i, known in enumerate(behaviors):
                if known is behavior or (known is not None and behavior is not None
                                         and known.keys() == behavior.keys()):
                    break
            else:
                i = len(behaviors)
                behaviors.append(behavior)
            pieces.append((where, ak.Array(array.layout, attrs=array.attrs), i))
        return (_unpickle_pieces, (pieces, behaviors))

    def __len__(self) -> int:
        return sum(len(a) for _, a in self.pieces)

    def __repr__(self) -> str:
        return f"ArrayPieces({len(self.pieces)} pieces, {len(self)} entries; .concatenate() joins them)"

    def concatenate(self, file_order: Mapping[str, int] | None = None) -> Any:
        import awkward as ak

        order = file_order or {}
        pieces = sorted(self.pieces, key=lambda p: (order.get(p[0][0], len(order)), p[0][0], p[0][1]))
        return ak.concatenate([a for _, a in pieces]) if pieces else None


def _unpickle_pieces(pieces: list[tuple[tuple[str, int], Any, int]], behaviors: list[Any]) -> ArrayPieces:
    import awkward as ak

    return ArrayPieces([(where, ak.Array(array.layout, behavior=behaviors[i], attrs=array.attrs))
                        for where, array, i in pieces])


def finalize(value: Any, file_order: Mapping[str, int] | None = None) -> Any:
    """``value`` with every :class:`ArrayPieces` concatenated into one awkward array."""
    from ._coffea import _map_leaves

    return _map_leaves(value, lambda v: v.concatenate(file_order) if isinstance(v, ArrayPieces) else v)


