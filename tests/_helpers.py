"""Helpers shared by the tests: comparing results bin for bin, generating synthetic NanoAOD, a dimuon
analysis whose late chunks wait for the test."""

import importlib.util
import sys
import time

import hist

from tests.conftest import ANALYSES, DATASETS


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


_GATED = '''

import os as _os
import time as _time


class GatedDimuon(DimuonProcessor):
    """Chunks starting at entry {first_gated:_} or later of a file wait until the file named by $DDR_TEST_GATE
    exists (for at most ten minutes, so that a test that forgets the gate fails instead of hanging)."""

    def process(self, events):
        if events.metadata["entrystart"] >= {first_gated}:
            deadline = _time.monotonic() + 600
            while not _os.path.exists(_os.environ["DDR_TEST_GATE"]) and _time.monotonic() < deadline:
                _time.sleep(0.02)
        return super().process(events)
'''


def gated_dimuon(path, first_gated):
    """Write ``analyses/dimuon.py`` plus ``GatedDimuon`` to ``path``: run it with ``--processor GatedDimuon``
    and ``DDR_TEST_GATE`` in the environment. Chunks from entry ``first_gated`` on block until the gate file
    exists, so a test decides what happens before the run can go past them (no race with the run's speed)."""
    path.write_text((ANALYSES / "dimuon.py").read_text() + _GATED.format(first_gated=first_gated))
    return path
