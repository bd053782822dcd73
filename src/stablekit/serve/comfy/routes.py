"""ComfyUI's HTTP API on the stablekit server (ComfyUI server.py routes), each also under /api/...

POST /prompt validates with stablekit.nodes (ComfyUI's {"error", "node_errors"} shape, 400) and
queues a "comfy.prompt" job in the persistent queue; /queue, /history, /view, /upload/*,
/object_info, /system_stats, /embeddings, /models, /interrupt, /free follow ComfyUI's shapes. The
websocket (/ws) is in ws.py, user storage in userdata.py, the web frontend in frontend.py.
"""
from __future__ import annotations

import asyncio
import json
import os
import platform
import re
import sys

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse, Response

from stablekit.nodes.validate import validate_prompt
from stablekit.serve.comfy import frontend, userdata, ws
from stablekit.serve.comfy.history import comfy_jobs, history, history_entry, history_jobs, queue_item
from stablekit.serve.comfy.jobs import KIND, folders_for, server_engine
from stablekit.serve.comfy.jobsapi import jobs_router
from stablekit.serve.comfy.object_info import object_info
from stablekit.serve.comfy.uploads import upload_router
from stablekit.serve.comfy.view import view_router

api = APIRouter()
MODEL_FOLDERS = ("checkpoints", "loras", "vae", "controlnet", "upscale_models", "embeddings")
EMBEDDING_SUFFIXES = (".safetensors", ".pt", ".bin")
PROMPT_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")  # a uuid4 as ComfyUI's clients send, or any such name


def _state(request: Request):
    return request.app.state.stablekit


def prompt_error(kind: str, message: str, details: str = "", status: int = 400) -> JSONResponse:
    """ComfyUI's error body for a refused prompt: {"error": {type, message, details, extra_info}, "node_errors": {}}."""
    return JSONResponse({"error": {"type": kind, "message": message, "details": details, "extra_info": {}},
                         "node_errors": {}}, status_code=status)


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON; give finite numbers")


def queue_remaining(state) -> int:
    counts = state.queue.counts()
    return int(counts.get("queued", 0)) + int(counts.get("running", 0))


# ------------------------------------------------------------------ prompts and the queue
@api.get("/prompt")
def get_prompt(request: Request):
    return {"exec_info": {"queue_remaining": queue_remaining(_state(request))}}


@api.post("/prompt")
async def post_prompt(request: Request):
    state = _state(request)
    try:
        body = json.loads(await request.body(), parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        return prompt_error("invalid_prompt", "Cannot parse the request body as JSON", str(exc)[:200])
    if not isinstance(body, dict) or "prompt" not in body:
        return prompt_error("no_prompt", "No prompt provided", "the body needs a \"prompt\": {node id: node}")
    extra_data = body.get("extra_data") or {}
    if not isinstance(extra_data, dict):
        return prompt_error("invalid_prompt", "extra_data must be an object", f"got {type(extra_data).__name__}")
    client_id = body.get("client_id")
    if client_id is not None and not isinstance(client_id, str):
        return prompt_error("invalid_prompt", "client_id must be a string", f"got {type(client_id).__name__}")
    if client_id:
        extra_data["client_id"] = client_id
    prompt_id = body.get("prompt_id")  # ComfyUI lets the client choose it (server.py post_prompt)
    if prompt_id is not None and (not isinstance(prompt_id, str) or not PROMPT_ID.fullmatch(prompt_id)):
        return prompt_error("invalid_prompt", "prompt_id must be 1-64 letters, digits, '-' or '_'",
                            f"got {str(prompt_id)[:80]!r}")
    prompt = body["prompt"]
    ok, error, good, node_errors, _ = await asyncio.to_thread(validate_prompt, prompt, folders_for(state.settings))
    if not ok:
        return JSONResponse({"error": error, "node_errors": node_errors}, status_code=400)
    refused = _unsafe_prefixes(prompt, folders_for(state.settings).output)
    if refused:
        return JSONResponse({"error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed "
                                       "validation", "details": "", "extra_info": {}}, "node_errors": refused},
                            status_code=400)
    payload = {"prompt": prompt, "extra_data": extra_data, "outputs": good}
    job = await asyncio.to_thread(_submit, state, payload, client_id or None, bool(body.get("front")), prompt_id)
    if job is None:
        return prompt_error("invalid_prompt", f"prompt_id {prompt_id!r} belongs to another kind of job",
                            "choose a new prompt_id (a uuid4)", status=409)
    return {"prompt_id": job.id, "number": job.number, "node_errors": node_errors}


