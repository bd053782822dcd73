"""stablekit's own job API, under /api/v1 (documented in docs/serving.md), and our page at /app.

    POST /api/v1/jobs              {"kind": "generate", "payload": {...}, "client_id"?, "front"?} -> 202 job
    POST /api/v1/generate          the generate payload itself -> 202 job
                                   (both take an `Idempotency-Key` header, or "id" in /jobs: retries return one job)
    GET  /api/v1/jobs[?status=queued,running&limit=N]      GET /api/v1/jobs/{id}
    GET  /api/v1/jobs/{id}/wait[?timeout=S]                 POST /api/v1/jobs/{id}/cancel
    DELETE /api/v1/jobs/{id}       (a finished job's record)  GET /api/v1/jobs/{id}/outputs
    GET  /api/v1/jobs/{id}/events  server-sent events of one job, ending with job_finished
    GET  /api/v1/events[?client_id=]  SSE of every job      WS /api/v1/ws[?job_id=|client_id=]
    GET  /api/v1/files/{path}      an output file           POST /api/v1/uploads (multipart "file")
    GET  /api/v1/models            POST /api/v1/models/current {"name"}    GET /api/v1/health
"""
from __future__ import annotations

import asyncio
import json
import re
from importlib import resources

from fastapi import APIRouter, File, HTTPException, Request, UploadFile, WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

from stablekit.errors import StablekitError
from stablekit.serve import genjob, probejob, trainjob  # noqa: F401  (register generate, train, sleep)
from stablekit.serve.files import existing_file, read_upload, safe_name, save_upload
from stablekit.serve.jobs import JOB_KINDS, STATUSES, Job, wait_for
from stablekit.serve.state import ServerState

router = APIRouter()
PREFIX = "/api/v1"
ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
KEEPALIVE = 15.0  # seconds between SSE comments on an idle stream (proxies close silent ones)
CHECKS = {"generate": genjob.check_generate, "train": trainjob.check_train, "sleep": probejob.check_sleep}  # submit-time validation per kind


class SubmitRequest(BaseModel):
    kind: str = Field(description="job kind, e.g. generate or train")
    payload: dict = Field(default_factory=dict, description="the kind's options")
    client_id: str | None = None
    front: bool = False
    id: str | None = Field(default=None, description="the job id to use (idempotency: a retry with the same id "
                                                      "returns the job already accepted instead of a second one)")


class ModelRequest(BaseModel):
    name: str


def _state(request: Request | WebSocket) -> ServerState:
    return request.app.state.stablekit


def job_view(job: Job, state: ServerState | None = None) -> dict:
    """A job as the API shows it (position: jobs ahead of it while queued)."""
    view = job.to_dict()
    if state is not None and job.status == "queued":
        queued = state.queue.list(["queued"])
        view["position"] = next((i for i, j in enumerate(queued) if j.id == job.id), None)
    return view


def submit_job(state: ServerState, kind: str, payload: dict, client_id: str | None = None, front: bool = False,
               job_id: str | None = None) -> Job:
    """Check a payload (kinds with a checker) and queue it; StablekitError -> 400. With job_id (the
    client's idempotency key), a job already queued under that id is returned instead of a new one, so
    a client whose request died with the server can retry without running the job twice."""
    if kind not in JOB_KINDS:
        raise StablekitError(f"unknown job kind {kind!r}; use one of: {', '.join(sorted(JOB_KINDS))}")
    if job_id is not None:
        if not ID_PATTERN.fullmatch(job_id):
            raise StablekitError(f"job id {job_id!r} must be 1-64 letters, digits, '-' or '_'")
        existing = state.queue.get(job_id)
        if existing is not None:
            if existing.kind != kind:
                raise HTTPException(409, f"job {job_id} exists with kind {existing.kind}")
            return existing
    check = CHECKS.get(kind)
    if check is not None:
        payload = check(payload, state)
    try:
        return state.submit(kind, payload, client_id=client_id, front=front, job_id=job_id)
    except StablekitError:
        raise
    except Exception:  # two retries racing: the unique id lets one in; the other gets that job
        existing = state.queue.get(job_id) if job_id is not None else None
        if existing is None:
            raise
        return existing


def _key(request: Request, given: str | None) -> str | None:
    return given or request.headers.get("idempotency-key") or None


