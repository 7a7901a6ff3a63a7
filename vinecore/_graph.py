"""Dask graphs as vinecore jobs: the manager's plan and the worker side.

Policy
------
Input
    What ``dask.compute`` hands a scheduler: an expression (dask 2025.4 and
    later), a ``HighLevelGraph`` (earlier), or a plain dict, in the task spec
    (``Task``, ``DataNode``, ``Alias``, ``TaskRef``, ``List``/``Tuple``/``Dict``)
    or the legacy tuple form, which dask's own ``convert_legacy_graph`` turns
    into the task spec. Annotations come from the expression or the graph's layers.
Jobs
    Only the nodes the requested keys need are kept. A ``DataNode`` is no job:
    its value travels in the library context. An ``Alias`` is no job: it is
    its target. Every other node is one job, and a wide associative node is
    one reduction (:mod:`vinecore._associative`) whose final call is that job.
Order
    A ``priority`` annotation first (higher first, as in dask.distributed), then
    ``dask.order`` over the needed part of the graph.
Resources
    ``get(resources={...}, retries=n)`` applies to every node; the annotations
    ``resources`` and ``retries`` of a node override it. Resource names are
    ``cores``, ``memory`` (MB), ``disk`` (MB) and ``time_max`` (s).
Worker side
    The whole plan for the workers (:class:`WorkerGraph`: nodes, reductions,
    data) is pickled once per ``get`` and becomes the context of that get's
    library; a job is then a FunctionCall naming a node by number, with its
    inputs as temps. :func:`run_node` and :func:`run_reduction` are the
    library's functions.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ._associative import Algebra, algebra_from_annotation, algebra_of
from ._runtime import library_context

__all__ = ["Resources", "ReductionPlan", "GraphPlan", "WorkerGraph", "build_plan", "run_node",
           "run_reduction", "load_graph", "flatten_keys", "repack"]

RESOURCE_NAMES = ("cores", "memory", "disk", "time_max")


@dataclass(frozen=True, slots=True)
class Resources:
    cores: int | None = None
    memory: int | None = None  # MB
    disk: int | None = None  # MB
    time_max: float | None = None  # s

    def merged(self, other: "Resources") -> "Resources":
        """``other``'s values where it has them, else ours."""
        return Resources(*(o if o is not None else s
                           for s, o in zip((self.cores, self.memory, self.disk, self.time_max),
                                           (other.cores, other.memory, other.disk, other.time_max))))


def resources_from(spec: Any, where: str) -> Resources:
    if spec is None:
        return Resources()
    if isinstance(spec, Resources):
        return spec
    if not isinstance(spec, Mapping):
        raise TypeError(f"{where}: resources must be a dict such as {{'cores': 1, 'memory': 2000}}, got {spec!r}")
    unknown = sorted(set(spec) - set(RESOURCE_NAMES))
    if unknown:
        raise ValueError(f"{where}: unknown resource(s) {unknown}; vinecore understands cores, memory (MB), "
                         "disk (MB) and time_max (seconds)")
    values = {}
    for name in RESOURCE_NAMES:
        v = spec.get(name)
        if v is None:
            continue
        if name == "time_max":
            if not isinstance(v, (int, float)) or v <= 0:
                raise ValueError(f"{where}: time_max must be positive seconds, got {v!r}")
            values[name] = float(v)
        else:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) != v or v <= 0:
                raise ValueError(f"{where}: {name} must be a positive whole number, got {v!r}")
            values[name] = int(v)
    return Resources(**values)


@dataclass(frozen=True, slots=True)
class ReductionPlan:
    """A wide associative node: the producers of each input, and the tree's parameters."""

    item_inputs: tuple[tuple[int, ...], ...]  # per input: the jobs whose outputs it reads
    algebra: Algebra
    fan_in: int


@dataclass
class WorkerGraph:
    """What the workers need to run the jobs of one get (the library context)."""

    nodes: dict[int, tuple[Any, tuple, tuple]] = field(default_factory=dict)  # job -> (node, slots, data slots)
    reductions: dict[int, tuple] = field(default_factory=dict)  # job -> (func, container, items, kwargs, slots)
    data: dict[Any, Any] = field(default_factory=dict)  # key -> value of a DataNode


