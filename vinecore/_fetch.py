"""Reading declared urls: a version stamp (``stat_url``) and whole-file downloads (``download``).

Schemes: ``root://`` and ``roots://`` (the XRootD client, PyPI package ``xrootd``,
imported on first use), ``http://`` and ``https://`` (the standard library;
``https`` checks certificates against the default trust store, which
``SSL_CERT_FILE`` can point elsewhere), and ``file://``.

Policy
------
* Every network operation is bounded by ``timeout`` seconds: connecting, each
  request, each read. The XRootD client's own retry loop is bounded too
  (:func:`xrootd_settings`): by default it retries a connection for about
  480 s and remembers a failed server for 30 minutes, which turns a server
  that is down, or restarting, into minutes of silence.
* ``stat_url`` reads metadata only (an XRootD ``stat``, an HTTP ``HEAD``),
  never file content: a cache validates its copies with it.
* Failures are :class:`RemoteFileError`, an ``OSError`` whose ``errno`` is the
  POSIX meaning of the protocol's status (``ENOENT`` for XRootD's ``kXR_NotFound``
  and HTTP 404, ``ECONNREFUSED``, ``ETIMEDOUT``, ...) and which keeps the
  status itself (``status``: the HTTP status or the XRootD client's status code;
  ``server_errno``: XRootD's ``kXR_*`` error number) and the ``server`` it
  talked to. Callers classify by those, never by the message.
"""

from __future__ import annotations

import errno as _errno
import hashlib
import math
import os
import shutil
import socket
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable

__all__ = ["RemoteStat", "RemoteFileError", "stat_url", "download", "server_of", "scheme_of",
           "xrootd_settings", "apply_xrootd_settings", "XROOTD_ERRNO", "XROOTD_CLIENT_ERRNO"]

_BLOCK = 8 * 1024 * 1024

#: XRootD server error numbers (``kXR_*``, XProtocol.hh) and their POSIX meaning.
XROOTD_ERRNO: dict[int, int] = {
    3000: _errno.EINVAL, 3001: _errno.EINVAL, 3002: _errno.ENAMETOOLONG, 3003: _errno.EDEADLK,
    3004: _errno.EBADF, 3005: _errno.EIO, 3006: _errno.EINVAL, 3007: _errno.EIO, 3008: _errno.ENOMEM,
    3009: _errno.ENOSPC, 3010: _errno.EACCES, 3011: _errno.ENOENT, 3012: _errno.EIO,
    3013: _errno.ENOTSUP, 3014: _errno.EHOSTUNREACH, 3015: _errno.EISDIR, 3016: _errno.EISDIR,
    3017: _errno.ECANCELED, 3019: _errno.EIO, 3020: _errno.EAGAIN, 3021: _errno.EDQUOT,
    3024: _errno.EBUSY, 3025: _errno.EROFS, 3029: _errno.ENOENT, 3030: _errno.EACCES,
    3034: _errno.ETIMEDOUT, 3035: _errno.ETIMEDOUT,
}

#: XRootD client status codes (XrdClStatus.hh) that say the server could not be reached or stopped answering.
XROOTD_CLIENT_ERRNO: dict[int, int] = {
    101: _errno.EHOSTUNREACH,  # errInvalidAddr
    102: _errno.ECONNRESET,  # errSocketError
    103: _errno.ETIMEDOUT,  # errSocketTimeout
    104: _errno.ECONNRESET,  # errSocketDisconnected
    107: _errno.ECONNRESET,  # errStreamDisconnect
    108: _errno.ECONNREFUSED,  # errConnectionError
    109: _errno.ECONNRESET,  # errInvalidSession
    206: _errno.ETIMEDOUT,  # errOperationExpired
    207: _errno.EINTR,  # errOperationInterrupted
}
_XROOTD_ERROR_RESPONSE = 400  # errErrorResponse: the server answered with a kXR_* error


@dataclass(frozen=True)
class RemoteStat:
    """What ``stat_url`` knows about a url: its size and a stamp that changes when the content does."""

    size: int
    version: str  # "mtime:<seconds>", "etag:<etag>", "modified:<Last-Modified>" or "size:<bytes>"

    @property
    def digest(self) -> str:
        return hashlib.sha256(f"{self.size}|{self.version}".encode()).hexdigest()[:16]


class RemoteFileError(OSError):
    """A url that could not be read: ``errno`` (POSIX), ``status`` (protocol), ``server``, ``url``."""

    def __init__(self, err: int, message: str, *, url: str, status: int | None = None,
                 server_errno: int | None = None) -> None:
        super().__init__(err, message)
        self.url, self.status, self.server_errno = url, status, server_errno
        self.server = server_of(url)

    def __reduce__(self) -> tuple:
        return (_rebuild_remote_error, (self.errno, self.strerror, self.url, self.status, self.server_errno))

    def __str__(self) -> str:
        return f"{self.strerror} ({self.url})"