@router.post(PREFIX + "/jobs", status_code=202)
async def post_job(body: SubmitRequest, request: Request):
    state = _state(request)
    job = await asyncio.to_thread(submit_job, state, body.kind, body.payload, body.client_id, body.front,
                                  _key(request, body.id))
    return job_view(job)


@router.post(PREFIX + "/generate", status_code=202)
async def post_generate(payload: dict, request: Request):
    state = _state(request)
    return job_view(await asyncio.to_thread(submit_job, state, "generate", payload, None, False, _key(request, None)))


@router.get(PREFIX + "/jobs")
async def list_jobs(request: Request, status: str | None = None, limit: int = 100, kind: str | None = None):
    statuses = [s.strip() for s in status.split(",") if s.strip()] if status else None
    if statuses and any(s not in STATUSES for s in statuses):
        raise StablekitError(f"unknown status in {status!r}; use {', '.join(STATUSES)}")
    jobs = await asyncio.to_thread(_state(request).queue.list, statuses, max(1, min(limit, 1000)), True)
    return {"jobs": [job_view(j) for j in jobs if kind is None or j.kind == kind]}


def _job(state: ServerState, job_id: str) -> Job:
    job = state.queue.get(job_id)
    if job is None:
        raise HTTPException(404, f"no job {job_id!r}")
    return job


@router.get(PREFIX + "/jobs/{job_id}")
async def get_job(job_id: str, request: Request):
    state = _state(request)
    return job_view(await asyncio.to_thread(_job, state, job_id), state)


@router.get(PREFIX + "/jobs/{job_id}/wait")
async def wait_job(job_id: str, request: Request, timeout: float = 60.0):
    state = _state(request)
    await asyncio.to_thread(_job, state, job_id)
    try:
        job = await wait_for(state, job_id, timeout=max(0.0, min(timeout, 3600.0)))
    except TimeoutError:
        job = await asyncio.to_thread(_job, state, job_id)
    return job_view(job, state)


@router.post(PREFIX + "/jobs/{job_id}/cancel")
async def cancel_job(job_id: str, request: Request):
    state = _state(request)
    job = await asyncio.to_thread(_job, state, job_id)
    if job.status == "running":
        await asyncio.to_thread(state.request_interrupt, job_id)
        asked = True
    else:
        asked = await asyncio.to_thread(state.queue.cancel, job_id)
    return {"cancelled": asked, "status": (await asyncio.to_thread(_job, state, job_id)).status}


@router.delete(PREFIX + "/jobs/{job_id}")
async def delete_job(job_id: str, request: Request):
    state = _state(request)
    job = await asyncio.to_thread(_job, state, job_id)
    if not job.done:
        raise HTTPException(409, f"job {job_id} is {job.status}; cancel it first")
    return {"deleted": await asyncio.to_thread(state.queue.delete, job_id)}


@router.get(PREFIX + "/jobs/{job_id}/outputs")
async def job_outputs(job_id: str, request: Request):
    """The job's files with their metadata (A1111 parameters text and stablekit's record)."""
    from stablekit.metadata.files import read_image_info

    state = _state(request)
    job = await asyncio.to_thread(_job, state, job_id)
    outputs = []
    for item in (job.result or {}).get("images", []):
        path = existing_file(state.settings.output_dir, item["filename"])
        info = await asyncio.to_thread(read_image_info, path)
        outputs.append({**item, "record": info.get("stablekit"), "fields": info.get("fields", {})})
    return {"job_id": job.id, "status": job.status, "outputs": outputs}


# ----------------------------------------------------------------------------- events
def _sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps(data, default=str)}\n\n"


async def _event_stream(request: Request, state: ServerState, job_id: str | None, client_id: str | None):
    sub = state.events.subscribe(client_id=client_id, job_id=job_id)
    try:
        if job_id is not None:
            job = await asyncio.to_thread(state.queue.get, job_id)
            yield _sse("job", job_view(job))
            if job.done:
                yield _sse("job_finished", {"job_id": job.id, "status": job.status, "result": job.result,
                                            "error": job.error})
                return
        while not await request.is_disconnected():
            event = await sub.get(KEEPALIVE)
            if event is None:
                if job_id is not None:  # a job run by another process may have ended without an event here
                    job = await asyncio.to_thread(state.queue.get, job_id)
                    if job is not None and job.done:
                        yield _sse("job_finished", {"job_id": job.id, "status": job.status, "result": job.result,
                                                    "error": job.error})
                        return
                yield ": keepalive\n\n"
                continue
            yield _sse(event.event, {"job_id": event.job_id, **event.data})
            if job_id is not None and event.event == "job_finished":
                return
    finally:
        sub.close()


