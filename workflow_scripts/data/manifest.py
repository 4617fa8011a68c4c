"""Raw-image manifest: size and modification time of every TIFF the image table names.

Snakemake cannot see the 11,544 x 3 raw images (they are not rule inputs), so replacing one
would rerun nothing. The prepare rule writes this manifest beside the prepared table, the
stages that read the pixels (validation, the image cache) take it as input, and at every start
the Snakefile refreshes it (`refresh`): the file is rewritten only when a size or modification
time differs, so changed pixels rerun the validation, the cache and everything after it — and
an unchanged manifest keeps its date, so nothing reruns. One TSV line per file, sorted by path:
`path<TAB>size<TAB>mtime_ns` (size -1 and mtime 0 for a file that does not exist).
"""

from __future__ import annotations

import argparse
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd

from workflow_scripts.atomic import write_text
from workflow_scripts.errors import InputError, cli
from workflow_scripts.tables import read_table

HEADER = "path\tsize\tmtime_ns\n"
STAT_WORKERS = 16  # stat() waits on (network) storage, not on CPU


def image_paths(table: pd.DataFrame) -> list[str]:
    """Every path_<channel> value of the image table, sorted, without duplicates."""
    columns = [c for c in table.columns if c.startswith("path_")]
    if not columns:
        raise InputError("image table has no path_<channel> column")
    return sorted({str(p) for c in columns for p in table[c]})


def _stat_line(path: str) -> str:
    try:
        st = os.stat(path)
    except OSError:
        return f"{path}\t-1\t0\n"
    return f"{path}\t{st.st_size}\t{st.st_mtime_ns}\n"


def manifest_text(paths: list[str], workers: int = STAT_WORKERS) -> str:
    if any(("\t" in p or "\n" in p) for p in paths):
        bad = next(p for p in paths if "\t" in p or "\n" in p)
        raise InputError(f"image path {bad!r} contains a tab or newline")
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return HEADER + "".join(pool.map(_stat_line, paths))


def write_manifest(table_path: str | os.PathLike, out: str | os.PathLike) -> int:
    """Manifest of the images named by `table_path`; returns the number of files."""
    paths = image_paths(read_table(table_path))
    write_text(out, manifest_text(paths))
    return len(paths)


def refresh(manifest: str | os.PathLike) -> bool:
    """Re-stat the files an existing manifest lists; rewrite it only if something changed.
    Returns True when it was rewritten. A missing or unreadable manifest is left alone (the
    prepare rule will write one)."""
    manifest = Path(manifest)
    try:
        text = manifest.read_text()
    except (OSError, UnicodeDecodeError):
        return False
    if not text.startswith(HEADER):
        return False
    paths = [line.split("\t", 1)[0] for line in text[len(HEADER) :].splitlines()]
    current = manifest_text(paths)
    if current == text:
        return False
    write_text(manifest, current)
    return True


@cli
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--table", required=True, help="image table (.parquet) with path_* columns")
    parser.add_argument("--out", required=True, help="manifest (.tsv)")
    args = parser.parse_args(argv)
    n = write_manifest(args.table, args.out)
    print(f"{args.out}: {n} image files")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
