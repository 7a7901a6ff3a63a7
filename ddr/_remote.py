"""Remote input: urls, CMS logical file names through redirectors, timeouts, and the node cache.

A file of a fileset is one of

* a local path;
* a url, read as given: ``root://host[:port]//path`` (XRootD), ``roots://``,
  ``http://`` and ``https://`` (WebDAV endpoints included), ``file://``;
* a CMS logical file name (LFN) ``/store/...`` when redirectors are given
  (``--redirector root://cmsxrootd.fnal.gov``): it is read as
  ``root://cmsxrootd.fnal.gov//store/...``. Without redirectors it is a local path.

Policy
------
Redirectors
    are tried in the order given, for each file: when a file cannot be opened
    through one (missing there, unreachable, timing out), the next is tried.
    A redirector that was unreachable is tried last for the next minute, in
    that worker process, so that each file does not wait for it again. Only
    when every redirector failed does the open fail, naming each with its
    error; a transient failure among them makes the whole failure transient
    (ddr retries it with backoff, starting again from the first redirector).
Timeouts
    ``read_timeout`` bounds every connection and request of uproot's XRootD
    and HTTP readers and of the cache's downloads. In each worker process the
    XRootD client's retry window is set from it
    (:func:`vinecore._fetch.xrootd_settings`), so a dead server fails within
    seconds instead of about 480 s, and a restarted one is used again.
Cache (``cache``), for remote files (urls and LFNs); local paths are always read in place
    ``auto`` (default): a file the node cache has is read from there; a file
    it lacks is read in place (only the bytes the analysis needs, so the run
    is as fast as without a cache), and the node downloads the whole file in
    the background once the run has ended there (:meth:`vinecore.NodeCache.prefetch`
    in a detached process, at most two at a time per node, after every
    worker of the node closed its files: downloading during the run would
    take CPU and bandwidth from it), for the next run. Files larger than
    ``cache_size`` are not cached.
    ``always``: a file is downloaded whole into the cache before its first
    chunk is read (the run waits for the download; files larger than the
    cache are read in place). ``never``: every file is read in place.
    A copy is keyed by the url (for an LFN, the LFN itself, whichever
    redirector served it) and the ROOT file's UUID. Before using a copy, each
    worker process checks the url's size and modification time (metadata
    only), so a file changed at the source is never served stale. See
    :mod:`vinecore._cache` for the on-disk format, locking and eviction.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import vinecore
from vinecore import apply_xrootd_settings, default_cache_dir, parse_size, server_of, stat_url

from .exceptions import InputErrorKind, InputFailure, classify_input

__all__ = ["RemoteOptions", "RemoteReader", "Opened", "RedirectorError", "is_url", "is_lfn", "candidates",
           "CACHE_MODES", "DEFAULT_CACHE_SIZE", "DEFAULT_READ_TIMEOUT"]

CACHE_MODES = ("auto", "always", "never")
DEFAULT_CACHE_SIZE = "20G"
DEFAULT_READ_TIMEOUT = 60.0
_DOWN_FOR = 60.0  # seconds an unreachable redirector is tried last
_REMOTE_SCHEMES = ("root://", "roots://", "http://", "https://")


def is_url(path: str) -> bool:
    return "://" in path


def is_remote(path: str) -> bool:
    return path.startswith(_REMOTE_SCHEMES)


def is_lfn(path: str) -> bool:
    """A CMS logical file name (``/store/...``)."""
    return path.startswith("/store/")


def candidates(path: str, redirectors: tuple[str, ...]) -> list[str]:
    """The urls to try for ``path``, in order: through each redirector for an LFN, else the path itself."""
    if redirectors and is_lfn(path):
        return [f"{r}/{path}" for r in redirectors]
    return [path]


@dataclass(frozen=True)
class RemoteOptions:
    """How remote files are found, read and cached (see the module docstring).

    ``cache_dir`` defaults to ``$XDG_CACHE_HOME/ddr`` (``~/.cache/ddr``);
    ``cache_size`` takes bytes or ``"20G"``, ``"500M"``.
    """

    redirectors: tuple[str, ...] = ()
    read_timeout: float = DEFAULT_READ_TIMEOUT
    cache: str = "auto"
    cache_dir: str | None = None
    cache_size: int | str = DEFAULT_CACHE_SIZE

    def __post_init__(self) -> None:
        reds = (self.redirectors,) if isinstance(self.redirectors, str) else tuple(self.redirectors)
        for r in reds:
            if not is_remote(r):
                raise ValueError(f"redirector {r!r} is not a root://, roots://, http:// or https:// url; write e.g. "
                                 "--redirector root://cmsxrootd.fnal.gov")
        object.__setattr__(self, "redirectors", tuple(r.rstrip("/") for r in reds))
        if self.cache not in CACHE_MODES:
            raise ValueError(f"cache must be one of {', '.join(CACHE_MODES)}, got {self.cache!r}")
        if not self.read_timeout or self.read_timeout <= 0:
            raise ValueError(f"read_timeout must be positive seconds, got {self.read_timeout!r}")
        object.__setattr__(self, "cache_size", parse_size(self.cache_size))

    @classmethod
    def coerce(cls, value: "RemoteOptions | Mapping[str, Any] | None") -> "RemoteOptions":
        if value is None:
            return cls()
        if isinstance(value, RemoteOptions):
            return value
        return cls(**dict(value))

    @property
    def cache_root(self) -> str:
        return os.path.abspath(os.path.expanduser(self.cache_dir or default_cache_dir("ddr")))

    def uproot_options(self, url: str) -> dict[str, Any]:
        """uproot/fsspec options that bound reading ``url`` by ``read_timeout``.

        Each open gets a filesystem object of its own (``skip_instance_cache``):
        fsspec would share one per server, and fsspec-xrootd keeps its file
        handles there, so closing one file (or a handle broken by a server
        restart) would break the other files read through it."""
        t = max(1, int(round(self.read_timeout)))
        if url.startswith(("root://", "roots://")):
            return {"timeout": t, "skip_instance_cache": True}  # fsspec-xrootd: every request
        if url.startswith(("http://", "https://")):
            import aiohttp

            return {"client_kwargs": {"timeout": aiohttp.ClientTimeout(total=None, sock_connect=t, sock_read=t)},
                    "skip_instance_cache": True}
        return {}


class RedirectorError(OSError):
    """Every redirector failed for one file; ``attempts`` holds ``(url, "Type: message", InputFailure)``."""

    def __init__(self, path: str, attempts: list[tuple[str, str, InputFailure]]) -> None:
        self.path, self.attempts = path, list(attempts)
        kinds = {f.kind for _, _, f in attempts}
        if InputErrorKind.TRANSIENT in kinds:
            kind = InputErrorKind.TRANSIENT
        elif kinds == {InputErrorKind.MISSING}:
            kind = InputErrorKind.MISSING
        else:
            kind = next(f.kind for _, _, f in attempts if f.kind is not InputErrorKind.MISSING)
        servers = ", ".join(server_of(u) for u, _, _ in attempts)
        if kind is InputErrorKind.TRANSIENT:
            hint = (f"ddr retries transient errors; if it keeps failing, check {servers} or add another "
                    "--redirector, or use --skip-bad-files to continue without the file")
        else:
            hint = "check that the file exists behind the redirectors, or use --skip-bad-files to continue without it"
        self.input_failure = InputFailure(kind, f"every redirector failed ({servers})", hint, servers)
        tried = "; ".join(f"{server_of(u)}: {f.description} ({err[:200]})" for u, err, f in attempts)
        super().__init__(f"tried {len(attempts)} redirector(s): {tried}")

    def __reduce__(self) -> tuple:
        return (RedirectorError, (self.path, self.attempts))


@dataclass
class Opened:
    """One open input file: the uproot directory, what was read and from where."""

    file: Any  # uproot ReadOnlyDirectory
    url: str  # what was opened: the path, url, or redirector url
    source: str  # "local", "remote" (read in place) or "cache"
    lease: Any = None  # vinecore Lease while the cached copy is in use
    downloaded: int = 0  # bytes fetched into the cache by this open
    reported: int = field(default=0)  # bytes of the source already reported

    @property
    def bytes_read(self) -> int:
        try:
            return int(self.file.file.source.num_requested_bytes)
        except AttributeError:  # pragma: no cover - an uproot source without counters
            return 0

    def close(self) -> None:
        try:
            self.file.close()
        finally:
            if self.lease is not None:
                self.lease.release()
                self.lease = None


def root_uuid(path: str) -> str:
    """The ROOT file's UUID (identity of a cached copy), as uproot reports it."""
    import uproot

    with uproot.open({path: None}) as f:
        return str(f.file.uuid)


