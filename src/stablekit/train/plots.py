"""Loss curves as PNGs in the run folder: people would rather look than read."""
from __future__ import annotations

from pathlib import Path


def save_loss_plot(history: list[dict], path: Path, title: str = "loss") -> None:
    if not history:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    steps = np.array([h["step"] for h in history])
    loss = np.array([h["loss"] for h in history])
    k = max(1, len(loss) // 50)  # moving average over ~2% of the run
    smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(steps, loss, color="0.8", lw=0.8, label="loss")
    ax.plot(steps[k - 1:], smooth, color="C0", lw=1.5, label=f"mean of {k}")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    tmp = Path(path).with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
