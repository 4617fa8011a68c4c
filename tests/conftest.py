import atexit
import os
import shutil
import tempfile

# Tests never touch the network: without this a hub lookup hangs ~47 s before failing.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TIMM_OFFLINE", "1")

# The planner's count cache (workflow_scripts/count_cache.py): one fresh folder per session, so
# tests neither read nor fill the user's ~/.cache (subprocesses inherit it).
_COUNT_CACHE = tempfile.mkdtemp(prefix="bbbc021-count-cache-")
os.environ["BBBC021_DINOV3_CACHE"] = _COUNT_CACHE
atexit.register(shutil.rmtree, _COUNT_CACHE, ignore_errors=True)
# ... and count what it lacks, rather than take the counts the repository ships (the tests of
# those, tests/test_count_cache.py, switch them back on)
os.environ["BBBC021_DINOV3_SHIPPED_COUNTS"] = "off"