def _unsafe_prefixes(prompt: dict, output) -> dict:
    """node_errors for save nodes whose filename_prefix leaves the output folder. ComfyUI refuses
    those only when the node runs; refusing them at POST keeps a traversal attempt a 400."""
    from stablekit.errors import StablekitError
    from stablekit.nodes.image import save_path

    errors = {}
    for node_id, node in prompt.items():
        prefix = node.get("inputs", {}).get("filename_prefix")
        if isinstance(prefix, str):
            try:
                save_path(output, prefix)
            except StablekitError as exc:
                errors[node_id] = {"errors": [{"type": "invalid_input", "message": "Invalid filename_prefix",
                                               "details": str(exc), "extra_info": {"input_name": "filename_prefix"}}],
                                   "dependent_outputs": [node_id], "class_type": node.get("class_type")}
    return errors


def _submit(state, payload: dict, client_id: str | None, front: bool, prompt_id: str | None):
    """Queue the prompt under the client's prompt_id if given. The same id again returns the prompt
    already queued (a client retrying after a lost answer must not run it twice); None when the id
    is taken by a job of another kind."""
    if prompt_id is not None:
        existing = state.queue.get(prompt_id)
        if existing is not None:
            return existing if existing.kind == KIND else None
    try:
        return state.submit(KIND, payload, client_id, front, job_id=prompt_id)
    except Exception:  # two retries racing on one id: the database lets one in
        existing = state.queue.get(prompt_id) if prompt_id is not None else None
        if existing is None:
            raise
        return existing if existing.kind == KIND else None


@api.get("/queue")
def get_queue(request: Request):
    queue = _state(request).queue
    return {"queue_running": [queue_item(j) for j in comfy_jobs(queue, ["running"])],
            "queue_pending": [queue_item(j) for j in comfy_jobs(queue, ["queued"])]}


