"""A throwaway copy of this repository, for tests and benchmarks that run Snakemake.

Tests and benchmarks never run Snakemake in the real tree: its .snakemake/ metadata and results/
belong to the user, and a test that edits a source file must edit a copy.
"""

from __future__ import annotations

import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# outputs and caches (.gitignore) stay behind
NOT_COPIED = shutil.ignore_patterns(
    ".git",
    ".snakemake",
    "results",
    "weights",
    "build",
    "__pycache__",
    ".pytest_cache",
    "*.egg-info",
    ".whl",
    ".gl",
)


def copy_repo(dest: Path) -> Path:
    shutil.copytree(REPO, dest, ignore=NOT_COPIED, symlinks=True)
    return dest
