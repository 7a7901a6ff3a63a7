"""Engines: thin adapters that run vinecore tasks somewhere.

``sync``  in the caller's process (tests, pdb)
``local`` worker processes on this machine (default)
``dask``  a dask.distributed cluster (imported lazily)
"""

from ._base import Engine

__all__ = ["Engine"]
