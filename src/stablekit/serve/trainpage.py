"""Training runs on our page: /app/train lists the train jobs, /app/train/{job id} shows one run
(status and progress, the loss curve from the run's metrics.jsonl, the loop's loss.png, the
validation sample grids, the resolved configuration). Its data comes from:

    GET /api/v1/train              train jobs, newest first, with step / total / loss
    GET /api/v1/train/{job_id}     one run: job, config, metrics (at most MAX_POINTS rows), samples, loss plot

Every file is located under DATA_DIR/output/train/<run id>/ and read through files.safe_path; the
page loads images through /api/v1/files (safe_path again), never by a path the client chose.
"""
from __future__ import annotations

import asyncio
import json
import re
from importlib import resources
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse

from stablekit.serve.files import safe_path
from stablekit.serve.trainjob import run_folder

router = APIRouter()
MAX_POINTS = 2000  # metrics rows sent to the page (every k-th, the last always)
SAMPLE_STEP = re.compile(r"(\d+)")


def _state(request: Request):
    return request.app.state.stablekit


def _train_job(state, job_id: str):
    job = state.queue.get(job_id)
    if job is None or job.kind != "train":
        raise HTTPException(404, f"no train job {job_id!r}; list them at GET /api/v1/train")
    return job


def _inside(output: Path, path: Path) -> Path | None:
    """A file found under the run folder, re-checked with safe_path; None when it leaves the output
    folder (a symlink pointing elsewhere), so the page skips it."""
    try:
        return safe_path(output, path.relative_to(output).as_posix())
    except HTTPException:
        return None


def read_metrics(path: Path, limit: int = MAX_POINTS) -> list[dict]:
    """The rows of a metrics.jsonl (unreadable lines skipped), thinned to at most `limit` rows."""
    rows = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line being written right now
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            rows.append({k: v for k, v in row.items() if isinstance(v, (int, float))})
    if len(rows) > limit:
        every = -(-len(rows) // limit)
        rows = rows[::every] + ([rows[-1]] if (len(rows) - 1) % every else [])
    return rows


def run_info(state, job) -> dict:
    """What the run page shows for one train job."""
    output = state.settings.output_dir.resolve()
    root = run_folder(output, (job.payload or {}).get("resume") or job.id)
    found = sorted(root.rglob("metrics.jsonl")) if root.is_dir() else []
    info = {"job": job.to_dict(), "run": root.name, "config": None, "metrics": [], "samples": [], "loss_plot": None}
    if not found:
        return info
    metrics = _inside(output, found[0])
    if metrics is None:
        return info
    run_dir = metrics.parent
    info["metrics"] = read_metrics(metrics)
    config = _inside(output, run_dir / "config.json")
    if config is not None and config.is_file():
        try:
            info["config"] = json.loads(config.read_text())
        except ValueError:
            info["config"] = None
    for sample in sorted((run_dir / "samples").glob("*.png")):
        kept = _inside(output, sample)
        if kept is not None and kept.is_file():
            step = SAMPLE_STEP.search(sample.stem)
            info["samples"].append({"step": int(step.group(1)) if step else None, "url": _url(output, kept)})
    plot = _inside(output, run_dir / "loss.png")
    if plot is not None and plot.is_file():
        info["loss_plot"] = _url(output, plot)
    return info


def _url(output: Path, path: Path) -> str:
    return "/api/v1/files/" + path.relative_to(output).as_posix()


@router.get("/api/v1/train")
async def list_runs(request: Request, limit: int = 100):
    jobs = await asyncio.to_thread(_state(request).queue.list, None, 5000, True)
    runs = [{"id": j.id, "number": j.number, "status": j.status, "created": j.created, "method": j.payload.get("method"),
             "resume": j.payload.get("resume"), "step": j.progress.get("step"), "total": j.progress.get("total"),
             "loss": j.progress.get("loss"), "error": j.error} for j in jobs if j.kind == "train"]
    return {"runs": runs[:max(1, min(limit, 1000))]}


@router.get("/api/v1/train/{job_id}")
async def get_run(job_id: str, request: Request):
    state = _state(request)
    job = await asyncio.to_thread(_train_job, state, job_id)
    return await asyncio.to_thread(run_info, state, job)


def _page() -> HTMLResponse:
    return HTMLResponse(resources.files("stablekit.serve.page").joinpath("train.html").read_text())


@router.get("/app/train", response_class=HTMLResponse)
async def runs_page():
    return _page()


@router.get("/app/train/{job_id}", response_class=HTMLResponse)
async def run_page(job_id: str):
    return _page()
