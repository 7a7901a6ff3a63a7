"""Checkpoints of a run, so that a killed ``ddr run`` can ``--resume``.

What a checkpoint holds
    For every dataset, one merged partial result and its exact
    :class:`~ddr._ledger.Coverage` (events, chunks, entry ranges per file),
    plus a fingerprint of the fileset, the analysis and the options that
    change results. It is written to ``RUN_DIR/checkpoint.pkl`` every
    ``every`` seconds by writing a new file and renaming it over the old one,
    so a crash at any moment leaves either the previous or the new checkpoint,
    never half of one.

Why nothing is lost or counted twice
    A checkpoint is taken between two steps of the driver, when every
    finished chunk's result sits in exactly one *live* partial: either in the
    pool waiting to be merged, or among the inputs of a running accumulation
    (inputs are released only after the accumulation that merged them
    succeeded). The checkpoint merges all live partials, so its coverage is
    exactly the set of finished chunks, and chunks still running are not in
    it. On ``--resume`` the sources skip the covered entry ranges, the
    checkpointed value seeds the final merge, and everything else is done
    again. Coverage merging refuses overlaps, so a mistake here would stop
    the run rather than count an event twice.

What it costs
    Live partials are fetched to the manager at each checkpoint (histograms:
    kilobytes to a few megabytes each); with the default cadence of a minute
    this is small next to the work it protects.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Any

import cloudpickle

from ._ledger import Coverage
from .exceptions import DDRError

__all__ = ["Checkpointer", "load_checkpoint", "fingerprint", "CHECKPOINT_NAME", "ResumeError"]

CHECKPOINT_NAME = "checkpoint.pkl"
_FORMAT = 1


class ResumeError(DDRError):
    """``--resume`` cannot use the run directory's checkpoint (another run's, or unreadable)."""


def fingerprint(**parts: Any) -> str:
    """A stable digest of what decides a run's result (fileset, analysis, options)."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Checkpointer:
    """Writes checkpoints of a run into ``run_dir`` every ``every`` seconds."""

    def __init__(self, run_dir: str | os.PathLike, fp: str, every: float = 60.0) -> None:
        self.path = os.path.join(os.fspath(run_dir), CHECKPOINT_NAME)
        self.fingerprint = fp
        self.every = every
        self.last = time.monotonic()
        self.written = 0
        os.makedirs(os.fspath(run_dir), exist_ok=True)

    def due(self) -> bool:
        return self.every >= 0 and time.monotonic() - self.last >= self.every

    def write(self, datasets: dict[str, tuple[Any, Coverage, bool]]) -> None:
        """Atomically replace the checkpoint with ``{dataset: (value, coverage, finished)}``."""
        doc = {"format": _FORMAT, "fingerprint": self.fingerprint, "time": time.time(),
               "datasets": {ds: {"value": value, "events": cov.events, "chunks": cov.chunks,
                                 "ranges": {p: [list(r) for r in rs] for p, rs in cov.ranges.items()},
                                 "finished": finished}
                            for ds, (value, cov, finished) in datasets.items()}}
        tmp = f"{self.path}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            cloudpickle.dump(doc, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        self.last = time.monotonic()
        self.written += 1


def load_checkpoint(run_dir: str | os.PathLike, fp: str) -> dict[str, tuple[Any, Coverage]] | None:
    """``{dataset: (value, coverage)}`` from the run directory's checkpoint; None when there is none
    (the run to resume was killed before its first checkpoint: a restart starts afresh).

    Raises :class:`DDRError` when the checkpoint cannot be read or belongs to another run.
    """
    path = os.path.join(os.fspath(run_dir), CHECKPOINT_NAME)
    if not os.path.exists(path):
        return None
    try:
        with open(path, "rb") as f:
            doc = cloudpickle.load(f)
    except Exception as exc:  # noqa: BLE001 - any unreadable checkpoint is reported the same way
        raise ResumeError(f"--resume: the checkpoint {path} cannot be read ({type(exc).__name__}: {exc}); "
                       "delete it and run again without --resume.") from exc
    if doc.get("fingerprint") != fp:
        raise ResumeError(f"--resume: the checkpoint in {run_dir} belongs to a different run (another fileset, "
                       "analysis or options that change results). Use the same command as the first run, "
                       "or another --run-dir without --resume.")
    out = {}
    for ds, d in doc["datasets"].items():
        ranges = {p: [tuple(r) for r in rs] for p, rs in d["ranges"].items()}
        out[ds] = (d["value"], Coverage(d["events"], d["chunks"], ranges))
    return out
