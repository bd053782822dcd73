"""POST /upload/image and /upload/mask (ComfyUI server.py image_upload): multipart "image" saved
under the input folder (or type=temp/output), answered with {"name", "subfolder", "type"}. A file
that is not an image is refused (400); names are cleaned (files.safe_name) and kept inside the
folder (files.safe_path); without overwrite, an identical existing file is reused and a different
one gets "name (1).png", as ComfyUI does."""
from __future__ import annotations

import io
import json

from fastapi import APIRouter, HTTPException, Request
from PIL import Image, PngImagePlugin

from stablekit.serve.comfy.view import find_image, type_root
from stablekit.serve.files import read_upload, safe_name, safe_path, save_upload

upload_router = APIRouter()


async def _form(request: Request):
    try:
        form = await request.form()
    except Exception as exc:  # malformed multipart bodies: a client error, not a server one
        raise HTTPException(400, f"the body is not a valid multipart form ({exc})") from None
    image = form.get("image")
    if image is None or isinstance(image, str) or not image.filename:
        raise HTTPException(400, "send the image as the multipart field \"image\" with a file name")
    return form, image


def _check_image(data: bytes) -> Image.Image:
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
        return img
    except Exception:
        raise HTTPException(400, "the uploaded file is not an image (PNG, JPEG or WebP)") from None


def _store(request: Request, form, data: bytes) -> dict:
    settings = request.app.state.stablekit.settings
    kind = str(form.get("type") or "input")
    root = type_root(settings, kind)
    subfolder = str(form.get("subfolder") or "").strip("/")
    folder = safe_path(root, subfolder) if subfolder else root
    name = safe_name(form["image"].filename)
    overwrite = str(form.get("overwrite", "")).lower() in ("true", "1")
    existing = safe_path(folder, name)
    if not overwrite and existing.is_file() and existing.read_bytes() == data:
        path = existing  # the same image uploaded again: reuse it (ComfyUI #3465)
    else:
        path = save_upload(data, folder, name, overwrite=overwrite)
    return {"name": path.name, "subfolder": subfolder, "type": kind}


@upload_router.post("/upload/image")
async def upload_image(request: Request):
    form, image = await _form(request)
    data = await read_upload(image, request.app.state.stablekit.settings.max_upload_mb)
    _check_image(data)
    return _store(request, form, data)


@upload_router.post("/upload/mask")
async def upload_mask(request: Request):
    """The mask editor's save: the original image (original_ref) with the upload's alpha as its alpha."""
    form, image = await _form(request)
    settings = request.app.state.stablekit.settings
    data = await read_upload(image, settings.max_upload_mb)
    mask = _check_image(data).convert("RGBA")
    try:
        ref = json.loads(str(form.get("original_ref") or ""))
        original = find_image(settings, str(ref["filename"]), str(ref.get("subfolder", "")), ref.get("type", "output"))
    except (ValueError, KeyError, TypeError):
        raise HTTPException(400, "original_ref must be JSON {\"filename\", \"subfolder\", \"type\"}") from None
    with Image.open(original) as img:
        info = PngImagePlugin.PngInfo()
        for key, value in getattr(img, "text", {}).items():
            info.add_text(key, value)
        out = img.convert("RGBA")
    if mask.size != out.size:
        mask = mask.resize(out.size)
    out.putalpha(mask.getchannel("A"))
    buf = io.BytesIO()
    out.save(buf, format="PNG", pnginfo=info, compress_level=4)
    return _store(request, form, buf.getvalue())
