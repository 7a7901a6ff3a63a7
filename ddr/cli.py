"""The ``ddr`` command: ``ddr run``, ``ddr preprocess``, ``ddr merge`` and ``ddr plot``.

Exit status: 0 when every dataset is complete, 1 when the run finished with
failures or stopped on an error (the report says which), 2 for usage errors
(missing or malformed input, no processor, a flag value out of range).
``ddr merge``: 0 when the merged coverage is complete (or not checked), 1 when
a dataset misses events, 2 for usage errors and overlapping outputs.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Any, Callable, NoReturn


from .exceptions import DDRError

__all__ = ["main", "build_parser", "add_remote_arguments", "remote_options"]


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line (``ddr run: error: argument --workers: ...``), exit status 2."""

    def error(self, message: str) -> "NoReturn":  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def _number(kind: type, low: float, *, strict: bool = False, note: str = "") -> Callable[[str], Any]:
    """An argparse ``type`` accepting a finite ``kind`` (int or float) >= ``low`` (> ``low`` if ``strict``)."""
    what = "an integer" if kind is int else "a number"
    bound = f"{'>' if strict else '>='} {low:g}"

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or (value <= low if strict else value < low):
            raise argparse.ArgumentTypeError(f"invalid value {text!r}: must be {what} {bound}{note}")
        return value

    parse.__name__ = f"{what} {bound}"  # argparse's name for the type
    parse.valid_range = f"{what} {bound}"  # type: ignore[attr-defined]
    return parse


_COUNT = _number(int, 1)  # workers, cores, events
_SECONDS = _number(float, 0, strict=True)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="ddr", description="Dynamic Data Reduction of Coffea processors.")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run an analysis over a fileset",
                       description="Run the processor defined in ANALYSIS.py over the datasets of a coffea fileset.")
    r.add_argument("analysis", help="Python file defining a ProcessorABC subclass, an instance, or a function of events")
    r.add_argument("--datasets", required=True, metavar="FILE.json", help="coffea fileset JSON (raw or preprocessed)")
    r.add_argument("-o", "--output", metavar="OUT.coffea", help="write the result with coffea.util.save")
    r.add_argument("--processor", metavar="NAME", help="which processor, when the file defines several")
    r.add_argument("--workers", type=_COUNT, metavar="N", help="worker processes (default: one per core)")
    r.add_argument("--cores", type=_COUNT, default=1, metavar="N", help="cores per chunk task (worker-local dask)")
    r.add_argument("--chunk-size", type=_COUNT, metavar="N",
                   help="fixed events per chunk (default: adaptive); files with coffea steps keep their steps")
    r.add_argument("--initial-chunk-size", type=_COUNT, default=10_000, metavar="N")
    r.add_argument("--target-seconds", type=_SECONDS, default=30.0, metavar="S", help="adaptive chunk duration target")
    r.add_argument("--schema", default="NanoAOD", help="NanoAOD, PHYSLITE or Base")
    r.add_argument("--memory", type=_COUNT, metavar="MB", help="memory allocation per task; over it a chunk is split")
    r.add_argument("--time-max", type=_SECONDS, metavar="S", help="wall time limit per task; over it a chunk is split")
    r.add_argument("--accumulation-size", type=_number(int, 2), default=8, metavar="K",
                   help="partials merged per accumulation task")
    r.add_argument("--mode", default="auto", choices=["auto", "eager", "virtual", "dask"],
                   help="NanoEvents mode: dask for processors written for coffea's dask mode (dask-awkward, "
                        "hist.dask; needs ddr-hep[dask-awkward]); auto (default) detects it from the code")
    r.add_argument("--skip-bad-files", action="store_true", help="record unreadable input and go on")
    r.add_argument("--keep-going", action="store_true",
                   help="record chunks on which the processor raises (or that run out of resources even at the "
                        "smallest split) and finish everything else, instead of stopping at the first")
    r.add_argument("--report", metavar="REPORT.json", help="write the run report")
    r.add_argument("--failed-fileset", metavar="FILE.json",
                   help="where to write what could not be processed, as a fileset to redo "
                        "(default: RUN_DIR/failed.json, written only when something failed)")
    r.add_argument("--run-dir", metavar="DIR",
                   help="logs, transactions log and checkpoints (default: .ddr/runs/<digest of the command>)")
    r.add_argument("--checkpoint-every", type=_number(float, 0, note=" (0: after every step)"), default=60.0,
                   metavar="S",
                   help="seconds between checkpoints of the partial results (default 60; 0: after every step)")
    r.add_argument("--resume", action="store_true",
                   help="continue a killed run from its run directory's checkpoint; only unfinished work is redone")
    r.add_argument("--engine", default="local", choices=["local", "sync", "dask"])
    r.add_argument("--scheduler", metavar="ADDRESS", help="dask scheduler address (tcp:// or tls://); implies --engine dask")
    r.add_argument("--scheduler-file", metavar="FILE", help="dask scheduler file; implies --engine dask")
    r.add_argument("--tls-ca-file", metavar="PEM", help="CA certificate for a tls:// dask scheduler")
    r.add_argument("--tls-cert", metavar="PEM", help="client certificate for a tls:// dask scheduler")
    r.add_argument("--tls-key", metavar="PEM", help="client private key for a tls:// dask scheduler")
    r.add_argument("--quiet", action="store_true", help="no progress display")
    add_remote_arguments(r)

    pp = sub.add_parser("preprocess", help="count entries on the workers and write coffea's preprocessed fileset")
    pp.add_argument("fileset", metavar="FILE.json")
    pp.add_argument("-o", "--output", required=True, metavar="OUT.json")
    pp.add_argument("--step-size", type=_COUNT, default=100_000, metavar="N")
    pp.add_argument("--workers", type=_COUNT, metavar="N")
    pp.add_argument("--engine", default="local", choices=["local", "sync", "dask"])
    pp.add_argument("--skip-bad-files", action="store_true")
    add_remote_arguments(pp, cache=False)

    mg = sub.add_parser("merge", help="merge the outputs of several runs (a run and its redo run)",
                        description="Merge ddr run outputs with coffea's accumulate. With --reports (one per output, "
                                    "same order) refuse outputs that cover the same events and say, per dataset, "
                                    "whether every event is covered. Exit status: 0 complete (or not checked), "
                                    "1 incomplete, 2 usage errors and overlaps.")
    mg.add_argument("outputs", nargs="+", metavar="OUT.coffea", help="outputs written by ddr run -o")
    mg.add_argument("-o", "--output", required=True, metavar="ALL.coffea", help="where to write the merged output")
    mg.add_argument("--reports", nargs="+", metavar="REPORT.json",
                    help="the reports written by ddr run --report, one per output, in the same order")
    mg.add_argument("--report-out", metavar="MERGED.json",
                    help="write the merged coverage as JSON (needs --reports; it can be merged again)")

    pl = sub.add_parser("plot", help="plot a histogram of a ddr run's output (needs ddr-hep[plot])",
                        description="Draw one histogram of OUT.coffea, one line per dataset (or stacked).")
    pl.add_argument("result", metavar="OUT.coffea", help="file written by ddr run -o")
    pl.add_argument("--hist", metavar="NAME", help="which histogram (default: the first by name)")
    pl.add_argument("--dataset", metavar="NAME", action="append", help="only this dataset (repeatable)")
    pl.add_argument("--stack", action="store_true", help="stack the datasets instead of overlaying them")
    pl.add_argument("--log", action="store_true", help="logarithmic y axis")
    pl.add_argument("-o", "--output", required=True, metavar="PLOT.png")

    return p


