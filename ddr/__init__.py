"""ddr: Dynamic Data Reduction of Coffea processors over NanoAOD.

Layers (datasets -> plan -> tasks -> engine -> reduce)::

    _datasets   coffea fileset dialects -> Dataset, FileSpec
    _planning   lazy chunk planning: files -> Chunk (file, tree, start, stop)
    _chunking   adaptive chunk sizing policy
    _sources    per-dataset lazy work supply (counting on workers, requeues)
    _worker     the "ddr" vinecore library: process / accumulate / count on workers
    _remote     urls, /store/ names through redirectors, read timeouts, the node cache of remote files
    _coffea     worker side: NanoEvents with cached open files, processors, errors
    _reducers   default reducer: coffea's accumulate semantics
    _ledger     exactly-once accounting of what each partial covers
    _driver     Reduction: submits tasks, reduces on workers, splits and retries
    _journal    checkpoints of merged partials for --resume
    _api        DynamicDataReduction, CoffeaDynamicDataReduction, build_report
    _handle     RunHandle: a run in the background (progress, partial(), cancel, await)
    progress    rich / plain / Jupyter progress views
    plotting    ddr.plot and `ddr plot` (hist + mplhep conventions)
    _analysis   loading ANALYSIS.py for `ddr run` (which processors it defines)
    _preprocess `ddr preprocess`: counting on the workers, coffea's preprocessed dialect
    _extras     optional dependencies, imported lazily with install hints
    cli         the `ddr` command

ddr uses only vinecore's public API (plus ``vinecore._serialize`` to ship the job).
"""

from ._api import CoffeaDynamicDataReduction, DynamicDataReduction
from ._handle import RunHandle
from ._datasets import Dataset, FileSpec, load_fileset, write_fileset
from ._driver import DatasetProgress
from ._planning import Chunk
from ._reducers import accumulate_pair
from ._remote import RemoteOptions
from .exceptions import (BadInputError, DatasetNotFound, DDRError, FilesetError, InputErrorKind, ProcessorError,
                         TreeNotFound, classify_input)

__all__ = [
    "BadInputError",
    "Chunk",
    "CoffeaDynamicDataReduction",
    "DDRError",
    "Dataset",
    "DatasetNotFound",
    "DatasetProgress",
    "DynamicDataReduction",
    "FileSpec",
    "FilesetError",
    "InputErrorKind",
    "ProcessorError",
    "RemoteOptions",
    "RunHandle",
    "TreeNotFound",
    "accumulate_pair",
    "classify_input",
    "load_fileset",
    "plot",
    "write_fileset",
]


def __getattr__(name: str):
    if name == "plot":  # matplotlib is optional and slow to import: load it on first use
        from .plotting import plot

        return plot
    raise AttributeError(f"module 'ddr' has no attribute {name!r}")

__version__ = "0.1.0"
