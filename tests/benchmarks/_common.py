"""Shared helpers for the benchmark scripts: machine description and JSON output.

Importing this module byte-compiles ddr, vinecore and analyses/ (:func:`compile_sources`): every
worker process a benchmark starts imports them, and an editable install under
``PYTHONDONTWRITEBYTECODE=1`` (set on the development and CI machines) would compile them from source
in each one (~0.4 s per worker process), which an installed wheel or a normal environment never does.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
from importlib import metadata


def compile_sources() -> None:
    """Write the .pyc files of ddr, vinecore and analyses/ (as a wheel install does); idempotent."""
    import compileall
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[2]
    for name in ("ddr", "vinecore", "analyses"):
        compileall.compile_dir(str(root / name), quiet=1)


compile_sources()


def machine() -> dict:
    try:
        import psutil

        mem_gb = round(psutil.virtual_memory().total / 2**30, 1)
    except Exception:  # pragma: no cover
        mem_gb = None
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cores": os.cpu_count(), "memory_gb": mem_gb, "cpu": cpu, "python": sys.version.split()[0],
            "platform": platform.platform()}


def versions(*names: str) -> dict:
    out = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = None
    return out


def emit(name: str, results: dict) -> None:
    doc = {"benchmark": name, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "machine": machine(),
           "versions": versions("ddr-hep", "coffea", "uproot", "awkward", "dask", "distributed", "numpy"),
           "results": results}
    print(json.dumps(doc, indent=2))


def dask_awkward_python(cache: "os.PathLike[str] | str") -> str:
    """A Python with dask-awkward, dask-histogram, coffea and distributed, in a virtual environment of its own.

    dask-awkward pins an older dask than the distributed ddr uses, so it cannot share ddr's environment.
    coffea, uproot, awkward, hist and numpy are pinned to the versions running here, so that both sides
    read the files with the same code. Created once in ``cache/dask-awkward-venv`` (about 30 s)."""
    import pathlib
    import subprocess

    venv = pathlib.Path(cache) / "dask-awkward-venv"
    py = venv / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    probe = subprocess.run([str(py), "-c", "import dask_awkward, distributed, coffea, hist.dask"],
                           capture_output=True)
    if probe.returncode != 0:
        pins = [f"{n}=={v}" for n, v in versions("coffea", "uproot", "awkward", "hist", "numpy").items() if v]
        subprocess.run([str(py), "-m", "pip", "install", "-q", "dask-awkward", "dask-histogram", "distributed", *pins],
                       check=True)
    return str(py)
