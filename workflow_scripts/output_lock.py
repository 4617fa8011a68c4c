"""One Snakemake run per output_dir, whatever the checkout: a lock file with host and PID.

Snakemake's own lock lives in the checkout's `.snakemake/`, so two checkouts (or two copies of
the config) pointing at one output_dir would both run every job. The Snakefile takes this lock
when a run starts (`onstart`) and drops it when it ends; a second run stops with one line naming
the holder. A lock whose process is gone (same host, PID dead or reused) is stale: it is taken
over, and Snakemake's own locks that the dead run left on this output_dir are removed with it,
so after a `kill -9` the plain command runs again (see `recover_after_crash`).
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from pathlib import Path

from workflow_scripts.errors import InputError

LOCK_NAME = ".workflow.lock"


def lock_path(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / LOCK_NAME


def _process_start(pid: int) -> str | None:
    """Start time of a process in clock ticks since boot (Linux); tells a reused PID apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22 of proc(5); the name may hold spaces


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return start is None or _process_start(pid) in (None, start)


def holder(output_dir: str | os.PathLike) -> dict | None:
    """The lock's content, or None when there is no lock. A lock that cannot be parsed is
    returned as {"unreadable": True}."""
    try:
        text = lock_path(output_dir).read_text()
    except FileNotFoundError:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return {"unreadable": True}
    return value if isinstance(value, dict) else {"unreadable": True}


def is_stale(lock: dict) -> bool:
    """True when the lock's process is certainly gone: same host and its PID is dead/reused."""
    if lock.get("unreadable") or lock.get("host") != socket.gethostname():
        return False
    try:
        pid = int(lock["pid"])
    except (KeyError, TypeError, ValueError):
        return False
    return not _alive(pid, lock.get("start"))


def describe(lock: dict, path: Path) -> str:
    if lock.get("unreadable"):
        return f"{path} exists but cannot be read; if no run is using this output_dir, delete it"
    return (
        f"output_dir is in use by snakemake PID {lock.get('pid')} on host {lock.get('host')} "
        f"(checkout {lock.get('checkout')}, since {lock.get('since')}); wait for it to finish, "
        f"or, if that run is gone, delete {path}"
    )


def acquire(output_dir: str | os.PathLike, checkout: str | os.PathLike) -> Path:
    """Take the lock for this process, or raise InputError naming the holder. A stale lock is
    replaced. The lock file appears complete (written to a temp file, then hard-linked)."""
    path = lock_path(output_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    mine = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "start": _process_start(os.getpid()),
        "checkout": os.path.abspath(checkout),
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    fd, tmp = tempfile.mkstemp(prefix=f".{LOCK_NAME}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(mine, fh)
        for _ in range(2):
            try:
                os.link(tmp, path)  # fails if the lock exists: exclusive and complete at once
                return path
            except FileExistsError:
                lock = holder(output_dir)
                if lock is None:
                    continue  # released meanwhile
                if lock.get("pid") == mine["pid"] and lock.get("host") == mine["host"]:
                    return path  # ours already
                if not is_stale(lock):
                    raise InputError(describe(lock, path)) from None
                path.unlink(missing_ok=True)
        raise InputError(f"{path}: could not take the lock (another run is starting?)")
    finally:
        os.unlink(tmp)


def release(output_dir: str | os.PathLike) -> None:
    """Remove the lock if this process holds it (never someone else's)."""
    lock = holder(output_dir)
    if lock and lock.get("pid") == os.getpid() and lock.get("host") == socket.gethostname():
        lock_path(output_dir).unlink(missing_ok=True)


def recover_after_crash(output_dir: str | os.PathLike, snakemake_dir: str | os.PathLike) -> bool:
    """Called when the Snakefile is parsed, before Snakemake locks: if a run on this output_dir
    died without cleaning up (stale lock), remove its lock and the Snakemake lock files in
    `snakemake_dir/locks` that name files under output_dir, which would otherwise stop the next
    run with LockException. Returns True when a stale lock was found."""
    lock = holder(output_dir)
    if not lock or not is_stale(lock):
        return False
    root = os.path.abspath(output_dir) + os.sep
    locks_dir = Path(snakemake_dir) / "locks"
    for output_lock in sorted(locks_dir.glob("*.output.lock")):
        try:
            files = output_lock.read_text().splitlines()
        except OSError:
            continue
        if any(os.path.abspath(f).startswith(root) for f in files if f):
            number = output_lock.name.split(".", 1)[0]
            (locks_dir / f"{number}.input.lock").unlink(missing_ok=True)
            output_lock.unlink(missing_ok=True)
    lock_path(output_dir).unlink(missing_ok=True)
    return True
