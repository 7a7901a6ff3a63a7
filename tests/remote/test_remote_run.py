"""``ddr run`` on the local engine over real XRootD and HTTP(S) servers: results equal the local run bin for
bin, redirectors, a server that restarts or dies mid-run, missing remote files, the node cache warm and
bounded. Each run is a real ``ddr`` command; the servers' logs count the file bytes they served."""

import json
import os
import subprocess
import sys
import time

import pytest
from coffea.util import load

from tests._helpers import assert_same, gated_dimuon, generate
from tests.conftest import ANALYSES, DATASETS, SAMPLES
from tests.remote._servers import free_port, wait_for_prefetches
from tests.remote.conftest import LFN_DIR, SAMPLE_FILES, samples_fileset

pytestmark = [pytest.mark.remote, pytest.mark.slow]


def ddr_run(tmp_path, fileset, *args, name="run", env=None, timeout=280, wait=True,
            analysis=ANALYSES / "dimuon.py"):
    """``ddr run`` of ``analysis`` (the dimuon one) with its own run, cache and output paths under
    ``tmp_path/name``."""
    d = tmp_path / name
    d.mkdir(exist_ok=True)
    cmd = [sys.executable, "-m", "ddr.cli", "run", str(analysis), "--datasets", str(fileset), "--quiet",
           "--workers", "2", "-o", str(d / "out.coffea"), "--report", str(d / "report.json"), "--run-dir",
           str(d / "rundir"), *map(str, args)]
    if "--cache-dir" not in args:
        cmd += ["--cache-dir", str(tmp_path / "cache")]
    full_env = {**os.environ, **(env or {})}
    if not wait:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env), d
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env)
    return r, d


def report(d):
    return json.loads((d / "report.json").read_text())


@pytest.fixture(autouse=True)
def _no_download_left_running(tmp_path):
    """--cache auto fills the cache in background processes that outlive the run: wait for them."""
    yield
    for folder in ("cache", "c"):
        wait_for_prefetches(tmp_path / folder)


