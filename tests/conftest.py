import os

# Tests never touch the network: without this a hub lookup hangs ~47 s before failing.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TIMM_OFFLINE", "1")
