"""The node cache: whole copies of declared urls, shared by every worker process of a node.

A url's content is stored under the url's cache name (``File.cache_name``,
``url-<sha256 of the url>``) and an *identity*: a name the caller gives the
content (ddr uses the ROOT file's UUID), or else the url's version stamp
(size and modification time or ETag, from :func:`vinecore._fetch.stat_url`).

Layout of ``root`` (one per node, e.g. ``~/.cache/ddr``)::

    .lock                      held briefly while entries are added or evicted
    .prefetcher                held by the node's background downloader while it runs
    .queue/<cache name>.json   downloads asked with prefetch() and not yet done
    .readers                   shared-locked by processes reading urls in place (NodeCache.reading())
    prefetch.log               one line per background download that failed
    url-<sha>/.fetch           held by the one process downloading this url; the others wait
    url-<sha>/<identity>       the content
    url-<sha>/<identity>.json  url, size, version stamp; its mtime is the entry's last use (LRU)
    url-<sha>/.part-<size>-... a download in progress, locked by its writer

Policy
------
* Never stale: every lookup stats the url (metadata only, no content) and
  uses an entry only if its size and version stamp match, and its identity
  when the caller asks for one.
* Never partial: a download goes to a part file and is renamed to the entry
  only once complete (size checked). A killed download leaves a part file
  that no lookup returns; its lock died with its writer, so the next eviction
  pass deletes it.
* Shared: ``fcntl.flock`` locks, so they vanish with the process that held
  them. One process downloads a url while the others of the node wait for it,
  then use its copy. A reader holds a shared lock on the entry it uses
  (:class:`Lease`); eviction takes entries only when it gets an exclusive lock.
* Bounded: before a download, least recently used entries are evicted until
  the new file fits in ``max_bytes`` (downloads in progress count at their
  full size). If it cannot fit (larger than the cache, or the cache is full of
  entries in use), nothing is written and ``get`` returns ``None``: the caller
  reads in place.
* Two ways in: ``get`` downloads before returning (the caller waits);
  ``prefetch`` queues the download for the node's background downloader
  (:mod:`vinecore._prefetcher`: one detached process per node, started on
  demand, at most ``$VINECORE_CACHE_DOWNLOADS`` downloads at a time, lowest
  CPU and I/O priority) and returns at once, so the caller can read the url
  in place meanwhile. The downloader outlives the worker that asked, so a run
  that ends early still leaves the cache filled for the next one. With
  ``after_readers=True`` a download starts only once no process of the node
  holds :meth:`NodeCache.reading` (a run reading in place): during the run it
  would take CPU and bandwidth from the run; after it, it is free.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from . import _prefetcher
from ._fetch import RemoteStat, download, stat_url
from ._files import url_cache_name

__all__ = ["NodeCache", "Lease", "CacheEntry", "default_cache_dir", "parse_size"]

_SUFFIXES = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
             "t": 1000**4, "tb": 1000**4, "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4}


def parse_size(text: str | int) -> int:
    """Bytes from ``"20G"``, ``"500MB"``, ``"1.5GiB"`` or a number of bytes."""
    if isinstance(text, int):
        return text
    s = str(text).strip().lower().replace(" ", "")
    number = s.rstrip("kmgtib")
    unit = s[len(number):]
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if unit not in _SUFFIXES or value < 0:
        raise ValueError(f"cannot read {text!r} as a size; write e.g. 20G, 500M, 1.5GiB or a number of bytes")
    return int(value * _SUFFIXES[unit])


def default_cache_dir(app: str = "vinecore") -> str:
    """``$XDG_CACHE_HOME/<app>``, by default ``~/.cache/<app>``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, app)


@dataclass
class CacheEntry:
    key: str  # cache name of the url
    identity: str
    path: str
    size: int
    last_used: float
    url: str = ""


@dataclass
class Lease:
    """A cached copy in use: the entry cannot be evicted until ``release()`` (or garbage collection)."""

    path: str
    url: str
    identity: str
    size: int
    hit: bool  # True: the copy was there; False: this call downloaded it
    downloaded: int = 0  # bytes this call fetched from the url
    _fd: Any = field(default=None, repr=False)

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            fd.close()  # drops the shared lock

    def __enter__(self) -> "Lease":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


