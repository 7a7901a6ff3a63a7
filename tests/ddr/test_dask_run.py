"""ddr on the dask engine, against real ``dask scheduler`` / ``dask worker`` processes.

* the same ``ddr run`` gives identical output on the local and the dask engine;
* a dask worker SIGKILLed mid-run while it holds partial results costs only
  recomputation: the output equals a clean run's and every event is counted once.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from coffea.util import load
from distributed import Client

from tests._helpers import assert_same, generate
from tests.conftest import ANALYSES, DATASETS
from vinecore.engines._dask_plugin import held_temps
from vinecore.testing import DaskProcesses

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

DDR = [sys.executable, "-m", "ddr.cli"]




def _run(args, **kw):
    return subprocess.run([*DDR, "run", *map(str, args), "--quiet"], capture_output=True, text=True,
                          timeout=600, **kw)




def _events(report):
    return {ds: (r["events_processed"], r["events_expected"], r["complete"])
            for ds, r in report["datasets"].items()}


def test_local_and_dask_give_identical_output(tmp_path):
    common = [ANALYSES / "dimuon.py", "--datasets", DATASETS / "samples.json", "--chunk-size", "64",
              "--initial-chunk-size", "64"]
    local = _run([*common, "-o", tmp_path / "local.coffea", "--report", tmp_path / "local.json",
                  "--workers", "2"])
    assert local.returncode == 0, local.stderr
    with DaskProcesses(workers=2, directory=str(tmp_path / "cluster")) as cluster:
        dask = _run([*common, "-o", tmp_path / "dask.coffea", "--report", tmp_path / "dask.json",
                     "--scheduler", cluster.address])
    assert dask.returncode == 0, dask.stderr
    assert_same(load(tmp_path / "local.coffea"), load(tmp_path / "dask.coffea"))
    rl, rd = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("local", "dask"))
    assert _events(rl) == _events(rd)
    assert all(done == expected and complete for done, expected, complete in _events(rd).values())
    assert sum(r["chunks_done"] for r in rd["datasets"].values()) > 4  # several chunks, so accumulations ran
    # the bytes each task read travel back from the library processes beside the dask workers too
    assert all(r["bytes_read"]["local"] > 0 and r["bytes_read"]["remote"] == 0 for r in rd["datasets"].values())


def test_sigkill_of_a_dask_worker_holding_partials(tmp_path):
    fileset = generate(tmp_path / "data", files=2, events_per_file=150_000, chunk=50_000, seed=7)
    common = [ANALYSES / "dimuon.py", "--datasets", fileset, "--chunk-size", "4000",
              "--initial-chunk-size", "4000", "--accumulation-size", "4"]
    clean = _run([*common, "-o", tmp_path / "clean.coffea", "--report", tmp_path / "clean.json"])
    assert clean.returncode == 0, clean.stderr

    with DaskProcesses(workers=2, directory=str(tmp_path / "cluster"), nanny=False) as cluster:
        run = subprocess.Popen([*DDR, "run", *map(str, common), "-o", tmp_path / "dask.coffea",
                                "--report", tmp_path / "dask.json", "--scheduler", cluster.address, "--quiet"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        killed = None
        with Client(cluster.address) as client:
            deadline = time.monotonic() + 120
            while killed is None and run.poll() is None and time.monotonic() < deadline:
                held = client.run(held_temps)  # temps held by the vinecore agent on each worker
                # kill once both workers hold partial results (temps of finished attempts)
                if len(held) == 2 and all(n >= 2 for n in held.values()):
                    victim = sorted(held)[0]
                    pid = client.run(os.getpid, workers=[victim])[victim]
                    os.kill(pid, signal.SIGKILL)
                    killed = (victim, held[victim])
                time.sleep(0.05)
        out, err = run.communicate(timeout=600)
    assert killed is not None, "the run ended before a worker could be killed; make it longer"
    assert run.returncode == 0, err
    assert_same(load(tmp_path / "clean.coffea"), load(tmp_path / "dask.coffea"))
    report = json.loads((tmp_path / "dask.json").read_text())
    assert _events(report) == _events(json.loads((tmp_path / "clean.json").read_text()))
    assert all(done == expected == 300_000 and complete for done, expected, complete in _events(report).values())


def test_tls_scheduler(tmp_path):
    """``--scheduler tls://...`` with certificate options, against a TLS-only cluster."""
    ca, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    made = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                           "-subj", "/CN=127.0.0.1", "-keyout", key, "-out", ca], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"openssl could not make a test certificate: {made.stderr[-300:]}")
    tls = ("--protocol", "tls", "--tls-ca-file", str(ca), "--tls-cert", str(ca), "--tls-key", str(key))
    with DaskProcesses(workers=1, directory=str(tmp_path / "cluster"), extra_args=tls) as cluster:
        assert cluster.address.startswith("tls://")
        args = [ANALYSES / "dimuon.py", "--datasets", DATASETS / "samples.json", "--report", tmp_path / "r.json",
                "--scheduler", cluster.address]
        refused = _run(args)
        assert refused.returncode == 2 and "--tls-ca-file" in refused.stderr, refused.stderr  # no certificate, no entry
        done = _run([*args, "--tls-ca-file", ca, "--tls-cert", ca, "--tls-key", key])
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert all(done == expected and complete for done, expected, complete in _events(report).values())


def test_python_api_with_a_client(tmp_path):
    """A notebook's ``distributed.Client`` as the engine: the run uses it and leaves it open."""
    import ddr
    from ddr._analysis import load_analysis

    proc = next(iter(load_analysis(str(ANALYSES / "dimuon.py")).values()))
    fileset = str(DATASETS / "samples.json")
    local = ddr.CoffeaDynamicDataReduction(fileset, proc, engine="sync", chunk_size=100).compute()
    with DaskProcesses(workers=2, directory=str(tmp_path / "cluster")) as cluster:
        with Client(cluster.address) as client:
            first = ddr.CoffeaDynamicDataReduction(fileset, proc, engine=client, chunk_size=100).compute()
            again = ddr.CoffeaDynamicDataReduction(fileset, proc, engine=client, chunk_size=100).compute()
            assert client.status == "running"
            assert len(client.scheduler_info(n_workers=-1)["workers"]) == 2
    assert_same(local, first)
    assert_same(local, again)
