"""Wide reductions rewritten into trees: the ``@associative`` marker and the pure reduction planner.

Marking
    ``@vinecore.associative`` says that nested calls of a function flatten::

        f(x1, ..., f(xi, ..., xj), ..., xn) == f(x1, ..., xn)

    for every run of two or more consecutive arguments, and the same for a
    function of one list (``f([x1, ..., f([xi, ..., xj]), ..., xn])``).
    ``@vinecore.associative(commutative=True)`` adds that argument order does not
    matter. Concatenation is associative only; adding histograms or counts is
    both. One node of a graph is marked without touching its function with
    ``dask.annotate(associative=True)`` or ``dask.annotate(associative="commutative")``.

Rewrite
    A marked node with more than ``fan_in`` (k) inputs -- its positional
    arguments, or the elements of its single list or tuple argument -- is
    computed as a tree of calls of the same function, each merging 2 to k
    operands (inputs, or results of earlier calls), with the node's keyword
    arguments. The last call produces the node's key, so its consumers do not
    change. A lone leftover operand moves up a level unchanged, which the
    flattening law allows. A node whose keyword arguments depend on other keys
    is left alone.

    * associative only: inputs keep their order. The tree is fixed: calls over
      consecutive runs of k, level by level, ``ceil(log_k n)`` levels. A call
      starts as soon as its own operands exist.
    * commutative: operands are grouped in completion order. Whenever k
      operands exist (inputs or partial results), one call merges them; when no
      input is outstanding, one last call merges what is left. At most k - 1
      operands wait at any time, besides those of running calls, whatever the
      number of inputs. When inputs arrive one by one the tree is a chain, which
      costs nothing extra for fixed-size results (histograms, sums); for results
      that grow with their inputs, mark the function associative only to get
      the balanced tree.

:class:`Reducer` is the pure state machine behind one rewritten node: feed it
``item_ready`` and ``call_done``, submit the :class:`Call` objects it returns.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["associative", "Algebra", "algebra_of", "algebra_from_annotation", "reduction_inputs", "Call", "Reducer",
           "TreeShape", "static_tree"]

_MARK = "__vinecore_algebra__"


@dataclass(frozen=True, slots=True)
class Algebra:
    """What a reduction function allows: regrouping (always) and reordering (``commutative``)."""

    commutative: bool = False


def associative(fn: Callable[..., Any] | None = None, *, commutative: bool = False):
    """Mark ``fn`` as associative (and, with ``commutative=True``, commutative).

    Usable as ``@associative``, ``@associative(commutative=True)`` or
    ``associative(sum)``. Functions that take attributes are returned marked
    and unchanged; builtins are wrapped in a marked function of the same name.
    """
    if fn is None:
        return functools.partial(associative, commutative=commutative)
    if not callable(fn):
        raise TypeError(f"associative() marks a function, got {type(fn).__name__}: {fn!r}")
    algebra = Algebra(bool(commutative))
    try:
        setattr(fn, _MARK, algebra)
        return fn
    except (AttributeError, TypeError):  # builtins, methods of builtins
        pass

    @functools.wraps(fn)
    def marked(*args, **kwargs):
        return fn(*args, **kwargs)

    setattr(marked, _MARK, algebra)
    return marked


def algebra_of(fn: Any) -> Algebra | None:
    """The algebra ``fn`` was marked with, or None."""
    try:
        found = getattr(fn, _MARK, None)
    except Exception:  # noqa: BLE001 - exotic callables with failing __getattr__
        return None
    return found if isinstance(found, Algebra) else None


def algebra_from_annotation(value: Any, where: str) -> Algebra | None:
    """``dask.annotate(associative=...)``: True, False/None or ``"commutative"``."""
    if value is None or value is False:
        return None
    if value is True or value == "associative":
        return Algebra(False)
    if value == "commutative":
        return Algebra(True)
    raise ValueError(f"{where}: the annotation associative={value!r} is not understood; use "
                     "dask.annotate(associative=True) for an order-keeping reduction or "
                     "dask.annotate(associative='commutative') when order does not matter")


def reduction_inputs(node: Any) -> tuple[tuple, type | None] | str:
    """The inputs a marked dask node reduces, and the container they came in
    (``list``/``tuple`` for a function of one sequence, ``None`` for positional
    arguments); or why the node cannot be rewritten."""
    from dask import _task_spec as ts

    if not isinstance(node, ts.Task) or isinstance(node, ts.NestedContainer):
        return "it is not a function call"
    for v in node.kwargs.values():
        if isinstance(v, (ts.GraphNode, ts.TaskRef)) and (not isinstance(v, ts.GraphNode) or v.dependencies):
            return "its keyword arguments depend on other keys"
    args = node.args
    if len(args) == 1:
        a = args[0]
        if isinstance(a, (ts.List, ts.Tuple)):
            return tuple(a.args), a.klass
        cast = getattr(ts, "_identity_cast", None)
        if isinstance(a, ts.Task) and cast is not None and a.func is cast and a.kwargs.get("typ") in (list, tuple):
            return tuple(a.args), a.kwargs["typ"]
        if type(a) in (list, tuple):
            return tuple(a), type(a)
    return tuple(args), None


# ------------------------------------------------------------------ the planner

@dataclass(frozen=True, slots=True)
class Call:
    """One call of the reduction function. ``operands`` are ``("item", i)`` (the
    node's i-th input) or ``("call", c)`` (the result of call c); ``final`` marks
    the call that produces the node's own key."""

    id: int
    operands: tuple[tuple[str, int], ...]
    final: bool


@dataclass(frozen=True, slots=True)
class TreeShape:
    """The tree a reduction ran as: inputs, calls, depth (levels of calls), fan-in range."""

    inputs: int
    calls: int
    depth: int
    max_fan_in: int
    min_fan_in: int
    commutative: bool


def static_tree(n: int, fan_in: int) -> list[tuple[tuple[str, int], ...]]:
    """The order-keeping tree over ``n`` inputs: the operands of each call, in
    dependency order (the last one is the root). Needs ``n > fan_in >= 2``."""
    _check(n, fan_in)
    calls: list[tuple[tuple[str, int], ...]] = []
    level: list[tuple[str, int]] = [("item", i) for i in range(n)]
    while len(level) > fan_in:
        nxt: list[tuple[str, int]] = []
        for start in range(0, len(level), fan_in):
            run = level[start:start + fan_in]
            if len(run) == 1:
                nxt.append(run[0])  # a lone operand moves up unchanged
            else:
                calls.append(tuple(run))
                nxt.append(("call", len(calls) - 1))
        level = nxt
    calls.append(tuple(level))
    return calls


def _check(n: int, fan_in: int) -> None:
    if fan_in < 2:
        raise ValueError(f"fan_in must be at least 2, got {fan_in}")
    if n <= fan_in:
        raise ValueError(f"a reduction of {n} inputs with fan_in={fan_in} needs no tree")


class Reducer:
    """The calls that reduce ``n`` inputs with fan-in ``fan_in``, emitted as operands appear.

    Pure: ``item_ready(i)`` when input i exists, ``call_done(c)`` when call c
    succeeded; both return the calls that can start now. ``done`` is True once
    the final call succeeded. ``shape()`` describes the tree built so far.
    """

    def __init__(self, n: int, fan_in: int, commutative: bool) -> None:
        _check(n, fan_in)
        self.n = n
        self.fan_in = fan_in
        self.commutative = commutative
        self.done = False
        self._seen_items: set[int] = set()
        self._finished_calls: set[int] = set()
        self._operands: dict[int, tuple[tuple[str, int], ...]] = {}
        self._depth: dict[tuple[str, int], int] = {}
        self._final: int | None = None
        if commutative:
            self._pool: list[tuple[str, int]] = []
            self._running: set[int] = set()
            self._next = 0
        else:
            plan = static_tree(n, fan_in)
            self._plan = plan
            self._parent: dict[tuple[str, int], int] = {}
            self._missing = [len(ops) for ops in plan]
            for c, ops in enumerate(plan):
                for op in ops:
                    self._parent[op] = c
            self._final = len(plan) - 1

    # -------------------------------------------------------------- events
    def item_ready(self, i: int) -> list[Call]:
        if not 0 <= i < self.n:
            raise IndexError(f"input {i} of a reduction of {self.n} inputs")
        if i in self._seen_items:
            raise ValueError(f"input {i} was reported twice")
        self._seen_items.add(i)
        self._depth[("item", i)] = 0
        return self._operand_ready(("item", i))

    def call_done(self, c: int) -> list[Call]:
        if c not in self._operands or c in self._finished_calls:
            raise ValueError(f"call {c} was not started, or was reported twice")
        self._finished_calls.add(c)
        if c == self._final:
            self.done = True
            return []
        if self.commutative:
            self._running.discard(c)
        return self._operand_ready(("call", c))

    # ------------------------------------------------------------- queries
    def shape(self) -> TreeShape:
        sizes = [len(ops) for ops in self._operands.values()] or [0]
        depth = max((self._depth[("call", c)] for c in self._operands), default=0)
        return TreeShape(self.n, len(self._operands), depth, max(sizes), min(sizes), self.commutative)

    def expected_calls(self) -> int:
        """Number of calls the whole reduction takes: ``ceil((n - 1) / (k - 1))`` when commutative."""
        if self.commutative:
            return math.ceil((self.n - 1) / (self.fan_in - 1))
        return len(self._plan)

    # ------------------------------------------------------------- helpers
    def _emit(self, c: int, ops: tuple[tuple[str, int], ...], final: bool) -> Call:
        self._operands[c] = ops
        self._depth[("call", c)] = 1 + max(self._depth[op] for op in ops)
        if final:
            self._final = c
        return Call(c, ops, final)

    def _operand_ready(self, op: tuple[str, int]) -> list[Call]:
        if not self.commutative:
            c = self._parent[op]
            self._missing[c] -= 1
            if self._missing[c]:
                return []
            return [self._emit(c, self._plan[c], c == self._final)]
        self._pool.append(op)
        out: list[Call] = []
        k = self.fan_in
        while len(self._pool) >= k:
            ops, self._pool = tuple(self._pool[:k]), self._pool[k:]
            final = not self._pool and not self._running and len(self._seen_items) == self.n
            out.append(self._start(ops, final))
        if len(self._seen_items) == self.n and not self._running and len(self._pool) >= 2:
            ops, self._pool = tuple(self._pool), []
            out.append(self._start(ops, True))
        return out

    def _start(self, ops: tuple[tuple[str, int], ...], final: bool) -> Call:
        c = self._next
        self._next += 1
        self._running.add(c)
        return self._emit(c, ops, final)
