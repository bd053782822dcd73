"""`python tests/train_entry.py ARGS` runs `stablekit ARGS` for subprocess tests (accelerate launch).

Until stablekit.data is merged, a minimal folder reader (train_fixtures.FolderImages) stands in
for stablekit.data.load_dataset; once it exists, the real one is used and this is `-m stablekit`.
"""
import sys
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
try:
    import stablekit.data  # noqa: F401
except ImportError:
    from train_fixtures import FolderImages

    stand_in = types.ModuleType("stablekit.data")
    stand_in.load_dataset = lambda source, config=None: FolderImages(source)
    sys.modules["stablekit.data"] = stand_in

import torch  # noqa: E402

from stablekit.cli import main  # noqa: E402

torch.set_num_threads(1)
sys.exit(main(sys.argv[1:]))
