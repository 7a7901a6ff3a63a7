"""Plots of ddr results, with hist + mplhep conventions.

``ddr.plot(result, hist="mass")`` draws one histogram of a result, one line
(or stacked fill) per dataset, axis labels taken from the histogram, legend by
dataset. It takes whatever ddr gives you:

* ``compute()`` / ``handle.result()`` output: ``{dataset: {name: Hist, ...}}``,
  or ``{processor: {dataset: {...}}}`` with several processors (the histograms
  are then named ``"processor:name"``);
* ``handle.partial()`` mid-run: ``{dataset: (value, fraction)}``; the legend
  says which fraction of each dataset's events the partial covers;
* the path of a file written by ``ddr run -o`` (read with ``coffea.util.load``).

A ``dataset`` category axis in a histogram (ddr's analyses carry one) is
reduced to the dataset being drawn; other axes beyond the first are summed
over. The command line is ``ddr plot OUT.coffea -o plot.png``.

matplotlib and mplhep are imported at the first plot, with an install hint if
missing (``pip install 'ddr-hep[plot]'``; coffea normally brings both).
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["plot", "histograms", "main_plot"]


def _mplhep():
    """mplhep (matplotlib comes with it), with an install hint when either is missing."""
    from ._extras import require

    require("matplotlib", extra="plot", purpose="plot results")
    return require("mplhep", extra="plot", purpose="plot results")


def _is_hist(x: Any) -> bool:
    import hist

    return isinstance(x, hist.Hist)


def _load(path: str | os.PathLike) -> Any:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ValueError(f"{path} does not exist; write it with: ddr run ANALYSIS.py --datasets FILE.json -o {path}")
    from coffea.util import load

    try:
        return load(path)
    except Exception as exc:  # noqa: BLE001 - lz4, pickle and import errors alike
        raise ValueError(f"cannot read {path} ({type(exc).__name__}: {exc}); pass a file written by "
                         "ddr run -o (coffea.util.save)") from exc


def _collect(result: Any) -> tuple[dict[str, dict[str, Any]], dict[str, float]]:
    """``{hist name: {dataset: Hist}}`` and ``{dataset: fraction}`` for partial results."""
    if isinstance(result, (str, os.PathLike)):
        result = _load(result)
    if not isinstance(result, dict):
        raise TypeError(f"cannot find histograms in a {type(result).__name__}; pass compute() output, "
                        "handle.partial() or the path of a .coffea file")
    found: dict[str, dict[str, Any]] = {}
    fractions: dict[str, float] = {}

    def unwrap(ds: str, value: Any) -> Any:
        if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], (int, float)):
            fractions[ds] = float(value[1])  # (partial value, fraction covered)
            return value[0]
        return value

    def visit(ds: str, value: Any, prefix: str) -> None:
        if not isinstance(value, dict):
            return
        for name, v in value.items():
            if _is_hist(v):
                found.setdefault(f"{prefix}{name}", {})[ds] = v
            elif isinstance(v, dict) and any(_is_hist(x) for x in v.values()):
                visit(ds, v, f"{prefix}{name}/")

    def per_processor(value: Any) -> bool:
        # {processor: {dataset: {...}}}: every value is a dict holding no histogram at its own level
        return (isinstance(value, dict) and bool(value)
                and all(isinstance(v, (dict, tuple)) for v in value.values())
                and not any(_is_hist(v) for v in value.values())
                and any(isinstance(x, dict) and any(_is_hist(h) for h in x.values())
                        for v in value.values() for x in [v[0] if isinstance(v, tuple) else v]))

    for key, value in result.items():
        if isinstance(value, tuple):
            value = unwrap(key, value)
            if per_processor(value):  # a partial with several processors: {dataset: ({processor: ...}, f)}
                for proc, v in value.items():
                    visit(key, v, f"{proc}:")
                continue
        if per_processor(value):
            for ds, v in value.items():
                visit(ds, unwrap(ds, v), f"{key}:")
        else:
            visit(key, value, "")
    return found, fractions


def histograms(result: Any) -> dict[str, dict[str, Any]]:
    """``{hist name: {dataset: Hist}}`` from any shape of ddr result (see the module doc)."""
    return _collect(result)[0]


def _one_dimensional(h: Any, dataset: str) -> Any:
    """Reduce a ``dataset`` category axis to ``dataset`` (or sum it), then keep the first remaining axis.

    Integer storages are copied to double storage: stacking adds variances, which mplhep cannot do in
    place on integer arrays."""
    import hist as hist_

    names = [ax.name for ax in h.axes]
    if "dataset" in names and len(names) > 1:
        h = h[{"dataset": dataset}] if dataset in list(h.axes["dataset"]) else h[{"dataset": sum}]
    if len(h.axes) > 1:
        h = h.project(h.axes[0].name)
    if h.storage_type in (hist_.storage.Int64, hist_.storage.AtomicInt64):
        double = hist_.Hist(*h.axes, storage=hist_.storage.Double(), label=h.label, name=h.name)
        double.view(flow=True)[...] = h.view(flow=True)
        h = double
    return h


def plot(result: Any, hist: str | None = None, dataset: str | list[str] | None = None, stack: bool = False,
         ax: Any = None, *, density: bool = False):
    """Draw histogram ``hist`` of ``result`` for each dataset (or those named); returns the matplotlib axes.

    ``result``: compute() output, ``handle.partial()``, or a .coffea path. ``hist``: the histogram's name
    (default: the first by name); with several processors ``"processor:name"``. ``dataset``: one name
    or a list (default: all that have the histogram). ``stack``: stacked fills instead of overlaid lines.
    ``ax``: draw into these axes (default: a new figure).
    """
    found, fractions = _collect(result)
    if not found:
        if fractions and all(f == 0 for f in fractions.values()):
            raise ValueError("no histograms yet: the partial result covers no events so far; try again in a moment")
        raise ValueError("the result holds no histograms to plot")
    if hist is None:
        hist = sorted(found)[0]
    if hist not in found:
        raise KeyError(f"no histogram named {hist!r}; the result has: {', '.join(sorted(found))}")
    per_ds = found[hist]
    wanted = [dataset] if isinstance(dataset, str) else (list(dataset) if dataset else sorted(per_ds))
    missing = [d for d in wanted if d not in per_ds]
    if missing:
        raise KeyError(f"no dataset {', '.join(map(repr, missing))} in histogram {hist!r}; "
                       f"it has: {', '.join(sorted(per_ds))}")
    mplhep = _mplhep()
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=(7, 5))
    hs = [_one_dimensional(per_ds[d], d) for d in wanted]
    labels = [d if fractions.get(d, 1.0) >= 1.0 else f"{d} ({fractions[d]:.0%} of events)" for d in wanted]
    mplhep.histplot(hs, ax=ax, label=labels, stack=stack, histtype="fill" if stack else "step", density=density,
                    yerr=False)
    axis = hs[0].axes[0]
    if "log" in repr(getattr(axis, "transform", None)).lower():
        ax.set_xscale("log")
    ax.set_xlabel(axis.label or axis.name)
    ax.set_ylabel("Density" if density else "Entries")
    partial = any(f < 1.0 for f in fractions.values())  # some dataset is not fully covered yet
    ax.set_title(f"{hist} (partial result)" if partial else hist)
    ax.legend(title="dataset")
    return ax


def main_plot(path: str, hist: str | None, dataset: list[str] | None, stack: bool, output: str,
              log: bool = False) -> None:
    """``ddr plot``: write one PNG (or any format matplotlib knows from the suffix), without pyplot."""
    result = _load(path)
    if not histograms(result):  # errors about the input come before matplotlib is even imported
        raise ValueError(f"{path} holds no histograms to plot")
    _mplhep()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 5))
    FigureCanvasAgg(fig)
    ax = plot(result, hist, dataset, stack, fig.add_subplot())
    if log:
        ax.set_yscale("log")
    fig.tight_layout()
    try:
        fig.savefig(output, dpi=120)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot write {output}: {exc}") from exc
