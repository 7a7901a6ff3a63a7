"""Classification of input errors by exception type, never by words in messages.

:func:`classify_input` answers what kind of failure an error met while opening
or reading a file is (an :class:`InputErrorKind`), with a short description,
the fix and the server involved; ``ddr/exceptions.py`` has the table of kinds
and what ddr does with each. Two kinds are not the file's fault and are never
reported as bad input: ``setup`` (a package missing on the workers, a full
disk: the run stops with :class:`~ddr.exceptions.WorkerSetupError`, also under
``--skip-bad-files``) and ``resource`` (out of memory, however a library
reported it: the error propagates unwrapped, vinecore ends the task as resource
exhaustion and the chunk is split).
"""

from __future__ import annotations

import enum
import errno
import re
import sys
import zlib
from dataclasses import dataclass

__all__ = ["InputErrorKind", "InputFailure", "classify_input", "classify_input_error", "xrootd_status",
           "out_of_memory"]


class InputErrorKind(str, enum.Enum):
    """What kind of failure an input error is; only ``TRANSIENT`` is worth retrying."""

    MISSING = "missing"  # the file or url does not exist
    DENIED = "denied"  # exists, but this user may not read it
    TRANSIENT = "transient"  # connection refused or reset, timeouts, a busy or restarting server
    CORRUPT = "corrupt"  # truncated, corrupt, not a ROOT file, not what the schema needs
    SETUP = "setup"  # a package is missing on the worker: not the file's fault
    RESOURCE = "resource"  # out of memory: never bad input (the chunk is split instead)

    def __str__(self) -> str:  # pragma: no cover - cosmetic
        return self.value


@dataclass(frozen=True)
class InputFailure:
    """The classification of one input error: kind, a short description, the fix, the server involved."""

    kind: InputErrorKind
    description: str
    hint: str
    server: str | None = None

    @property
    def permanent(self) -> bool:
        return self.kind is not InputErrorKind.TRANSIENT


_SKIP = "use --skip-bad-files to continue without it"
_HINTS = {
    InputErrorKind.MISSING: f"check the path (for a /store/... name, the --redirector), or {_SKIP}",
    InputErrorKind.DENIED: f"check the file's permissions (remote: your grid proxy or token), or {_SKIP}",
    InputErrorKind.TRANSIENT: "ddr retries transient errors; if it keeps failing, check the storage, "
                              "or use --skip-bad-files to continue without the file",
    InputErrorKind.CORRUPT: f"fix or remove the file, or {_SKIP}",
    InputErrorKind.RESOURCE: "give each task more memory (--memory) or use smaller chunks",
}

# import name -> pip package, for "setup" errors
_PACKAGES = {"fsspec_xrootd": "fsspec-xrootd", "XRootD": "xrootd", "pyxrootd": "xrootd", "aiohttp": "aiohttp",
             "fsspec": "fsspec", "requests": "requests", "lz4": "lz4", "xxhash": "xxhash",
             "zstandard": "zstandard", "cramjam": "cramjam", "isal": "isal", "deflate": "deflate",
             "coffea": "coffea", "uproot": "uproot", "awkward": "awkward", "s3fs": "s3fs", "gcsfs": "gcsfs"}

# XRootD's server error numbers (kXR_*) and client status codes worth retrying
_XROOTD_TRANSIENT_SERVER = frozenset({3005, 3007, 3012, 3014, 3017, 3020, 3024, 3034, 3035})
_XROOTD_CLIENT_CODES = {  # XrdClStatus.hh code -> the text XRootD prints for it
    101: "Invalid address", 102: "Socket error", 103: "Socket timeout", 104: "Socket disconnected",
    105: "Poller error", 106: "Socket opt error", 107: "Stream disconnect", 108: "Connection error",
    109: "Invalid session", 110: "TLS error", 201: "Invalid message", 202: "Hand shake failed",
    203: "Login failed", 204: "Auth failed", 205: "Query not supported", 206: "Operation expired",
    207: "Operation interrupted", 208: "Threshold exceeded", 301: "No more free SIDs",
    302: "Invalid redirect URL", 303: "Invalid response", 304: "Resource not found", 305: "CheckSum error",
    306: "Redirect limit has been reached", 400: "Error response", 14: "Received corrupted data",
    16: "No more replicas to try"}
_XROOTD_CODE_OF_TEXT = {text: code for code, text in _XROOTD_CLIENT_CODES.items()}
_XROOTD_TRANSIENT_CLIENT = frozenset({101, 102, 103, 104, 105, 107, 108, 109, 206, 207, 208, 301})
_XROOTD_STATUS = re.compile(r"\[(?:ERROR|FATAL)\] ([A-Za-z ]+?)(?::|\s*$|\s*\n)")
_XROOTD_SERVER_ERRNO = re.compile(r"\[(3\d{3})\]")


