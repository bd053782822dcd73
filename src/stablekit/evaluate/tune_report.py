"""The results of a `stablekit tune` study as a Markdown table and a plot (value per trial, best so far)."""
from __future__ import annotations

from pathlib import Path


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def markdown(summary: dict) -> str:
    """One row per trial (settings, state, metric, seconds), then the best settings and the baseline."""
    names = sorted({k for t in summary["trials"] for k in t["params"]})
    metric = summary["metric"]
    lines = [f"| trial | {' | '.join(names)} | state | {metric} | seconds |",
             "|" + "---|" * (len(names) + 4)]
    for t in summary["trials"]:
        label = f"{t['number']} (defaults)" if t["baseline"] else str(t["number"])
        lines.append(f"| {label} | " + " | ".join(_fmt(t["params"].get(n)) for n in names)
                     + f" | {t['state']} | {_fmt(t['value'])} | {_fmt(t['seconds'])} |")
    best, base = summary.get("best"), summary.get("baseline")
    lines.append("")
    if best:
        better = "" if not base else (" (the defaults gave %s)" % _fmt(base["value"]))
        lines.append(f"best ({summary['direction']} {metric}): trial {best['number']}, {metric} "
                     f"{_fmt(best['value'])}{better}; settings: "
                     + " ".join(f"--{k.replace('_', '-')} {_fmt(v)}" for k, v in best["params"].items()))
        if best.get("artefact"):
            lines.append(f"its artefact: {best['artefact']}")
    else:
        lines.append("no completed trial yet")
    return "\n".join(lines) + "\n"


def plot(summary: dict, path: Path) -> None:
    """Left: metric per completed trial with the best so far; then one panel per searched setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [t for t in summary["trials"] if t["state"] == "complete"]
    names = sorted({k for t in done for k in t["params"]})
    sign = 1 if summary["direction"] == "maximize" else -1
    fig, axes = plt.subplots(1, 1 + len(names), figsize=(3.4 * (1 + len(names)), 2.8), squeeze=False)
    ax = axes[0][0]
    xs, ys = [t["number"] for t in done], [t["value"] for t in done]
    ax.plot(xs, ys, "o", label="trial")
    best, running = [], None
    for y in ys:
        running = y if running is None or sign * (y - running) > 0 else running
        best.append(running)
    ax.step(xs, best, where="post", label="best so far")
    for t in done:
        if t["baseline"]:
            ax.axhline(t["value"], color="grey", linestyle="--", label="defaults")
    ax.set_xlabel("trial")
    ax.set_ylabel(summary["metric"])
    ax.legend(fontsize=7)
    for ax, name in zip(axes[0][1:], names):
        pts = [(t["params"][name], t["value"]) for t in done if name in t["params"]]
        numeric = all(isinstance(p[0], (int, float)) and not isinstance(p[0], bool) for p in pts)
        ax.plot([p[0] if numeric else str(p[0]) for p in pts], [p[1] for p in pts], "o")
        if numeric and name in ("lr", "alpha", "weight_decay") and min(p[0] for p in pts) > 0:
            ax.set_xscale("log")
        ax.set_xlabel(name)
    fig.suptitle(f"{summary['study']}: {summary['metric']} ({summary['direction']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