async def _json_object(request: Request) -> dict:
    try:
        body = json.loads(await request.body() or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise HTTPException(400, "the request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise HTTPException(400, "the request body must be a JSON object")
    return body


def _ids(body: dict) -> list[str]:
    ids = body.get("delete", [])
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise HTTPException(400, "\"delete\" must be a list of prompt ids")
    return ids


@api.post("/queue")
async def post_queue(request: Request):
    state = _state(request)
    body = await _json_object(request)
    if body.get("clear"):
        for job in comfy_jobs(state.queue, ["queued"]):
            state.queue.cancel(job.id)
    for job_id in _ids(body):
        job = state.queue.get(job_id)
        if job is not None and job.kind == KIND and job.status == "queued":
            state.queue.cancel(job_id)
    return Response(status_code=200)


@api.post("/interrupt")
async def post_interrupt(request: Request):
    """Interrupt the running prompt (body {"prompt_id": id}: only that one, as newer ComfyUI)."""
    state = _state(request)
    body = await _json_object(request)
    wanted = body.get("prompt_id")
    for job in comfy_jobs(state.queue, ["running"]):
        if wanted is None or job.id == wanted:
            state.request_interrupt(job.id)
    return Response(status_code=200)


@api.post("/free")
async def post_free(request: Request):
    """unload_models / free_memory: drop the node engine's cached outputs (and the models they hold)."""
    body = await _json_object(request)
    if body.get("unload_models") or body.get("free_memory"):
        server_engine(_state(request)).engine.cache.clear()
    return Response(status_code=200)


# ------------------------------------------------------------------ history
def _int_param(request: Request, name: str) -> int | None:
    value = request.query_params.get(name)
    if value is None:
        return None
    if not re.fullmatch(r"\d{1,9}", value):
        raise HTTPException(400, f"{name} must be a whole number >= 0 (got {value!r})")
    return int(value)


@api.get("/history")
def get_history(request: Request):
    return history(_state(request).queue, _int_param(request, "max_items"), _int_param(request, "offset") or 0)


@api.get("/history/{prompt_id}")
def get_history_item(prompt_id: str, request: Request):
    job = _state(request).queue.get(prompt_id)
    if job is None or job.kind != KIND or not job.done or job.started is None:
        return {}
    return {job.id: history_entry(job)}


@api.post("/history")
async def post_history(request: Request):
    state = _state(request)
    body = await _json_object(request)
    if body.get("clear"):
        for job in history_jobs(state.queue):
            state.queue.delete(job.id)
    for job_id in _ids(body):
        job = state.queue.get(job_id)
        if job is not None and job.kind == KIND and job.done:
            state.queue.delete(job_id)
    return Response(status_code=200)


# ------------------------------------------------------------------ nodes, models, system
@api.get("/object_info")
def get_object_info(request: Request):
    return object_info(folders_for(_state(request).settings))


@api.get("/object_info/{node_class}")
def get_object_info_node(node_class: str, request: Request):
    return object_info(folders_for(_state(request).settings), only=node_class)


def _embeddings(state) -> list[str]:
    models = state.settings.models_dir
    folder = models / "embeddings" if models is not None else None
    if folder is None or not folder.is_dir():
        return []
    return sorted(p.relative_to(folder).with_suffix("").as_posix() for p in folder.rglob("*")
                  if p.is_file() and p.suffix.lower() in EMBEDDING_SUFFIXES)


@api.get("/embeddings")
def get_embeddings(request: Request):
    return _embeddings(_state(request))


@api.get("/models")
def get_model_types():
    return list(MODEL_FOLDERS)


@api.get("/models/{folder}")
def get_models(folder: str, request: Request):
    state = _state(request)
    if folder not in MODEL_FOLDERS:
        raise HTTPException(404, f"unknown model folder {folder!r}; use one of: {', '.join(MODEL_FOLDERS)}")
    if folder == "embeddings":
        return _embeddings(state)
    return folders_for(state.settings).list(folder)


@api.get("/experiment/models")
def get_model_folders(request: Request):
    """The frontend's model library: each folder kind with the folders it reads."""
    models = _state(request).settings.models_dir
    return [{"name": kind, "folders": [str(models / kind)] if models is not None else []} for kind in MODEL_FOLDERS]


@api.get("/experiment/models/{folder}")
def get_model_files(folder: str, request: Request):
    return [{"name": name, "pathIndex": 0} for name in get_models(folder, request)]


@api.get("/extensions")
def get_extensions():
    return frontend.extension_scripts()


@api.get("/features")
def get_features(request: Request):
    # supports_preview_metadata False: previews come as ComfyUI's plain binary frames (type 1).
    return {"supports_preview_metadata": False,
            "max_upload_size": _state(request).settings.max_upload_mb * 1024 * 1024}


@api.get("/i18n")
def get_i18n():
    return {}  # translations of custom nodes; stablekit has none


@api.get("/workflow_templates")
def get_workflow_templates():
    return {}  # custom nodes' example workflows; none


@api.get("/system_stats")
def system_stats():
    import psutil
    import torch

    from stablekit import __version__

    mem = psutil.virtual_memory()
    device = {"name": "cpu", "type": "cpu", "index": None, "vram_total": mem.total, "vram_free": mem.available,
              "torch_vram_total": 0, "torch_vram_free": 0}
    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        device = {"name": f"cuda:0 {torch.cuda.get_device_name(0)}", "type": "cuda", "index": 0,
                  "vram_total": total, "vram_free": free, "torch_vram_total": total, "torch_vram_free": free}
    return {"system": {"os": os.name, "ram_total": mem.total, "ram_free": mem.available,
                       "comfyui_version": f"stablekit {__version__}", "python_version": sys.version,
                       "pytorch_version": torch.__version__, "embedded_python": False, "argv": sys.argv,
                       "platform": platform.platform(), "required_frontend_version": frontend.frontend_version() or "",
                       "installed_templates_version": ""},
            "devices": [device]}


api.include_router(view_router)
api.include_router(upload_router)
api.include_router(jobs_router)
api.include_router(userdata.router)
api.include_router(ws.router)

# ComfyUI serves every route both as is and under /api (what its frontend calls).
router = APIRouter()
router.include_router(api, tags=["comfyui"])
router.include_router(api, prefix="/api", include_in_schema=False)
router.include_router(frontend.static_router())
