"""Plots of ddr results, with hist + mplhep conventions.

``ddr.plot(result, hist="mass")`` draws one histogram of a result, one line
(or stacked fill) per dataset, axis labels taken from the histogram. It takes
whatever ddr gives you: ``compute()`` output (``{dataset: {name: hist}}`` or
``{processor: {dataset: ...}}``), ``handle.partial()`` mid-run
(``{dataset: (value, fraction)}``), or the path of a file written by
``ddr run -o``. The command line is ``ddr plot OUT.coffea -o plot.png``.

matplotlib and mplhep are optional: ``pip install 'ddr-hep[plot]'``.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["plot", "histograms"]


def _pyplot():
    try:
        import matplotlib

        if os.environ.get("MPLBACKEND") is None and not os.environ.get("DISPLAY"):
            matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError("plotting needs matplotlib and mplhep: pip install 'ddr-hep[plot]'") from exc
    try:
        import mplhep
    except ImportError:
        mplhep = None
    return plt, mplhep


def _is_hist(x: Any) -> bool:
    import hist

    return isinstance(x, hist.Hist)


def histograms(result: Any) -> dict[str, dict[str, Any]]:
    """``{hist name: {dataset: Hist}}`` from any shape of ddr result (see the module doc)."""
    if isinstance(result, (str, os.PathLike)):
        from coffea.util import load

        result = load(os.fspath(result))
    out: dict[str, dict[str, Any]] = {}

    def visit(ds: str, value: Any) -> None:
        if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], float):
            value = value[0]  # (partial value, fraction covered)
        if not isinstance(value, dict):
            return
        for name, v in value.items():
            if _is_hist(v):
                out.setdefault(name, {})[ds] = v
            elif isinstance(v, dict) and any(_is_hist(x) for x in v.values()):
                visit(ds, {f"{name}/{k}": x for k, x in v.items()})

    if not isinstance(result, dict):
        raise TypeError(f"cannot find histograms in a {type(result).__name__}; pass compute() output, "
                        "handle.partial() or a .coffea file")
    for key, value in result.items():
        inner = value[0] if isinstance(value, tuple) else value
        if isinstance(inner, dict) and inner and all(isinstance(v, dict) and not _is_hist(v) for v in inner.values()) \
                and not any(_is_hist(v) for v in inner.values()):
            # {processor: {dataset: {...}}}: keep the processor in the histogram name
            for ds, v in inner.items():
                visit(ds, {f"{key}:{n}": h for n, h in (v.items() if isinstance(v, dict) else [])})
        else:
            visit(key, value)
    return out


def _one_dimensional(h: Any, dataset: str) -> Any:
    """Project away a ``dataset`` category axis (ddr's analyses carry one) and keep the first other axis."""
    names = [ax.name for ax in h.axes]
    if "dataset" in names and len(names) > 1:
        cats = list(h.axes["dataset"])
        if dataset in cats:
            h = h[{"dataset": dataset}]
        else:
            h = h[{"dataset": sum}]
    if len(h.axes) > 1:
        h = h.project(h.axes[0].name)
    return h


def plot(result: Any, hist: str | None = None, dataset: str | list[str] | None = None, *, stack: bool = False,
         ax: Any = None, density: bool = False):
    """Draw histogram ``hist`` of ``result`` for each dataset (or those named); returns the axes."""
    found = histograms(result)
    if not found:
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
    plt, mplhep = _pyplot()
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 5))
    hs = [_one_dimensional(per_ds[d], d) for d in wanted]
    if mplhep is not None:
        mplhep.histplot(hs, ax=ax, label=wanted, stack=stack, histtype="fill" if stack else "step",
                        density=density, yerr=False)
    else:  # plain matplotlib
        for h, label in zip(hs, wanted):
            ax.stairs(h.values(), h.axes[0].edges, label=label, fill=stack)
    axis = hs[0].axes[0]
    if "log" in repr(getattr(axis, "transform", None)).lower():
        ax.set_xscale("log")
    ax.set_xlabel(axis.label or axis.name)
    ax.set_ylabel("Density" if density else "Entries")
    ax.set_title(hist)
    ax.legend(title="dataset")
    return ax


def main_plot(path: str, hist: str | None, dataset: list[str] | None, stack: bool, output: str,
              log: bool = False) -> None:
    """``ddr plot``: write one PNG (or any format matplotlib knows from the suffix)."""
    ax = plot(path, hist, dataset, stack=stack)
    if log:
        ax.set_yscale("log")
    fig = ax.figure
    fig.tight_layout()
    fig.savefig(output, dpi=120)
