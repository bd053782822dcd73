"""Training metrics: <run>/metrics.jsonl always, TensorBoard event files in <run>/logs when enabled.

`tensorboard` (the pip package, no torch of its own) is an optional dependency (extra `train`);
without it only the JSONL file is written and a note says so once.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path


class MetricsLog:
    """Appends one JSON line per step; on resume, lines past the resumed step are dropped, so the
    file always matches the checkpointed history."""

    def __init__(self, run_dir: Path, resume_step: int, tensorboard: bool = True):
        self.path = Path(run_dir) / "metrics.jsonl"
        if self.path.exists():
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= resume_step]
            self.path.write_text("".join(line + "\n" for line in kept))
        self._file = open(self.path, "a")
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "logs"), purge_step=resume_step + 1)
            except ImportError:
                warnings.warn("tensorboard is not installed (pip install 'stablekit[train]'); "
                              "metrics go to metrics.jsonl only", stacklevel=2)

    def write(self, row: dict) -> None:
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self.writer is not None:
            step = row["step"]
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.writer.add_scalar(f"train/{key}", value, step)

    def image(self, tag: str, image, step: int) -> None:
        """A PIL image (the validation grid) into TensorBoard."""
        if self.writer is None:
            return
        import numpy as np

        self.writer.add_image(tag, np.asarray(image.convert("RGB")), step, dataformats="HWC")

    def close(self) -> None:
        self._file.close()
        if self.writer is not None:
            self.writer.close()
