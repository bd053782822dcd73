"""A1111's /sdapi/v1/progress from the queue: the running job's step, batch, ETA and preview.

A1111 has one global `shared.state`; here the state of the first running job (any kind: an A1111
job, one of our own API or a ComfyUI prompt) stands for it. job_count is the running job's batch
count, or the number of queued jobs while none runs, so clients that wait for
`progress == 0 and job_count == 0` (webuiapi's util_wait_for_ready) wait for the queue to drain.
"""
from __future__ import annotations

import base64
import time

from stablekit.serve.a1111.jobs import preview_path


def progress(state, skip_current_image: bool = False) -> dict:
    """ProgressResponse: progress (0..1), eta_relative (s), state (A1111's keys), current_image, textinfo."""
    running = state.queue.list(["running"])
    queued = len(state.queue.list(["queued"]))
    if not running:
        return {"progress": 0.0, "eta_relative": 0.0, "state": _state(None, queued), "current_image": None,
                "textinfo": None}
    job = running[0]
    p = job.progress or {}
    batches = max(1, int(p.get("batches", 1) or 1))
    batch, step, steps = int(p.get("batch", 0) or 0), int(p.get("step", 0) or 0), int(p.get("total", 0) or 0)
    done = 0.01 + batch / batches + (step / steps / batches if steps else 0.0)
    elapsed = time.time() - (job.started or time.time())
    eta = elapsed / done - elapsed
    image = None
    path = preview_path(state, job.id)
    if not skip_current_image and path.is_file():
        try:
            image = base64.b64encode(path.read_bytes()).decode("ascii")
        except OSError:  # replaced or removed while reading: no preview this time
            image = None
    return {"progress": min(done, 1.0), "eta_relative": max(0.0, eta), "state": _state(job, queued),
            "current_image": image, "textinfo": None}


def _state(job, queued: int) -> dict:
    """shared.state.dict()'s keys (plus queue_size and job_id, stablekit's)."""
    p = (job.progress or {}) if job is not None else {}
    return {
        "skipped": False,
        "interrupted": False,
        "stopping_generation": False,
        "job": f"{job.kind}({job.id})" if job is not None else "",
        "job_count": int(p.get("batches", 1) or 1) if job is not None else queued,
        "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.localtime(job.started)) if job and job.started else "0",
        "job_no": int(p.get("batch", 0) or 0),
        "sampling_step": int(p.get("step", 0) or 0),
        "sampling_steps": int(p.get("total", 0) or 0),
        "queue_size": queued,
        "job_id": job.id if job is not None else None,
    }
