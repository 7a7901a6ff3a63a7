"""Every numeric flag (and every url or size) of every ``ddr`` subcommand is range-checked by argparse.

A bad value ends the real ``ddr`` command with exit status 2 and one line that
names the flag, the value and the valid range, without a traceback, before
anything is loaded or started.
"""

import subprocess
import sys

import pytest

RUN = ["run", "analysis.py", "--datasets", "fileset.json"]
PREPROCESS = ["preprocess", "fileset.json", "-o", "out.json"]

# (subcommand args, flag, bad value, range named in the message)
BAD = [
    (RUN, "--workers", "0", "an integer >= 1"),
    (RUN, "--workers", "-3", "an integer >= 1"),
    (RUN, "--workers", "1.5", "an integer >= 1"),
    (RUN, "--cores", "0", "an integer >= 1"),
    (RUN, "--chunk-size", "0", "an integer >= 1"),
    (RUN, "--chunk-size", "ten", "an integer >= 1"),
    (RUN, "--initial-chunk-size", "0", "an integer >= 1"),
    (RUN, "--target-seconds", "0", "a number > 0"),
    (RUN, "--target-seconds", "inf", "a number > 0"),
    (RUN, "--memory", "0", "an integer >= 1"),
    (RUN, "--time-max", "-1", "a number > 0"),
    (RUN, "--time-max", "0", "a number > 0"),
    (RUN, "--time-max", "nan", "a number > 0"),
    (RUN, "--accumulation-size", "0", "an integer >= 2"),
    (RUN, "--accumulation-size", "1", "an integer >= 2"),
    (RUN, "--checkpoint-every", "-1", "a number >= 0"),
    (RUN, "--read-timeout", "0", "a number > 0"),
    (RUN, "--cache-size", "lots", "a size in bytes or with a unit"),
    (RUN, "--cache-size", "0", "a size in bytes or with a unit"),
    (RUN, "--redirector", "cmsxrootd.fnal.gov", "a root://, roots://, http:// or https:// url"),
    (PREPROCESS, "--step-size", "0", "an integer >= 1"),
    (PREPROCESS, "--workers", "0", "an integer >= 1"),
    (PREPROCESS, "--read-timeout", "-1", "a number > 0"),
    (PREPROCESS, "--redirector", "/store/x", "a root://, roots://, http:// or https:// url"),
]


def ddr(*args):
    return subprocess.run([sys.executable, "-m", "ddr.cli", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.slow  # each case starts the real command (~0.8 s of imports)
@pytest.mark.parametrize("base, flag, value, valid", BAD, ids=[f"{f}={v}" for _, f, v, _ in BAD])
def test_bad_value_is_one_line_with_exit_2(base, flag, value, valid):
    r = ddr(*base, flag, value)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    line = lines[0]
    assert line.startswith(f"ddr {base[0]}: error: argument {flag}: invalid value {value!r}: must be {valid}"), line


def test_every_numeric_flag_is_covered():
    """A numeric flag added later without a range check (or without a case above) fails here."""
    import argparse

    from ddr.cli import build_parser

    tested = {(base[0], flag) for base, flag, _, _ in BAD}
    parser = build_parser()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    numeric = set()
    for name, sub in subs.choices.items():
        for action in sub._actions:
            if action.type in (int, float):
                raise AssertionError(f"ddr {name} {action.option_strings}: plain {action.type.__name__} "
                                     "type; use a range-checking type from ddr.cli")
            if hasattr(action.type, "valid_range"):
                numeric.add((name, action.option_strings[-1]))
    assert numeric == tested


def test_good_values_pass_the_parser():
    from ddr.cli import build_parser

    args = build_parser().parse_args([*RUN, "--workers", "1", "--time-max", "0.5", "--checkpoint-every", "0",
                                      "--accumulation-size", "2", "--target-seconds", "1e-3"])
    assert (args.workers, args.time_max, args.checkpoint_every, args.accumulation_size) == (1, 0.5, 0.0, 2)
