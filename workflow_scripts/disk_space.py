"""Full disks as one clear line: check before writing a known size, reserve the blocks of
memory-mapped files, and clear temp files a killed job left behind.

A memory-mapped array on a full disk does not fail with an error: the kernel kills the process
with SIGBUS when a page cannot be written back (exit 135, nothing in the log). Reserving the
file's blocks up front (posix_fallocate) turns that into ENOSPC before any pixel is written.
"""

from __future__ import annotations

import errno
import glob
import os
import shutil
from pathlib import Path

from workflow_scripts.errors import InputError


def human(n_bytes: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if abs(n_bytes) < 1000 or unit == "TB":
            return f"{n_bytes:.0f} {unit}" if unit == "bytes" else f"{n_bytes:.1f} {unit}"
        n_bytes /= 1000
    raise AssertionError("unreachable")


def free_bytes(directory: str | os.PathLike) -> int:
    return shutil.disk_usage(directory).free


def ensure_free(directory: str | os.PathLike, needed: int, what: str) -> None:
    """InputError naming the folder and the bytes needed when the disk cannot hold `needed`."""
    free = free_bytes(directory)
    if free < needed:
        raise InputError(
            f"{directory}: not enough free disk space for {what}: needs {needed} bytes "
            f"({human(needed)}), {free} bytes ({human(free)}) free"
        )


def reserve(path: str | os.PathLike, n_bytes: int) -> None:
    """Allocate the blocks of an existing (sparse) file, so writing through a memory map cannot
    hit a full disk later. File systems without fallocate support are left as they are."""
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, n_bytes)
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise InputError(
                f"{path}: no space left on device: needs {n_bytes} bytes ({human(n_bytes)})"
            ) from err
        if err.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise
    finally:
        os.close(fd)


def remove_stale_temps(
    directory: str | os.PathLike, prefix: str, suffix: str = ".tmp"
) -> list[Path]:
    """Remove `prefix????????suffix` files and folders in `directory`: temp output of an earlier job
    killed before its cleanup ran. Only safe where no other job writes the same output at the
    same time (Snakemake runs one job per output; workflow_scripts/output_lock.py one run per
    output_dir)."""
    removed = []
    folder = Path(directory)
    if not folder.is_dir():
        return removed
    # tempfile.mkstemp/mkdtemp names: prefix + 8 random characters + suffix
    for path in folder.glob(f"{glob.escape(prefix)}{'?' * 8}{glob.escape(suffix)}"):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed
