import os
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DATASETS = ROOT / "datasets"
SAMPLES = DATASETS / "samples"
ANALYSES = ROOT / "analyses"


@pytest.fixture(scope="session")
def repo_root():
    return ROOT


@pytest.fixture(autouse=True)
def _quiet_nanoaod_warnings(monkeypatch):
    monkeypatch.setenv("PYTHONWARNINGS", os.environ.get("PYTHONWARNINGS", "ignore"))