@contextlib.contextmanager
def _flock(path: str, mode: int = fcntl.LOCK_EX) -> Iterator[None]:
    with open(path, "a+b") as f:
        fcntl.flock(f, mode)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class NodeCache:
    """Whole-file copies of urls under ``root``, at most ``max_bytes`` in total, shared by a node's processes."""

    def __init__(self, root: str | os.PathLike[str], max_bytes: int | str = "10G", *, timeout: float = 60.0) -> None:
        self.root = os.path.abspath(os.path.expanduser(os.fspath(root)))
        self.max_bytes = parse_size(max_bytes)
        self.timeout = timeout
        try:
            os.makedirs(self.root, exist_ok=True)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot create the cache directory {self.root}: {exc.strerror}; "
                          "choose another one (ddr: --cache-dir) or turn the cache off (--cache never)") from None

    def __repr__(self) -> str:
        return f"<vinecore.NodeCache {self.root} max {self.max_bytes} bytes>"

    # ---------------------------------------------------------------- lookups
    def get(self, url: str, *, key: str | None = None, identity: str | None = None,
            identify: Callable[[str], str] | None = None, stat: RemoteStat | None = None) -> Lease | None:
        """A leased local copy of ``url``, downloaded if needed; ``None`` if it cannot be cached.

        ``key`` names the content when several urls serve the same file (ddr: a
        CMS logical file name read through different redirectors); default the
        url. ``identity`` asks for a particular content (an entry with another
        identity is not used). ``identify(path)`` names freshly downloaded
        content (default: the url's version stamp). Raises the url's
        :class:`~vinecore._fetch.RemoteFileError` when it cannot be read.
        """
        folder = os.path.join(self.root, url_cache_name(key or url))
        st = stat if stat is not None else stat_url(url, self.timeout)
        lease = self._lookup(folder, st, identity)
        if lease is not None or st.size > self.max_bytes:
            return lease
        os.makedirs(folder, exist_ok=True)
        with _flock(os.path.join(folder, ".fetch")):
            lease = self._lookup(folder, st, identity)  # another process may have fetched it meanwhile
            if lease is not None:
                return lease
            return self._fetch(url, folder, st, identify)

    def reading(self) -> "Lease":
        """Hold (until ``release()``) a shared lock that says: this process reads urls of this cache in
        place; prefetches asked with ``after_readers`` wait until no process holds one."""
        f = open(os.path.join(self.root, ".readers"), "a+b")
        fcntl.flock(f, fcntl.LOCK_SH)
        return Lease(f.name, "", "", 0, True, 0, f)

    def prefetch(self, url: str, *, key: str | None = None, identify: str | None = None,
                 stat: RemoteStat | None = None, after_readers: bool = False) -> bool:
        """Queue ``url`` for the node's background downloader (:mod:`vinecore._prefetcher`) and return.

        ``identify`` names a function ``"module:function"`` (path -> identity) imported
        by that process. With ``after_readers`` the download waits until no process
        holds :meth:`reading`. Returns False when it cannot fit, is queued already or
        is being downloaded. Failures go to ``prefetch.log``; the url is then simply
        not cached.
        """
        name = url_cache_name(key or url)
        folder = os.path.join(self.root, name)
        if stat is not None and stat.size > self.max_bytes:
            return False
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, ".fetch"), "a+b") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # another process of the node is downloading it
            fcntl.flock(f, fcntl.LOCK_UN)
        request = {"url": url, "key": key or "", "identify": identify or "", "max_bytes": self.max_bytes,
                   "timeout": self.timeout, "after_readers": after_readers}
        if not _prefetcher.enqueue(self.root, name, request):
            return False  # queued already
        _prefetcher.ensure_running(self.root)  # after enqueueing: see vinecore._prefetcher
        return True

    def lookup(self, url: str, *, key: str | None = None, identity: str | None = None,
               stat: RemoteStat | None = None) -> Lease | None:
        """The leased copy of ``url`` if the cache has its current version; never downloads."""
        folder = os.path.join(self.root, url_cache_name(key or url))
        st = stat if stat is not None else stat_url(url, self.timeout)
        return self._lookup(folder, st, identity)

    def _lookup(self, folder: str, st: RemoteStat, identity: str | None) -> Lease | None:
        for meta_path in self._metas(folder):
            meta = _read_meta(meta_path)
            if meta is None or meta.get("size") != st.size or meta.get("version") != st.version:
                continue
            if identity is not None and meta.get("identity") != identity:
                continue
            lease = self._lease(meta_path[: -len(".json")], meta, hit=True)
            if lease is not None:
                return lease
        return None

    def _lease(self, path: str, meta: dict[str, Any], *, hit: bool, downloaded: int = 0) -> Lease | None:
        try:
            fd = open(path, "rb")
        except FileNotFoundError:
            return None  # evicted between listing and opening
        fcntl.flock(fd, fcntl.LOCK_SH)
        if os.fstat(fd.fileno()).st_nlink == 0:  # evicted while we waited for the lock
            fd.close()
            return None
        with contextlib.suppress(OSError):
            os.utime(path + ".json")  # last use, for LRU
        return Lease(path, meta.get("url", ""), meta["identity"], int(meta["size"]), hit, downloaded, fd)

    # -------------------------------------------------------------- downloads
    def _fetch(self, url: str, folder: str, st: RemoteStat, identify: Callable[[str], str] | None) -> Lease | None:
        part = os.path.join(folder, f".part-{st.size}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        index = os.path.join(self.root, ".lock")
        with _flock(index):
            if not self._make_room(st.size):
                return None
            f = open(part, "w+b")  # created under the lock, so other reservations count it
            fcntl.flock(f, fcntl.LOCK_EX)  # held until committed: a live part is never taken for abandoned
        try:
            n = download(url, f, self.timeout)
            f.flush()
            if n != st.size:
                raise OSError(f"downloaded {n} bytes of {url} but its size is {st.size}: it changed while "
                              "being read; the next attempt reads it again")
            identity = identify(part) if identify is not None else f"v-{st.digest}"
            entry = os.path.join(folder, _safe(identity))
            meta = {"url": url, "identity": identity, "size": st.size, "version": st.version,
                    "fetched": time.time()}
            with _flock(index):  # eviction only runs under this lock: the entry is never seen unleased
                _write_json(entry + ".json", meta)
                os.replace(part, entry)
                fcntl.flock(f, fcntl.LOCK_SH)  # the writer's lock becomes the caller's lease
                self._drop_other_versions(folder, entry)
        except BaseException:
            f.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(part)
            raise
        return Lease(entry, url, identity, st.size, False, n, f)

    def _drop_other_versions(self, folder: str, keep: str) -> None:
        for meta_path in self._metas(folder):
            path = meta_path[: -len(".json")]
            if path != keep:
                self._try_evict(path)

    # --------------------------------------------------------------- eviction
    def entries(self) -> list[CacheEntry]:
        """Every complete entry, least recently used first."""
        out = []
        for folder in self._folders():
            for meta_path in self._metas(folder):
                meta = _read_meta(meta_path)
                path = meta_path[: -len(".json")]
                if meta is None or not os.path.exists(path):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    out.append(CacheEntry(os.path.basename(folder), meta["identity"], path, int(meta["size"]),
                                          os.stat(meta_path).st_mtime, meta.get("url", "")))
        out.sort(key=lambda e: e.last_used)
        return out

    def usage(self) -> int:
        """Bytes held: complete entries plus downloads in progress (at their full size)."""
        return sum(e.size for e in self.entries()) + sum(size for _, size in self._parts(clean=False))

    def _make_room(self, need: int) -> bool:
        """Evict least recently used entries not in use until ``need`` more bytes fit (under the index lock)."""
        entries = self.entries()
        used = sum(e.size for e in entries) + sum(size for _, size in self._parts(clean=True))
        for e in entries:
            if used + need <= self.max_bytes:
                break
            if self._try_evict(e.path):
                used -= e.size
        return used + need <= self.max_bytes

    def _try_evict(self, path: str) -> bool:
        try:
            fd = open(path, "rb")
        except FileNotFoundError:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path + ".json")
            return True
        with fd:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # a reader holds it
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path + ".json")
            os.unlink(path)
        return True

    def clear(self) -> None:
        """Evict every entry not in use."""
        with _flock(os.path.join(self.root, ".lock")):
            for e in self.entries():
                self._try_evict(e.path)

    # ---------------------------------------------------------------- listing
    def _folders(self) -> list[str]:
        try:
            names = os.listdir(self.root)
        except FileNotFoundError:
            return []
        return [os.path.join(self.root, n) for n in names if n.startswith("url-")]

    @staticmethod
    def _metas(folder: str) -> list[str]:
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            return []
        return [os.path.join(folder, n) for n in names if n.endswith(".json") and not n.startswith(".")]

    def _parts(self, *, clean: bool) -> list[tuple[str, int]]:
        """Downloads in progress as (path, full size); with ``clean``, delete those whose writer died."""
        out = []
        for folder in self._folders():
            with contextlib.suppress(FileNotFoundError):
                for n in os.listdir(folder):
                    if not n.startswith(".part-"):
                        continue
                    path = os.path.join(folder, n)
                    if clean and _abandoned(path):
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(path)
                        continue
                    out.append((path, int(n.split("-")[1])))
        return out


def _abandoned(path: str) -> bool:
    try:
        fd = open(path, "rb")
    except FileNotFoundError:
        return False
    with fd:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # its writer is alive
        return True


def _read_meta(path: str) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _write_json(path: str, obj: dict[str, Any]) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f)
    os.replace(tmp, path)


def _safe(identity: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in identity)[:120] or "content"