@dataclass
class GraphPlan:
    """Everything the manager needs to run one graph; indexes are job numbers."""

    keys: list[Any]  # job -> dask key
    inputs: list[tuple[int, ...]]  # job -> distinct producer jobs (for a reduction: of all its inputs)
    consumers: list[tuple[int, ...]]  # job -> distinct consumer jobs
    uses: list[int]  # job -> reads of its output (a reduction reads once per input that needs it)
    order: list[tuple]  # job -> sort key (smaller first)
    resources: list[Resources]
    retries: list[int]
    reductions: dict[int, ReductionPlan]
    item_users: dict[int, list[tuple[int, int]]]  # producer -> [(reduction job, input index)]
    targets: list[tuple[str, Any]]  # per requested key: ("job", j) or ("value", v)
    worker: WorkerGraph
    not_rewritten: dict[Any, str]  # marked associative but run flat: key -> why

    @property
    def requested(self) -> set[int]:
        return {v for kind, v in self.targets if kind == "job"}


# ------------------------------------------------------------------ input

def normalize(dsk: Any) -> tuple[dict, dict[str, dict]]:
    """(graph in the task spec, annotations by name) of whatever dask handed over."""
    from dask._task_spec import convert_legacy_graph

    annotations: dict[str, dict] = {}
    if not isinstance(dsk, Mapping) and hasattr(dsk, "__dask_graph__"):
        if hasattr(dsk, "__dask_annotations__"):
            annotations = dict(dsk.__dask_annotations__() or {})
        dsk = dsk.__dask_graph__()
    layers = getattr(dsk, "layers", None)
    if isinstance(layers, Mapping) and not annotations:
        for layer in layers.values():
            for name, value in (getattr(layer, "annotations", None) or {}).items():
                annotations.setdefault(name, {}).update(
                    {k: (value(k) if callable(value) else value) for k in layer})
    if not isinstance(dsk, Mapping):
        raise TypeError(f"DaskVine.get needs a dask graph (a dict, a HighLevelGraph or a dask expression), "
                        f"got {type(dsk).__name__}")
    return convert_legacy_graph(dict(dsk)), annotations


def flatten_keys(keys: Any) -> list:
    """The requested keys, out of dask's nesting of lists."""
    if isinstance(keys, list):
        out: list = []
        for k in keys:
            out.extend(flatten_keys(k))
        return out
    return [keys]


def repack(keys: Any, values: dict) -> Any:
    """Values in the nesting of ``keys``: a list of keys gives a tuple, as dask's own ``get`` does."""
    if isinstance(keys, list):
        return tuple(repack(k, values) for k in keys)
    return values[keys]


def _deps_of(obj: Any) -> frozenset:
    from dask._task_spec import GraphNode, TaskRef

    if isinstance(obj, TaskRef):
        return frozenset((obj.key,))
    if isinstance(obj, GraphNode):
        return obj.dependencies
    return frozenset()


def _describe_missing(key: Any, graph: dict, wanted_by: Any) -> str:
    import difflib

    names = [str(k) for k in list(graph)[:5000]]
    near = difflib.get_close_matches(str(key), names, n=3)
    who = f"dask key {wanted_by!r} depends on {key!r}" if wanted_by is not None else f"key {key!r} was requested"
    hint = f"; similar keys: {near}" if near else ""
    return (f"{who}, which is not in the graph ({len(graph)} keys{hint}). Compute it from the collection "
            "that defines it, or pass the graph that contains it.")


# ------------------------------------------------------------------ the plan

