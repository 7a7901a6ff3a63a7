"""Merging the outputs of several runs: ``ddr merge`` and :func:`ddr.merge`.

The typical use: a run left failed chunks, the input was fixed, the printed
redo command processed just those (``--datasets RUN_DIR/failed.json``), and
the two outputs now make one result.

Policy
------
* Values merge with coffea's ``accumulate`` semantics, exactly as chunks do
  within a run: histograms and numbers add, sets unite, mappings merge key by
  key. A dataset whose result is ``None`` (nothing processed) is left out.
  Outputs are ``{dataset: result}`` or ``{processor: {dataset: result}}`` as
  ``ddr run -o`` writes them; ``postprocess`` was already applied to each, so
  it must be additive (a normalisation to a total is not).
* With reports (``ddr run --report``, one per output, same order) the merge
  is checked. Each report lists, per dataset and file, the entry ranges the
  run was asked to cover (``expected``) and those its result holds
  (``covered``)::

      report["datasets"][ds]["files"][path] = {"tree": "Events",
                                               "expected": [[0, 4000]] or None,
                                               "covered": [[0, 2000]]}

  Two outputs covering the same entries of a file would count those events
  twice: the merge is refused (:class:`OverlapError`) naming the dataset, the
  file, the entry range and both reports. A file's expected ranges are the
  union over the reports (a redo run is asked only for what failed; a file
  no run could count is unknown); a dataset is complete when, for every file,
  the union of the covered ranges equals that. A report whose dataset covers
  events must come with an output holding a result for that dataset.
* The merged coverage has the run report's form (``datasets[ds]["files"]``),
  so a merged result can be merged again with its merged report.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ._planning import coverage_gaps, merge_ranges
from .exceptions import DDRError

__all__ = ["MergeError", "OverlapError", "MergeResult", "merge", "merge_coverage", "coverage_summary",
           "check_writable", "write_merged"]

Ranges = list[tuple[int, int]]


class MergeError(DDRError):
    """The outputs or reports cannot be merged as given (unreadable, mismatched, incompatible)."""


class OverlapError(MergeError):
    """Two outputs cover the same entries of a file: merging them would count those events twice."""


@dataclass
class MergeResult:
    """The merged output and, when reports were given, the merged coverage (a report)."""

    output: Any
    report: dict[str, Any] | None = None

    @property
    def complete(self) -> bool | None:
        """Whether the merged output covers every expected event; None without reports."""
        return None if self.report is None else self.report["complete"]


def merge(outputs: Sequence[Any], reports: Sequence[Any] | None = None) -> MergeResult:
    """Merge ``ddr run`` outputs (paths of ``.coffea`` files or loaded values) with coffea's accumulate.

    ``reports`` (paths of report JSON files or loaded dicts), one per output in
    the same order, make the merge refuse overlapping coverage
    (:class:`OverlapError`) and report whether every event is covered.
    """
    if not outputs:
        raise MergeError("nothing to merge: give at least one output")
    names = _labels(outputs, "output")
    loaded = [(name, _load_output(o)) for name, o in zip(names, outputs)]
    report = None
    if reports is not None:
        if len(reports) != len(outputs):
            raise MergeError(f"{len(reports)} report(s) for {len(outputs)} output(s): give one report per output, "
                             "in the same order as the outputs")
        reps = [(name, _load_report(r, name)) for name, r in zip(_labels(reports, "report"), reports)]
        for (oname, out), (rname, rep) in zip(loaded, reps):
            _check_pairing(oname, out, rname, rep)
        report = merge_coverage(reps)
        report["merged_from"] = [{"output": o, "report": r} for (o, _), (r, _) in zip(loaded, reps)]
    return MergeResult(_accumulate(loaded), report)


# ------------------------------------------------------------------ values
def _labels(objs: Sequence[Any], kind: str) -> list[str]:
    """Paths for messages; ``kind #i`` for loaded values; ``path (#i)`` for a path given twice."""
    names = [os.fspath(o) if isinstance(o, (str, os.PathLike)) else f"{kind} #{i + 1}" for i, o in enumerate(objs)]
    return [f"{n} (#{i + 1})" if names.count(n) > 1 else n for i, n in enumerate(names)]