def cmd_merge(args: argparse.Namespace) -> int:
    from ._merge import MergeError, check_writable, coverage_summary, merge, write_merged

    if args.report_out and not args.reports:
        _err("--report-out needs --reports (the coverage comes from the runs' reports)")
        return 2
    try:
        check_writable(args.output, "-o")
        if args.report_out:
            check_writable(args.report_out, "--report-out")
        merged = merge(args.outputs, args.reports)
        write_merged(merged, args.output, args.report_out)
    except MergeError as exc:
        _err(str(exc))
        return 2
    except OSError as exc:
        _err(f"cannot write the merged output: {exc}")
        return 2
    print(f"ddr merge: merged {len(args.outputs)} output(s) into {args.output}", file=sys.stderr)
    if merged.report is None:
        print("ddr merge: coverage not checked; pass --reports R1.json R2.json ... to refuse overlaps and "
              "check that every event is covered", file=sys.stderr)
        return 0
    for line in coverage_summary(merged.report):
        print(line, file=sys.stderr)
    bad = [ds for ds, d in merged.report["datasets"].items() if not d["complete"]]
    if bad:
        print(f"ddr merge: incomplete: {', '.join(bad)}", file=sys.stderr)
        return 1
    print("ddr merge: every dataset is complete", file=sys.stderr)
    return 0


def add_remote_arguments(p: argparse.ArgumentParser, *, cache: bool = True) -> None:
    """--redirector, --read-timeout and the cache flags (see ddr/_remote.py)."""
    from ._remote import CACHE_MODES, DEFAULT_CACHE_SIZE, DEFAULT_READ_TIMEOUT

    p.add_argument("--redirector", action="append", default=[], type=_redirector, metavar="URL",
                   help="XRootD redirector for CMS logical file names (/store/...); repeatable, tried in order, "
                        "the next one when a file fails through the previous")
    p.add_argument("--read-timeout", type=_SECONDS, default=DEFAULT_READ_TIMEOUT, metavar="S",
                   help=f"bound on each connection and read of remote files (default {DEFAULT_READ_TIMEOUT:g})")
    if cache:
        p.add_argument("--cache", choices=CACHE_MODES, default="auto",
                       help="node cache of remote files: auto (read in place and fill the cache in the background "
                            "for the next run; default), always (download each file before reading it), never")
        p.add_argument("--cache-dir", metavar="DIR", help="node cache folder (default ~/.cache/ddr)")
        p.add_argument("--cache-size", type=_size, default=DEFAULT_CACHE_SIZE, metavar="SIZE",
                       help=f"node cache bound, e.g. 500M, 20G (default {DEFAULT_CACHE_SIZE}); least recently used "
                            "files are evicted")


