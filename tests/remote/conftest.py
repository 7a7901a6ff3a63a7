"""Fixtures of the remote-data tests: real XRootD and nginx servers on 127.0.0.1, serving the samples.

They skip, saying what to install, only when the server binary is absent (a developer machine);
with ``DDR_REQUIRE_REMOTE_TESTS=1`` (set by .ci/run, which installs them) a missing binary fails instead.
"""

import json
import os
import shutil

import pytest

from tests.conftest import DATASETS, SAMPLES
from tests.remote._servers import NginxServer, XRootDServer, make_data_dir, missing_reason

# the four datasets of datasets/samples.json, by file name
SAMPLE_FILES = {"DoubleMuon2018": "nano_dimuon.root", "DYJetsToLL": "nano_dy.root", "EGamma2023": "DYto2E.root",
                "TTbar": "nano_tt_v12.root"}
LFN_DIR = "store/test/nano"  # the samples also live under /store/... for the redirector tests


def _need(binary: str, package: str) -> None:
    why = missing_reason(binary, package)
    if why is None:
        return
    if os.environ.get("DDR_REQUIRE_REMOTE_TESTS"):
        pytest.fail(f"DDR_REQUIRE_REMOTE_TESTS is set but {why}")
    pytest.skip(why)


@pytest.fixture(scope="session")
def remote_data():
    """A folder the servers export: the samples at the top and under store/test/nano/."""
    path = make_data_dir()
    os.makedirs(os.path.join(path, LFN_DIR))
    for name in SAMPLE_FILES.values():
        shutil.copyfile(SAMPLES / name, os.path.join(path, name))
        shutil.copyfile(SAMPLES / name, os.path.join(path, LFN_DIR, name))
    for root, dirs, files in os.walk(path):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o755)
        for f in files:
            os.chmod(os.path.join(root, f), 0o644)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def xrootd(remote_data):
    """One XRootD server for the whole session (tests that stop a server use ``own_xrootd``)."""
    _need("xrootd", "xrootd-server")
    work = make_data_dir("ddr-xrootd-")
    with XRootDServer(remote_data, work) as server:
        yield server
    shutil.rmtree(work, ignore_errors=True)


@pytest.fixture
def own_xrootd(remote_data):
    """A server of this test's own, which it may stop and restart."""
    _need("xrootd", "xrootd-server")
    work = make_data_dir("ddr-xrootd-")
    server = XRootDServer(remote_data, work, name="own").start()
    yield server
    server.stop()
    shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="session")
def nginx(remote_data):
    _need("nginx", "nginx")
    _need("openssl", "openssl")
    work = make_data_dir("ddr-nginx-")
    with NginxServer(remote_data, work) as server:
        yield server
    shutil.rmtree(work, ignore_errors=True)


def samples_fileset(path, url_of) -> str:
    """datasets/samples.json with every file replaced by ``url_of(file name)``; returns the JSON's path."""
    spec = json.loads((DATASETS / "samples.json").read_text())
    for ds, entry in spec.items():
        entry["files"] = {url_of(SAMPLE_FILES[ds]): "Events"}
    path.write_text(json.dumps(spec, indent=1))
    return str(path)
