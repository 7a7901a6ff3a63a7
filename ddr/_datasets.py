"""Filesets in coffea's JSON dialects -> :class:`Dataset` and :class:`FileSpec`.

Accepted forms (the whole thing may also be wrapped as ``{"datasets": {...}}``)::

    {"ds": ["a.root", "b.root"]}                                  list form, tree "Events"
    {"ds": {"files": ["a.root"], "treename": "Events", "metadata": {...}}}
    {"ds": {"files": {"a.root": "Events"}}}                       raw dialect
    {"ds": {"files": {"a.root": {"object_path": "Events", "steps": [[0, 5], [5, 9]],
                                  "num_entries": 9, "uuid": "..."}}}}  preprocessed dialect

Policy:

* Relative paths resolve against the JSON file's folder (or ``base_dir``, by
  default the working directory, for a dict); anything containing ``://`` is
  a URL and is kept as given (``root://host//path``, ``https://...``), and so
  is a CMS logical file name ``/store/...`` when written back to a fileset
  (it is read through ``--redirector``, see :mod:`ddr._remote`).
* ``steps`` are the entry ranges to process: they must not overlap and must
  stay inside ``[0, num_entries)``; gaps are allowed (such a fileset asks for
  part of a file, as the failed-chunks fileset that ``ddr run`` writes does),
  and the events expected are the sum of the steps. A file listed twice in a
  dataset is an error, so every event is counted once.
* Dataset keys ``format`` (must be "root"), ``compressed_form``, ``form`` and
  ``did`` are accepted and ignored; any other unknown key, in a dataset or in
  a file entry, is an error that names the nearest valid key.
* ``Dataset.metadata`` is the user's metadata plus ``"dataset": name``.
* Nothing here opens a ROOT file: whether the files exist and can be read is
  decided on the workers, so that ``--skip-bad-files`` can continue without them.

Every error is a :class:`~ddr.exceptions.FilesetError` that names the JSON
file, the dataset and the key, and says how to fix it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, NoReturn

from .exceptions import FilesetError, format_names, nearest

__all__ = ["FileSpec", "Dataset", "load_fileset", "fileset_to_json", "write_fileset"]

_FILE_KEYS = ("object_path", "steps", "num_entries", "uuid")
_DATASET_KEYS = ("files", "treename", "metadata")
_IGNORED_DATASET_KEYS = ("format", "compressed_form", "form", "did")
_STEPS_FIX = "regenerate the steps with `ddr preprocess`, or remove \"steps\" and let ddr cut the file"


@dataclass(frozen=True)
class FileSpec:
    """One input file: where it is, which tree, and what is known about it."""

    path: str  # absolute local path or URL (root://, https://, file://)
    tree: str  # object_path
    num_entries: int | None = None
    uuid: str | None = None
    steps: tuple[tuple[int, int], ...] | None = None

    @property
    def events(self) -> int | None:
        """Events to process: the sum of ``steps`` when given, else ``num_entries``."""
        if self.steps is not None:
            return sum(b - a for a, b in self.steps)
        return self.num_entries


@dataclass(frozen=True)
class Dataset:
    """A named set of files with user metadata (which always holds ``"dataset": name``)."""

    name: str
    files: tuple[FileSpec, ...]
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @property
    def num_entries(self) -> int | None:
        """Total entries, or None while any file is uncounted."""
        total = 0
        for f in self.files:
            if f.num_entries is None:
                return None
            total += f.num_entries
        return total


def load_fileset(source: str | os.PathLike[str] | Mapping[str, Any], *, default_tree: str = "Events",
                 base_dir: str | os.PathLike[str] | None = None) -> dict[str, Dataset]:
    """Read a fileset (path to a JSON file, or the loaded dict) into ``{name: Dataset}``."""
    if isinstance(source, (str, os.PathLike)):
        label = os.fspath(source)
        data = _read_json(label)
        if base_dir is None:
            base_dir = os.path.dirname(os.path.abspath(label))
    elif isinstance(source, Mapping):
        label = None
        data = source
    else:
        raise FilesetError(f"expected a path to a fileset JSON or a dict, got {type(source).__name__}",
                           fix="pass e.g. 'datasets/samples.json' or {'ds': ['a.root']}")
    base = os.path.abspath(os.path.expanduser(os.fspath(base_dir))) if base_dir is not None else os.getcwd()
    data = _unwrap(data, label)
    if all(isinstance(v, Dataset) for v in data.values()):
        return dict(data)
    out: dict[str, Dataset] = {}
    for name, spec in data.items():
        if not isinstance(name, str) or not name:
            raise FilesetError(f"dataset names must be non-empty strings, got {name!r}", source=label,
                               fix="name every dataset, e.g. {\"DYJets\": [\"a.root\"]}")
        out[name] = _Loader(label, name, base, default_tree).dataset(spec)
    return out


def _read_json(path: str) -> Any:
    if not os.path.exists(path):
        folder = os.path.dirname(os.path.abspath(path))
        others = sorted(f for f in os.listdir(folder) if f.endswith(".json")) if os.path.isdir(folder) else []
        where = f"JSON files in {folder}: {format_names(nearest(os.path.basename(path), others))}" if others \
            else f"no JSON files in {folder}"
        raise FilesetError(f"the file does not exist (working directory: {os.getcwd()})", source=path,
                           fix=f"check the path; {where}")
    if os.path.isdir(path):
        raise FilesetError("is a directory, not a JSON file", source=path,
                           fix="pass the fileset JSON inside it, e.g. datasets/samples.json")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise FilesetError(f"cannot be read: {type(exc).__name__}: {exc}", source=path,
                           fix="pass a UTF-8 JSON file") from exc
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as exc:
        line = text.splitlines()[exc.lineno - 1] if exc.lineno <= len(text.splitlines()) else ""
        raise FilesetError(
            f"not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}\n    {line}\n    "
            + " " * (exc.colno - 1) + "^", source=path,
            fix="JSON needs double-quoted keys and strings, and allows no trailing commas or comments") from None
    except _DuplicateKey as exc:
        raise FilesetError(f"key {exc.args[0]!r} appears twice in the same object; the second would silently "
                           "replace the first", source=path, key=exc.args[0],
                           fix="merge the two entries or rename one of them") from None


class _DuplicateKey(Exception):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(k)
        out[k] = v
    return out


def _unwrap(data: Any, label: str | None) -> Mapping[Any, Any]:
    if not isinstance(data, Mapping):
        raise FilesetError(f"the top level must be an object mapping dataset names to files, got "
                           f"{type(data).__name__}", source=label,
                           fix="write {\"dataset name\": [\"file.root\", ...]}")
    inner = data.get("datasets")
    if len(data) == 1 and isinstance(inner, Mapping) and not _looks_like_dataset(inner):
        data = inner
    if not data:
        raise FilesetError("has no datasets", source=label, fix="add {\"dataset name\": [\"file.root\", ...]}")
    return data


def _looks_like_dataset(spec: Mapping[Any, Any]) -> bool:
    # {"datasets": {"files": [...]}} is a dataset named "datasets", not a wrapper
    return "files" in spec and set(spec) <= set(_DATASET_KEYS + _IGNORED_DATASET_KEYS)


def _resolve(path: str, base_dir: str) -> str:
    if "://" in path:
        return path
    path = os.path.expanduser(path)
    return os.path.normpath(path if os.path.isabs(path) else os.path.join(base_dir, path))


class _Loader:
    """Validates one dataset; every error names the source, the dataset and the key."""

    def __init__(self, source: str | None, name: str, base_dir: str, default_tree: str) -> None:
        self.source, self.name, self.base_dir, self.default_tree = source, name, base_dir, default_tree

    def fail(self, problem: str, *, file: str | None = None, key: str | None = None,
             fix: str | None = None) -> NoReturn:
        raise FilesetError(problem, source=self.source or "<dict>", dataset=self.name, file=file, key=key, fix=fix)

    def dataset(self, spec: Any) -> Dataset:
        tree, metadata = self.default_tree, {}
        if isinstance(spec, (list, tuple)):
            files_spec: Any = list(spec)
        elif isinstance(spec, Mapping):
            self._check_keys(spec)
            if "files" not in spec:
                self.fail("has no \"files\"", fix=f"write {{{json.dumps(self.name)}: {{\"files\": "
                                                   "{\"file.root\": \"Events\"}}}")
            files_spec = spec["files"]
            tree = self._tree(spec.get("treename", tree), key="treename")
            metadata = self._metadata(spec.get("metadata"))
        else:
            self.fail(f"expected a list of files or an object with \"files\", got {type(spec).__name__} "
                      f"{_short(spec)}", fix=f"write {{{json.dumps(self.name)}: [\"file.root\", ...]}}")
        if isinstance(files_spec, (list, tuple)):
            entries: list[tuple[Any, Any]] = [(p, None) for p in files_spec]
        elif isinstance(files_spec, Mapping):
            entries = list(files_spec.items())
        else:
            self.fail(f"\"files\" must be a list of paths or an object {{path: tree}}, got "
                      f"{type(files_spec).__name__} {_short(files_spec)}", key="files",
                      fix="write \"files\": [\"a.root\"] or \"files\": {\"a.root\": \"Events\"}")
        if not entries:
            self.fail("has no files", key="files", fix="add files to the dataset, or remove the dataset")
        files: list[FileSpec] = []
        seen: dict[str, str] = {}
        for raw, entry in entries:
            if not isinstance(raw, str) or not raw.strip():
                self.fail(f"file paths must be non-empty strings, got {raw!r}", key="files",
                          fix="list each file as a path or URL string")
            f = self._file(raw, entry, tree)
            if f.path in seen:
                self.fail(f"is listed twice (as {seen[f.path]!r} and {raw!r}); its events would be counted "
                          "twice", file=raw, fix="remove one of the two entries")
            seen[f.path] = raw
            files.append(f)
        metadata["dataset"] = self.name
        return Dataset(self.name, tuple(files), metadata)

    def _check_keys(self, spec: Mapping[Any, Any]) -> None:
        for key in spec:
            if key in _DATASET_KEYS:
                continue
            if key in _IGNORED_DATASET_KEYS:
                if key == "format" and spec[key] not in (None, "root"):
                    self.fail(f"format {spec[key]!r} is not supported; ddr reads ROOT files", key="format",
                              fix="convert the files to ROOT, or remove the dataset")
                continue
            self.fail(f"unknown key; a dataset has {format_names(_DATASET_KEYS)}", key=str(key),
                      fix=f"did you mean {nearest(str(key), _DATASET_KEYS)[0]!r}?")

    def _tree(self, value: Any, *, key: str, file: str | None = None) -> str:
        if not isinstance(value, str) or not value:
            self.fail(f"the tree name must be a non-empty string, got {value!r}", file=file, key=key,
                      fix="name the TTree, e.g. \"Events\"")
        return value

    def _metadata(self, value: Any) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            self.fail(f"metadata must be an object, got {type(value).__name__} {_short(value)}", key="metadata",
                      fix="write \"metadata\": {\"is_mc\": true, ...}")
        return dict(value)

    def _file(self, raw: str, entry: Any, tree: str) -> FileSpec:
        path = _resolve(raw, self.base_dir)
        if entry is None:
            return FileSpec(path, tree)
        if isinstance(entry, str):
            return FileSpec(path, self._tree(entry, key="tree", file=raw))
        if not isinstance(entry, Mapping):
            self.fail(f"expected a tree name or an object with \"object_path\", got {type(entry).__name__} "
                      f"{_short(entry)}", file=raw, fix=f"write {json.dumps(raw)}: \"Events\"")
        for key in entry:
            if key not in _FILE_KEYS:
                self.fail(f"unknown key in a file entry; a file entry has {format_names(_FILE_KEYS)}", file=raw,
                          key=str(key), fix=f"did you mean {nearest(str(key), _FILE_KEYS)[0]!r}?")
        obj = entry.get("object_path")
        tree = tree if obj is None else self._tree(obj, key="object_path", file=raw)
        n = entry.get("num_entries")
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
            self.fail(f"num_entries must be a non-negative integer or null, got {n!r}", file=raw,
                      key="num_entries", fix="set it to the number of entries of the tree, or remove it")
        uuid = entry.get("uuid")
        if uuid is not None and not isinstance(uuid, str):
            self.fail(f"uuid must be a string or null, got {uuid!r}", file=raw, key="uuid",
                      fix="use the file's uuid as written by `ddr preprocess`, or remove it")
        steps = entry.get("steps")
        if steps is not None:
            steps, n = self._steps(steps, n, raw)
        return FileSpec(path, tree, n, uuid, steps)

    def _steps(self, steps: Any, n: int | None, raw: str) -> tuple[tuple[tuple[int, int], ...], int]:
        def fail(problem: str) -> NoReturn:
            self.fail(problem, file=raw, key="steps", fix=_STEPS_FIX)

        if not isinstance(steps, (list, tuple)):
            fail(f"steps must be a list of [start, stop] pairs, got {_short(steps)}")
        pairs: list[tuple[int, int]] = []
        for s in steps:
            ok = isinstance(s, (list, tuple)) and len(s) == 2 and all(
                isinstance(v, int) and not isinstance(v, bool) for v in s)
            if not ok:
                fail(f"each step must be a [start, stop] pair of integers, got {_short(s)}")
            if s[0] < 0 or s[1] < s[0]:
                fail(f"step [{s[0]}, {s[1]}] is not a valid range (need 0 <= start <= stop)")
            pairs.append((s[0], s[1]))
        pairs.sort()
        if not pairs:
            if n == 0:
                return (), 0
            fail("steps is empty")
        pos = 0
        for a, b in pairs:
            if a < pos:
                fail(f"step [{a}, {b}] overlaps the previous steps, which end at {pos}; those entries "
                     "would be counted twice")
            pos = b
        if n is not None and pos > n:
            fail(f"steps end at {pos} but num_entries is {n}")
        return tuple(pairs), pos if n is None else n


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def fileset_to_json(datasets: Mapping[str, Dataset], *, relative_to: str | os.PathLike[str] | None = None
                    ) -> dict[str, Any]:
    """The datasets as a coffea fileset dict.

    Counted files use the preprocessed dialect (``object_path``, ``steps`` when
    known, ``num_entries``, ``uuid``); uncounted ones the raw ``{path: tree}``.
    ``relative_to`` writes local paths relative to that folder.
    """
    rel: Callable[[str], str] = (lambda p: p) if relative_to is None else (
        lambda p: p if "://" in p or p.startswith("/store/") else os.path.relpath(p, os.fspath(relative_to)))
    out: dict[str, Any] = {}
    for name, ds in datasets.items():
        files: dict[str, Any] = {}
        for f in ds.files:
            if f.num_entries is None:
                files[rel(f.path)] = f.tree
                continue
            entry: dict[str, Any] = {"object_path": f.tree}
            if f.steps is not None:
                entry["steps"] = [list(s) for s in f.steps] or [[0, 0]]
            entry["num_entries"] = f.num_entries
            entry["uuid"] = f.uuid
            files[rel(f.path)] = entry
        meta = {k: v for k, v in ds.metadata.items() if not (k == "dataset" and v == name)}
        out[name] = {"files": files, "metadata": meta}
    return out


def write_fileset(datasets: Mapping[str, Dataset], path: str | os.PathLike[str]) -> None:
    """Write the datasets as JSON, local paths relative to the file's folder (atomically)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    text = json.dumps(fileset_to_json(datasets, relative_to=folder), indent=2) + "\n"
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
