"""ComfyUI's job-listing API (GET /jobs, /jobs/{id}, POST /jobs/{id}/cancel, /jobs/cancel), which
the ComfyUI frontend's queue and history panel reads (frontend >= 1.3x), over the same
"comfy.prompt" jobs as /queue and /history. Times are milliseconds since the epoch."""
from __future__ import annotations

import json

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response

from stablekit.serve.comfy.history import comfy_jobs, status_messages
from stablekit.serve.comfy.jobs import KIND

jobs_router = APIRouter()
STATUS = {"queued": "pending", "running": "in_progress", "done": "completed", "failed": "failed",
          "cancelled": "cancelled"}
OURS = {v: k for k, v in STATUS.items()}


def _ms(t: float | None) -> int | None:
    return None if t is None else int(t * 1000)


def job_summary(job) -> dict:
    outputs = (job.result or {}).get("outputs", {})
    previews = [(node, img) for node, ui in outputs.items() for img in ui.get("images", [])]
    error = None
    if job.status == "failed":
        error = next((d for name, d in status_messages(job) if name == "execution_error"), None)
        if error is not None:
            error = {**error, "node_id": error.get("node_id") or "", "node_type": error.get("node_type") or ""}
    return {"id": job.id, "status": STATUS[job.status], "create_time": _ms(job.created),
            "execution_start_time": _ms(job.started), "execution_end_time": _ms(job.finished),
            "preview_output": {**previews[0][1], "nodeId": previews[0][0], "mediaType": "images"} if previews else None,
            "outputs_count": sum(len(v) for ui in outputs.values() for v in ui.values() if isinstance(v, list)),
            "previewable_outputs_count": len(previews), "execution_error": error, "workflow_id": None,
            "priority": job.number}


def _int(request: Request, name: str, default: int) -> int:
    value = request.query_params.get(name)
    if value is None:
        return default
    if not value.isdigit() or len(value) > 9:
        raise HTTPException(400, f"{name} must be a whole number >= 0 (got {value!r})")
    return int(value)


@jobs_router.get("/jobs")
def list_jobs(request: Request):
    wanted = [s for s in request.query_params.get("status", "").split(",") if s]
    unknown = [s for s in wanted if s not in OURS]
    if unknown:
        raise HTTPException(400, f"unknown status {unknown[0]!r}; use: {', '.join(OURS)}")
    statuses = [OURS[s] for s in wanted] or None
    jobs = comfy_jobs(request.app.state.stablekit.queue, statuses)
    if request.query_params.get("sort_order", "desc") == "desc":
        jobs.sort(key=lambda j: (j.created, j.number), reverse=True)
    offset, limit = _int(request, "offset", 0), _int(request, "limit", 200)
    page = jobs[offset:offset + limit]
    more = offset + limit < len(jobs)
    return {"jobs": [job_summary(j) for j in page],
            "pagination": {"offset": offset, "limit": limit, "total": len(jobs), "has_more": more}}


def _comfy_job(request: Request, job_id: str):
    job = request.app.state.stablekit.queue.get(job_id)
    if job is None or job.kind != KIND:
        raise HTTPException(404, f"no prompt {job_id!r}")
    return job


@jobs_router.get("/jobs/{job_id}")
def get_job(job_id: str, request: Request):
    job = _comfy_job(request, job_id)
    return {**job_summary(job), "workflow": {"prompt": job.payload.get("prompt", {}),
                                             "extra_data": job.payload.get("extra_data", {})},
            "outputs": (job.result or {}).get("outputs", {}),
            "update_time": _ms(job.finished or job.started or job.created)}


def _cancel(request: Request, job_id: str) -> None:
    job = _comfy_job(request, job_id)
    state = request.app.state.stablekit
    if job.status == "running":
        state.request_interrupt(job.id)
    elif job.status == "queued":
        state.queue.cancel(job.id)


@jobs_router.post("/jobs/cancel")
async def cancel_jobs(request: Request):
    try:
        ids = json.loads(await request.body()).get("job_ids")
    except (ValueError, AttributeError):
        ids = None
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise HTTPException(400, "send {\"job_ids\": [ids]}")
    for job_id in ids:
        _cancel(request, job_id)
    return Response(status_code=200)


@jobs_router.post("/jobs/{job_id}/cancel")
def cancel_job(job_id: str, request: Request):
    _cancel(request, job_id)
    return Response(status_code=200)
