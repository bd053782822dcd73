"""The ComfyUI frontend's per-user storage (ComfyUI app/user_manager.py, app/app_settings.py):
/users, /settings, /userdata/{file}, /v2/userdata, stored under DATA_DIR/user/default (one user,
as ComfyUI without --multi-user). Every client-named path goes through files.safe_path.
"""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from stablekit.serve.files import safe_path

router = APIRouter()
USER = "default"
SETTINGS_FILE = "comfy.settings.json"
MAX_USERDATA_MB = 20
_settings_lock = threading.Lock()


def user_root(request: Request) -> Path:
    root = request.app.state.stablekit.settings.user_dir / USER
    root.mkdir(parents=True, exist_ok=True)
    return root.resolve()


def _file_info(path: Path, root: Path) -> dict:
    st = path.stat()
    return {"path": path.relative_to(root).as_posix(), "size": st.st_size, "modified": int(st.st_mtime * 1000),
            "created": int(st.st_ctime * 1000)}


def _flag(request: Request, name: str, default: bool) -> bool:
    value = request.query_params.get(name)
    return default if value is None else value.lower() == "true"


async def _json_body(request: Request):
    try:
        return json.loads(await request.body())
    except ValueError:
        raise HTTPException(400, "the request body is not valid JSON") from None


# ------------------------------------------------------------------ users and settings
@router.get("/users")
def get_users(request: Request):
    return {"storage": "server", "migrated": (request.app.state.stablekit.settings.user_dir / USER).is_dir()}


@router.post("/users")
async def post_users(request: Request):
    # One user only (ComfyUI without --multi-user): creating users is not offered.
    raise HTTPException(400, "this server has one user (default); multi-user profiles are not supported")


def _read_settings(root: Path) -> dict:
    path = root / SETTINGS_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except ValueError:
        data = {}
    return data if isinstance(data, dict) else {}


def _write_settings(root: Path, data: dict) -> None:
    tmp = root / f".{SETTINGS_FILE}.tmp"
    tmp.write_text(json.dumps(data, indent=4), encoding="utf-8")
    os.replace(tmp, root / SETTINGS_FILE)


@router.get("/settings")
def get_settings(request: Request):
    return _read_settings(user_root(request))


@router.get("/settings/{setting_id}")
def get_setting(setting_id: str, request: Request):
    return JSONResponse(_read_settings(user_root(request)).get(setting_id))


@router.post("/settings")
async def post_settings(request: Request):
    body = await _json_body(request)
    if not isinstance(body, dict):
        raise HTTPException(400, "POST /settings takes a JSON object of setting id -> value")
    root = user_root(request)
    with _settings_lock:
        _write_settings(root, {**_read_settings(root), **body})
    return Response(status_code=200)


@router.post("/settings/{setting_id}")
async def post_setting(setting_id: str, request: Request):
    value = await _json_body(request)
    root = user_root(request)
    with _settings_lock:
        _write_settings(root, {**_read_settings(root), setting_id: value})
    return Response(status_code=200)


# ------------------------------------------------------------------ user data files
@router.get("/userdata")
def list_userdata(request: Request):
    directory = request.query_params.get("dir", "")
    if not directory:
        raise HTTPException(400, "Directory not provided")
    root = user_root(request)
    path = safe_path(root, directory)
    if not path.is_dir():
        raise HTTPException(404, "Directory not found")
    recurse, full_info, split = _flag(request, "recurse", False), _flag(request, "full_info", False), \
        _flag(request, "split", False)
    files = sorted(p for p in (path.rglob("*") if recurse else path.glob("*")) if p.is_file())
    out = []
    for p in files:
        rel = p.relative_to(path).as_posix()
        out.append(_file_info(p, path) if full_info else ([rel, *rel.split("/")] if split else rel))
    return out


@router.get("/v2/userdata")
def list_userdata_v2(request: Request):
    root = user_root(request)
    rel = request.query_params.get("path", "")
    target = safe_path(root, rel) if rel else root
    if not target.exists():
        raise HTTPException(404, "Requested path not found")
    if not target.is_dir():
        raise HTTPException(400, "Requested path is not a directory")
    out = []
    for p in target.rglob("*"):
        entry = {"name": p.name, "path": p.relative_to(root).as_posix(), "type": "directory" if p.is_dir() else "file"}
        if p.is_file():
            st = p.stat()
            entry.update(size=st.st_size, modified=st.st_mtime)
        out.append(entry)
    out.sort(key=lambda e: (e["type"] != "directory", e["name"].lower()))
    return out


@router.post("/userdata/{file:path}/move/{dest:path}")
def move_userdata(file: str, dest: str, request: Request):
    root = user_root(request)
    source, target = safe_path(root, file), safe_path(root, dest)
    if not source.is_file():
        raise HTTPException(404, f"no user file {file!r}")
    if target.exists() and not _flag(request, "overwrite", True):
        raise HTTPException(409, f"{dest!r} exists; pass overwrite=true")
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(source, target)
    return _file_info(target, root) if _flag(request, "full_info", False) else target.relative_to(root).as_posix()


@router.get("/userdata/{file:path}")
def get_userdata(file: str, request: Request):
    root = user_root(request)
    path = safe_path(root, file)
    if not path.is_file():
        raise HTTPException(404, f"no user file {file!r}")
    # Arbitrary user content: never rendered inline in the app's origin (ComfyUI's stored-XSS guard).
    is_css = path == (root / "user.css").resolve()
    return FileResponse(path, media_type="text/css" if is_css else "application/octet-stream" if
                        path.suffix.lower() in (".html", ".htm", ".svg", ".js", ".xml") else None,
                        headers={"X-Content-Type-Options": "nosniff",
                                 "Content-Disposition": "inline" if is_css else "attachment"})


@router.post("/userdata/{file:path}")
async def post_userdata(file: str, request: Request):
    root = user_root(request)
    path = safe_path(root, file)
    if path.exists() and not _flag(request, "overwrite", True):
        raise HTTPException(409, f"{file!r} exists; pass overwrite=true")
    body = await request.body()
    if len(body) > MAX_USERDATA_MB * 1024 * 1024:
        raise HTTPException(413, f"user files are limited to {MAX_USERDATA_MB} MB")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(body)
    os.replace(tmp, path)
    return _file_info(path, root) if _flag(request, "full_info", False) else path.relative_to(root).as_posix()


@router.delete("/userdata/{file:path}")
def delete_userdata(file: str, request: Request):
    path = safe_path(user_root(request), file)
    if not path.is_file():
        raise HTTPException(404, f"no user file {file!r}")
    path.unlink()
    return Response(status_code=204)
