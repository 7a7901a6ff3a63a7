"""The vinecore conformance suite (vinecore/testing.py) on every engine."""

import pytest

import vinecore
from vinecore.testing import CHECKS

ENGINES = [
    "sync",
    # the local engine's two ways of starting workers: forked from a zygote, or afresh
    pytest.param("local-fork", marks=pytest.mark.slow),
    pytest.param("local-spawn", marks=pytest.mark.slow),
]


@pytest.fixture(params=ENGINES)
def make_manager(request, tmp_path):
    engine, _, start = request.param.partition("-")
    options = {"start_method": start} if start else {}

    def make(workers=None, **kw):
        return vinecore.Manager(engine=engine, workers=workers or (1 if engine == "sync" else 2),
                                run_dir=tmp_path / f"run-{make.count}", **options, **kw)

    make.count = 0
    return make


@pytest.mark.parametrize("check", sorted(CHECKS))
def test_conformance(make_manager, check, tmp_path):
    CHECKS[check](make_manager, str(tmp_path))
