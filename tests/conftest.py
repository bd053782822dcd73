"""Test-wide settings: torch on one thread.

The fixtures are tiny; thread start-up costs more than it saves on them, and on the shared
2-core machines one thread per test process measured several times faster in wall time.
"""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the suite may reach a hub
if "STABLEKIT_CACHE_DIR" not in os.environ:  # model-hash cache: never the user's own
    import atexit
    import shutil
    import tempfile

    os.environ["STABLEKIT_CACHE_DIR"] = tempfile.mkdtemp(prefix="stablekit-test-cache-")
    # removed at exit: traces and weight-cache entries reach 170 MB a run, and hundreds of runs
    # once filled this machine's disk
    atexit.register(shutil.rmtree, os.environ["STABLEKIT_CACHE_DIR"], ignore_errors=True)
# The default precision is chosen by timing a probe on the machine (generate/acceleration.py), so
# it may differ between machines; equality tests need the same computation everywhere. The
# automatic choice itself is tested in test_acceleration.py, which clears this.
os.environ.setdefault("STABLEKIT_DTYPE", "fp32")
# Converted-weight cache (formats/weight_cache.py): its own tests turn it on; elsewhere a full-size
# test must not write gigabytes into temp folders.
os.environ.setdefault("STABLEKIT_WEIGHT_CACHE_GB", "0")

import torch  # noqa: E402

torch.set_num_threads(1)

import pytest  # noqa: E402
from fixtures import one_thread, tiny_components  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    """Every test starts on one torch thread: training (train/loop.py) and pretraining set the
    count from their config, and a test after them must not inherit it."""
    with one_thread():
        yield


@pytest.fixture(scope="module")
def tiny_pipe():
    """A Pipeline on tiny random SD1 components (tests/fixtures.py), one per test module."""
    from stablekit.generate.pipeline import Pipeline

    with one_thread():
        return Pipeline(tiny_components("sd1"), progress=False)


@pytest.fixture(scope="module")
def tiny_model_file(tmp_path_factory):
    """Tiny random SD1 components saved as a single .safetensors file, one per test module."""
    from stablekit.formats import save_model

    path = tmp_path_factory.mktemp("tiny_model") / "tiny.safetensors"
    with one_thread():
        save_model(tiny_components("sd1"), path, to="single-file")
    return path