def _load_output(obj: Any) -> Any:
    if not isinstance(obj, (str, os.PathLike)):
        return obj
    path = os.fspath(obj)
    if not os.path.isfile(path):
        raise MergeError(f"output {path!r} does not exist{' (it is a directory)' if os.path.isdir(path) else ''}; "
                         "give the files written by ddr run -o")
    from coffea.util import load

    try:
        return load(path)
    except Exception as exc:  # noqa: BLE001 - lz4, pickle and import errors alike
        raise MergeError(f"cannot read {path!r} as a ddr/coffea output (coffea.util.save): "
                         f"{type(exc).__name__}: {exc}") from exc


def _prune(value: Any, depth: int = 2) -> Any:
    """Drop ``None`` results at the dataset levels (a dataset with nothing processed)."""
    if depth == 0 or not isinstance(value, Mapping):
        return value
    return {k: _prune(v, depth - 1) for k, v in value.items() if v is not None}


def _accumulate(loaded: list[tuple[str, Any]]) -> Any:
    from coffea.processor import accumulate

    values = [(name, _prune(v)) for name, v in loaded]
    if not all(isinstance(v, Mapping) for _, v in values):
        bad = next(name for name, v in values if not isinstance(v, Mapping))
        raise MergeError(f"{bad} is not a ddr output: expected {{dataset: result}} or "
                         "{processor: {dataset: result}} as written by ddr run -o")
    out: dict[Any, Any] = {}
    for key in dict.fromkeys(k for _, v in values for k in v):
        parts = [(name, v[key]) for name, v in values if key in v]
        try:
            out[key] = accumulate(p for _, p in parts)
        except (ValueError, TypeError) as exc:
            raise MergeError(f"cannot merge {key!r} of {', '.join(n for n, _ in parts)}: {exc}\n"
                             "  the outputs must come from the same analysis and processor") from exc
    return out


# ----------------------------------------------------------------- reports
def _load_report(obj: Any, name: str) -> dict[str, Any]:
    if isinstance(obj, (str, os.PathLike)):
        import json

        try:
            with open(obj) as f:
                obj = json.load(f)
        except FileNotFoundError:
            raise MergeError(f"report {name!r} does not exist; give the files written by ddr run --report") from None
        except (OSError, ValueError) as exc:
            raise MergeError(f"cannot read report {name!r}: {exc}") from exc
    datasets = obj.get("datasets") if isinstance(obj, Mapping) else None
    if not isinstance(datasets, Mapping):
        raise MergeError(f"{name} is not a ddr run report (no \"datasets\")")
    for ds, d in datasets.items():
        if not isinstance(d, Mapping) or not isinstance(d.get("files"), Mapping):
            raise MergeError(f"{name}: dataset {ds!r} has no per-file coverage (datasets.{ds}.files); the report "
                             "comes from an older ddr or from a run that was not over a coffea fileset. Rerun with "
                             "this ddr, or merge without --reports (coverage then goes unchecked)")
    return dict(obj)


def _covered_events(d: Mapping[str, Any]) -> int:
    return sum(b - a for f in d["files"].values() for a, b in f.get("covered") or [])


def _form(out: Mapping[str, Any], datasets: set[str]) -> tuple[str, list[Mapping[str, Any]]]:
    """``("datasets", [out])`` or ``("processors", [per-processor dicts])``."""
    if set(out) <= datasets:
        return "datasets", [out]
    if all(isinstance(v, Mapping) for v in out.values()) and all(set(v) <= datasets for v in out.values()):
        return "processors", list(out.values())
    return "", []


