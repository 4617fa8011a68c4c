"""workflow_scripts.timed: the timing line that replaces `benchmark:` in cached rules.

Oracle: the child measures itself (its own peak RSS and CPU time from getrusage(RUSAGE_SELF),
printed on stdout); the wrapper measures it from outside (RUSAGE_CHILDREN) and must agree.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from hang_guard import HANG_GUARD_S

from workflow_scripts import timed

# allocates and writes 150 MiB, burns >= 0.3 s of CPU, sleeps 0.4 s, reports its own figures
CHILD = """
import resource, sys, time
block = b"x" * (150 * 2**20)
start = time.process_time()
while time.process_time() - start < 0.3:
    pass
time.sleep(0.4)
usage = resource.getrusage(resource.RUSAGE_SELF)
print(usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime)
sys.exit(int(sys.argv[1]))
"""


def run_wrapper(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "workflow_scripts.timed", *command],
        capture_output=True,
        text=True,
        timeout=HANG_GUARD_S,
        check=False,
    )


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss units checked on Linux")
def test_wrapper_reports_what_the_child_measures_of_itself():
    result = run_wrapper(sys.executable, "-c", CHILD, "0")
    assert result.returncode == 0, result.stderr
    self_rss_mb, self_cpu_s = map(float, result.stdout.split())
    timing = timed.read_timing(result.stderr)
    assert timing is not None, result.stderr
    assert timing["exit"] == 0
    assert timing["max_rss"] >= 150
    assert timing["max_rss"] == pytest.approx(self_rss_mb, rel=0.05)
    assert timing["cpu_time"] >= self_cpu_s - 0.02  # the child's CPU, plus its interpreter exit
    assert timing["cpu_time"] < self_cpu_s + 1.0
    assert 0.7 <= timing["s"] < 10  # 0.3 s CPU + 0.4 s sleep


def test_exit_status_and_output_pass_through():
    result = run_wrapper(sys.executable, "-c", "print('from child'); raise SystemExit(3)")
    assert result.returncode == 3
    assert result.stdout == "from child\n"
    assert timed.read_timing(result.stderr)["exit"] == 3


def test_a_killed_child_reports_the_shell_status():
    kill_self = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    result = run_wrapper(sys.executable, "-c", kill_self)
    assert result.returncode == 128 + 9
    assert timed.read_timing(result.stderr)["exit"] == 137


def test_a_missing_program_is_one_error_line():
    result = run_wrapper("no-such-program-17")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: cannot run 'no-such-program-17': No such file or directory"
    )


def test_no_command_is_an_error():
    result = run_wrapper()
    assert result.returncode == 2
    assert result.stderr.startswith("error: no command given")


def test_read_timing_takes_the_last_line_and_ignores_lookalikes():
    log = "\n".join(
        [
            "benchmark: s=1.000 cpu_time=1.00 max_rss=1.0 exit=0",
            "benchmark: s=oops",
            "  benchmark: s=2.500 cpu_time=4.25 max_rss=512.5 exit=1  ",
            "done",
        ]
    )
    assert timed.read_timing(log) == {"s": 2.5, "cpu_time": 4.25, "max_rss": 512.5, "exit": 1}
    assert timed.read_timing("no timing here\n") is None


def test_format_and_read_round_trip():
    timing = {"s": 12.3456, "cpu_time": 20.104, "max_rss": 1024.26, "exit": 0}
    line = timed.format_timing(timing)
    assert line == "benchmark: s=12.346 cpu_time=20.10 max_rss=1024.3 exit=0"
    assert timed.read_timing(line) == {"s": 12.346, "cpu_time": 20.1, "max_rss": 1024.3, "exit": 0}
