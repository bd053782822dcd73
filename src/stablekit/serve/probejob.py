"""The "sleep" job kind: a queue probe that needs no model. Waits `seconds` (at most 10) in steps of
0.1 s, reporting progress and honouring cancel; returns who ran it. For monitoring that workers are
alive, and for load tests of the queue itself (benchmarks/serve_load.py)."""
from __future__ import annotations

import time

from stablekit.errors import StablekitError
from stablekit.serve.jobs import JobContext, job_kind

MAX_SECONDS = 10.0


def check_sleep(payload: dict, state=None) -> dict:
    seconds = payload.get("seconds", 0.1) if isinstance(payload, dict) else None
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 <= seconds <= MAX_SECONDS:
        raise StablekitError(f"sleep needs \"seconds\" between 0 and {MAX_SECONDS:g} (got {seconds!r})")
    extra = sorted(set(payload) - {"seconds", "tag"})
    if extra:
        raise StablekitError(f"unknown sleep option {extra[0]!r}; use seconds (and tag, returned as given)")
    return dict(payload)


@job_kind("sleep")
def run_sleep(ctx: JobContext, payload: dict) -> dict:
    seconds = float(check_sleep(payload).get("seconds", 0.1))
    steps = max(1, int(seconds * 10))
    start = time.time()
    for i in range(steps):
        time.sleep(seconds / steps)
        ctx.progress(i + 1, steps)
    return {"worker": ctx.job.worker, "attempt": ctx.job.attempts, "started": start, "slept": time.time() - start,
            "tag": payload.get("tag")}
