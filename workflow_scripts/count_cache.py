"""On-disk cache of the planner's meta-device counts, so planning imports neither torch nor timm
once a configuration has been counted.

The memory planner counts parameters and activation bytes by building models on the meta
device (train/memory_counts.py, evaluate/extraction_counts.py): seconds per architecture, paid
by every `snakemake -n` (the start-up check, the training rules' strategy, the extraction jobs'
host memory) and every planner call. A count is a function of what it is computed from, so
each is stored under a digest of exactly that:

- the count's inputs (architecture, model_kwargs and the settings the counting code reads:
  crops, batch, head, compute dtype, checkpointing, evaluation windows), as the caller lists
  them;
- the installed torch and timm versions (timm builds the models, torch runs the meta kernels);
- the bytes of the source files of the counting module and everything it imports from this
  package (code_deps.py), so that editing the counting code invalidates its entries.

Folder: `$BBBC021_DINOV3_CACHE` (`off`: no cache), else `$XDG_CACHE_HOME/bbbc021-dinov3`, else
`~/.cache/bbbc021-dinov3`; one small JSON file per count under `meta_counts/`, holding its key
beside the counts. Below that folder the repository ships `workflow_scripts/meta_counts.json`:
the entries of the configurations every user plans first (config.yaml, the all-models table,
the 7B overlay; written by `python -m workflow_scripts.cluster.shipped_counts --write`), used
under the same rule (exactly the same key: inputs, versions and code), so a fresh clone plans
them without torch too. An entry the code or the versions have moved past is simply not used;
`$BBBC021_DINOV3_SHIPPED_COUNTS=off` ignores the shipped entries (the tests do, but for theirs).
Entries are written atomically (atomic.py); an entry that cannot be read,
does not parse or holds another key is counted again and rewritten; a folder that cannot be
written leaves the planner without a cache, with no error. Deleting the folder is always safe.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from importlib import metadata
from pathlib import Path

from workflow_scripts import atomic, code_deps

ENV_VAR = "BBBC021_DINOV3_CACHE"
SHIPPED = code_deps.PACKAGE_DIR / "meta_counts.json"
SHIPPED_ENV_VAR = "BBBC021_DINOV3_SHIPPED_COUNTS"  # `off`: count what the folder lacks
DISABLED = "off"
SUBDIR = "meta_counts"
FORMAT = 1  # bump when the entry layout changes
PACKAGES = ("torch", "timm")

Counts = dict[str, int | float]
# in-process copies: the Snakefile asks for the same counts once per rule and job
_memo: dict[tuple[str, str], Counts] = {}
# entries counted in this process while `recording` (cluster/shipped_counts.py), by file name
_recorded: dict[str, dict] | None = None


def cache_dir(environ: Mapping[str, str] = os.environ) -> Path | None:
    """The folder of the count entries, or None when the cache is switched off."""
    chosen = environ.get(ENV_VAR, "")
    if chosen == DISABLED:
        return None
    if chosen:
        return Path(chosen).expanduser() / SUBDIR
    xdg = environ.get("XDG_CACHE_HOME", "")
    if os.path.isabs(xdg):  # the XDG spec ignores a relative path
        return Path(xdg) / "bbbc021-dinov3" / SUBDIR
    try:
        return Path.home() / ".cache" / "bbbc021-dinov3" / SUBDIR
    except (RuntimeError, KeyError):  # no home directory: no cache
        return None


@functools.cache
def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """Installed versions from the packages' metadata (importing them is what the cache saves)."""
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def files_digest(paths: Iterable[str | os.PathLike]) -> str:
    """sha256 over the files' names (relative to the package) and bytes."""
    digest = hashlib.sha256()
    for path in sorted(Path(p) for p in paths):
        name = os.path.relpath(path, code_deps.PACKAGE_DIR)
        digest.update(f"{name}\0{path.stat().st_size}\0".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


@functools.cache
def source_digest(module: str) -> str:
    """Digest of `module`'s source and every package module it imports, transitively."""
    return files_digest(code_deps.module_files(module))


def entry_key(kind: str, inputs: Mapping, module: str) -> dict:
    """What an entry depends on, JSON-normalised (tuples become lists, keys sorted)."""
    key = {
        "format": FORMAT,
        "kind": kind,
        "inputs": inputs,
        "versions": package_versions(),
        "code": source_digest(module),
    }
    return json.loads(json.dumps(key, sort_keys=True))


def entry_name(kind: str, key: dict) -> str:
    blob = json.dumps(key, sort_keys=True, separators=(",", ":"))
    return f"{kind}-{hashlib.sha256(blob.encode()).hexdigest()[:32]}.json"


def cached(
    kind: str, inputs: Mapping, module: str, count: Callable[[dict], Counts], fields: Iterable[str]
) -> Counts:
    """`count(inputs)` (computed by `module`), from the cache when an entry holds it (this
    process's copies, the user's folder, then the shipped entries). `fields`: the numbers an
    entry must hold to be used."""
    fields = tuple(fields)
    key = entry_key(kind, inputs, module)
    name = entry_name(kind, key)
    folder = cache_dir()
    memo_key = (str(folder), name)
    if memo_key in _memo:
        return dict(_memo[memo_key])
    path = None if folder is None else folder / name
    counts = None
    if _recorded is None:  # recording counts everything afresh
        counts = _read(path, key, fields) if path is not None else None
        if counts is None and folder is not None and os.environ.get(SHIPPED_ENV_VAR) != DISABLED:
            counts = _valid(shipped_entries().get(name), key, fields)
    if counts is None:
        counts = count(key["inputs"])
        if sorted(counts) != sorted(fields):
            raise ValueError(f"{module} counted {sorted(counts)}, expected {sorted(fields)}")
        if path is not None:
            _write(path, {"key": key, "counts": counts})
    if _recorded is not None:
        _recorded[name] = {"key": key, "counts": counts}
    _memo[memo_key] = counts
    return dict(counts)


@functools.cache
def shipped_entries() -> dict[str, dict]:
    """The entries shipped with the repository, by file name ({} when absent or unreadable)."""
    try:
        entries = json.loads(SHIPPED.read_text())["entries"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return entries if isinstance(entries, dict) else {}


@contextlib.contextmanager
def recording() -> Iterator[dict[str, dict]]:
    """Count everything afresh (no folder, no shipped entry, no in-process copy) and collect
    the entries counted, by file name: what cluster/shipped_counts.py ships."""
    global _recorded
    forget()
    _recorded = {}
    try:
        yield _recorded
    finally:
        _recorded = None
        forget()


def _read(path: Path, key: dict, fields: tuple[str, ...]) -> Counts | None:
    """The entry's counts, or None when it is absent, unreadable, corrupt or of another key."""
    try:
        entry = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return _valid(entry, key, fields)


def _valid(entry: object, key: dict, fields: tuple[str, ...]) -> Counts | None:
    """The counts of an entry that holds exactly `key` and the `fields` as numbers, else None."""
    try:
        counts = entry["counts"]
        valid = (
            entry["key"] == key
            and isinstance(counts, dict)
            and sorted(counts) == sorted(fields)
            and all(_is_number(value) for value in counts.values())
        )
    except (KeyError, TypeError):
        return None
    return counts if valid else None


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _write(path: Path, entry: dict) -> None:
    """Best effort: a folder that cannot be written (read-only home, full disk) means no cache.
    Concurrent writers of one entry write the same bytes; one rename wins."""
    try:
        atomic.write_json(path, entry)
    except OSError:
        pass


def forget() -> None:
    """Drop the in-process copies (tests: the next call reads the folder again)."""
    _memo.clear()
    shipped_entries.cache_clear()
