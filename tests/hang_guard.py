"""The one wall-clock limit of the tests' subprocesses, daemons and workflow runs.

It guards against a hang and is never a speed check: a test that passes on a fast machine must
pass on a slow or busy one, so no test sizes a limit for this machine's speed. 40 minutes is
longer than any single run of the suite takes on a loaded 2-core machine by a wide margin.
"""

HANG_GUARD_S = 2400
