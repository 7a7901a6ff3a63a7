"""The node's background downloader (vinecore._prefetcher), on file:// urls: no server needed."""

from __future__ import annotations

import os
import time

import pytest

from vinecore import NodeCache, _prefetcher

pytestmark = pytest.mark.slow  # each starts real downloader processes


def _until(predicate, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} did not happen within {timeout:.0f} s"
        time.sleep(0.05)


def _idle(cache: NodeCache) -> bool:
    return not _prefetcher._held(os.path.join(cache.root, ".prefetcher")) and not _prefetcher.pending(cache.root)


def _content(cache: NodeCache, url: str) -> bytes | None:
    lease = cache.lookup(url)
    if lease is None:
        return None
    with lease, open(lease.path, "rb") as f:
        return f.read()


def test_one_downloader_per_node_holds_its_lock_from_the_start_and_takes_the_whole_queue(tmp_path):
    data = {name: os.urandom(50_000 + i) for i, name in enumerate(["a.bin", "b.bin", "c.bin"])}
    for name, payload in data.items():
        (tmp_path / name).write_bytes(payload)
    url = {name: (tmp_path / name).as_uri() for name in data}
    cache = NodeCache(tmp_path / "cache", "10M")
    lock = os.path.join(cache.root, ".prefetcher")

    reading = cache.reading()  # a run on this node reads in place: downloads wait for it
    assert cache.prefetch(url["a.bin"], after_readers=True)
    assert _prefetcher._held(lock)  # taken by the caller for the child: no moment without it
    assert not _prefetcher.ensure_running(cache.root)  # one per node
    assert not cache.prefetch(url["a.bin"], after_readers=True)  # queued already
    assert cache.prefetch(url["b.bin"], after_readers=True)  # queued for the same downloader
    assert [r["url"] for _, r in _prefetcher.pending(cache.root)] == [url["a.bin"], url["b.bin"]]
    assert _content(cache, url["a.bin"]) is None
    reading.release()  # the run ended
    _until(lambda: _idle(cache), what="the downloader to drain its queue")
    assert _content(cache, url["a.bin"]) == data["a.bin"] and _content(cache, url["b.bin"]) == data["b.bin"]

    # That downloader has looked at the queue for the last time (its process may live on for a moment):
    # a new request starts another one instead of waiting for it.
    assert cache.prefetch(url["c.bin"])
    _until(lambda: _content(cache, url["c.bin"]) == data["c.bin"], what="the next request's download")
    _until(lambda: _idle(cache), what="the second downloader to exit")


def test_a_failed_download_is_logged_and_leaves_the_queue(tmp_path):
    cache = NodeCache(tmp_path / "cache", "10M")
    missing = (tmp_path / "missing.bin").as_uri()
    assert cache.prefetch(missing)
    _until(lambda: _idle(cache), what="the downloader to give up")
    assert "missing.bin" in (tmp_path / "cache" / "prefetch.log").read_text()
    assert cache.entries() == []
