"""Error classification by exception type, one class at a time, with the exceptions that uproot, fsspec,
the XRootD client and coffea really raise against real files and servers (ddr.exceptions.classify_input)."""

import json
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import uproot

import vinecore
from ddr import BadInputError, InputErrorKind, classify_input
from ddr._coffea import NanoEventsOpener, _bad_input, count_entries
from ddr._planning import Chunk
from ddr._remote import RemoteOptions
from tests.conftest import SAMPLES
from tests.remote._servers import free_port

pytestmark = pytest.mark.remote
K = InputErrorKind
NEVER = RemoteOptions(cache="never", read_timeout=5)


def raised(fn, *args, **kwargs) -> BaseException:
    try:
        fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - the exception is what the test is about
        return exc
    raise AssertionError(f"{fn} raised nothing")


def read_all(url):
    with uproot.open({url: None}, timeout=5) as f:
        return f["Events"].arrays(["nMuon"], entry_stop=10)


# ---------------------------------------------------------------- missing
def test_missing_local_file():
    exc = raised(read_all, "/nonexistent/nano.root")
    assert classify_input(exc, "/nonexistent/nano.root").kind is K.MISSING
    err = raised(count_entries, "/nonexistent/nano.root", "Events")
    assert isinstance(err, BadInputError) and err.kind == "missing" and err.permanent
    assert "/nonexistent/nano.root" in str(err) and "fix or remove" not in str(err)


def test_missing_root_url_by_xrootd_status(xrootd):
    url = xrootd.url("nope.root")
    exc = raised(read_all, url)  # fsspec-xrootd: an OSError holding the status text "[3011]"
    f = classify_input(exc, url)
    assert f.kind is K.MISSING and "3011" in f.description and f.server == xrootd.address
    stat = raised(vinecore.stat_url, url, 5)  # vinecore: the status code itself
    assert (stat.status, stat.server_errno) == (400, 3011) and classify_input(stat, url).kind is K.MISSING
    err = raised(count_entries, url, "Events", None, NEVER)
    assert isinstance(err, BadInputError) and err.kind == "missing" and url in str(err)


def test_missing_http_url(nginx):
    url = nginx.url("nope.root")
    exc = raised(read_all, url)
    assert isinstance(exc, FileNotFoundError) and classify_input(exc, url).kind is K.MISSING
    stat = raised(vinecore.stat_url, url, 5)
    assert stat.status == 404 and classify_input(stat, url).kind is K.MISSING


# ------------------------------------------------------------ HTTP status
def test_http_status_classes(nginx):
    denied, busy = nginx.url("forbidden/nano_dy.root"), nginx.url("unavailable/nano_dy.root")
    assert classify_input(raised(read_all, denied), denied).kind is K.DENIED  # aiohttp ClientResponseError 403
    assert classify_input(raised(read_all, busy), busy).kind is K.TRANSIENT  # 503
    assert classify_input(raised(vinecore.stat_url, busy, 5), busy).kind is K.TRANSIENT


# -------------------------------------------------------------- transient
def test_dead_xrootd_server_fails_in_seconds_and_is_transient():
    url = f"root://127.0.0.1:{free_port()}//nano_dy.root"  # nothing listens there
    vinecore.apply_xrootd_settings(5)
    t0 = time.monotonic()
    stat = raised(vinecore.stat_url, url, 5)
    exc = raised(read_all, url)
    assert time.monotonic() - t0 < 30  # not the client's default ~480 s
    for e in (stat, exc):
        f = classify_input(e, url)
        assert f.kind is K.TRANSIENT and f.server == url.rsplit("//", 1)[0], (e, f)
    # XRootD's errConnectionError, or errOperationExpired when the request timeout (also 5 s) ends first:
    # which of the client's two timers fires first is a race on a loaded machine; both mean "server down"
    assert stat.status in (108, 206), stat


def test_dead_http_server_is_transient():
    url = f"http://127.0.0.1:{free_port()}/nano_dy.root"
    exc = raised(read_all, url)  # aiohttp.ClientConnectorError, an OSError with errno ECONNREFUSED
    assert classify_input(exc, url).kind is K.TRANSIENT
    assert classify_input(raised(vinecore.stat_url, url, 5), url).kind is K.TRANSIENT


