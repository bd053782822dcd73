"""Evaluation results as report.json, a self-contained report.html and a Markdown summary.

report.json: {"models": {row name: {metric: value}}, "rows": [...full rows...], "config": {...}}.
report.html: one file (images and plots inline as base64 PNG, so it opens anywhere): the table,
a sample grid per row, and plots of each metric against the checkpoint step (when the models are
checkpoints of one run) and against sampler steps and seconds per image (when a sweep varies steps).
"""
from __future__ import annotations

import base64
import html
import io
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

from stablekit.evaluate.runner import row_key

# headline metrics in table order; lower is better for the first three
HEADLINE = ("fid", "kid", "loss", "clip", "adherence", "diversity", "seconds_per_image")
LOWER_IS_BETTER = {"fid", "kid", "loss", "seconds_per_image"}


def metric_table(rows: list[dict]) -> dict:
    """{row name: {metric: value}} with only the scalar metrics."""
    return {row_key(r): {k: v for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                         and k != "step"} for r in rows}


def markdown_summary(rows: list[dict]) -> str:
    """The headline metrics of every row as a Markdown table."""
    cols = [m for m in HEADLINE if any(m in r for r in rows)]
    lines = ["| model | settings | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    for r in rows:
        settings = ", ".join(f"{k}={v}" for k, v in r.get("settings", {}).items())
        cells = [_fmt(r.get(m)) for m in cols]
        lines.append(f"| {r['model']} | {settings} | " + " | ".join(cells) + " |")
    notes = []
    if any("kid" in r for r in rows):
        notes.append("KID is the raw unbiased MMD^2 (not x1000).")
    if any("fid" in r for r in rows):
        feats = sorted({r.get("features", "") for r in rows if "features" in r})
        notes.append(f"FID/KID features: {', '.join(feats)}; n = {sorted({r.get('n') for r in rows if 'n' in r})}.")
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"
    return str(v)


def image_grid(images: np.ndarray, cols: int = 8, scale: int = 2) -> Image.Image:
    """uint8 [n, H, W, 3] -> one grid image (nearest-neighbour enlarged so 64 px images are visible)."""
    n = len(images)
    if n == 0:
        return Image.new("RGB", (8, 8), "white")
    h, w = images.shape[1:3]
    rows = -(-n // cols)
    grid = Image.new("RGB", (min(n, cols) * (w * scale + 2), rows * (h * scale + 2)), "white")
    for i, im in enumerate(images):
        tile = Image.fromarray(im).resize((w * scale, h * scale), Image.NEAREST)
        grid.paste(tile, ((i % cols) * (w * scale + 2), (i // cols) * (h * scale + 2)))
    return grid


def _png_data(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _series(rows: list[dict], x_of, group_of, metric: str) -> dict:
    out = defaultdict(list)
    for r in rows:
        x = x_of(r)
        if x is not None and isinstance(r.get(metric), (int, float)):
            out[group_of(r)].append((x, r[metric]))
    return {g: sorted(v) for g, v in out.items() if len(v) >= 2}


def plots(rows: list[dict]) -> list[tuple[str, Image.Image]]:
    """(title, figure) for metric vs checkpoint step, vs sampler steps, and vs seconds per image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in HEADLINE if m != "seconds_per_image" and any(m in r for r in rows)]
    axes_specs = [
        ("checkpoint step", lambda r: r.get("step"),
         lambda r: ", ".join(f"{k}={v}" for k, v in r.get("settings", {}).items()) or "default"),
        ("sampler steps", lambda r: r.get("settings", {}).get("steps") if len({x.get("settings", {}).get("steps")
                                                                                for x in rows}) > 1 else None,
         lambda r: " ".join([r["model"]] + [f"{k}={v}" for k, v in r.get("settings", {}).items() if k != "steps"])),
        ("seconds per image", lambda r: r.get("seconds_per_image") if len(rows) > 1 else None,
         lambda r: " ".join([r["model"]] + [f"{k}={v}" for k, v in r.get("settings", {}).items() if k != "steps"])),
    ]
    figures = []
    for xlabel, x_of, group_of in axes_specs:
        panels = [(m, _series(rows, x_of, group_of, m)) for m in metrics]
        panels = [(m, s) for m, s in panels if s]
        if not panels:
            continue
        fig, axs = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2), squeeze=False)
        for ax, (m, series) in zip(axs[0], panels):
            for group, pts in series.items():
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="o", label=group)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(m + (" (lower is better)" if m in LOWER_IS_BETTER else ""))
            ax.grid(alpha=0.3)
        axs[0][0].legend(fontsize=7)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90)
        plt.close(fig)
        buf.seek(0)
        figures.append((f"metrics vs {xlabel}", Image.open(buf).convert("RGB")))
    return figures


def html_report(result: dict, title: str = "stablekit evaluation") -> str:
    rows = result["rows"]
    cols = [m for m in HEADLINE if any(m in r for r in rows)]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ["model", "settings"] + cols)
    body = "".join(
        "<tr>" + f"<td>{html.escape(r['model'])}</td><td>{html.escape(str(r.get('settings', {})))}</td>"
        + "".join(f"<td>{_fmt(r.get(c))}</td>" for c in cols) + "</tr>" for r in rows)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}img{image-rendering:pixelated}</style>",
             f"</head><body><h1>{html.escape(title)}</h1><table><tr>{head}</tr>{body}</table>"]
    for name, fig in plots(rows):
        parts.append(f"<h2>{html.escape(name)}</h2><img alt='{html.escape(name)}' src='{_png_data(fig)}'>")
    parts.append("<h2>samples</h2>")
    for key, images in result.get("samples", {}).items():
        if len(images):
            parts.append(f"<h3>{html.escape(key)}</h3><img alt='{html.escape(key)}' src='{_png_data(image_grid(images))}'>")
    parts.append("<h2>configuration</h2><pre>" + html.escape(json.dumps(result.get("config", {}), indent=1, default=str))
                 + "</pre></body></html>")
    return "\n".join(parts)


def write_report(result: dict, out_dir: str | Path) -> dict:
    """Write report.json and report.html into out_dir; returns {"json": path, "html": path, "markdown": text}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = [{k: v for k, v in r.items()} for r in result["rows"]]
    data = {"models": metric_table(rows), "rows": rows, "config": result.get("config", {})}
    (out / "report.json").write_text(json.dumps(data, indent=1, default=str))
    (out / "report.html").write_text(html_report(result))
    for name, fig in plots(rows):  # the same plots as PNG files, for docs and terminals
        fig.save(out / f"{name.replace(' ', '-')}.png")
    md = markdown_summary(rows)
    (out / "report.md").write_text(md)
    samples = result.get("samples", {})  # the grids' images, so --resume can rebuild report.html
    np.savez(out / "samples.tmp.npz", keys=np.array(list(samples), dtype=str),
             **{f"s{i}": np.asarray(v, np.uint8) for i, v in enumerate(samples.values())})
    (out / "samples.tmp.npz").replace(out / "samples.npz")
    return {"json": out / "report.json", "html": out / "report.html", "markdown": md}


# settings that change what a row measures beyond its model and sampler settings: resuming into a
# report made with other values would mix incomparable rows
RESUME_KEYS = ("metrics", "n", "prompts", "reference", "images_per_prompt", "features", "inception", "clip",
               "judge_prompt_set", "judge_limit", "loss_n", "loss_timesteps")


def previous_rows(out_dir: str | Path, config: dict) -> dict:
    """{row key: (row, sample images)} of an earlier report in out_dir made with the same RESUME_KEYS
    settings ({} when there is none); a different setting is a StablekitError naming it."""
    from stablekit.errors import StablekitError

    out = Path(out_dir)
    if not (out / "report.json").is_file():
        return {}
    data = json.loads((out / "report.json").read_text())
    norm = lambda v: json.loads(json.dumps(v, default=str))  # noqa: E731 (tuples vs lists, paths vs str)
    for key in RESUME_KEYS:
        old, new = norm(data.get("config", {}).get(key)), norm(config.get(key))
        if old != new:
            raise StablekitError(f"--resume: {out / 'report.json'} was made with {key} {old!r}, this run has {new!r}; "
                                 "use the same settings or another --out")
    images = {}
    if (out / "samples.npz").is_file():
        z = np.load(out / "samples.npz")
        images = {str(k): z[f"s{i}"] for i, k in enumerate(z["keys"])}
    return {row_key(r): (r, images.get(row_key(r), np.zeros((0, 8, 8, 3), np.uint8))) for r in data.get("rows", [])}
