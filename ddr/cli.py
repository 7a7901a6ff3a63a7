"""The ``ddr`` command: ``ddr run`` and ``ddr preprocess``.

Exit status: 0 when every dataset is complete, 1 when the run finished with
failures or stopped on an error (the report says which), 2 for usage errors
(missing or malformed input, no processor).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from vinecore.exceptions import EngineError

from .exceptions import DDRError

__all__ = ["main", "build_parser", "add_remote_arguments", "remote_options"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ddr", description="Dynamic Data Reduction of Coffea processors.")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run an analysis over a fileset",
                       description="Run the processor defined in ANALYSIS.py over the datasets of a coffea fileset.")
    r.add_argument("analysis", help="Python file defining a ProcessorABC subclass, an instance, or a function of events")
    r.add_argument("--datasets", required=True, metavar="FILE.json", help="coffea fileset JSON (raw or preprocessed)")
    r.add_argument("-o", "--output", metavar="OUT.coffea", help="write the result with coffea.util.save")
    r.add_argument("--processor", metavar="NAME", help="which processor, when the file defines several")
    r.add_argument("--workers", type=int, metavar="N", help="worker processes (default: one per core)")
    r.add_argument("--cores", type=int, default=1, metavar="N", help="cores per chunk task (worker-local dask)")
    r.add_argument("--chunk-size", type=int, metavar="N", help="fixed events per chunk (default: adaptive)")
    r.add_argument("--initial-chunk-size", type=int, default=10_000, metavar="N")
    r.add_argument("--target-seconds", type=float, default=30.0, metavar="S", help="adaptive chunk duration target")
    r.add_argument("--schema", default="NanoAOD", help="NanoAOD, PHYSLITE or Base")
    r.add_argument("--memory", type=int, metavar="MB", help="memory allocation per task; over it a chunk is split")
    r.add_argument("--time-max", type=float, metavar="S", help="wall time limit per task; over it a chunk is split")
    r.add_argument("--accumulation-size", type=int, default=8, metavar="K", help="partials merged per accumulation task")
    r.add_argument("--skip-bad-files", action="store_true", help="record unreadable input and go on")
    r.add_argument("--report", metavar="REPORT.json", help="write the run report")
    r.add_argument("--failed-fileset", metavar="FILE.json",
                   help="where to write what could not be processed, as a fileset to redo "
                        "(default: RUN_DIR/failed.json, written only when something failed)")
    r.add_argument("--run-dir", metavar="DIR",
                   help="logs, transactions log and checkpoints (default: .ddr/runs/<digest of the command>)")
    r.add_argument("--checkpoint-every", type=float, default=60.0, metavar="S",
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
    pp.add_argument("--step-size", type=int, default=100_000, metavar="N")
    pp.add_argument("--workers", type=int, metavar="N")
    pp.add_argument("--engine", default="local", choices=["local", "sync", "dask"])
    pp.add_argument("--skip-bad-files", action="store_true")
    add_remote_arguments(pp, cache=False)

    pl = sub.add_parser("plot", help="plot a histogram of a ddr run's output (needs ddr-hep[plot])",
                        description="Draw one histogram of OUT.coffea, one line per dataset (or stacked).")
    pl.add_argument("result", metavar="OUT.coffea", help="file written by ddr run -o")
    pl.add_argument("--hist", metavar="NAME", help="which histogram (default: the first by name)")
    pl.add_argument("--dataset", metavar="NAME", action="append", help="only this dataset (repeatable)")
    pl.add_argument("--stack", action="store_true", help="stack the datasets instead of overlaying them")
    pl.add_argument("--log", action="store_true", help="logarithmic y axis")
    pl.add_argument("-o", "--output", required=True, metavar="PLOT.png")

    return p


def add_remote_arguments(p: argparse.ArgumentParser, *, cache: bool = True) -> None:
    """--redirector, --read-timeout and the cache flags (see ddr/_remote.py)."""
    from ._remote import CACHE_MODES, DEFAULT_CACHE_SIZE, DEFAULT_READ_TIMEOUT

    p.add_argument("--redirector", action="append", default=[], metavar="URL",
                   help="XRootD redirector for CMS logical file names (/store/...); repeatable, tried in order, "
                        "the next one when a file fails through the previous")
    p.add_argument("--read-timeout", type=float, default=DEFAULT_READ_TIMEOUT, metavar="S",
                   help=f"bound on each connection and read of remote files (default {DEFAULT_READ_TIMEOUT:g})")
    if cache:
        p.add_argument("--cache", choices=CACHE_MODES, default="auto",
                       help="node cache of remote files: auto (read in place and fill the cache in the background "
                            "for the next run; default), always (download each file before reading it), never")
        p.add_argument("--cache-dir", metavar="DIR", help="node cache folder (default ~/.cache/ddr)")
        p.add_argument("--cache-size", default=DEFAULT_CACHE_SIZE, metavar="SIZE",
                       help=f"node cache bound, e.g. 500M, 20G (default {DEFAULT_CACHE_SIZE}); least recently used "
                            "files are evicted")


def remote_options(args: argparse.Namespace) -> Any:
    """The RemoteOptions of the parsed flags (ValueError for a bad redirector or size)."""
    from ._remote import RemoteOptions

    return RemoteOptions(tuple(args.redirector), args.read_timeout, getattr(args, "cache", "never"),
                         getattr(args, "cache_dir", None), getattr(args, "cache_size", "1G"))


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


def cmd_run(args: argparse.Namespace) -> int:
    from ._analysis import load_analysis
    from ._api import CoffeaDynamicDataReduction
    from ._datasets import load_fileset
    from .progress import make_progress

    t_start = time.monotonic()
    try:
        datasets = load_fileset(args.datasets)
        remote = remote_options(args)
        _check_inputs(datasets, args.skip_bad_files, remote.redirectors)
        procs = load_analysis(args.analysis, args.processor)
        from ._coffea import resolve_schema

        resolve_schema(args.schema)
        engine, engine_options = dask_engine_options(args)
    except (DDRError, ValueError, OSError) as exc:
        _err(str(exc))
        return 2
    proc = next(iter(procs.values()))
    ddr = CoffeaDynamicDataReduction(
        datasets, proc, schema=args.schema, chunk_size=args.chunk_size, initial_chunk_size=args.initial_chunk_size,
        target_seconds=args.target_seconds, engine=engine, workers=args.workers, run_dir=args.run_dir,
        cores=args.cores, memory=args.memory, time_max=args.time_max, accumulation_size=args.accumulation_size,
        skip_bad_files=args.skip_bad_files, engine_options=engine_options,
        checkpoint_every=args.checkpoint_every, resume=args.resume, remote=remote,
        fingerprint_extra=_analysis_digest(args.analysis, args.processor))
    if ddr.run_dir is None:
        ddr.run_dir = os.path.join(".ddr", "runs", ddr.fingerprint())
    progress = make_progress(args.quiet)
    status = 0
    result: Any = None
    error: BaseException | None = None
    try:
        if progress is not None:
            with progress:
                result = ddr.compute(progress=progress)
        else:
            result = ddr.compute()
    except KeyboardInterrupt:
        _err("interrupted")
        return 130
    except EngineError as exc:  # no workers: the cluster could not be reached or started
        _err(str(exc))
        return 2
    except DDRError as exc:
        error = exc
    report = ddr.report
    if report is None and ddr.last_run is not None:
        from ._api import build_report

        report = build_report(ddr.last_run)
    if report is not None:
        report["command_seconds"] = round(time.monotonic() - t_start, 3)
        report["first_result_from_start_seconds"] = (
            None if ddr.last_run is None or ddr.last_run.first_result_at is None
            else round(ddr.last_run.first_result_at - t_start, 3))
        report["analysis"] = os.path.abspath(args.analysis)
        report["fileset"] = os.path.abspath(args.datasets)
    failed_path = None
    if report is not None and error is None:
        from ._ledger import failed_fileset

        failed = failed_fileset(report["datasets"], {n: dict(d.metadata) for n, d in ddr.datasets.items()})
        if failed:
            failed_path = os.path.abspath(args.failed_fileset or os.path.join(ddr.run_dir, "failed.json"))
            os.makedirs(os.path.dirname(failed_path), exist_ok=True)
            with open(failed_path, "w") as f:
                json.dump(failed, f, indent=2)
            report["failed_fileset"] = failed_path
    if args.report and report is not None:
        with open(args.report, "w") as f:
            json.dump(report, f, indent=2, default=str)
    if error is not None:
        _err(str(error))
        return 1
    if args.output:
        from coffea.util import save

        save(result, args.output)
    if report is not None and not report["complete"]:
        bad = [ds for ds, d in report["datasets"].items() if not d["complete"]]
        _err(f"incomplete datasets: {', '.join(bad)} (see the report for failed chunks)")
        if failed_path:
            _err(f"what failed is in {failed_path}; once the input is fixed, redo just that with: "
                 f"ddr run {args.analysis} --datasets {failed_path}")
        status = 1
    if not args.quiet:
        _summary(report)
    return status


def _summary(report: dict | None) -> None:
    if not report:
        return
    from .progress import format_rate

    print(f"ddr: {report['events_processed']:,} events in {report['wall_time']:.2f} s "
          f"({format_rate(report['events_per_second'] or 0)})", file=sys.stderr)


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
    args = build_parser().parse_args(argv)
    return {"run": cmd_run, "preprocess": cmd_preprocess, "plot": cmd_plot}[args.command](args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