def xrootd_status(exc: BaseException) -> tuple[int | None, int | None]:
    """``(client status code, server kXR error number)`` of an XRootD error, or ``(None, None)``.

    vinecore's :class:`~vinecore._fetch.RemoteFileError` carries them; fsspec-xrootd
    raises a plain OSError holding the status's canonical text (``[FATAL] Connection
    error``, ``[ERROR] Server responded with an error: [3011] ...``), decoded here
    through XRootD's own table of status texts.
    """
    status = getattr(exc, "status", None)
    if getattr(exc, "server_errno", None) is not None or (
            status is not None and type(exc).__name__ == "RemoteFileError" and str(getattr(exc, "url", "")).startswith(
                ("root://", "roots://"))):
        return status, getattr(exc, "server_errno", None)
    text = str(exc)
    m = _XROOTD_STATUS.search(text)
    if m is None:
        return None, None
    code = _XROOTD_CODE_OF_TEXT.get(m.group(1).strip())
    server = _XROOTD_SERVER_ERRNO.search(text)
    return code, int(server.group(1)) if server else None


def _missing_package(exc: BaseException) -> str | None:
    seen = 0
    e: BaseException | None = exc
    while e is not None and seen < 5:
        name = getattr(e, "name", None)
        if isinstance(e, ImportError) and name:
            top = name.split(".")[0]
            return _PACKAGES.get(top, top.replace("_", "-"))
        e = e.__cause__ or e.__context__
        seen += 1
    return None


def _raised_in(exc: BaseException, fragment: str) -> bool:
    tb = exc.__traceback__
    while tb is not None:
        if fragment in tb.tb_frame.f_code.co_filename.replace("\\", "/"):
            return True
        tb = tb.tb_next
    return False


def _is_instance_of(exc: BaseException, module: str, names: tuple[str, ...]) -> bool:
    """isinstance against classes of ``module`` if it is loaded (an exception of an unloaded module cannot exist)."""
    mod = sys.modules.get(module)
    classes = tuple(c for c in (getattr(mod, n, None) for n in names) if isinstance(c, type)) if mod else ()
    return bool(classes) and isinstance(exc, classes)


def _http_status(exc: BaseException) -> int | None:
    if _is_instance_of(exc, "aiohttp", ("ClientResponseError",)):
        return int(exc.status)  # type: ignore[attr-defined]
    if _is_instance_of(exc, "urllib.error", ("HTTPError",)):
        return int(exc.code)  # type: ignore[attr-defined]
    if type(exc).__name__ == "RemoteFileError" and str(getattr(exc, "url", "")).startswith("http"):
        return getattr(exc, "status", None)
    return None


def _server_of(exc: BaseException, path: str | None) -> str | None:
    server = getattr(exc, "server", None)
    if isinstance(server, str) and server:
        return server
    if path and "://" in path and not path.startswith("file://"):
        from vinecore import server_of

        return server_of(path)
    return None


def out_of_memory(exc: BaseException) -> bool:
    """Did ``exc`` come from running out of memory? (:func:`vinecore.is_out_of_memory`: a ``MemoryError``,
    ``ENOMEM``, a thread whose stack could not be mapped, raised or among the causes.)"""
    from vinecore import is_out_of_memory

    return is_out_of_memory(exc)