@pytest.fixture
def silent_server():
    """A TCP server that accepts connections and never answers: every read times out."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    conns, stop = [], threading.Event()

    def accept():
        sock.settimeout(0.1)
        while not stop.is_set():
            try:
                conns.append(sock.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield sock.getsockname()[1]
    stop.set()
    t.join()
    for c in conns:
        c.close()
    sock.close()


@pytest.mark.slow
def test_timeouts_are_transient_and_bounded(silent_server):
    http = f"http://127.0.0.1:{silent_server}/nano_dy.root"
    t0 = time.monotonic()
    e = raised(vinecore.stat_url, http, 1)
    assert classify_input(e, http).kind is K.TRANSIENT and e.errno == 110  # ETIMEDOUT
    e = raised(uproot.open, {http: None}, **RemoteOptions(read_timeout=1).uproot_options(http))  # in place
    assert classify_input(e, http).kind is K.TRANSIENT, repr(e)
    root = f"root://127.0.0.1:{silent_server}//nano_dy.root"
    vinecore.apply_xrootd_settings(2)
    e = raised(vinecore.stat_url, root, 2)  # the handshake is never answered
    assert classify_input(e, root).kind is K.TRANSIENT, e
    e = raised(uproot.open, {root: None}, **RemoteOptions(read_timeout=2).uproot_options(root))
    assert classify_input(e, root).kind is K.TRANSIENT, repr(e)
    assert time.monotonic() - t0 < 60


@pytest.mark.slow
def test_http_server_killed_after_open_is_transient(remote_data, tmp_path):
    from tests.remote._servers import NginxServer

    server = NginxServer(remote_data, str(tmp_path / "nginx")).start()
    url = server.url("DYto2E.root")
    f = uproot.open({url: None}, **RemoteOptions(read_timeout=5).uproot_options(url))
    tree = f["Events"]
    server.stop()
    exc = raised(tree.arrays, ["Electron_pt", "Jet_pt"])  # uproot loses the real error: a TypeError
    assert classify_input(exc, url).kind is K.TRANSIENT, repr(exc)


# ---------------------------------------------------------------- corrupt
def test_truncated_local_file_is_corrupt_but_a_remote_short_read_is_transient(tmp_path):
    data = (SAMPLES / "nano_dy.root").read_bytes()
    bad = tmp_path / "truncated.root"
    bad.write_bytes(data[: len(data) // 2])
    exc = raised(read_all, str(bad))
    assert classify_input(exc, str(bad)).kind is K.CORRUPT
    assert classify_input(exc, "root://h:1//truncated.root").kind is K.TRANSIENT  # the same short read, remote


def test_corrupt_and_not_root_files(tmp_path):
    data = bytearray((SAMPLES / "nano_dimuon.root").read_bytes())
    data[int(len(data) * 0.2): int(len(data) * 0.2) + 3000] = bytes(3000)
    (tmp_path / "c.root").write_bytes(bytes(data))
    (tmp_path / "text.root").write_text("not a ROOT file" * 100)

    def everything(path):
        with uproot.open({path: None}) as f:
            f["Events"].arrays()

    for name in ("c.root", "text.root"):
        exc = raised(everything, str(tmp_path / name))
        assert classify_input(exc, str(tmp_path / name)).kind is K.CORRUPT, repr(exc)


def test_schema_rejection_is_corrupt():
    from coffea.nanoevents import NanoAODSchema, NanoEventsFactory

    path = str(SAMPLES / "missing_luminosityBlock.root")
    exc = raised(lambda: NanoEventsFactory.from_root({path: "Events"}, schemaclass=NanoAODSchema,
                                                     mode="eager").events())
    f = classify_input(exc, path)
    assert f.kind is K.CORRUPT and "schema" in f.description


# ------------------------------------------------------------ setup, memory
@pytest.mark.slow
def test_missing_package_is_setup_and_names_it(xrootd):
    """Without fsspec-xrootd, fsspec raises an ImportError: the fix is an install, never the file."""
    code = f"""
import sys, json
sys.modules["fsspec_xrootd"] = None  # as if not installed
from ddr._coffea import count_entries
from ddr._remote import RemoteOptions
try:
    count_entries({xrootd.url("nano_dy.root")!r}, "Events", None, RemoteOptions(cache="never", read_timeout=5))
except Exception as e:
    print(json.dumps([type(e).__name__, getattr(e, "kind", None), str(e)]))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    name, kind, text = json.loads(out.stdout.strip().splitlines()[-1])
    assert (name, kind) == ("BadInputError", "setup"), out.stdout + out.stderr
    assert "pip install fsspec-xrootd" in text and "fix or remove" not in text


def test_memory_error_is_never_bad_input():
    exc = raised(np.empty, 2**62, dtype=np.uint8)  # numpy's own MemoryError
    assert isinstance(exc, MemoryError) and classify_input(exc).kind is K.RESOURCE
    assert _bad_input(exc, "ds", "/f.root", "Events", 0, 10, "cannot read") is exc  # propagates as itself


def test_memory_error_inside_the_opener_propagates(monkeypatch):
    """A MemoryError while opening is a resource limit (the chunk is split), not a bad file."""
    opener = NanoEventsOpener()

    def no_memory(*args, **kwargs):
        return np.empty(2**62, dtype=np.uint8)

    monkeypatch.setattr(opener._reader, "open", no_memory)
    with pytest.raises(MemoryError):
        opener(Chunk("ds", str(SAMPLES / "nano_dy.root"), "Events", 0, 10))


def test_classification_survives_pickling():
    import pickle

    err = BadInputError("ds", "root://h:1//f.root", "Events", 0, 9, "OSError: x", False, kind="transient",
                        server="root://h:1")
    again = pickle.loads(pickle.dumps(err))
    assert (again.kind, again.server, again.permanent) == ("transient", "root://h:1", False)
    remote = vinecore.RemoteFileError(111, "stat failed", url="root://h:1//f.root", status=108)
    again = pickle.loads(pickle.dumps(remote))
    assert (again.errno, again.status, again.server) == (111, 108, "root://h:1")
