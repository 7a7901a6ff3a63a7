"""Shared helpers for the benchmark scripts: machine description and JSON output."""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
from importlib import metadata


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
