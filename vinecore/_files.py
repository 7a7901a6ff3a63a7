"""Declared files: local files, buffers, urls and temps, named by cache name.

A :class:`File` is a handle the manager gives out. Its ``cache_name`` is the
identity workers store it under:

* ``file``: derived from the content (sha256 of the bytes, read once when
  declared), so two declarations of identical content share one copy;
* ``buffer``: sha256 of the bytes;
* ``url``: sha256 of the url (the content is only known by the worker that
  fetches it);
* ``temp``: a fresh random name; the content is produced by a task and stays
  in the engine's worker-side store until fetched or the manager closes.

Inside a task, a File passed as an argument becomes its content: a temp
produced as a task's return value becomes that value, a file, buffer or url
becomes the path of the worker's local copy. ``Task.add_input(file, name)``
instead places the content at ``name`` in the task's sandbox directory.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from dataclasses import dataclass

from ._runtime import _resolve_file
from ._serialize import dumps, register_reduce

__all__ = ["File", "FileKind"]

FileKind = str  # "file" | "buffer" | "url" | "temp"
_KINDS = ("file", "buffer", "url", "temp")


@dataclass(frozen=True, eq=False)
class File:
    """A file known to a manager. Create with ``Manager.declare_*``."""

    kind: FileKind
    cache_name: str
    source: str | bytes | None = None  # path, bytes, url; None for temps

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"unknown file kind {self.kind!r}; expected one of {_KINDS}")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, File) and other.cache_name == self.cache_name

    def __hash__(self) -> int:
        return hash(self.cache_name)

    def __repr__(self) -> str:
        src = f" {self.source!r}" if isinstance(self.source, str) else ""
        return f"<vinecore.File {self.kind} {self.cache_name}{src}>"

    def __reduce__(self):
        # Inside a worker, a File argument resolves to its content (see module docstring).
        if _collecting is not None:
            _collecting.append(self)
        return (_resolve_file, (self.kind, self.cache_name, self.source))


register_reduce(File, File.__reduce__)  # found at once in the pickler's table (the same reduction)
_collecting: list[File] | None = None


def dumps_collecting_files(obj) -> tuple[bytes, list[File]]:
    """cloudpickle ``obj`` and list the Files found inside it (a task's inputs)."""
    global _collecting
    _collecting = found = []
    try:
        return dumps(obj), found
    finally:
        _collecting = None


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:32]


def file_from_path(path: str | os.PathLike) -> File:
    p = os.fspath(path)
    if not os.path.exists(p):
        raise FileNotFoundError(
            f"cannot declare {p!r}: no such file (working directory: {os.getcwd()})"
        )
    if os.path.isdir(p):
        raise IsADirectoryError(f"cannot declare {p!r}: it is a directory; declare the files in it")
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return File("file", "file-" + h.hexdigest()[:32], os.path.abspath(p))


def file_from_buffer(data: bytes | bytearray | memoryview) -> File:
    data = bytes(data)
    return File("buffer", "buffer-" + _sha(data), data)


def url_cache_name(url: str) -> str:
    """The cache name of a url's content (also of any other name a cache keys content by)."""
    return "url-" + _sha(url.encode())


def file_from_url(url: str) -> File:
    if "://" not in url:
        raise ValueError(f"{url!r} is not a url (expected a scheme such as https:// or file://)")
    return File("url", url_cache_name(url), url)


def new_temp() -> File:
    """A temp with a name no other temp has: a random prefix (new in each process, also after a fork)
    and a counter (cheaper than 16 random bytes per temp, which cost a system call)."""
    return File("temp", f"{_temp_prefix}{next(_temp_counter)}")


def _new_temp_names() -> None:
    global _temp_prefix, _temp_counter
    _temp_prefix = f"temp-{os.urandom(12).hex()}-"
    _temp_counter = itertools.count()


_new_temp_names()
os.register_at_fork(after_in_child=_new_temp_names)  # a forked worker must not name temps as its parent does
