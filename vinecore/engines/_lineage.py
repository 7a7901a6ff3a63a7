"""Where each temp is held, and how to make a lost one again: pure state shared by cluster engines.

Engines whose workers keep temps in their own memory (the dask engine's agents,
the simulated cluster) lose those temps with the worker. This module decides
what to do about it; the engine carries out the actions. No clocks, threads or
I/O: feed it facts, get actions back (``tests/vinecore/test_lineage.py``).

Policy
------
Wanted
    A temp is wanted from the success that produced it until the manager
    releases it. Its data is kept on its holders while it is wanted or a
    consumer (a running attempt, a recomputation) needs it; then ``Drop``.
Recipes
    Each success leaves a recipe: what the engine needs to run that attempt
    again (opaque here) and the temps it read. A temp produced without temp
    inputs keeps its recipe while it lives. A temp produced *from* temps is
    copied to ``replicas - 1`` more workers (``Copy``); once the copies are
    confirmed its recipe is dropped, and with it the recipes of its inputs that
    nothing else needs. When a holder of such a temp goes, the survivors copy it
    again, so it keeps ``replicas`` copies while it is wanted. So lineage is bounded by the temps alive now, not by
    the length of the run. With ``replicas=1`` nothing is copied and every
    recipe is kept while something above it lives (dask's own behaviour).
Loss
    When a worker goes, a temp it held that has no holder left and is needed
    is made again: its recipe's missing inputs first (recursively), then the
    recipe (``Recompute``). A recomputation that loses its worker is retried;
    one that fails otherwise, or a needed temp with neither holder nor recipe,
    is lost for good and its consumers fail.
Consumers
    ``consume(key, names)`` asks for a consumer's input temps: ``Start`` with
    their holders as soon as each has one, ``Fail`` if one is unknown or lost
    for good. The inputs stay pinned until ``consumed(key)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Hashable

__all__ = ["Lineage", "Recompute", "Copy", "Drop", "Start", "Fail", "temp_inputs", "temp_outputs"]

_RECOMPUTE_TRIES = 5


@dataclass(frozen=True, slots=True)
class Recompute:
    """Run recipe ``rid`` again on any worker; its inputs are held as given."""

    rid: int
    recipe: Any
    inputs: dict[str, tuple[str, ...]]


@dataclass(frozen=True, slots=True)
class Copy:
    """Make one more copy of ``name`` on a worker that is not among ``holders``."""

    name: str
    holders: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Drop:
    """Delete ``name``'s data from these workers."""

    name: str
    holders: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Start:
    """Consumer ``key`` can run: each input and the workers holding it."""

    key: Hashable
    inputs: dict[str, tuple[str, ...]]


@dataclass(frozen=True, slots=True)
class Fail:
    """Consumer ``key`` cannot get its inputs."""

    key: Hashable
    why: str


class _Recipe:
    __slots__ = ("rid", "payload", "inputs", "outputs", "live", "running", "tries")

    def __init__(self, rid: int, payload: Any, inputs: tuple[str, ...], outputs: tuple[str, ...]) -> None:
        self.rid = rid
        self.payload = payload
        self.inputs = inputs
        self.outputs = outputs
        self.live = 0  # outputs whose recipe this still is
        self.running = False
        self.tries = 0


class _Temp:
    __slots__ = ("name", "holders", "recipe", "wanted", "pins", "refs", "lost")

    def __init__(self, name: str) -> None:
        self.name = name
        self.holders: list[str] = []
        self.recipe: _Recipe | None = None
        self.wanted = False
        self.pins = 0  # consumers that need its data
        self.refs = 0  # live recipes that read it
        self.lost: str | None = None  # why it can never be had again


def temp_inputs(spec: Any) -> tuple[str, ...]:
    """The temps a :class:`~vinecore._runtime.TaskSpec` reads (as arguments or sandbox files)."""
    return tuple(dict.fromkeys((*spec.arg_temps, *(c for kind, c, _, _ in spec.inputs if kind == "temp"))))


def temp_outputs(spec: Any) -> tuple[str, ...]:
    """The temps it writes (its return value kept on the worker, and sandbox files)."""
    names = [spec.output_temp] if spec.output_temp else []
    return tuple(names + [c for kind, c, _, _ in spec.outputs if kind == "temp"])


def _rkey(rid: int) -> tuple[str, int]:
    return ("recompute", rid)