def _redirector(text: str) -> str:
    if not text.startswith(("root://", "roots://", "http://", "https://")) or len(text.split("://", 1)[1]) == 0:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: must be a root://, roots://, http:// or "
                                         "https:// url, e.g. root://cmsxrootd.fnal.gov")
    return text


def _size(text: str) -> int:
    from vinecore import parse_size

    try:
        value = parse_size(text)
    except ValueError:
        value = -1
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: must be a size in bytes or with a unit "
                                         "(e.g. 500M, 20G)")
    return value


_redirector.valid_range = "a root://, roots://, http:// or https:// url"  # type: ignore[attr-defined]
_size.valid_range = "a size in bytes or with a unit"  # type: ignore[attr-defined]


def remote_options(args: argparse.Namespace) -> Any:
    """The RemoteOptions of the parsed flags (ValueError for a bad redirector or size)."""
    from ._remote import DEFAULT_CACHE_SIZE, RemoteOptions

    return RemoteOptions(tuple(args.redirector), args.read_timeout, getattr(args, "cache", "never"),
                         getattr(args, "cache_dir", None), getattr(args, "cache_size", DEFAULT_CACHE_SIZE))


def cmd_plot(args: argparse.Namespace) -> int:
    try:
        from .plotting import main_plot

        main_plot(args.result, args.hist, args.dataset, args.stack, args.output, log=args.log)
    except (KeyError, ValueError, TypeError, ImportError) as exc:
        _err(str(exc).strip("'\""))
        return 2
    print(f"ddr: wrote {args.output}", file=sys.stderr)
    return 0


def dask_engine_options(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """The engine name and its options from --engine/--scheduler/--scheduler-file/--tls-*."""
    engine, options = args.engine, {}
    if args.scheduler or args.scheduler_file:
        engine = "dask"
        options = {"scheduler": args.scheduler, "scheduler_file": args.scheduler_file}
    tls = [args.tls_ca_file, args.tls_cert, args.tls_key]
    if any(tls):
        if engine != "dask":
            raise ValueError("--tls-ca-file/--tls-cert/--tls-key need a dask scheduler: add --scheduler tls://HOST:PORT")
        from distributed.security import Security

        options["security"] = Security(tls_ca_file=args.tls_ca_file, tls_client_cert=args.tls_cert,
                                       tls_client_key=args.tls_key, require_encryption=True)
    return engine, options


def _analysis_digest(path: str, processor: str | None) -> str:
    import hashlib

    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:16] + f":{processor or ''}"


def _err(msg: str) -> None:
    print(f"ddr: error: {msg}", file=sys.stderr)


def _check_inputs(datasets: dict, skip: bool, redirectors: tuple[str, ...] = ()) -> None:
    """Local files must exist; urls, and /store/... names read through redirectors, are checked on the workers."""
    missing = []
    for name, ds in datasets.items():
        for f in ds.files:
            if "://" in f.path or (redirectors and f.path.startswith("/store/")):
                continue
            if not os.path.exists(f.path):
                missing.append((name, f.path))
    if missing and not skip:
        lines = "\n".join(f"  dataset {n!r}: {p}" for n, p in missing[:20])
        more = f"\n  ... and {len(missing) - 20} more" if len(missing) > 20 else ""
        lfn = ("\n  paths starting with /store/ are CMS logical file names: read them through a redirector with "
               "--redirector root://cmsxrootd.fnal.gov (or your regional one)"
               if any(p.startswith("/store/") for _, p in missing) else "")
        raise DDRError(f"input file(s) not found:\n{lines}{more}\n"
                       "  fix the paths in the fileset (relative paths resolve against the JSON's folder), "
                       f"or pass --skip-bad-files to run without them{lfn}")


def cmd_run(args: argparse.Namespace, argv: list[str]) -> int:
    from ._run_command import run_command

    return run_command(args, argv)


def cmd_preprocess(args: argparse.Namespace) -> int:
    from ._preprocess import preprocess_fileset

    try:
        out = preprocess_fileset(args.fileset, args.output, step_size=args.step_size, engine=args.engine,
                                 workers=args.workers, skip_bad_files=args.skip_bad_files,
                                 remote=remote_options(args))
    except (DDRError, ValueError, OSError) as exc:
        _err(str(exc))
        return 2
    print(f"ddr: wrote {args.output} ({out['files']} files, {out['events']:,} events, {out['bad']} bad)",
          file=sys.stderr)
    return 1 if out["bad"] else 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.command == "run":
        return cmd_run(args, argv)
    return {"preprocess": cmd_preprocess, "merge": cmd_merge, "plot": cmd_plot}[args.command](args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
