"""Helpers shared by the tests: comparing results bin for bin, generating synthetic NanoAOD."""

import importlib.util
import sys
import time

import hist

from tests.conftest import DATASETS


def assert_same(a, b, where="output"):
    """Equal results: same keys all the way down, histograms equal bin for bin, other values equal."""
    if isinstance(a, dict):
        assert set(a) == set(b), f"{where}: keys differ: {sorted(a)} vs {sorted(b)}"
        for k in a:
            assert_same(a[k], b[k], f"{where}/{k}")
    elif isinstance(a, hist.Hist):
        assert a == b, f"{where}: histograms differ"
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def wait_for(predicate, timeout, what):
    """Poll ``predicate`` until it is true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def generator():
    """``datasets/generate.py`` as a module (it is a script, not part of a package)."""
    name = "ddr_datasets_generate"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, DATASETS / "generate.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def generate(out, **kw):
    """``datasets/generate.py``'s ``generate(out, **kw)``: a synthetic NanoAOD fileset; returns its path."""
    return generator().generate(out, **kw)