def _check_pairing(oname: str, out: Any, rname: str, rep: Mapping[str, Any]) -> None:
    """The output holds exactly what its report says it covers."""
    datasets = rep["datasets"]
    if not isinstance(out, Mapping):
        return  # _accumulate names it
    form, per_proc = _form(out, set(datasets))
    if not form:
        unknown = sorted(set(out) - set(datasets))
        raise MergeError(f"{oname} holds {', '.join(map(repr, unknown))}, which its report {rname} does not list "
                         f"(it lists datasets {', '.join(map(repr, datasets)) or 'none'}): pass each output's own "
                         "report, in the same order as the outputs")
    for ds, d in datasets.items():
        n = _covered_events(d)
        if n and any(p.get(ds) is None for p in per_proc):
            raise MergeError(f"{rname} says dataset {ds!r} covers {n:,} events, but {oname} has no result for it: "
                             "pass each output's own report, in the same order as the outputs")


def _range_list(value: Any, where: str) -> Ranges | None:
    if value is None:
        return None
    try:
        ranges = [(int(a), int(b)) for a, b in value]
    except (TypeError, ValueError):
        raise MergeError(f"{where}: expected a list of [start, stop] entry ranges, got {value!r}") from None
    return ranges


def _overlap(a: Ranges, b: Ranges) -> Ranges:
    out = []
    for s, e in a:
        for s2, e2 in b:
            lo, hi = max(s, s2), min(e, e2)
            if lo < hi:
                out.append((lo, hi))
    return merge_ranges(out)


def _fmt(ranges: Ranges) -> str:
    return ", ".join(f"[{a}, {b})" for a, b in ranges)


def merge_coverage(reports: Sequence[tuple[str, Mapping[str, Any]]]) -> dict[str, Any]:
    """The merged coverage of ``(name, report)`` pairs, as a report; :class:`OverlapError` on overlap."""
    # dataset -> path -> list of (report name, tree, expected, covered)
    seen: dict[str, dict[str, list[tuple[str, str, Ranges | None, Ranges]]]] = {}
    for name, rep in reports:
        for ds, d in rep["datasets"].items():
            for path, f in d["files"].items():
                where = f"{name}: dataset {ds!r}, file {path}"
                covered = merge_ranges(_range_list(f.get("covered") or [], where) or [])
                seen.setdefault(ds, {}).setdefault(path, []).append(
                    (name, f.get("tree"), _range_list(f.get("expected"), where), covered))
    overlaps = []
    datasets: dict[str, Any] = {}
    for ds, files in seen.items():
        out_files: dict[str, Any] = {}
        by_report: dict[str, int] = {}
        for path, entries in files.items():
            trees = {t for _, t, _, _ in entries if t}
            if len(trees) > 1:
                raise MergeError(f"dataset {ds!r}, file {path}: the reports name different trees "
                                 f"({', '.join(sorted(trees))}); they are not runs over the same input")
            for i, (n1, _, _, c1) in enumerate(entries):
                for n2, _, _, c2 in entries[i + 1:]:
                    both = _overlap(c1, c2)
                    if both:
                        overlaps.append(f"  dataset {ds!r}, file {path} (tree {next(iter(trees), '?')}): "
                                        f"entries {_fmt(both)} are covered by both {n1} and {n2}")
            for n, _, _, c in entries:
                by_report[n] = by_report.get(n, 0) + sum(b - a for a, b in c)
            known = [e for _, _, e, _ in entries if e is not None]
            expected = merge_ranges(r for e in known for r in e) if known else None
            covered = merge_ranges(r for _, _, _, c in entries for r in c)
            entry: dict[str, Any] = {"tree": next(iter(trees), None),
                                     "expected": None if expected is None else [list(r) for r in expected],
                                     "covered": [list(r) for r in covered]}
            if expected is not None:
                entry["missing"] = [list(r) for r in _minus(expected, covered)]
                entry["unexpected"] = [list(r) for r in _minus(covered, expected)]
            out_files[path] = entry
        complete = all(f["expected"] is not None and not f["missing"] and not f["unexpected"]
                       for f in out_files.values())
        expected_events = (None if any(f["expected"] is None for f in out_files.values())
                           else sum(b - a for f in out_files.values() for a, b in f["expected"]))
        datasets[ds] = {"complete": complete, "events_expected": expected_events,
                        "events_processed": sum(b - a for f in out_files.values() for a, b in f["covered"]),
                        "events_by_report": by_report, "files": out_files}
    if overlaps:
        more = f"\n  ... and {len(overlaps) - 20} more" if len(overlaps) > 20 else ""
        raise OverlapError("the outputs overlap; merging them would count these events twice:\n"
                           + "\n".join(overlaps[:20]) + more
                           + "\n  merge each run's output once: a redo run covers only what its failed.json lists, "
                             "so merge the first run with its redo, not two full runs")
    return {"complete": all(d["complete"] for d in datasets.values()),
            "events_processed": sum(d["events_processed"] for d in datasets.values()),
            "datasets": datasets}


