"""Test-wide settings: torch on one thread.

The fixtures are tiny; thread start-up costs more than it saves on them, and on the shared
2-core machines one thread per test process measured several times faster in wall time.
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the suite may reach a hub
if "STABLEKIT_CACHE_DIR" not in os.environ:  # model-hash cache: never the user's own
    import tempfile

    os.environ["STABLEKIT_CACHE_DIR"] = tempfile.mkdtemp(prefix="stablekit-test-cache-")
# The default precision is chosen by timing a probe on the machine (generate/acceleration.py), so
# it may differ between machines; equality tests need the same computation everywhere. The
# automatic choice itself is tested in test_acceleration.py, which clears this.
os.environ.setdefault("STABLEKIT_DTYPE", "fp32")

import torch  # noqa: E402

torch.set_num_threads(1)
