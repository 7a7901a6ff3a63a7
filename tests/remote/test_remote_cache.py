"""vinecore's node cache against real servers: hits read nothing from the server, a changed file is never
served stale, a killed download is never used, eviction keeps the cache under its size, one download per
node; declared urls materialise through it; tasks report metrics back to the manager."""

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time

import psutil
import pytest

import vinecore
from vinecore import NodeCache
from tests.conftest import SAMPLES

pytestmark = pytest.mark.remote


def sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def wait_until(predicate, timeout=60.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout} s")
        time.sleep(0.02)


@pytest.mark.parametrize("server", ["xrootd", "nginx"])
def test_second_get_is_a_hit_that_reads_no_file_data(server, request, tmp_path):
    srv = request.getfixturevalue(server)
    url = srv.url("nano_tt_v12.root")
    count = srv.bytes_read if server == "xrootd" else srv.bytes_sent
    cache = NodeCache(tmp_path / "cache", "10M")
    before = count()
    with cache.get(url) as lease:
        assert not lease.hit and lease.downloaded == os.path.getsize(SAMPLES / "nano_tt_v12.root")
        assert sha(lease.path) == sha(SAMPLES / "nano_tt_v12.root")
    wait_until(lambda: count() - before >= lease.downloaded, 10, "the server log")
    after_first = count()
    with cache.get(url) as again:
        assert again.hit and again.downloaded == 0 and again.path == lease.path
    assert count() == after_first  # only metadata (stat / HEAD) was asked for
    assert cache.usage() == lease.size


def test_root_files_are_keyed_by_uuid(xrootd, tmp_path):
    import uproot

    cache = NodeCache(tmp_path / "cache", "10M")

    def uuid_of(path):
        with uproot.open(path) as f:
            return str(f.file.uuid)

    with cache.get(xrootd.url("nano_dy.root"), identify=uuid_of) as lease:
        assert lease.identity == uuid_of(str(SAMPLES / "nano_dy.root"))
        assert os.path.basename(lease.path) == lease.identity


def test_a_changed_file_is_never_served_stale(remote_data, nginx, xrootd, tmp_path):
    name = "changing.root"
    src = os.path.join(remote_data, name)
    shutil.copyfile(SAMPLES / "nano_dy.root", src)
    os.chmod(src, 0o644)
    cache = NodeCache(tmp_path / "cache", "10M")
    for url in (nginx.url(name), xrootd.url(name)):
        with cache.get(url) as old:
            assert sha(old.path) == sha(SAMPLES / "nano_dy.root")
    shutil.copyfile(SAMPLES / "nano_dimuon.root", src + ".new")  # another file under the same name
    os.chmod(src + ".new", 0o644)
    os.replace(src + ".new", src)
    try:
        for url in (nginx.url(name), xrootd.url(name)):
            with cache.get(url) as new:
                assert not new.hit and sha(new.path) == sha(SAMPLES / "nano_dimuon.root"), url
        assert len(cache.entries()) == 2  # the old versions were dropped, one entry per url remains
    finally:
        os.unlink(src)


DOWNLOADER = """
import sys
from vinecore import NodeCache
NodeCache(sys.argv[1], "100M").get(sys.argv[2])
"""


@pytest.mark.slow
def test_a_killed_download_leaves_nothing_usable(nginx, tmp_path):
    root = tmp_path / "cache"
    url = nginx.url("slow/DYto2E.root")  # 3.4 MB at 200 kB/s: about 17 s, killed long before
    proc = subprocess.Popen([sys.executable, "-c", DOWNLOADER, str(root), url])
    try:
        def partial():
            parts = list(root.glob("url-*/.part-*"))
            return parts and parts[0].stat().st_size > 0
        wait_until(partial, 60, "a partial download")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    cache = NodeCache(root, "100M")
    assert cache.entries() == [] and cache.lookup(url) is None  # the part is never an entry
    assert len(list(root.glob("url-*/.part-*"))) == 1
    fast = nginx.url("DYto2E.root")
    with cache.get(fast) as lease:  # making room removes the abandoned part
        assert sha(lease.path) == sha(SAMPLES / "DYto2E.root")
    assert list(root.glob("url-*/.part-*")) == []


def test_eviction_keeps_the_cache_under_its_size_least_recently_used_first(xrootd, tmp_path):
    sizes = {n: os.path.getsize(SAMPLES / n) for n in ("nano_dy.root", "nano_dimuon.root", "nano_tt_v12.root")}
    limit = sizes["nano_tt_v12.root"] + sizes["nano_dy.root"] + 1000  # room for two of the three
    cache = NodeCache(tmp_path / "cache", limit)
    for n in ("nano_dy.root", "nano_dimuon.root"):
        cache.get(xrootd.url(n)).release()
    time.sleep(0.01)  # distinct last-use times
    cache.get(xrootd.url("nano_dy.root")).release()  # used again: nano_dimuon is now the oldest
    held = cache.get(xrootd.url("nano_tt_v12.root"))
    assert cache.usage() <= limit
    assert sorted(os.path.basename(e.url) for e in cache.entries()) == ["nano_dy.root", "nano_tt_v12.root"]
    second = cache.get(xrootd.url("nano_dimuon.root"))  # evicts nano_dy, never nano_tt_v12, which is in use
    assert sorted(os.path.basename(e.url) for e in cache.entries()) == ["nano_dimuon.root", "nano_tt_v12.root"]
    assert cache.get(xrootd.url("nano_dy.root")) is None  # every entry in use: not cached (read in place)
    assert cache.get(xrootd.url("DYto2E.root")) is None  # larger than the whole cache
    assert cache.usage() <= limit
    held.release()
    second.release()


FETCHER = """
import sys
from vinecore import NodeCache
with NodeCache(sys.argv[1], "100M").get(sys.argv[2]) as lease:
    print(lease.hit)
"""