@router.get(PREFIX + "/jobs/{job_id}/events")
async def job_events(job_id: str, request: Request):
    state = _state(request)
    await asyncio.to_thread(_job, state, job_id)
    return StreamingResponse(_event_stream(request, state, job_id, None), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.get(PREFIX + "/events")
async def all_events(request: Request, client_id: str | None = None):
    return StreamingResponse(_event_stream(request, _state(request), None, client_id), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@router.websocket(PREFIX + "/ws")
async def events_ws(ws: WebSocket, job_id: str | None = None, client_id: str | None = None):
    """Events as JSON text frames {"event", "job_id", "data"}; previews as binary PNG frames."""
    state = _state(ws)
    sub = state.events.subscribe(client_id=client_id, job_id=job_id)  # before accept: no event is missed
    await ws.accept()
    reader = asyncio.create_task(_drain(ws))
    try:
        while not reader.done():
            event = await sub.get(1.0)
            if event is None:
                continue
            await ws.send_text(json.dumps({"event": event.event, "job_id": event.job_id, "data": event.data},
                                          default=str))
            if event.binary is not None:
                await ws.send_bytes(event.binary)
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        reader.cancel()
        sub.close()


async def _drain(ws: WebSocket) -> None:
    """Read (and ignore) what the client sends, so a disconnect is noticed."""
    try:
        while True:
            await ws.receive_text()
    except (WebSocketDisconnect, RuntimeError):
        return


# ----------------------------------------------------------------------------- files, models, health
@router.get(PREFIX + "/files/{path:path}")
async def output_file(path: str, request: Request):
    return FileResponse(existing_file(_state(request).settings.output_dir, path))


@router.get(PREFIX + "/inputs/{path:path}")
async def input_file(path: str, request: Request):
    return FileResponse(existing_file(_state(request).settings.input_dir, path))


@router.post(PREFIX + "/uploads")
async def upload(request: Request, file: UploadFile = File(...)):
    """Save an image into DATA_DIR/input (name cleaned, never overwriting); use the returned name as a
    generate job's init_image or mask."""
    from PIL import Image, UnidentifiedImageError

    state = _state(request)
    data = await read_upload(file, state.settings.max_upload_mb)
    try:
        import io

        Image.open(io.BytesIO(data)).verify()
    except (UnidentifiedImageError, OSError, SyntaxError):
        raise HTTPException(400, f"{file.filename!r} is not an image (PNG, JPEG or WebP)") from None
    path = await asyncio.to_thread(save_upload, data, state.settings.input_dir, safe_name(file.filename), False)
    return {"name": path.relative_to(state.settings.input_dir.resolve()).as_posix()}


@router.get(PREFIX + "/models")
async def models(request: Request):
    m = _state(request).models
    return {"current": m.current_name, "checkpoints": [{"name": n, "title": m.title(n)} for n in m.list_checkpoints()],
            "loras": m.folders.list("loras")}


@router.post(PREFIX + "/models/current")
async def set_model(body: ModelRequest, request: Request):
    m = _state(request).models
    return {"current": await asyncio.to_thread(m.set_current, body.name)}


@router.get(PREFIX + "/health")
async def health(request: Request):
    from stablekit import __version__

    state = _state(request)
    pool = getattr(request.app.state, "pool", None)
    return {"ok": True, "version": __version__, "queue": await asyncio.to_thread(state.queue.counts),
            "workers": pool.count if pool else 0, "kinds": sorted(JOB_KINDS)}


@router.get("/app", response_class=HTMLResponse)
async def page():
    """Our page (HTML + JS, no build step), from package data."""
    return HTMLResponse(resources.files("stablekit.serve.page").joinpath("index.html").read_text())


@router.get(PREFIX + "/kinds")
async def kinds():
    return JSONResponse({"kinds": sorted(JOB_KINDS)})