@pytest.fixture(scope="module")
def local_result(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("local")
    r, d = ddr_run(tmp, DATASETS / "samples.json")
    assert r.returncode == 0, r.stderr
    rep = report(d)
    assert all(ds["bytes_read"]["local"] > 0 and ds["bytes_read"]["remote"] == 0 for ds in rep["datasets"].values())
    return load(d / "out.coffea"), rep


def assert_equal_to_local(d, local_result):
    out, rep = load(d / "out.coffea"), report(d)
    ref_out, ref_rep = local_result
    assert rep["complete"], rep
    for ds in ref_out:  # per dataset, bin for bin
        assert_same(ref_out[ds], out[ds], ds)
        assert rep["datasets"][ds]["events_processed"] == ref_rep["datasets"][ds]["events_processed"]
    return rep


# ---------------------------------------------------------------- reading
def test_root_in_place_and_through_a_warm_cache(xrootd, tmp_path, local_result):
    fileset = samples_fileset(tmp_path / "root.json", xrootd.url)
    r, d = ddr_run(tmp_path, fileset, "--cache", "never", name="never")
    assert r.returncode == 0, r.stderr
    rep = assert_equal_to_local(d, local_result)
    assert all(ds["bytes_read"]["remote"] > 0 and ds["bytes_read"]["cache"] == 0 for ds in rep["datasets"].values())

    r, d = ddr_run(tmp_path, fileset, name="cold")  # --cache auto: read in place, cache filled meanwhile
    assert r.returncode == 0, r.stderr
    rep = assert_equal_to_local(d, local_result)
    assert all(ds["bytes_read"]["remote"] > 0 for ds in rep["datasets"].values())
    wait_for_prefetches(tmp_path / "cache")  # the node's background downloads outlive the run
    cached = sorted(os.path.basename(m["url"]) for m in _cache_entries(tmp_path / "cache"))
    assert cached == sorted(SAMPLE_FILES.values())

    served = xrootd.bytes_read()
    r, d = ddr_run(tmp_path, fileset, name="warm")
    assert r.returncode == 0, r.stderr
    rep = assert_equal_to_local(d, local_result)
    assert xrootd.bytes_read() == served  # the warm run read no file data from the server
    assert all(ds["bytes_read"]["remote"] == 0 and ds["bytes_read"]["cache"] > 0 for ds in rep["datasets"].values())


def _cache_entries(root):
    out = []
    for folder in root.glob("url-*"):
        out += [json.loads(p.read_text()) for p in folder.glob("*.json")]
    return out


@pytest.mark.parametrize("tls, cache", [(False, "auto"), (True, "never")])
def test_http_and_https_equal_local(nginx, tmp_path, local_result, tls, cache):
    fileset = samples_fileset(tmp_path / "http.json", lambda n: nginx.url(n, tls=tls))
    r, d = ddr_run(tmp_path, fileset, "--cache", cache, env={"SSL_CERT_FILE": nginx.cert})
    assert r.returncode == 0, r.stderr
    rep = assert_equal_to_local(d, local_result)
    assert all(ds["bytes_read"]["remote"] > 0 for ds in rep["datasets"].values())


def test_lfns_through_two_redirectors_when_the_first_is_down(xrootd, tmp_path, local_result):
    fileset = samples_fileset(tmp_path / "lfn.json", lambda n: f"/{LFN_DIR}/{n}")
    dead = f"root://127.0.0.1:{free_port()}"
    r, d = ddr_run(tmp_path, fileset, "--redirector", dead, "--redirector", xrootd.address, "--read-timeout", "5")
    assert r.returncode == 0, r.stderr
    rep = assert_equal_to_local(d, local_result)
    assert all(ds["bytes_read"]["remote"] > 0 for ds in rep["datasets"].values())
    # without a redirector, /store/... is a local path that does not exist: the fix is named
    r, _ = ddr_run(tmp_path, fileset, name="no-redirector")
    assert r.returncode == 2 and "--redirector" in r.stderr and f"/{LFN_DIR}/nano_dy.root" in r.stderr


def test_missing_remote_file_is_named(xrootd, tmp_path):
    url = xrootd.url("does_not_exist.root")
    fileset = tmp_path / "missing.json"
    fileset.write_text(json.dumps({"DY": {"files": {url: "Events", xrootd.url("nano_dy.root"): "Events"}}}))
    r, d = ddr_run(tmp_path, fileset)
    assert r.returncode == 1
    assert url in r.stderr and "not found" in r.stderr and "3011" in r.stderr
    assert "fix or remove" not in r.stderr
    r, d = ddr_run(tmp_path, fileset, "--skip-bad-files", name="skip")
    assert r.returncode == 1  # finished, incomplete
    ds = report(d)["datasets"]["DY"]
    assert [b["file"] for b in ds["bad_files"]] == [url] and ds["events_processed"] == 40


def test_cache_stays_under_its_size(xrootd, tmp_path, local_result):
    fileset = samples_fileset(tmp_path / "root.json", xrootd.url)
    limit = 1_500_000  # the samples are 5.1 MB; DYto2E alone (3.4 MB) does not fit
    r, d = ddr_run(tmp_path, fileset, "--cache-size", str(limit), "--workers", "1")
    assert r.returncode == 0, r.stderr
    rep = assert_equal_to_local(d, local_result)
    wait_for_prefetches(tmp_path / "cache")
    total = sum(m["size"] for m in _cache_entries(tmp_path / "cache"))
    assert 0 < total <= limit
    assert rep["datasets"]["EGamma2023"]["bytes_read"]["cache"] == 0  # read in place


# ------------------------------------------------------------ server faults
@pytest.fixture(scope="module")
def generated(remote_data):
    """Two synthetic files of 200k events in the exported folder, and their preprocessed fileset (as urls)."""
    out = os.path.join(remote_data, "gen")
    generate(out, files=2, events_per_file=200_000, chunk=50_000, seed=12)
    for f in os.listdir(out):
        os.chmod(os.path.join(out, f), 0o644)
    os.chmod(out, 0o755)
    return json.loads(open(os.path.join(out, "fileset_preprocessed.json")).read())


def url_fileset(path, spec, url_of):
    spec = json.loads(json.dumps(spec))
    for ds in spec.values():
        ds["files"] = {url_of(f"gen/{name}"): entry for name, entry in ds["files"].items()}
    path.write_text(json.dumps(spec))
    return path


def wait_for_transaction(rundir, predicate, proc, timeout=120.0):
    """Poll the run's transactions log until a record satisfies ``predicate``; False if the run ended first."""
    log = rundir / "transactions.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists():
            for line in log.read_text().splitlines():
                try:
                    if predicate(json.loads(line)):
                        return True
                except ValueError:
                    continue
        if proc.poll() is not None:
            return False
        time.sleep(0.02)
    raise TimeoutError("the run wrote no such transaction in time")


def processed(rec):
    return rec.get("category") == "processing" and rec.get("state") == "result" and rec.get("detail") == "success"


def failed(rec):
    return rec.get("category") == "processing" and rec.get("state") == "result" and rec.get("detail") == "exception"


def run_into_an_outage(tmp_path, server, generated, *extra):
    """Start ``ddr run`` on the generated files, served by ``server`` in 50,000-entry steps, with one worker,
    and stop the server once a chunk is done. Chunks that start at entry 50,000 or later wait for a gate
    that opens only after the server is down, so every run meets the outage, however fast the machine
    (the first step of each file is free to run; the later ones read baskets it did not).
    Returns the process, its folder and the moment the server stopped."""
    fileset = url_fileset(tmp_path / "gen.json", generated, server.url)
    gate = tmp_path / "gate"
    analysis = gated_dimuon(tmp_path / "gated.py", first_gated=50_000)
    proc, d = ddr_run(tmp_path, fileset, "--processor", "GatedDimuon", "--cache", "never", "--workers", "1",
                      "--read-timeout", "10", *extra, wait=False, analysis=analysis,
                      env={"DDR_TEST_GATE": str(gate)})
    try:
        assert wait_for_transaction(d / "rundir", processed, proc), f"the run ended: {proc.communicate()}"
        server.stop()
        t_stop = time.monotonic()
        gate.touch()
    except BaseException:
        proc.kill()
        raise
    return proc, d, t_stop


def test_server_restarted_mid_run_gives_the_exact_event_count(own_xrootd, generated, tmp_path):
    proc, d, _ = run_into_an_outage(tmp_path, own_xrootd, generated)
    try:
        saw_failure = wait_for_transaction(d / "rundir", failed, proc)
        own_xrootd.restart()
        out, err = proc.communicate(timeout=280)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert saw_failure, "the run finished without meeting the outage"
    assert proc.returncode == 0, err
    ds = report(d)["datasets"]["Synthetic"]
    assert ds["complete"] and ds["events_processed"] == ds["events_expected"] == 400_000
    assert ds["chunks_failed"] == 0 and not ds["failed_chunks"]  # the failed attempts were retried
    assert load(d / "out.coffea")["Synthetic"]["cutflow"]["Synthetic/all"] == 400_000


@pytest.mark.parametrize("skip", [False, True])
def test_server_gone_for_good_fails_naming_it_in_bounded_time(own_xrootd, generated, tmp_path, skip):
    extra = ["--skip-bad-files"] if skip else []
    proc, d, t_stop = run_into_an_outage(tmp_path, own_xrootd, generated, *extra)
    try:
        out, err = proc.communicate(timeout=280)
        elapsed = time.monotonic() - t_stop
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, err
    # four attempts (retries with 0.5, 2 and 5 s of backoff), each failing within the 5 s connection window
    assert elapsed < 75, f"{elapsed:.1f} s after the server died"
    text = err if not skip else json.dumps(report(d))
    assert own_xrootd.address in text, text[-2000:]
    if skip:
        ds = report(d)["datasets"]["Synthetic"]
        assert not ds["complete"] and ds["failed_chunks"] and 0 < ds["events_processed"] < 400_000
        assert "incomplete datasets: Synthetic" in err


# ------------------------------------------------- preprocess, always, API
def test_preprocess_lfns_then_run_with_cache_always(xrootd, tmp_path, local_result):
    lfns = samples_fileset(tmp_path / "lfn.json", lambda n: f"/{LFN_DIR}/{n}")
    out = tmp_path / "pre.json"
    r = subprocess.run([sys.executable, "-m", "ddr.cli", "preprocess", lfns, "-o", str(out), "--workers", "1",
                        "--redirector", xrootd.address, "--read-timeout", "5"], capture_output=True, text=True,
                       timeout=280)
    assert r.returncode == 0, r.stderr
    pre = json.loads(out.read_text())
    entry = pre["DYJetsToLL"]["files"][f"/{LFN_DIR}/nano_dy.root"]  # the name is kept, not made relative
    assert entry["num_entries"] == 40 and entry["uuid"]
    # --cache always: each file is downloaded whole before its chunks are read, and read from the cache
    r, d = ddr_run(tmp_path, out, "--cache", "always", "--redirector", xrootd.address, name="always")
    assert r.returncode == 0, r.stderr
    rep = assert_equal_to_local(d, local_result)
    entries = _cache_entries(tmp_path / "cache")
    assert sorted(m["url"] for m in entries) == sorted(xrootd.url(f"{LFN_DIR}/{n}") for n in SAMPLE_FILES.values())
    for ds, name in SAMPLE_FILES.items():
        got = rep["datasets"][ds]["bytes_read"]
        assert got["remote"] == os.path.getsize(SAMPLES / name) and got["cache"] > 0, (ds, got)


def test_python_api_reads_remote_files(xrootd, tmp_path, local_result):
    import ddr
    from analyses.dimuon import DimuonProcessor

    fileset = samples_fileset(tmp_path / "root.json", xrootd.url)
    job = ddr.CoffeaDynamicDataReduction(fileset, DimuonProcessor(), workers=1, run_dir=tmp_path / "run",
                                         remote=ddr.RemoteOptions(cache_dir=str(tmp_path / "c"), read_timeout=10))
    out = job.compute()
    for ds, value in local_result[0].items():
        assert_same(value, out[ds], ds)
    assert all(d["bytes_read"]["remote"] > 0 for d in job.report["datasets"].values())
