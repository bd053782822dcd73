"""A1111's /sdapi/v1 API on stablekit's queue (`router`, mounted by stablekit.serve.app).

txt2img and img2img queue a job ("a1111.txt2img" / "a1111.img2img") and wait for it, so they are
also visible in /progress and in the other APIs' queues. Besides A1111's routes (docs/serving-a1111.md):

    POST /sdapi/v1/txt2img/async, /sdapi/v1/img2img/async   -> {"job_id", "number", "status"} at once
    GET  /sdapi/v1/jobs/{job_id}    -> {"job_id", "status", "progress", "result": A1111's response when done, "error"}
    DELETE /sdapi/v1/jobs/{job_id}  -> cancel (queued) or interrupt (running)

Bad requests are 4xx with {"error", "detail"}: one line saying what was wrong.
"""
from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from stablekit.errors import StablekitError
from stablekit.serve.a1111 import listings
from stablekit.serve.a1111 import options as opts
from stablekit.serve.a1111.fields import PayloadError, normalize
from stablekit.serve.a1111.images import decode_image, encode_png
from stablekit.serve.a1111.plan import build
from stablekit.serve.a1111.progress import progress as progress_body

router = APIRouter(tags=["a1111"])
PREFIX = "/sdapi/v1"


def _state(request: Request):
    return request.app.state.stablekit


def _error(exc: Exception, status: int | None = None) -> JSONResponse:
    status = status or getattr(exc, "status", 400)
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return JSONResponse({"error": type(exc).__name__, "detail": message}, status_code=status)