class Lineage:
    """Holders and recipes of the temps of one engine. Every method returns a list of actions."""

    def __init__(self, replicas: int = 2) -> None:
        if replicas < 1:
            raise ValueError(f"replicas must be at least 1, got {replicas}")
        self.replicas = replicas
        self.temps: dict[str, _Temp] = {}
        self.recipes: dict[int, _Recipe] = {}
        self._held: dict[str, set[str]] = {}  # worker -> names it holds
        self._next_rid = 1
        self._inputs: dict[Hashable, tuple[str, ...]] = {}  # consumer -> its input temps (pinned)
        self._missing: dict[Hashable, set[str]] = {}  # consumer -> inputs without a holder yet
        self._waiters: dict[str, set[Hashable]] = {}  # temp -> consumers waiting for a holder
        self._uncopied: set[str] = set()  # copies that found no other worker

    # ------------------------------------------------------------ queries
    def holders(self, name: str) -> tuple[str, ...]:
        t = self.temps.get(name)
        return tuple(t.holders) if t is not None else ()

    def held_on(self, worker: str) -> frozenset[str]:
        return frozenset(self._held.get(worker, ()))

    def sizes(self) -> dict[str, int]:
        """How much is tracked (for diagnostics and memory benchmarks)."""
        return {"temps": len(self.temps), "recipes": len(self.recipes), "consumers": len(self._inputs)}

    # -------------------------------------------------------------- facts
    def produced(self, outputs: tuple[str, ...], where: str, recipe: Any, inputs: tuple[str, ...] = ()) -> list:
        """An attempt of the manager's succeeded on ``where`` and left ``outputs`` there."""
        out: list = []
        if not outputs:
            return out
        inputs = tuple(n for n in dict.fromkeys(inputs) if n in self.temps)
        r = _Recipe(self._next_rid, recipe, inputs, tuple(outputs))
        self._next_rid += 1
        self.recipes[r.rid] = r
        for name in inputs:
            self.temps[name].refs += 1
        for name in outputs:
            t = self.temps.get(name)
            if t is None:
                t = self.temps[name] = _Temp(name)
            else:
                self._detach(t, out)
            t.wanted = True
            t.lost = None
            self._add_holder(t, where)
            t.recipe = r
            r.live += 1
            if inputs and self.replicas > 1:
                out.append(Copy(name, tuple(t.holders)))
            self._wake(t, out)
        self._free_recipe_if_dead(r, out)
        return out

    def release(self, name: str) -> list:
        """The manager no longer wants ``name``."""
        out: list = []
        t = self.temps.get(name)
        if t is not None:
            t.wanted = False
            self._collect(t, out)
        return out

    def worker_lost(self, worker: str) -> list:
        out: list = []
        for name in sorted(self._held.pop(worker, ())):
            t = self.temps.get(name)
            if t is None:
                continue
            t.holders.remove(worker)
            if not (t.wanted or t.pins):
                continue
            if not t.holders:
                self._demand(t, out)
            elif t.recipe is None and len(t.holders) < self.replicas:
                out.append(Copy(name, tuple(t.holders)))  # its copies are all it has: keep their number
        return out

    def joined(self, worker: str) -> list:
        """A worker joined: copies that found no room before are asked again."""
        out: list = []
        for name in sorted(self._uncopied):
            t = self.temps.get(name)
            if t is not None and t.holders and len(t.holders) < self.replicas and (t.wanted or t.pins):
                out.append(Copy(name, tuple(t.holders)))
        self._uncopied.clear()
        return out

    def copied(self, name: str, where: str) -> list:
        """A copy of ``name`` now exists on ``where``."""
        out: list = []
        t = self.temps.get(name)
        if t is None or not (t.wanted or t.pins):
            out.append(Drop(name, (where,)))
            return out
        self._add_holder(t, where)
        if len(t.holders) >= self.replicas:
            self._detach(t, out)
        return out

    def copy_failed(self, name: str) -> list:
        """No copy was made (no other worker, or the transfer failed): ask again when a worker joins."""
        t = self.temps.get(name)
        if t is not None and t.holders and len(t.holders) < self.replicas:
            self._uncopied.add(name)
        return []

    def recomputed(self, rid: int, where: str) -> list:
        """A recomputation succeeded on ``where``."""
        out: list = []
        r = self.recipes.get(rid)
        if r is None:
            return out
        r.running = False
        for name in r.outputs:
            t = self.temps.get(name)
            if t is None or not (t.wanted or t.pins):
                out.append(Drop(name, (where,)))
                continue
            t.lost = None
            self._add_holder(t, where)
            if t.recipe is r and r.inputs and len(t.holders) < self.replicas:
                out.append(Copy(name, tuple(t.holders)))
            self._wake(t, out)
        self._release_consumer(_rkey(rid), out)
        self._free_recipe_if_dead(r, out)
        return out

    def recompute_failed(self, rid: int, why: str, *, worker_lost: bool) -> list:
        """A recomputation did not succeed; ``worker_lost``: it may be tried again elsewhere."""
        out: list = []
        r = self.recipes.get(rid)
        if r is None:
            return out
        r.running = False
        self._release_consumer(_rkey(rid), out)
        if r.live == 0:
            self._free_recipe_if_dead(r, out)
            return out
        if worker_lost and r.tries < _RECOMPUTE_TRIES:
            for name in r.outputs:
                t = self.temps.get(name)
                if t is not None and not t.holders and (t.wanted or t.pins):
                    self._demand(t, out)
            return out
        for name in r.outputs:
            t = self.temps.get(name)
            if t is not None and not t.holders:
                self._lose(t, f"its recomputation failed: {why}", out)
        return out

    # ---------------------------------------------------------- consumers
    def consume(self, key: Hashable, names: tuple[str, ...]) -> list:
        """Consumer ``key`` needs these temps: ``Start`` now or later, or ``Fail``."""
        out: list = []
        names = tuple(dict.fromkeys(names))
        if key in self._inputs:
            self._release_consumer(key, out)
        for name in names:
            t = self.temps.get(name)
            if t is None:
                out.append(Fail(key, f"temp {name} is not held on any worker: it was released (undeclared) "
                                     "or its producer never succeeded"))
                return out
            if t.lost is not None:
                out.append(Fail(key, f"temp {name} was lost with its workers and cannot be made again: {t.lost}"))
                return out
        self._register(key, names, out)
        return out

    def consumed(self, key: Hashable) -> list:
        """Consumer ``key`` finished (or was given up): its inputs are no longer pinned for it."""
        out: list = []
        self._release_consumer(key, out)
        return out

    # ------------------------------------------------------------ helpers
    def _register(self, key: Hashable, names: tuple[str, ...], out: list) -> None:
        self._inputs[key] = names
        missing = set()
        for name in names:
            t = self.temps[name]
            t.pins += 1
            if not t.holders:
                missing.add(name)
                self._waiters.setdefault(name, set()).add(key)
        if not missing:
            self._start(key, out)
            return
        self._missing[key] = missing
        for name in sorted(missing):
            t = self.temps.get(name)
            if t is not None and key in self._missing and not t.holders:
                self._demand(t, out)

    def _start(self, key: Hashable, out: list) -> None:
        inputs = {n: tuple(self.temps[n].holders) for n in self._inputs[key]}
        if isinstance(key, tuple) and len(key) == 2 and key[0] == "recompute":
            r = self.recipes[key[1]]
            r.running = True
            out.append(Recompute(r.rid, r.payload, inputs))
        else:
            out.append(Start(key, inputs))

    def _wake(self, t: _Temp, out: list) -> None:
        for key in sorted(self._waiters.pop(t.name, ()), key=repr):
            missing = self._missing.get(key)
            if missing is None:
                continue
            missing.discard(t.name)
            if not missing:
                del self._missing[key]
                self._start(key, out)

    def _demand(self, t: _Temp, out: list) -> None:
        """``t`` is needed and has no holder: make it again, or declare it lost."""
        r = t.recipe
        if r is None:
            self._lose(t, "no worker holds it and it has no recipe left (all its copies were lost)", out)
            return
        if _rkey(r.rid) in self._inputs:
            return  # already being made, or waiting for its own inputs
        r.tries += 1
        self._register(_rkey(r.rid), r.inputs, out)

    def _lose(self, t: _Temp, why: str, out: list) -> None:
        t.lost = why
        for key in sorted(self._waiters.pop(t.name, ()), key=repr):
            if key not in self._inputs:
                continue
            self._release_consumer(key, out)
            if isinstance(key, tuple) and len(key) == 2 and key[0] == "recompute":
                r = self.recipes.get(key[1])
                if r is None:
                    continue
                r.running = False
                for name in r.outputs:
                    o = self.temps.get(name)
                    if o is not None and not o.holders and o.lost is None:
                        self._lose(o, f"its input {t.name} was lost: {why}", out)
                self._free_recipe_if_dead(r, out)
            else:
                out.append(Fail(key, f"temp {t.name} was lost with its workers and cannot be made again: {why}"))

    def _release_consumer(self, key: Hashable, out: list) -> None:
        names = self._inputs.pop(key, None)
        if names is None:
            return
        for name in self._missing.pop(key, ()):
            w = self._waiters.get(name)
            if w is not None:
                w.discard(key)
                if not w:
                    del self._waiters[name]
        for name in names:
            t = self.temps.get(name)
            if t is not None:
                t.pins -= 1
                self._collect(t, out)

    def _add_holder(self, t: _Temp, where: str) -> None:
        if where not in t.holders:
            t.holders.append(where)
            self._held.setdefault(where, set()).add(t.name)

    def _collect(self, t: _Temp, out: list) -> None:
        """Drop ``t``'s data when nothing needs it, and its record when nothing refers to it."""
        if t.wanted or t.pins:
            return
        if t.holders:
            out.append(Drop(t.name, tuple(t.holders)))
            for w in t.holders:
                held = self._held.get(w)
                if held is not None:
                    held.discard(t.name)
            t.holders = []
        if t.refs == 0:
            del self.temps[t.name]
            self._uncopied.discard(t.name)
            self._detach(t, out)

    def _detach(self, t: _Temp, out: list) -> None:
        r, t.recipe = t.recipe, None
        if r is not None:
            r.live -= 1
            self._free_recipe_if_dead(r, out)

    def _free_recipe_if_dead(self, r: _Recipe, out: list) -> None:
        if r.live > 0 or r.running or r.rid not in self.recipes:
            return  # still needed, or running: freed when its report comes
        del self.recipes[r.rid]
        self._release_consumer(_rkey(r.rid), out)
        for name in r.inputs:
            t = self.temps.get(name)
            if t is not None:
                t.refs -= 1
                self._collect(t, out)
