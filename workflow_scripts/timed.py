"""Run a command and append its wall time, CPU time and peak memory to its log.

Stands in for Snakemake's `benchmark:` in rules that use the between-workflow cache (`cache:`),
which Snakemake does not allow together with `benchmark:` (a result fetched from the cache has no
timing). The last line of the rule's log then reads, in the units of a benchmark file,

    benchmark: s=12.345 cpu_time=20.10 max_rss=512.3 exit=0

`max_rss` (MB) is the peak resident memory of the largest process the command ran (the kernel's
`ru_maxrss` of the waited-for children), not the sum over processes as a Snakemake benchmark
samples it. Usage: python -m workflow_scripts.timed CMD [ARG ...]
"""

from __future__ import annotations

import re
import resource
import subprocess
import sys
import time

from workflow_scripts.errors import InputError, cli

PREFIX = "benchmark:"
FIELDS = ("s", "cpu_time", "max_rss", "exit")
_LINE = re.compile(rf"^{PREFIX} " + " ".join(rf"{f}=(?P<{f}>-?[\d.]+)" for f in FIELDS) + "$")


def _max_rss_mb(usage: resource.struct_rusage) -> float:
    # Linux reports KiB, macOS bytes
    return usage.ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)


def run_timed(command: list[str]) -> tuple[int, dict]:
    """Run `command` (stdout/stderr inherited); return its exit status and its timing."""
    if not command:
        raise InputError("no command given (usage: python -m workflow_scripts.timed CMD ...)")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    try:
        status = subprocess.run(command, check=False).returncode
    except OSError as err:
        raise InputError(f"cannot run {command[0]!r}: {err.strerror}") from err
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if status < 0:  # killed by a signal: report it as a shell would
        status = 128 - status
    return status, {"s": wall, "cpu_time": cpu, "max_rss": _max_rss_mb(after), "exit": status}


def format_timing(timing: dict) -> str:
    return (
        f"{PREFIX} s={timing['s']:.3f} cpu_time={timing['cpu_time']:.2f} "
        f"max_rss={timing['max_rss']:.1f} exit={timing['exit']}"
    )


def read_timing(log_text: str) -> dict | None:
    """The timing line of a log written through this module (the last one), or None."""
    for line in reversed(log_text.splitlines()):
        match = _LINE.match(line.strip())
        if match:
            values = {k: float(v) for k, v in match.groupdict().items()}
            values["exit"] = int(values["exit"])
            return values
    return None


@cli
def main(argv: list[str] | None = None) -> int:
    command = list(sys.argv[1:] if argv is None else argv)
    if command[:1] == ["--"]:
        command = command[1:]
    status, timing = run_timed(command)
    sys.stdout.flush()
    print(format_timing(timing), file=sys.stderr, flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