def _minus(a: Ranges, b: Ranges) -> Ranges:
    """Entries of ``a`` not in ``b``."""
    out: Ranges = []
    for s, e in merge_ranges(a):
        inside = [(max(x, s) - s, min(y, e) - s) for x, y in b if x < e and y > s]
        out.extend((g0 + s, g1 + s) for g0, g1 in coverage_gaps(e - s, inside))
    return out


def coverage_summary(report: Mapping[str, Any]) -> list[str]:
    """Human lines, one per dataset, saying whether the merged coverage is complete and what is missing."""
    lines = []
    width = max((len(ds) for ds in report["datasets"]), default=0)
    for ds, d in report["datasets"].items():
        total = d["events_expected"]
        counts = f"{d['events_processed']:,} of {'?' if total is None else f'{total:,}'} events"
        if d["complete"]:
            lines.append(f"  {ds:<{width}}  complete    {counts}")
            continue
        why = []
        for path, f in d["files"].items():
            base = os.path.basename(path)
            if f["expected"] is None:
                why.append(f"{base}: entries never counted (no run could open it)")
            elif f["missing"]:
                why.append(f"{base}: missing entries {_fmt([tuple(r) for r in f['missing']])}")
            elif f["unexpected"]:
                why.append(f"{base}: entries {_fmt([tuple(r) for r in f['unexpected']])} covered but not expected")
        shown = "; ".join(why[:3]) + (f"; ... {len(why) - 3} more files" if len(why) > 3 else "")
        lines.append(f"  {ds:<{width}}  incomplete  {counts}; {shown}")
    return lines


# ------------------------------------------------------------------ writing
def check_writable(path: str, what: str) -> None:
    """Raise :class:`MergeError` if ``path`` cannot be written (checked before any loading)."""
    if os.path.isdir(path):
        raise MergeError(f"{what} {path!r} is a directory; give a file name, e.g. {os.path.join(path, 'all.coffea')}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise MergeError(f"{what} {path!r}: the folder {folder} does not exist; create it or choose another path")
    if not os.access(folder, os.W_OK):
        raise MergeError(f"{what} {path!r}: the folder {folder} is not writable; choose another path")


def write_merged(result: MergeResult, output: str, report_out: str | None = None) -> None:
    """Save the merged output (coffea.util.save, replaced atomically) and the merged coverage as JSON."""
    import json
    import tempfile

    from coffea.util import save

    def atomically(path: str, write: Any) -> None:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=os.path.dirname(os.path.abspath(path)))
        os.close(fd)
        try:
            write(tmp)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    atomically(output, lambda tmp: save(result.output, tmp))
    if report_out is not None and result.report is not None:
        doc = dict(result.report, output=os.path.abspath(output))

        def dump(tmp: str) -> None:
            with open(tmp, "w") as f:
                json.dump(doc, f, indent=2)

        atomically(report_out, dump)
