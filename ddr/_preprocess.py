"""``ddr preprocess``: count entries on the workers, write coffea's preprocessed dialect."""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Any

import vinecore

from ._coffea import count_entries
from ._datasets import Dataset, load_fileset, write_fileset
from .exceptions import BadInputError

__all__ = ["preprocess_fileset"]


def preprocess_fileset(source: Any, output: str | os.PathLike, *, step_size: int = 100_000, engine: Any = "local",
                       workers: int | None = None, skip_bad_files: bool = False, remote: Any = None) -> dict[str, int]:
    """Count every file lacking ``num_entries``/``uuid`` on the workers; ``remote``: redirectors and timeouts
    (a :class:`~ddr._remote.RemoteOptions`; counting reads metadata only, so nothing is cached)."""
    datasets = load_fileset(source)
    files = [(name, i, f) for name, ds in datasets.items() for i, f in enumerate(ds.files)]
    counted: dict[tuple[str, int], Any] = {}
    bad: list[BadInputError | BaseException] = []
    with vinecore.Manager(engine=engine, workers=workers) as m:
        ids = {}
        for name, i, f in files:
            if f.num_entries is not None and f.uuid:
                counted[(name, i)] = f
                continue
            t = vinecore.PythonTask(count_entries, f.path, f.tree, None, remote)
            t.set_retries(2)
            ids[m.submit(t)] = (name, i, f)
        while not m.empty():
            t = m.wait(5)
            if t is None:
                continue
            name, i, f = ids[t.id]
            if t.successful:
                n, uuid = t.output
                steps = tuple((a, min(a + step_size, n)) for a in range(0, n, step_size)) if n else ((0, 0),)
                counted[(name, i)] = replace(f, num_entries=n, uuid=uuid, steps=steps)
            elif skip_bad_files:
                bad.append(t.output)
            else:
                raise t.output if isinstance(t.output, BadInputError) else RuntimeError(
                    f"counting {f.path} failed: {t.result}: {t.output}")
    out = {}
    for name, ds in datasets.items():
        kept = tuple(counted[(name, i)] for i in range(len(ds.files)) if (name, i) in counted)
        if kept:
            out[name] = Dataset(name, kept, ds.metadata)
    write_fileset(out, output)
    return {"files": sum(len(d.files) for d in out.values()), "bad": len(bad),
            "events": sum(f.num_entries or 0 for d in out.values() for f in d.files)}
