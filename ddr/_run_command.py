"""``ddr run``: from the command line to a finished (or stopped) run, and nothing thrown away.

Order of business
    1. Check everything that can be checked before any chunk runs: the fileset, the input files
       (local ones; urls and ``/store/...`` names read through ``--redirector`` are checked on the
       workers), the remote options, the analysis, the schema, and that every output (``-o``,
       ``--report``, ``--failed-fileset``, the run directory) can be written. A problem here is a usage error (exit 2).
    2. Run in the background (:class:`~ddr.RunHandle`) while the main thread waits and watches for
       SIGINT and SIGTERM: the first one stops the run cleanly (status ``interrupted``), a second
       one gives up waiting.
    3. Whatever the way out (finished, failed, interrupted), write what there is: the output of
       every dataset (the report says which are complete), the report, the fileset of what the
       result lacks (``failed.json``) and, if it keeps one, a final checkpoint of the run
       directory. A write that fails keeps the result in the run directory and prints the command
       that recovers it; a full disk is named as such.
    4. Say what to do next: the exact redo command for what is missing (runnable as printed), and
       how to merge its output with this one.

Exit status: 0 every dataset complete; 1 something failed or is missing; 2 usage error
(including a ``--resume`` refused for another run's directory); 130 / 143 interrupted by
SIGINT / SIGTERM.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import re
import shlex
import signal
import sys
import time
import warnings
from typing import Any

from .exceptions import DDRError, StepsKeptWarning

__all__ = ["run_command"]


def _err(msg: str) -> None:
    msg = msg[len("error:"):].lstrip() if msg.startswith("error:") else msg
    print(f"ddr: error: {msg}", file=sys.stderr)


def _say(msg: str) -> None:
    print(f"ddr: {msg}", file=sys.stderr)


def _writable(path: str, what: str) -> str:
    """``path`` made absolute, after checking it can be written (its folder is created)."""
    path = os.path.abspath(path)
    if os.path.isdir(path):
        raise DDRError(f"{what} {path} is a directory; give a file name, e.g. {os.path.join(path, 'out')}")
    folder = os.path.dirname(path)
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        raise DDRError(f"cannot create the folder of {what} {path}: {exc.strerror}") from None
    if os.path.exists(path) and not os.access(path, os.W_OK) or not os.access(folder, os.W_OK | os.X_OK):
        raise DDRError(f"{what} {path} cannot be written (permission denied); choose another path")
    return path


def _writable_dir(path: str, what: str) -> str:
    path = os.path.abspath(path)
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise DDRError(f"cannot create {what} {path}: {exc.strerror}; choose another with --run-dir") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise DDRError(f"{what} {path} cannot be written (permission denied); choose another with --run-dir")
    return path


def _describe_os_error(exc: OSError, path: str) -> str:
    if exc.errno == errno.ENOSPC:
        return f"the disk is full (no space left on device) writing {path}"
    if exc.errno == errno.EDQUOT:
        return f"the disk quota is exceeded writing {path}"
    return f"cannot write {path}: {exc.strerror or exc}"


def _write_json(path: str, doc: Any) -> str | None:
    """Write ``doc`` as JSON atomically; the error message, or None on success."""
    if os.path.exists(path) and not os.path.isfile(path):  # a device or a pipe: write to it as it is
        tmp = path
    else:
        tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w") as f:
            json.dump(doc, f, indent=2, default=str)
        if tmp != path:
            os.replace(tmp, path)
        return None
    except OSError as exc:
        if tmp != path:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        return _describe_os_error(exc, path)


def _save(result: Any, path: str) -> str | None:
    from coffea.util import save

    if os.path.exists(path) and not os.path.isfile(path):  # a device or a pipe: write to it as it is
        try:
            save(result, path)
            return None
        except OSError as exc:
            return _describe_os_error(exc, path)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        save(result, tmp)
        os.replace(tmp, path)
        return None
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        return _describe_os_error(exc, path)


_SKIP_HINT = re.compile(r",? or (use|pass) --skip-bad-files to (continue|run) without (it|the file|them)")


def _message(exc: BaseException, args: argparse.Namespace) -> str:
    text = str(exc) if isinstance(exc, DDRError) else f"{type(exc).__name__}: {exc}"
    if args.skip_bad_files:  # the flag was given: don't suggest it
        text = _SKIP_HINT.sub("", text)
    return text


# flags whose value must not be carried into the redo command (the redo has its own)
_DROP_VALUE = {"--datasets", "-o", "--output", "--report", "--run-dir", "--failed-fileset", "--checkpoint-every"}
_DROP_FLAG = {"--resume"}


def redo_command(argv: list[str], failed: str, output: str | None, report: str | None) -> list[str]:
    """``ddr run`` with the same analysis, processor, schema and options, on ``failed`` only."""
    out: list[str] = []
    skip = False
    for tok in argv:
        if skip:
            skip = False
            continue
        name = tok.split("=", 1)[0]
        if name in _DROP_VALUE:
            skip = "=" not in tok
            continue
        if name in _DROP_FLAG:
            continue
        out.append(tok)
    out += ["--datasets", failed]
    if output:
        out += ["-o", output]
    if report:
        out += ["--report", report]
    return ["ddr", *out]


def _suffixed(path: str, suffix: str) -> str:
    stem, ext = os.path.splitext(path)
    return f"{stem}{suffix}{ext}"


def run_command(args: argparse.Namespace, argv: list[str]) -> int:
    from ._analysis import load_analysis
    from ._api import CoffeaDynamicDataReduction
    from ._coffea import resolve_schema
    from ._daskmode import resolve_mode
    from ._datasets import load_fileset
    from ._journal import ResumeError
    from .cli import _analysis_digest, _check_inputs, dask_engine_options, remote_options
    from .progress import make_progress
    from vinecore import EngineError

    t_start = time.monotonic()
    # 1. everything that can be checked before a chunk runs
    try:
        datasets = load_fileset(args.datasets)
        remote = remote_options(args)  # redirectors, timeouts, node cache (ddr._remote)
        _check_inputs(datasets, args.skip_bad_files, remote.redirectors)
        procs = load_analysis(args.analysis, args.processor)
        resolve_schema(args.schema)
        mode = resolve_mode(args.mode, procs)
        engine, engine_options = dask_engine_options(args)
        output = _writable(args.output, "the output (-o)") if args.output else None
        report_path = _writable(args.report, "the report (--report)") if args.report else None
        failed_arg = _writable(args.failed_fileset, "--failed-fileset") if args.failed_fileset else None
    except (DDRError, ValueError, OSError) as exc:
        _err(str(exc))
        return 2
    proc = next(iter(procs.values()))
    with warnings.catch_warnings(record=True) as caught:  # said once, plainly, before the run starts
        warnings.simplefilter("always", StepsKeptWarning)
        job = CoffeaDynamicDataReduction(
            datasets, proc, schema=args.schema, mode=mode, chunk_size=args.chunk_size,
            initial_chunk_size=args.initial_chunk_size,
            target_seconds=args.target_seconds, engine=engine, workers=args.workers, run_dir=args.run_dir,
            cores=args.cores, memory=args.memory, time_max=args.time_max, accumulation_size=args.accumulation_size,
            skip_bad_files=args.skip_bad_files, keep_going=args.keep_going, engine_options=engine_options,
            checkpoint_every=args.checkpoint_every, resume=args.resume, remote=remote,
            fingerprint_extra=_analysis_digest(args.analysis, args.processor))
    for w in caught:
        if issubclass(w.category, StepsKeptWarning):
            _say(f"note: {w.message}")
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    try:
        job.run_dir = _writable_dir(job.run_dir or os.path.join(".ddr", "runs", job.fingerprint()),
                                    "the run directory")
    except DDRError as exc:
        _err(str(exc))
        return 2
    failed_path = failed_arg or os.path.join(job.run_dir, "failed.json")

    # 2. run, watching for signals
    progress = make_progress(args.quiet)
    received: list[int] = []

    def on_signal(signum: int, frame: Any) -> None:
        if received:
            raise KeyboardInterrupt  # a second signal: stop waiting
        received.append(signum)
        handle.cancel(timeout=0, reason="interrupted")

    handle = job.submit(progress=progress)
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        if progress is not None:
            with progress:
                while not handle.wait(0.25):
                    pass
        else:
            while not handle.wait(0.25):
                pass
    except KeyboardInterrupt:
        _err("interrupted twice: not waiting for the run to stop (its checkpoint may be older)")
        return 130
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    for notice in handle.notices:
        _say(notice)

    # 3. write what there is
    error: BaseException | None = None
    try:
        handle.result(0)
    except BaseException as exc:  # noqa: BLE001 - reported below, after the outputs are safe
        from concurrent.futures import CancelledError

        if not isinstance(exc, CancelledError):
            error = exc
    if isinstance(error, (ResumeError, EngineError)):  # another run's directory; no cluster: usage errors
        _err(str(error))
        return 2
    report = handle.report or {}
    report.update(command_seconds=round(time.monotonic() - t_start, 3),
                  analysis=os.path.abspath(args.analysis), fileset=os.path.abspath(args.datasets),
                  run_dir=job.run_dir)
    run = job.last_run
    report["first_result_from_start_seconds"] = (
        None if run is None or run.first_result_at is None else round(run.first_result_at - t_start, 3))
    problems: list[str] = []
    outputs = handle.outputs() if handle.report is not None else {}
    has_values = any(v is not None for v in _values(outputs, job._single))
    if output and has_values:
        why = _save(outputs, output)
        report["output"] = {"path": output, "written": why is None, "error": why}
        if why is not None:
            kept = os.path.join(job.run_dir, "result.coffea")
            again = _save(outputs, kept)
            problems.append(f"{why}; " + (f"the result is kept in {kept}: once fixed, copy it with: "
                                          f"cp {shlex.quote(kept)} {shlex.quote(output)}" if again is None else
                                          f"keeping it in the run directory failed too ({again})"))
    from ._ledger import failed_fileset

    missing = failed_fileset(report.get("datasets", {}), {n: dict(d.metadata) for n, d in job.datasets.items()})
    if missing:
        why = _write_json(failed_path, missing)
        report["failed_fileset"] = failed_path if why is None else None
        if why is not None:
            problems.append(why)
    if report_path:
        why = _write_json(report_path, report)
        if why is not None:
            problems.append(why)

    # 4. tell the user what happened and what to do
    if error is not None:
        _err(_message(error, args))
    for p in problems:
        _err(p)
    status = report.get("status")
    incomplete = [ds for ds, d in report.get("datasets", {}).items() if not d.get("complete")]
    if incomplete:
        desc = ", ".join(f"{ds} ({_events(report['datasets'][ds])})" for ds in incomplete)
        _say(f"incomplete datasets: {desc}" + (f"; {output} holds what was merged for them" if output
                                                and has_values else ""))
        if missing and report.get("failed_fileset"):
            redo_out = _suffixed(output, "-redo") if output else None
            redo_rep = _suffixed(report_path, "-redo") if report_path else None
            redo = redo_command(argv, failed_path, redo_out, redo_rep)
            _say(f"what is missing is in {failed_path}; once the cause is fixed, process just that with:\n"
                 f"    {shlex.join(redo)}")
            if output and redo_out:
                merge = ["ddr", "merge", output, redo_out, "-o", _suffixed(output, "-all")]
                if report_path and redo_rep:
                    merge += ["--reports", report_path, redo_rep]
                _say(f"then merge the two with:\n    {shlex.join(merge)}")
        from .exceptions import ProcessorError

        if status == "interrupted" or (status == "failed" and not isinstance(error, ProcessorError)):
            # (after a processor error the analysis changes, and resume refuses another analysis's run)
            _say(f"or continue this run where it stopped: the same command with --resume "
                 f"(checkpoint in {job.run_dir})")
    if not args.quiet and report:
        _summary(report)
    if received:
        return 128 + received[0]
    if error is not None or problems or incomplete or not report.get("complete", False):
        return 1
    return 0


def _values(outputs: Any, single: bool) -> list[Any]:
    if not isinstance(outputs, dict):
        return []
    if single:
        return list(outputs.values())
    return [v for per_ds in outputs.values() for v in per_ds.values()]


def _events(d: dict[str, Any]) -> str:
    total = d.get("events_expected")
    done = d.get("events_processed", 0)
    return f"{done:,} of {total:,} events" if total is not None else f"{done:,} events, total unknown"


def _summary(report: dict[str, Any]) -> None:
    from .progress import format_rate

    _say(f"{report.get('status', 'finished')}: {report['events_processed']:,} events in "
         f"{report['wall_time']:.2f} s ({format_rate(report['events_per_second'] or 0)})")
