"""ddr: Dynamic Data Reduction of Coffea processors over NanoAOD.

Layers (datasets -> plan -> tasks -> engine -> reduce)::

    _datasets   coffea fileset dialects -> Dataset, FileSpec
    _planning   chunks and entry-range arithmetic: files -> Chunk (file, tree, start, stop)
    _chunking   adaptive chunk sizing policy
    _planner    per-dataset planners: lazy work, counting, sizing, resume gaps, splits, retries
    _reduction  the reduction core: a pure state machine (events in, actions out)
    _worker     the run's vinecore library: process / accumulate / count on workers
    _remote     urls, /store/ names through redirectors, read timeouts, the node cache of remote files
    _coffea     worker side for coffea: NanoEvents with cached open files, processors, errors
    _reducers   default reducer: coffea's accumulate semantics
    _ledger     exactly-once accounting of what each partial covers; what is missing
    _driver     the one loop: carries out the state machine's actions on a vinecore manager
    _journal    checkpoints of merged partials for --resume
    _report     the run report
    _api        DynamicDataReduction, CoffeaDynamicDataReduction
    _handle     RunHandle: a run in the background (progress, partial(), cancel, await)
    progress    rich / plain / Jupyter progress views
    plotting    ddr.plot and `ddr plot` (hist + mplhep conventions)
    _analysis   loading ANALYSIS.py for `ddr run` (which processors it defines)
    _preprocess `ddr preprocess`: counting on the workers, coffea's preprocessed dialect
    _merge      `ddr merge` and merge(): outputs of several runs, coverage checked by their reports
    _extras     optional dependencies, imported lazily with install hints
    cli         the `ddr` command

ddr uses only vinecore's public API (plus ``vinecore._serialize`` to ship the job).
"""

from ._api import CoffeaDynamicDataReduction, DynamicDataReduction
from ._handle import RunHandle
from ._merge import MergeError, MergeResult, OverlapError, merge
from ._datasets import Dataset, FileSpec, load_fileset, write_fileset
from ._driver import DatasetProgress
from ._planning import Chunk
from ._reducers import accumulate_pair
from ._remote import RemoteOptions
from .exceptions import (
    BadInputError,
    ChunkResourceError,
    DatasetNotFound,
    DDRError,
    FilesetError,
    InputErrorKind,
    ProcessorError,
    ReducerError,
    StepsKeptWarning,
    TreeNotFound,
    classify_input,
)

__all__ = [
    "BadInputError",
    "Chunk",
    "ChunkResourceError",
    "CoffeaDynamicDataReduction",
    "DDRError",
    "Dataset",
    "DatasetNotFound",
    "DatasetProgress",
    "DynamicDataReduction",
    "FileSpec",
    "FilesetError",
    "InputErrorKind",
    "MergeError",
    "MergeResult",
    "OverlapError",
    "ProcessorError",
    "ReducerError",
    "RemoteOptions",
    "RunHandle",
    "StepsKeptWarning",
    "TreeNotFound",
    "accumulate_pair",
    "classify_input",
    "load_fileset",
    "merge",
    "plot",
    "write_fileset",
]


def __getattr__(name: str):
    if name == "plot":  # matplotlib is optional and slow to import: load it on first use
        from .plotting import plot

        return plot
    raise AttributeError(f"module 'ddr' has no attribute {name!r}")

__version__ = "0.1.0"