def _rebuild_remote_error(err, message, url, status, server_errno) -> RemoteFileError:
    return RemoteFileError(err, message, url=url, status=status, server_errno=server_errno)


def scheme_of(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else ""


def server_of(url: str) -> str:
    """``scheme://host[:port]`` of a url (what an error names), or ``localhost`` for a path."""
    if "://" not in url:
        return "localhost"
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _seconds(timeout: float) -> int:
    return max(1, int(math.ceil(timeout)))


# ------------------------------------------------------------------ XRootD
def xrootd_settings(timeout: float) -> dict[str, int]:
    """The XRootD client's timeouts and retry window for a ``timeout`` in seconds.

    A connection is retried once, in windows of at most 5 s; requests and idle
    streams time out after ``timeout``; a failed server is forgotten after one
    window, so a restarted server is used again at the next attempt.
    """
    t = _seconds(timeout)
    window = min(5, t)
    return {"ConnectionWindow": window, "ConnectionRetry": 2, "RequestTimeout": t, "StreamTimeout": t,
            "StreamErrorWindow": window, "TimeoutResolution": 1}


def _env_name(key: str) -> str:
    return "XRD_" + key.upper()


_applied: dict[str, str] = {}  # XRD_* variables this module set, and to what


def apply_xrootd_settings(timeout: float) -> dict[str, int]:
    """Set :func:`xrootd_settings` in this process: in the loaded XRootD client and as ``XRD_*`` variables.

    The client is loaded first (when installed), so that a later call with
    another timeout can still change them. Variables the user exported
    (``XRD_CONNECTIONRETRY=...``) win over ours. Returns what applies.
    """
    try:
        from XRootD import client

        client.EnvGetInt("RequestTimeout")  # the client reads the environment now, before we add to it:
        # values it imports from the environment can no longer be changed, ours must stay changeable
    except ImportError:  # no client: the variables are for whoever loads it later
        client = None
    wanted = xrootd_settings(timeout)
    for key, value in wanted.items():
        name = _env_name(key)
        current = os.environ.get(name)
        if current is not None and current != _applied.get(name):
            continue  # the user's
        os.environ[name] = _applied[name] = str(value)
        if client is not None:
            client.EnvPutInt(key, value)
    return {k: int(os.environ[_env_name(k)]) for k in wanted}


def _xrootd_client() -> Any:
    try:
        from XRootD import client
    except ImportError as exc:
        raise ModuleNotFoundError(
            "reading root:// urls needs the XRootD client: pip install xrootd", name="XRootD") from exc
    return client


def _xrootd_error(status: Any, url: str, doing: str) -> RemoteFileError:
    code = int(getattr(status, "code", 0) or 0)
    server_errno = int(getattr(status, "errno", 0) or 0)
    if code == _XROOTD_ERROR_RESPONSE and server_errno:
        err = XROOTD_ERRNO.get(server_errno, _errno.EIO)
    else:
        err = XROOTD_CLIENT_ERRNO.get(code, _errno.EIO)
        server_errno = server_errno or None
    message = " ".join(str(getattr(status, "message", status)).split())
    return RemoteFileError(err, f"{doing}: {message}", url=url, status=code, server_errno=server_errno)


def _xrootd_stat(url: str, timeout: float) -> RemoteStat:
    client = _xrootd_client()
    parts = urllib.parse.urlsplit(url)
    fs = client.FileSystem(f"{parts.scheme}://{parts.netloc}")
    status, info = fs.stat(parts.path, timeout=_seconds(timeout))
    if not status.ok:
        raise _xrootd_error(status, url, "stat failed")
    return RemoteStat(int(info.size), f"mtime:{int(info.modtime)}")


def _xrootd_copy(url: str, out: BinaryIO, timeout: float) -> int:
    """The XRootD client's own copy (several chunks in flight: about half the CPU of a read loop) into
    the file ``out`` is open on (it truncates and writes the same inode, so locks on ``out`` hold)."""
    client = _xrootd_client()
    cp = client.CopyProcess()
    cp.add_job(url, out.name, force=True, inittimeout=_seconds(timeout))
    status = cp.prepare()
    if status.ok:
        status, results = cp.run()
        if results and "status" in results[0]:
            status = results[0]["status"]
    if not status.ok:
        raise _xrootd_error(status, url, "copy failed")
    out.seek(0, os.SEEK_END)
    return out.tell()


def _xrootd_download(url: str, out: BinaryIO, timeout: float, on_bytes: Callable[[int], None] | None) -> int:
    if on_bytes is None and isinstance(getattr(out, "name", None), str) and os.path.isfile(out.name):
        return _xrootd_copy(url, out, timeout)
    client = _xrootd_client()
    from XRootD.client.flags import OpenFlags

    t = _seconds(timeout)
    f = client.File()
    status, _ = f.open(url, OpenFlags.READ, timeout=t)
    if not status.ok:
        raise _xrootd_error(status, url, "open failed")
    try:
        status, info = f.stat(timeout=t)
        if not status.ok:
            raise _xrootd_error(status, url, "stat failed")
        size, offset = int(info.size), 0
        while offset < size:
            status, data = f.read(offset, min(_BLOCK, size - offset), timeout=t)
            if not status.ok:
                raise _xrootd_error(status, url, f"read at byte {offset} failed")
            if not data:
                raise RemoteFileError(_errno.EIO, f"the server sent 0 bytes at byte {offset} of {size}", url=url)
            out.write(data)
            offset += len(data)
            if on_bytes is not None:
                on_bytes(len(data))
        return offset
    finally:
        f.close(timeout=t)


# -------------------------------------------------------------------- HTTP
_HTTP_ERRNO = {404: _errno.ENOENT, 410: _errno.ENOENT, 401: _errno.EACCES, 403: _errno.EACCES,
               408: _errno.ETIMEDOUT, 429: _errno.EAGAIN, 502: _errno.EAGAIN, 503: _errno.EAGAIN,
               504: _errno.ETIMEDOUT}


def _http_error(exc: BaseException, url: str, doing: str) -> RemoteFileError:
    if isinstance(exc, urllib.error.HTTPError):
        err = _HTTP_ERRNO.get(exc.code, _errno.EIO)
        return RemoteFileError(err, f"{doing}: HTTP {exc.code} {exc.reason}", url=url, status=exc.code)
    reason = getattr(exc, "reason", exc)
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return RemoteFileError(_errno.ETIMEDOUT, f"{doing}: timed out", url=url)
    err = getattr(reason, "errno", None) or _errno.EIO
    return RemoteFileError(err, f"{doing}: {type(reason).__name__}: {reason}", url=url)


def _http_stat(url: str, timeout: float) -> RemoteStat:
    req = urllib.request.Request(url, method="HEAD")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            headers = r.headers
    except (urllib.error.URLError, OSError) as exc:
        raise _http_error(exc, url, "HEAD failed") from None
    length = headers.get("Content-Length")
    if length is None:
        raise RemoteFileError(_errno.EIO, "HEAD gave no Content-Length: the server cannot serve byte ranges",
                              url=url)
    etag, modified = headers.get("ETag"), headers.get("Last-Modified")
    version = f"etag:{etag}" if etag else f"modified:{modified}" if modified else f"size:{length}"
    return RemoteStat(int(length), version)


def _http_download(url: str, out: BinaryIO, timeout: float, on_bytes: Callable[[int], None] | None) -> int:
    done = 0
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            while True:
                block = r.read1(_BLOCK)  # what has arrived: the part file grows as the bytes come
                if not block:
                    break
                out.write(block)
                done += len(block)
                if on_bytes is not None:
                    on_bytes(len(block))
    except (urllib.error.URLError, OSError) as exc:
        raise _http_error(exc, url, f"GET failed after {done} bytes") from None
    return done


# -------------------------------------------------------------------- file
def _local_path(url: str) -> str:
    return urllib.parse.unquote(urllib.parse.urlsplit(url).path) if url.startswith("file://") else url


def _file_stat(url: str) -> RemoteStat:
    st = os.stat(_local_path(url))
    return RemoteStat(st.st_size, f"mtime:{st.st_mtime_ns}")


def _file_download(url: str, out: BinaryIO, on_bytes: Callable[[int], None] | None) -> int:
    with open(_local_path(url), "rb") as f:
        shutil.copyfileobj(f, out, _BLOCK)
        n = f.tell()
    if on_bytes is not None:
        on_bytes(n)
    return n


# -------------------------------------------------------------------- API
def _unsupported(url: str) -> RemoteFileError:
    return RemoteFileError(_errno.EPROTONOSUPPORT, f"unsupported url scheme {scheme_of(url)!r}; vinecore reads "
                           "root://, roots://, http://, https:// and file:// urls", url=url)


def stat_url(url: str, timeout: float = 60.0) -> RemoteStat:
    """Size and version stamp of ``url``, from metadata only."""
    scheme = scheme_of(url)
    if scheme in ("root", "roots"):
        return _xrootd_stat(url, timeout)
    if scheme in ("http", "https"):
        return _http_stat(url, timeout)
    if scheme in ("file", ""):
        return _file_stat(url)
    raise _unsupported(url)


def download(url: str, out: BinaryIO, timeout: float = 60.0, *,
             on_bytes: Callable[[int], None] | None = None) -> int:
    """Write the whole content of ``url`` to ``out``; returns the number of bytes."""
    scheme = scheme_of(url)
    if scheme in ("root", "roots"):
        return _xrootd_download(url, out, timeout, on_bytes)
    if scheme in ("http", "https"):
        return _http_download(url, out, timeout, on_bytes)
    if scheme in ("file", ""):
        return _file_download(url, out, on_bytes)
    raise _unsupported(url)
