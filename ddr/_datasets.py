"""Filesets in coffea's JSON dialects -> :class:`Dataset` and :class:`FileSpec`.

Accepted (``{"datasets": {...}}`` wrapping also accepted)::

    {"ds": ["a.root", "b.root"]}                                   list form, tree "Events"
    {"ds": {"files": ["a.root"], "treename": "Events", "metadata": {...}}}
    {"ds": {"files": {"a.root": "Events"}}}                        raw dialect
    {"ds": {"files": {"a.root": {"object_path": "Events", "steps": [[0, 5], [5, 9]],
                                  "num_entries": 9, "uuid": "..."}}}}   preprocessed dialect

Relative paths resolve against the JSON file's folder; urls are kept as given.
No ROOT file is opened here.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

from .exceptions import FilesetError

__all__ = ["FileSpec", "Dataset", "load_fileset", "fileset_to_json", "write_fileset"]

_FILE_KEYS = {"object_path", "steps", "num_entries", "uuid"}
_DATASET_KEYS = {"files", "metadata", "treename", "format", "compressed_form", "did", "form"}


@dataclass(frozen=True)
class FileSpec:
    path: str
    tree: str
    num_entries: int | None = None
    uuid: str | None = None
    steps: tuple[tuple[int, int], ...] | None = None


@dataclass(frozen=True)
class Dataset:
    name: str
    files: tuple[FileSpec, ...]
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @property
    def num_entries(self) -> int | None:
        if any(f.num_entries is None for f in self.files):
            return None
        return sum(f.num_entries for f in self.files)  # type: ignore[misc]


def load_fileset(source: Any, *, default_tree: str = "Events", base_dir: str | None = None) -> dict[str, Dataset]:
    where = "the fileset"
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        where = path
        if not os.path.exists(path):
            raise FilesetError(f"fileset {path!r} does not exist (working directory: {os.getcwd()})")
        try:
            with open(path) as f:
                data = json.load(f)
        except json.JSONDecodeError as exc:
            raise FilesetError(f"{path} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}. "
                               "Check for trailing commas and unquoted keys.") from None
        base_dir = os.path.dirname(os.path.abspath(path)) if base_dir is None else base_dir
    else:
        data = source
    base_dir = base_dir or os.getcwd()
    if isinstance(data, Mapping) and set(data) == {"datasets"} and isinstance(data["datasets"], Mapping):
        data = data["datasets"]
    if not isinstance(data, Mapping) or not data:
        raise FilesetError(f"{where}: expected a JSON object mapping dataset names to their files, "
                           f"got {type(data).__name__ if data else 'nothing'}")
    return {str(name): _dataset(str(name), spec, where, base_dir, default_tree) for name, spec in data.items()}


def _resolve(path: str, base_dir: str) -> str:
    if "://" in path:
        return path
    path = os.path.expanduser(path)
    return path if os.path.isabs(path) else os.path.normpath(os.path.join(base_dir, path))


def _dataset(name: str, spec: Any, where: str, base_dir: str, default_tree: str) -> Dataset:
    ctx = f"{where}, dataset {name!r}"
    metadata: dict[str, Any] = {}
    tree = default_tree
    if isinstance(spec, (list, tuple)):
        files_spec: Any = list(spec)
    elif isinstance(spec, Mapping):
        unknown = set(spec) - _DATASET_KEYS
        if unknown:
            raise FilesetError(f"{ctx}: unknown key(s) {sorted(unknown)}; a dataset has {sorted(_DATASET_KEYS)}")
        if "files" not in spec:
            raise FilesetError(f"{ctx}: no 'files' key; write {{\"{name}\": {{\"files\": {{\"f.root\": \"Events\"}}}}}}")
        files_spec = spec["files"]
        tree = spec.get("treename") or default_tree
        metadata = dict(spec.get("metadata") or {})
    else:
        raise FilesetError(f"{ctx}: expected a list of files or an object with 'files', got {type(spec).__name__}")
    files: list[FileSpec] = []
    if isinstance(files_spec, (list, tuple)):
        for p in files_spec:
            if not isinstance(p, str):
                raise FilesetError(f"{ctx}: file entries of a list must be paths, got {p!r}")
            files.append(FileSpec(_resolve(p, base_dir), tree))
    elif isinstance(files_spec, Mapping):
        for p, entry in files_spec.items():
            files.append(_file(str(p), entry, ctx, base_dir, tree))
    else:
        raise FilesetError(f"{ctx}: 'files' must be a list or an object, got {type(files_spec).__name__}")
    if not files:
        raise FilesetError(f"{ctx}: has no files; remove the dataset or add files")
    metadata["dataset"] = name
    return Dataset(name, tuple(files), metadata)


def _file(path: str, entry: Any, ctx: str, base_dir: str, tree: str) -> FileSpec:
    full = _resolve(path, base_dir)
    if entry is None or isinstance(entry, str):
        return FileSpec(full, entry or tree)
    if not isinstance(entry, Mapping):
        raise FilesetError(f"{ctx}, file {path!r}: expected a tree name or an object with object_path, "
                           f"got {type(entry).__name__}")
    unknown = set(entry) - _FILE_KEYS
    if unknown:
        raise FilesetError(f"{ctx}, file {path!r}: unknown key(s) {sorted(unknown)}; expected {sorted(_FILE_KEYS)}")
    n = entry.get("num_entries")
    if n is not None and (not isinstance(n, int) or n < 0):
        raise FilesetError(f"{ctx}, file {path!r}: num_entries must be a non-negative integer, got {n!r}")
    steps = entry.get("steps")
    if steps is not None:
        try:
            steps = tuple((int(a), int(b)) for a, b in steps)
        except (TypeError, ValueError):
            raise FilesetError(f"{ctx}, file {path!r}: steps must be [[start, stop], ...], got {steps!r}") from None
        pos = 0
        for a, b in steps:
            if a != pos or b < a:
                raise FilesetError(f"{ctx}, file {path!r}: steps must be contiguous from 0; [{a}, {b}) follows {pos}")
            pos = b
        if n is not None and pos != n:
            raise FilesetError(f"{ctx}, file {path!r}: steps end at {pos} but num_entries is {n}")
        if n is None:
            n = pos
    return FileSpec(full, entry.get("object_path") or tree, n, entry.get("uuid"), steps)


def fileset_to_json(datasets: Mapping[str, Dataset], *, relative_to: str | None = None) -> dict:
    out: dict[str, Any] = {}
    for name, ds in datasets.items():
        files: dict[str, Any] = {}
        for f in ds.files:
            p = os.path.relpath(f.path, relative_to) if relative_to and "://" not in f.path else f.path
            if f.num_entries is None:
                files[p] = f.tree
            else:
                steps = [list(s) for s in f.steps] if f.steps else [[0, f.num_entries]]
                files[p] = {"object_path": f.tree, "steps": steps, "num_entries": f.num_entries, "uuid": f.uuid}
        meta = {k: v for k, v in ds.metadata.items() if k != "dataset"}
        out[name] = {"files": files, "metadata": meta}
    return out


def write_fileset(datasets: Mapping[str, Dataset], path: str | os.PathLike) -> None:
    path = os.fspath(path)
    with open(path, "w") as f:
        json.dump(fileset_to_json(datasets, relative_to=os.path.dirname(os.path.abspath(path))), f, indent=2)
        f.write("\n")
