"""ComfyUI's queue and history shapes built from the server's jobs of kind "comfy.prompt".

A queue item is ComfyUI's tuple [number, prompt_id, prompt, extra_data, outputs_to_execute]; a
history entry is {"prompt": that tuple, "outputs": {node: {"images": [...]}}, "status":
{"status_str", "completed", "messages"}, "meta": {node: {...}}} (execution.py PromptQueue).
The jobs live in the persistent queue, so history survives a restart (ComfyUI's does not).
"""
from __future__ import annotations

from stablekit.serve.comfy.jobs import FAILURES, KIND

MAX_HISTORY = 10000  # ComfyUI's MAXIMUM_HISTORY_SIZE


def queue_item(job) -> list:
    p = job.payload
    return [job.number, job.id, p.get("prompt", {}), p.get("extra_data", {}), p.get("outputs", [])]


def comfy_jobs(queue, statuses) -> list:
    return [j for j in queue.list(statuses) if j.kind == KIND]


def history_jobs(queue) -> list:
    """Finished prompts, oldest first (queue items deleted before they ran are not history)."""
    jobs = [j for j in comfy_jobs(queue, ["done", "failed", "cancelled"]) if j.started is not None]
    jobs.sort(key=lambda j: (j.finished or 0, j.number))
    return jobs[-MAX_HISTORY:]


def status_messages(job) -> list:
    """A finished prompt's status messages: as recorded, or rebuilt from the job's status and error."""
    if job.result and "messages" in job.result:
        return job.result["messages"]
    if job.id in FAILURES:
        return FAILURES[job.id]
    start = ["execution_start", {"prompt_id": job.id, "timestamp": int((job.started or 0) * 1000)}]
    name = "execution_interrupted" if job.status == "cancelled" else "execution_error"
    end = {"prompt_id": job.id, "timestamp": int((job.finished or 0) * 1000), "node_id": None, "node_type": None,
           "executed": []}
    if name == "execution_error":
        end.update(exception_message=job.error or "failed", exception_type="stablekit.errors.StablekitError",
                   traceback=[], current_inputs={}, current_outputs={})
    return [start, [name, end]]


def history_entry(job) -> dict:
    outputs = (job.result or {}).get("outputs", {})
    ok = job.status == "done"
    return {"prompt": queue_item(job), "outputs": outputs,
            "status": {"status_str": "success" if ok else "error", "completed": ok, "messages": status_messages(job)},
            "meta": {n: {"node_id": n, "display_node": n, "parent_node": None, "real_node_id": n} for n in outputs}}


def history(queue, max_items: int | None = None, offset: int = 0) -> dict:
    """{prompt_id: entry}, oldest first; max_items: the newest that many (after skipping `offset` newest)."""
    jobs = history_jobs(queue)
    if offset:
        jobs = jobs[:-offset] if offset < len(jobs) else []
    if max_items is not None:
        jobs = jobs[-max_items:] if max_items > 0 else []
    return {j.id: history_entry(j) for j in jobs}