async def _body(request: Request):
    try:
        return json.loads(await request.body() or b"null", parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise PayloadError(f"the request body is not valid JSON ({str(exc)[:120]})") from None


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON; give finite numbers")


async def _submit(request: Request, kind: str):
    """Check a request as far as possible before queueing it; returns (state, job, normalised request).
    With an `Idempotency-Key` header (stablekit's addition) the job gets that id, and a retry with the
    same key returns the job already queued instead of a second one."""
    from stablekit.serve.ownapi import ID_PATTERN, submit_job

    state = _state(request)
    key = request.headers.get("idempotency-key") or None
    if key is not None:
        if not ID_PATTERN.fullmatch(key):
            raise PayloadError(f"Idempotency-Key {key[:80]!r} must be 1-64 letters, digits, '-' or '_'")
        existing = await asyncio.to_thread(state.queue.get, key)
        if existing is not None and existing.kind == f"a1111.{kind}":
            return state, existing, existing.payload
    req = normalize(kind, await _body(request))
    await asyncio.to_thread(build, kind, req, state)
    if req["override_settings"] and not req["override_settings_restore_afterwards"]:
        await asyncio.to_thread(opts.set_options, state, req["override_settings"])  # A1111 keeps them
    job = await asyncio.to_thread(submit_job, state, f"a1111.{kind}", req, None, False, key)
    return state, job, req


def _response(state, kind: str, job) -> JSONResponse:
    """A1111's TextToImageResponse / ImageToImageResponse for a finished job (4xx for a failed one)."""
    req = job.payload
    result = job.result
    if result is None:
        if job.status == "failed":
            status = 404 if (job.error or "").startswith(("unknown checkpoint", "unknown sampler")) else 400
            return JSONResponse({"error": "GenerationError", "detail": job.error or "the job failed"}, status)
        result = {"files": [], "info": json.dumps({"infotexts": [], "all_seeds": [], "interrupted": True})}
    root = Path(state.settings.output_dir)
    images = [encode_png(root / name) for name in result["files"]] if req.get("send_images", True) else []
    parameters = dict(req)
    if kind == "img2img" and not req.get("include_init_images"):
        parameters["init_images"], parameters["mask"] = None, None
    return JSONResponse({"images": images, "parameters": parameters, "info": result["info"]})


def _generation(kind: str):
    async def sync(request: Request):
        try:
            state, job, _ = await _submit(request, kind)
        except StablekitError as exc:
            return _error(exc, getattr(exc, "status", 422 if isinstance(exc, PayloadError) else 400))
        from stablekit.serve.jobs import wait_for

        job = await wait_for(state, job.id)
        return _response(state, kind, job)

    async def queued(request: Request):
        try:
            _, job, _ = await _submit(request, kind)
        except StablekitError as exc:
            return _error(exc, getattr(exc, "status", 400))
        return {"job_id": job.id, "number": job.number, "status": job.status}

    sync.__name__, queued.__name__ = f"{kind}api", f"{kind}_async"
    router.add_api_route(f"{PREFIX}/{kind}", sync, methods=["POST"])
    router.add_api_route(f"{PREFIX}/{kind}/async", queued, methods=["POST"])


_generation("txt2img")
_generation("img2img")


def _a1111_job(state, job_id: str):
    job = state.queue.get(job_id)
    if job is None or not job.kind.startswith("a1111."):
        raise PayloadError(f"no A1111 job {job_id!r}; POST /sdapi/v1/txt2img/async returns job ids", status=404)
    return job


@router.get(PREFIX + "/jobs/{job_id}")
async def job_status(job_id: str, request: Request):
    state = _state(request)
    try:
        job = await asyncio.to_thread(_a1111_job, state, job_id)
    except PayloadError as exc:
        return _error(exc)
    body = {"job_id": job.id, "number": job.number, "kind": job.kind, "status": job.status,
            "progress": job.progress, "error": job.error, "result": None}
    if job.status == "queued":
        queued = [j.id for j in await asyncio.to_thread(state.queue.list, ["queued"])]
        body["queue_position"] = queued.index(job.id) if job.id in queued else None
    if job.done:
        response = _response(state, job.kind.split(".", 1)[1], job)
        if response.status_code == 200:
            body["result"] = json.loads(response.body)
    return body


@router.delete(PREFIX + "/jobs/{job_id}")
async def job_cancel(job_id: str, request: Request):
    state = _state(request)
    try:
        job = await asyncio.to_thread(_a1111_job, state, job_id)
    except PayloadError as exc:
        return _error(exc)
    if job.status == "running":
        state.request_interrupt(job.id)
        return {"job_id": job.id, "cancelled": True}
    return {"job_id": job.id, "cancelled": bool(state.queue.cancel(job.id))}


@router.post(PREFIX + "/png-info")
async def png_info(request: Request):
    try:
        body = await _body(request)
        if not isinstance(body, dict) or not isinstance(body.get("image"), str):
            raise PayloadError("png-info needs {\"image\": base64 PNG/JPEG/WebP}")
        if not body["image"].strip():
            return {"info": "", "items": {}, "parameters": {}}
        decode_image(body["image"], "image")  # checks it is an image at all
        return await asyncio.to_thread(_read_info, body["image"])
    except StablekitError as exc:
        return _error(exc, getattr(exc, "status", 422))


def _read_info(data: str) -> dict:
    import base64

    from stablekit.metadata import read_image_info

    text = data.strip().split(",", 1)[-1] if data.strip().startswith("data:") else data.strip()
    with tempfile.TemporaryDirectory(prefix="stablekit-pnginfo-") as tmp:
        path = Path(tmp) / "image"
        path.write_bytes(base64.b64decode(text))
        info = read_image_info(path)
    items = dict(info["text"])
    if info["stablekit"] is not None:
        items["stablekit"] = json.dumps(info["stablekit"])
    return {"info": info["parameters"] or "", "items": items, "parameters": info["fields"]}


@router.get(PREFIX + "/progress")
async def progress(request: Request, skip_current_image: bool = False):
    return await asyncio.to_thread(progress_body, _state(request), skip_current_image)


@router.post(PREFIX + "/interrupt")
async def interrupt(request: Request):
    await asyncio.to_thread(_state(request).request_interrupt, None)
    return {}


@router.post(PREFIX + "/skip")
async def skip(request: Request):
    _state(request).request_skip()
    return {}


@router.get(PREFIX + "/options")
async def get_options(request: Request):
    return await asyncio.to_thread(opts.get_options, _state(request))


@router.post(PREFIX + "/options")
async def set_options(request: Request):
    try:
        await asyncio.to_thread(opts.set_options, _state(request), await _body(request))
    except StablekitError as exc:
        return _error(exc, getattr(exc, "status", 400))
    return None


def _listing(path: str, fn, with_state: bool = True, method: str = "GET"):
    async def endpoint(request: Request):
        try:
            return await asyncio.to_thread(fn, _state(request)) if with_state else fn()
        except StablekitError as exc:
            return _error(exc)

    endpoint.__name__ = "a1111_" + path.replace("-", "_").replace("/", "_")
    router.add_api_route(f"{PREFIX}/{path}", endpoint, methods=[method])


for _path, _fn, _with_state in (
    ("samplers", listings.samplers, False), ("schedulers", listings.schedulers, False),
    ("upscalers", listings.upscalers, True), ("latent-upscale-modes", listings.latent_upscale_modes, False),
    ("sd-models", listings.sd_models, True), ("sd-vae", listings.sd_vaes, True), ("loras", listings.loras, True),
    ("embeddings", listings.embeddings, True), ("prompt-styles", listings.prompt_styles, True),
    ("scripts", listings.scripts, False), ("memory", listings.memory, False), ("cmd-flags", listings.cmd_flags, True),
):
    _listing(_path, _fn, _with_state)


def _nothing(state=None):
    return None  # the lists are read from disk at every request, so a refresh has nothing to do


for _path in ("refresh-checkpoints", "refresh-vae", "refresh-loras"):
    _listing(_path, _nothing, False, "POST")
