"""Functions and graphs shared by the DaskVine tests (shipped to workers by value)."""

import os
import sys
import time

import cloudpickle
import numpy as np
from dask import delayed

import vinecore

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def event(i):
    return {"n": 1, "sum": i, "ids": [i]}


@vinecore.associative
def merge(*parts):
    """Order-keeping: ids are concatenated in argument order."""
    out = {"n": 0, "sum": 0, "ids": []}
    for p in parts:
        out["n"] += p["n"]
        out["sum"] += p["sum"]
        out["ids"] = out["ids"] + p["ids"]
    return out


@vinecore.associative(commutative=True)
def add_all(*xs):
    return sum(xs)


def write(result):
    ids = result["ids"]
    return result["n"], result["sum"], ids[:3], ids[-3:], ids == sorted(ids)


def load(n):
    return np.arange(n, dtype="i8")


def scale(x, f):
    return x * f


def combine(a, b, c):
    return float(a.sum() + b.sum() - c.sum())


def blob(i):
    return bytes([i % 256]) * 100_000


def grow(b):
    return b + b[:10]


def hog(x):
    block = bytearray(1500 * 1024 * 1024)
    return len(block) + x


def boom(x):
    raise ValueError(f"bad value {x}")


def slow(marker):
    """Runs for two minutes unless stopped; writes ``marker`` when it starts, ``marker.done`` at the end."""
    with open(marker, "w"):
        pass
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        time.sleep(0.01)
    with open(marker + ".done", "w"):
        pass
    return 0


def merge_graph(n):
    """The seed example: events -> merge(*events) -> write."""
    return delayed(write)(delayed(merge)(*[delayed(event)(i) for i in range(n)]))


def sum_graph(n):
    return delayed(add_all)(*[delayed(scale)(i, 2) for i in range(n)])


def chains(n_chains=4, length=4):
    out = []
    for c in range(n_chains):
        x = delayed(blob)(c)
        for _ in range(length):
            x = delayed(grow)(x)
        out.append(x)
    return out


def shared_intermediates():
    base = delayed(load)(1000)
    doubled = delayed(scale)(base, 2)
    tripled = delayed(scale)(base, 3)
    return delayed(combine)(doubled, tripled, base), doubled, base


def assert_clean(m):
    """Nothing in flight, no graph library left, no temp left in the worker store."""
    assert m.empty()
    assert not [name for name in m._libraries if name.startswith("daskvine-")]
    store = getattr(m.engine, "store", None)
    if store is not None:
        assert [f for f in os.listdir(store.root) if not f.startswith(".")] == []


class Logged:
    """A callable that notes every time it is unpickled (how often the graph is shipped)."""

    def __init__(self, log):
        self.log = log

    def __call__(self, x):
        return x + 1

    def __reduce__(self):
        return rebuild_logged, (self.log,)


def rebuild_logged(log):
    with open(log, "a") as f:
        f.write(f"{os.getpid()}\n")
    return Logged(log)
