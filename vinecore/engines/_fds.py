"""Socket pairs whose ends never sit on descriptors 0, 1 or 2.

A process may start with standard input, output or error closed (a daemon, a
batch system's wrapper, ``ddr run ... >&-``). A new socket then takes the
lowest free descriptor, one of the three, and anything later written to
that stream (a ``print`` in the manager, a worker that inherits it as its
standard output, the zygote reopening its stdio) lands in the engine's
control channel. :func:`socketpair` moves such an end above 2 first.
"""

from __future__ import annotations

import fcntl
import socket

__all__ = ["socketpair"]


def socketpair(family: int = socket.AF_UNIX, type: int = socket.SOCK_STREAM) -> tuple[socket.socket, socket.socket]:
    """``socket.socketpair(family, type)``, both ends on descriptors above 2 (still not inheritable)."""
    a, b = socket.socketpair(family, type)
    return _above_stdio(a), _above_stdio(b)


def _above_stdio(s: socket.socket) -> socket.socket:
    if s.fileno() > 2:
        return s
    fd = fcntl.fcntl(s.fileno(), fcntl.F_DUPFD_CLOEXEC, 3)  # the lowest free descriptor from 3 up
    s.close()
    return socket.socket(fileno=fd)