def build_plan(dsk: Any, keys: Any, *, fan_in: int = 8, resources: Any = None, retries: int = 0,
               rewrite: bool = True) -> GraphPlan:
    from dask._task_spec import Alias, DataNode

    from ._associative import reduction_inputs

    graph, annotations = normalize(dsk)
    default_res = resources_from(resources, "DaskVine.get(resources=...)")
    wanted = flatten_keys(keys)

    def resolve(key: Any, wanted_by: Any) -> Any:
        seen = 0
        while True:
            try:
                node = graph[key]
            except (KeyError, TypeError):
                raise KeyError(_describe_missing(key, graph, wanted_by)) from None
            if not isinstance(node, Alias) or node.target == key:
                return key
            seen += 1
            if seen > len(graph):
                raise ValueError(f"the aliases from {key!r} form a cycle")
            wanted_by, key = key, node.target

    # cull, following aliases; `visited` keeps every key met so dask.order sees a closed graph
    job_of: dict[Any, int] = {}
    keys_list: list[Any] = []
    visited: dict[Any, None] = {}
    data: dict[Any, Any] = {}
    stack = [(k, None) for k in reversed(wanted)]
    while stack:
        key, by = stack.pop()
        if key in visited:
            continue
        real = resolve(key, by)
        k = key
        while True:  # record the alias chain for dask.order
            visited[k] = None
            if k == real:
                break
            k = graph[k].target
        node = graph[real]
        if isinstance(node, DataNode):
            data[real] = node.value
            continue
        if real not in job_of:
            job_of[real] = len(keys_list)
            keys_list.append(real)
            stack.extend((d, real) for d in node.dependencies)

    n = len(keys_list)
    prio = annotations.get("priority", {})
    res_ann = annotations.get("resources", {})
    retry_ann = annotations.get("retries", {})
    assoc_ann = annotations.get("associative", {})

    inputs: list[tuple[int, ...]] = []
    consumers: list[list[int]] = [[] for _ in range(n)]
    uses = [0] * n
    orders: list[tuple] = []
    res_list: list[Resources] = []
    retry_list: list[int] = []
    reductions: dict[int, ReductionPlan] = {}
    item_users: dict[int, list[tuple[int, int]]] = {}
    worker = WorkerGraph(data=data)
    not_rewritten: dict[Any, str] = {}

    def source(dep: Any, by: Any) -> tuple[int | None, Any]:
        real = resolve(dep, by)
        if real in data:
            return None, real
        return job_of[real], None

    for j, key in enumerate(keys_list):
        node = graph[key]
        r = default_res.merged(resources_from(res_ann[key], f"dask key {key!r}")) if key in res_ann else default_res
        res_list.append(r)
        retry_list.append(int(retry_ann.get(key, retries)))
        algebra = algebra_from_annotation(assoc_ann[key], f"dask key {key!r}") if key in assoc_ann else \
            algebra_of(getattr(node, "func", None))
        if algebra is not None and rewrite:
            form = reduction_inputs(node)
            if isinstance(form, str):
                not_rewritten[key] = form
            elif len(form[0]) <= fan_in:
                not_rewritten[key] = f"it has {len(form[0])} inputs, not more than fan_in={fan_in}"
            else:
                items, container = form
                item_inputs, item_slots, all_inputs = [], [], {}
                for i, item in enumerate(items):
                    prods, slots = {}, []
                    for d in _deps_of(item):
                        pj, dk = source(d, key)
                        slots.append((d, pj, dk))
                        if pj is not None:
                            prods[pj] = None
                    for pj in prods:
                        uses[pj] += 1
                        item_users.setdefault(pj, []).append((j, i))
                        all_inputs[pj] = None
                    item_inputs.append(tuple(prods))
                    item_slots.append(tuple(slots))
                for pj in all_inputs:
                    consumers[pj].append(j)
                inputs.append(tuple(all_inputs))
                reductions[j] = ReductionPlan(tuple(item_inputs), algebra, fan_in)
                worker.reductions[j] = (node.func, container, tuple(items), dict(node.kwargs), tuple(item_slots))
                continue
        prods: dict[int, int] = {}
        slots, dslots = [], []
        for d in node.dependencies:
            pj, dk = source(d, key)
            if pj is None:
                dslots.append((d, dk))
            else:
                slots.append((d, prods.setdefault(pj, len(prods))))
        for pj in prods:
            uses[pj] += 1
            consumers[pj].append(j)
        inputs.append(tuple(prods))
        worker.nodes[j] = (node, tuple(slots), tuple(dslots))

    order = _order(graph, visited, {keys_list[j]: worker.reductions[j][2] for j in reductions}, fan_in) if n else {}
    for key in keys_list:
        p = prio.get(key, 0)
        orders.append((-p if isinstance(p, (int, float)) else 0, _order_value(order.get(key, 0))))
    targets: list[tuple[str, Any]] = []
    for k in wanted:
        real = resolve(k, None)
        targets.append(("value", data[real]) if real in data else ("job", job_of[real]))
    return GraphPlan(keys_list, inputs, [tuple(c) for c in consumers], uses, orders, res_list, retry_list,
                     reductions, item_users, targets, worker, not_rewritten)