@pytest.mark.slow
def test_processes_of_a_node_download_a_file_once(nginx, tmp_path):
    url = nginx.url("slow/nano_tt_v12.root")  # ~5 s: the three processes overlap
    before = nginx.bytes_sent()
    procs = [subprocess.Popen([sys.executable, "-c", FETCHER, str(tmp_path / "cache"), url], stdout=subprocess.PIPE,
                              text=True) for _ in range(3)]
    hits = sorted(p.communicate(timeout=120)[0].strip() for p in procs)
    assert hits == ["False", "True", "True"]
    wait_until(lambda: nginx.bytes_sent() - before >= os.path.getsize(SAMPLES / "nano_tt_v12.root"), 10, "log")
    assert nginx.bytes_sent() - before == os.path.getsize(SAMPLES / "nano_tt_v12.root")


# ------------------------------------------------------------ vinecore API
def _read_and_report(path):
    data = open(path, "rb").read()
    vinecore.report_metric("bytes", len(data))
    vinecore.report_metric("bytes", 1)
    vinecore.report_metric("calls", 1)
    return hashlib.sha256(data).hexdigest(), path


@pytest.mark.slow
def test_declared_urls_materialise_through_the_node_cache_and_tasks_report_metrics(nginx, tmp_path):
    env = {"VINECORE_CACHE_DIR": str(tmp_path / "cache"), "VINECORE_CACHE_SIZE": "10M"}
    before = nginx.bytes_sent()
    with vinecore.Manager(engine="local", workers=1, env=env) as m:
        url = m.declare_url(nginx.url("nano_dy.root"))
        outs = []
        for _ in range(2):
            t = vinecore.PythonTask(_read_and_report, url)
            m.submit(t)
            done = m.wait(120)
            assert done is t and t.successful, t.output
            outs.append(t)
    digest, path = outs[0].output
    assert digest == sha(SAMPLES / "nano_dy.root") and path.startswith(str(tmp_path / "cache"))
    size = os.path.getsize(SAMPLES / "nano_dy.root")
    assert outs[0].metrics == {"bytes": size + 1, "calls": 1} == outs[1].metrics
    wait_until(lambda: nginx.bytes_sent() - before >= size, 10, "log")
    assert nginx.bytes_sent() - before == size  # the second task used the node cache


@pytest.mark.slow
def test_prefetch_downloads_in_a_detached_process(nginx, xrootd, tmp_path):
    from tests.remote._servers import prefetchers, wait_for_prefetches

    root = tmp_path / "cache"
    cache = NodeCache(root, "2M")
    slow = nginx.url("slow/nano_tt_v12.root")  # ~5 s at 200 kB/s
    t0 = time.monotonic()
    assert cache.prefetch(slow, identify="ddr._remote:root_uuid")
    assert time.monotonic() - t0 < 2  # returns at once
    wait_until(lambda: list(root.glob("url-*/.part-*")), 60, "the download to start")
    assert not cache.prefetch(slow)  # already being downloaded on this node
    assert not cache.prefetch(xrootd.url("DYto2E.root"), stat=vinecore.stat_url(xrootd.url("DYto2E.root")))
    assert cache.lookup(slow) is None  # not usable before it is complete
    wait_for_prefetches(root)
    with cache.lookup(slow) as lease:
        assert sha(lease.path) == sha(SAMPLES / "nano_tt_v12.root")
        import uproot

        with uproot.open(str(SAMPLES / "nano_tt_v12.root")) as f:
            assert lease.identity == str(f.file.uuid)  # named by the identify function, in that process
    assert cache.prefetch(xrootd.url("nope.root"))  # fails in the background: logged, nothing cached
    wait_for_prefetches(root)
    assert "nope.root" in (root / "prefetch.log").read_text() and prefetchers(str(root)) == []
    assert cache.lookup(slow) is not None and len(cache.entries()) == 1


@pytest.mark.slow
def test_prefetch_after_readers_waits_for_the_run_to_end(xrootd, tmp_path):
    from tests.remote._servers import prefetchers, wait_for_prefetches

    root = tmp_path / "cache"
    cache = NodeCache(root, "10M")
    reading = cache.reading()  # a worker of this node is reading in place
    waits, runs = xrootd.url("nano_dy.root"), xrootd.url("nano_dimuon.root")
    assert cache.prefetch(waits, after_readers=True) and cache.prefetch(runs)
    wait_until(lambda: cache.lookup(runs) is not None, 60, "the immediate prefetch")
    assert len(prefetchers(str(root))) == 1  # one downloader for the node, still waiting for the readers
    assert cache.lookup(waits) is None and list(root.glob("url-*/.part-*")) == []  # queued together, still waits
    victim = prefetchers(str(root))[0]
    os.kill(victim, signal.SIGKILL)  # a downloader that dies keeps its queue on disk
    # wait for it to be gone for good, not only from the process list: a dying process loses its command
    # line before its files, and until its files are closed it holds the node's prefetcher lock, so that
    # the next prefetch would find a prefetcher "running" and start none
    with contextlib.suppress(psutil.NoSuchProcess):
        psutil.Process(victim).wait(30)  # our child (started by cache.prefetch): reaped here
    assert prefetchers(str(root)) == []
    later = xrootd.url("nano_tt_v12.root")
    assert not cache.prefetch(waits, after_readers=True)  # still queued
    assert cache.prefetch(later, after_readers=True)  # starts a new downloader, which takes the whole queue
    assert len(prefetchers(str(root))) == 1
    reading.release()  # the run ended
    wait_for_prefetches(root)
    assert cache.lookup(waits) is not None and cache.lookup(later) is not None
    assert list((root / ".queue").iterdir()) == []