class RemoteReader:
    """Opens fileset paths with uproot through redirectors, timeouts and the node cache (one per worker process)."""

    def __init__(self, options: RemoteOptions | None = None) -> None:
        self.options = options or RemoteOptions()
        self._down: dict[str, float] = {}  # server -> when it was last unreachable
        self._prefetched: set[str] = set()  # keys this process asked the node to download
        self._reading: Any = None  # NodeCache.reading() while this reader may read urls in place
        self._configured = False

    def __getstate__(self) -> dict[str, Any]:
        return {"options": self.options}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["options"])

    def close(self) -> None:
        """The run is over here: background downloads may start (see ``cache``)."""
        reading, self._reading = self._reading, None
        if reading is not None:
            reading.release()

    def mark_down(self, url: str) -> None:
        self._down[server_of(url)] = time.monotonic()

    def _ordered(self, urls: list[str]) -> list[str]:
        now = time.monotonic()
        return sorted(urls, key=lambda u: now - self._down.get(server_of(u), -1e9) < _DOWN_FOR)

    def open(self, path: str, uproot_options: Mapping[str, Any]) -> Opened:
        """Open ``path`` (trying each candidate url in turn); the errors are the underlying ones, or a
        :class:`RedirectorError` when several redirectors all failed."""
        urls = self._ordered(candidates(path, self.options.redirectors))
        if not self._configured and any(is_remote(u) for u in urls):
            apply_xrootd_settings(self.options.read_timeout)
            self._configured = True
        if urls == [path]:  # no redirector involved: the error is the file's own
            return self._open_one(path, path, uproot_options)
        attempts: list[tuple[str, str, InputFailure]] = []
        for url in urls:
            try:
                return self._open_one(path, url, uproot_options)
            except Exception as exc:  # noqa: BLE001 - classified; the next redirector may have it
                failure = classify_input(exc, url)
                if failure.kind in (InputErrorKind.SETUP, InputErrorKind.RESOURCE):
                    raise
                if failure.kind is InputErrorKind.TRANSIENT:
                    self.mark_down(url)
                attempts.append((url, f"{type(exc).__name__}: {' '.join(str(exc).split())}", failure))
        raise RedirectorError(path, attempts)

    def _open_one(self, key: str, url: str, uproot_options: Mapping[str, Any]) -> Opened:
        import uproot

        opt = self.options
        if not is_remote(url):
            return Opened(uproot.open({url: None}, **uproot_options), url, "local")
        options = {**opt.uproot_options(url), **uproot_options}
        if opt.cache == "never":
            if url.startswith(("root://", "roots://")):
                stat_url(url, opt.read_timeout)  # the XRootD status of a missing file or a dead server
            return Opened(uproot.open({url: None}, **options), url, "remote")
        cache = vinecore.node_cache(opt.cache_root, opt.cache_size, timeout=opt.read_timeout)
        if opt.cache == "always":
            lease = cache.get(url, key=key, identify=root_uuid)
        else:
            if self._reading is None:
                self._reading = cache.reading()
            st = stat_url(url, opt.read_timeout)  # metadata only; also the status of a missing file
            lease = cache.lookup(url, key=key, stat=st)
            if lease is None and key not in self._prefetched:
                self._prefetched.add(key)
                cache.prefetch(url, key=key, identify=f"{__name__}:root_uuid", stat=st, after_readers=True)
        if lease is None:  # not cached (yet), or larger than the cache: read in place
            return Opened(uproot.open({url: None}, **options), url, "remote")
        if lease.downloaded:
            vinecore.report_metric("bytes_remote", lease.downloaded)
        try:
            file = uproot.open({lease.path: None}, **uproot_options)
        except BaseException:
            lease.release()
            raise
        return Opened(file, url, "cache", lease, lease.downloaded)

    def report(self, opened: Opened) -> None:
        """Report the bytes read from ``opened`` since the last report (``vinecore.report_metric``)."""
        now = opened.bytes_read
        delta, opened.reported = now - opened.reported, now
        if delta > 0:
            vinecore.report_metric(f"bytes_{opened.source}", delta)