def _order(graph: dict, visited: dict, reduced: dict[Any, tuple], fan_in: int) -> dict:
    """dask.order over the needed nodes, with each rewritten node drawn as its tree, so that
    the inputs of one call are ordered together and partial results can start early."""
    from dask._task_spec import Task, TaskRef
    from dask.order import order as dask_order

    from ._associative import static_tree

    sub = {k: graph[k] for k in visited}
    deps = {k: set(node.dependencies) for k, node in sub.items()}
    for key, items in reduced.items():
        calls = static_tree(len(items), fan_in)
        names = [f"__vinecore_tree_{id(items)}_{c}" for c in range(len(calls) - 1)] + [key]
        for name, operands in zip(names, calls):
            refs: dict[Any, None] = {}
            for kind, i in operands:
                if kind == "call":
                    refs[names[i]] = None
                else:
                    refs.update(dict.fromkeys(_deps_of(items[i])))
            sub[name] = Task(name, _tree_node, *(TaskRef(d) for d in refs))
            deps[name] = set(refs)
    return dask_order(sub, dependencies=deps)


def _tree_node(*args: Any) -> None:  # pragma: no cover - only drawn for dask.order, never run
    return None


def _order_value(o: Any) -> int:
    return o if isinstance(o, int) else getattr(o, "priority", 0)


def graph_payload(worker: WorkerGraph, keys: list[Any]) -> bytes:
    """Pickle the worker graph once; name the node that cannot be pickled."""
    from . import _serialize

    try:
        return _serialize.dumps(worker)
    except Exception as exc:  # find the culprit for the message
        for j, entry in list(worker.nodes.items()) + list(worker.reductions.items()):
            try:
                _serialize.dumps(entry)
            except Exception as inner:  # noqa: BLE001
                raise TypeError(f"dask key {keys[j]!r} cannot be sent to the workers: {type(inner).__name__}: "
                                f"{inner}. Create unpicklable objects (open files, locks, clients) inside "
                                "the task instead of capturing them.") from exc
        raise TypeError(f"the graph's data cannot be sent to the workers: {type(exc).__name__}: {exc}") from exc


# ------------------------------------------------------------ worker side

def load_graph(payload: bytes) -> WorkerGraph:
    """The library context of one get: the unpickled worker graph (built once per worker)."""
    return pickle.loads(payload)


def run_node(j: int, *values: Any) -> Any:
    """Run node ``j``; ``values`` are the outputs of its producer jobs, in plan order."""
    g: WorkerGraph = library_context()
    node, slots, dslots = g.nodes[j]
    vals = {k: values[pos] for k, pos in slots}
    for k, dk in dslots:
        vals[k] = g.data[dk]
    return node(vals)


def run_reduction(j: int, operands: tuple[int, ...], producers: tuple[int, ...], *values: Any) -> Any:
    """One call of reduction ``j``: operand ``i >= 0`` is input i, ``-1 - p`` the p-th value passed."""
    from dask._task_spec import GraphNode, TaskRef

    g: WorkerGraph = library_context()
    func, container, items, kwargs, item_slots = g.reductions[j]
    where = {p: i for i, p in enumerate(producers)}
    args = []
    for o in operands:
        if o < 0:
            args.append(values[-1 - o])
            continue
        item = items[o]
        if isinstance(item, TaskRef) or isinstance(item, GraphNode):
            vals = {k: (g.data[dk] if pj is None else values[where[pj]]) for k, pj, dk in item_slots[o]}
            args.append(vals[item.key] if isinstance(item, TaskRef) else item(vals))
        else:
            args.append(item)
    if container is None:
        return func(*args, **kwargs)
    return func(container(args), **kwargs)
