"""Optional dependencies, imported lazily with install hints.

``require("matplotlib", extra="plot")`` returns the module, or raises an
``ImportError`` that says what needs it and how to install it::

    ddr needs 'matplotlib' to plot results, but it cannot be imported
    (No module named 'matplotlib').
    Install it with:
        pip install 'ddr-hep[plot]'
    or:
        pip install matplotlib

Heavy packages (coffea, dask, rich) are imported only when a feature needs
them, so ``import ddr`` stays fast and the generic (non-coffea) path works
without them.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["require", "DIST_NAME", "PIP_NAMES"]

DIST_NAME = "ddr-hep"

# import name -> distribution name on PyPI, where they differ
PIP_NAMES = {
    "yaml": "pyyaml",
    "dask_awkward": "dask-awkward",
    "dask_histogram": "dask-histogram",
    "mplhep": "mplhep",
    "distributed": "distributed",
    "ndcctools": None,  # conda-forge only
}


def require(module: str, *, extra: str | None = None, purpose: str | None = None) -> ModuleType:
    """Import ``module`` or raise an ImportError with the command that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        pip_name = PIP_NAMES.get(top, top)
        lines = [f"ddr needs {top!r}{' to ' + purpose if purpose else ''}, but it cannot be imported ({exc})."]
        if pip_name is None:
            lines += ["Install it with:", f"    conda install -c conda-forge {top}"]
        else:
            lines.append("Install it with:")
            if extra:
                lines += [f"    pip install '{DIST_NAME}[{extra}]'", "or:"]
            lines.append(f"    pip install {pip_name}")
        raise ImportError("\n".join(lines), name=top) from exc