def classify_input(exc: BaseException, path: str | None = None) -> InputFailure:
    """Classify an error met while opening or reading ``path`` (a local path or url), by exception type.

    In order: ddr's own errors keep their kind; running out of memory
    (:func:`out_of_memory`) is a resource limit; ``ImportError`` is a setup
    problem (naming the package), and so is a full disk (``ENOSPC``,
    ``EDQUOT``: e.g. the node cache's download); HTTP errors go
    by status and XRootD errors by status code (:func:`xrootd_status`); other
    ``OSError``s by errno (``ENOENT`` missing, ``EACCES`` denied, connection and
    timeout errnos transient) or subclass; uproot's short reads are corrupt for a
    local file and transient for a remote one; decompression and deserialization
    errors, ``ValueError``, a missing object and errors raised by a coffea schema
    are corrupt input. Anything else is permanent.
    """
    remote = bool(path) and "://" in str(path) and not str(path).startswith("file://")
    server = _server_of(exc, path)

    def fail(kind: InputErrorKind, description: str) -> InputFailure:
        hint = _HINTS.get(kind, "")
        if kind is InputErrorKind.TRANSIENT and server:
            hint = (f"ddr tries the next --redirector, if any, and retries transient errors with backoff; if it "
                    f"keeps failing, check {server}, or use --skip-bad-files to continue without the file")
        return InputFailure(kind, description, hint, server)

    from .exceptions import BadInputError

    if isinstance(exc, BadInputError):
        kind = InputErrorKind(exc.kind)
        return InputFailure(kind, exc.what, exc.hint, exc.server)
    carried = getattr(exc, "input_failure", None)  # classified where it was raised (ddr._remote.RedirectorError)
    if isinstance(carried, InputFailure):
        return carried
    if out_of_memory(exc):
        return fail(InputErrorKind.RESOURCE, "out of memory")
    if isinstance(exc, ImportError):
        package = _missing_package(exc)
        fix = f"pip install {package}" if package else "install the package the error names"
        return InputFailure(InputErrorKind.SETUP,
                            f"a package is missing{f' ({package})' if package else ''}",
                            f"{fix} where the workers run; this is not a problem of the file", server)
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return InputFailure(InputErrorKind.SETUP, "no space left on the worker's disk",
                            "free some space where the workers run (the node cache of remote files is bounded by "
                            "--cache-size, under --cache-dir; or run with --cache never); this is not a problem "
                            "of the file", server)
    status = _http_status(exc)
    if status is not None:
        if status in (404, 410):
            return fail(InputErrorKind.MISSING, f"file not found (HTTP {status})")
        if status in (401, 403):
            return fail(InputErrorKind.DENIED, f"permission denied (HTTP {status})")
        if status in (408, 425, 429) or status >= 500:
            return fail(InputErrorKind.TRANSIENT, f"server error (HTTP {status})")
        return fail(InputErrorKind.CORRUPT, f"the server refused the read (HTTP {status})")
    code, server_errno = xrootd_status(exc)
    if code is not None or server_errno is not None:
        if server_errno in (3011, 3029):
            return fail(InputErrorKind.MISSING, f"file not found (XRootD error {server_errno})")
        if server_errno in (3010, 3030, 3028):
            return fail(InputErrorKind.DENIED, f"permission denied (XRootD error {server_errno})")
        if server_errno in _XROOTD_TRANSIENT_SERVER or (server_errno is None and code in _XROOTD_TRANSIENT_CLIENT):
            what = _XROOTD_CLIENT_CODES.get(code or 0, "server error").lower()
            return fail(InputErrorKind.TRANSIENT, f"{what} (XRootD {server_errno or code})")
        if code in (203, 204):
            return fail(InputErrorKind.DENIED, f"authentication failed (XRootD {code})")
        return fail(InputErrorKind.CORRUPT, f"XRootD error {server_errno or code}")
    if isinstance(exc, (FileNotFoundError, NotADirectoryError)):
        return fail(InputErrorKind.MISSING, "file not found")
    if isinstance(exc, IsADirectoryError):
        return fail(InputErrorKind.CORRUPT, "is a directory, not a ROOT file")
    if isinstance(exc, PermissionError):
        return fail(InputErrorKind.DENIED, "permission denied")
    if isinstance(exc, (TimeoutError, ConnectionError)) or _is_instance_of(exc, "asyncio", ("TimeoutError",)):
        return fail(InputErrorKind.TRANSIENT, "timeout or connection error")
    if _is_instance_of(exc, "aiohttp", ("ClientConnectionError", "ClientPayloadError", "ServerTimeoutError")):
        return fail(InputErrorKind.TRANSIENT, "connection error")
    if isinstance(exc, OSError):
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return fail(InputErrorKind.MISSING, "file not found")
        if exc.errno in (errno.EACCES, errno.EPERM):
            return fail(InputErrorKind.DENIED, "permission denied")
        if exc.errno is not None:
            return fail(InputErrorKind.TRANSIENT, f"I/O error ({errno.errorcode.get(exc.errno, exc.errno)})")
        if _raised_in(exc, "/uproot/source/") or not remote:  # a short read (uproot's Chunk checks the length)
            if remote:
                return fail(InputErrorKind.TRANSIENT, "short read from remote storage")
            return fail(InputErrorKind.CORRUPT, "file is truncated or not a ROOT file")
        return fail(InputErrorKind.TRANSIENT, "I/O error")
    if type(exc).__name__ == "KeyInFileError":
        return fail(InputErrorKind.CORRUPT, "object not found in the file")
    if isinstance(exc, zlib.error) or type(exc).__name__ == "DeserializationError" or \
            type(exc).__module__.split(".")[0] in ("lz4", "zstandard", "cramjam", "isal", "deflate", "xxhash"):
        return fail(InputErrorKind.CORRUPT, "corrupt data (decompression or deserialization failed)")
    if _raised_in(exc, "/coffea/nanoevents/schemas/"):
        return fail(InputErrorKind.CORRUPT, "the schema rejected the file")
    if isinstance(exc, TypeError) and remote and _raised_in(exc, "/uproot/source/"):
        # uproot slices the exception object fsspec returns for a failed range request
        return fail(InputErrorKind.TRANSIENT, "remote read failed (the transport error was lost in uproot)")
    if remote and (_raised_in(exc, "/XRootD/") or _raised_in(exc, "/fsspec_xrootd/")):
        # the XRootD client's own Python errors (e.g. a handle closed under a read): transport, not data
        return fail(InputErrorKind.TRANSIENT, f"XRootD client error ({type(exc).__name__})")
    if isinstance(exc, ValueError):
        return fail(InputErrorKind.CORRUPT, "corrupt data or not a ROOT file")
    return fail(InputErrorKind.CORRUPT, f"cannot read ({type(exc).__name__})")


def classify_input_error(exc: BaseException, path: str | None = None) -> tuple[bool, str]:
    """``(permanent, short description)`` of an error met while opening or reading input (:func:`classify_input`)."""
    f = classify_input(exc, path)
    return f.permanent, f.description
