"""GET /view: an image from the output, input or temp folder (ComfyUI server.py view_image), with
its `preview=webp;90` and `channel=rgb|a` variants. Only those three folders; every name goes
through files.safe_path, so "..", absolute paths and symlinks out are refused (400/403)."""
from __future__ import annotations

import io
import re
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, Response
from PIL import Image

from stablekit.serve.files import existing_file

view_router = APIRouter()
FOLDER_TYPES = ("output", "input", "temp")
# ComfyUI's annotated names: "name.png [output]" picks the folder inside the file name.
ANNOTATED = re.compile(r"^(.*) \[(input|output|temp)\]$")


def type_root(settings, kind: str | None) -> Path:
    """The folder a ComfyUI image type names (default input, as ComfyUI's uploads)."""
    roots = {"output": settings.output_dir, "input": settings.input_dir, "temp": settings.data_dir / "temp"}
    kind = kind or "input"
    if kind not in roots:
        raise HTTPException(400, f"unknown type {kind!r}; use one of: {', '.join(FOLDER_TYPES)}")
    roots[kind].mkdir(parents=True, exist_ok=True)
    return roots[kind]


def find_image(settings, filename: str, subfolder: str, kind: str | None) -> Path:
    """The file a (filename, subfolder, type) reference means, or an HTTPException."""
    match = ANNOTATED.match(filename)
    if match:
        filename, kind = match.group(1), match.group(2)
    if "/" in filename or "\\" in filename:
        raise HTTPException(400, f"filename {filename!r} must not contain folders; use subfolder")
    sub = subfolder.rstrip("/")  # a leading "/" stays: an absolute subfolder is refused, not reinterpreted
    relative = f"{sub}/{filename}" if sub else filename
    return existing_file(type_root(settings, kind or "output"), relative)


def _png(image: Image.Image, name: str) -> Response:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return Response(buf.getvalue(), media_type="image/png", headers={"Content-Disposition": f'filename="{name}"'})


@view_router.get("/view")
def view_image(request: Request):
    q = request.query_params
    if not q.get("filename"):
        raise HTTPException(400, "give ?filename=NAME[&subfolder=DIR&type=output|input|temp]")
    path = find_image(request.app.state.stablekit.settings, q["filename"], q.get("subfolder", ""), q.get("type"))
    channel = q.get("channel", "rgba")
    try:
        if "preview" in q:
            info = q["preview"].split(";")
            fmt = info[0] if info[0] in ("webp", "jpeg") and "a" not in q.get("channel", "") else "webp"
            quality = int(info[-1]) if info[-1].isdigit() else 90
            with Image.open(path) as img:
                buf = io.BytesIO()
                img = img.convert("RGB") if fmt == "jpeg" or channel == "rgb" else img
                img.save(buf, format=fmt, quality=quality)
            return Response(buf.getvalue(), media_type=f"image/{fmt}")
        if channel == "rgb":
            with Image.open(path) as img:
                return _png(img.convert("RGB"), path.name)
        if channel == "a":
            with Image.open(path) as img:
                alpha = img.getchannel("A") if "A" in img.getbands() else Image.new("L", img.size, 255)
                out = Image.new("RGBA", img.size)
                out.putalpha(alpha)
                return _png(out, path.name)
    except (OSError, ValueError) as exc:
        raise HTTPException(415, f"{path.name} is not an image this server can convert ({exc})") from None
    return FileResponse(path, headers={"Content-Disposition": f'filename="{path.name}"'})
