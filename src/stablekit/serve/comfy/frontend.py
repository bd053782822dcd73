"""The ComfyUI web frontend, when the optional `comfyui-frontend-package` is installed
(`pip install stablekit[comfy-ui]`): its static files at `/`, plus the small routes it reads at
start-up that are not about prompts (/extensions, /features, /i18n, /workflow_templates).

Static files are served by explicit routes for the package's top-level entries (index.html,
assets/, scripts/, ...) rather than a catch-all, so no other API's path is shadowed.
"""
from __future__ import annotations

import mimetypes
from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse, RedirectResponse

from stablekit.serve.files import existing_file

# ComfyUI serves its .js with this type; browsers refuse ES modules served as text/plain.
mimetypes.add_type("application/javascript", ".js")
mimetypes.add_type("application/javascript", ".mjs")
mimetypes.add_type("text/css", ".css")


def web_root() -> Path | None:
    """The frontend package's static folder, or None when it is not installed."""
    try:
        import comfyui_frontend_package
    except ImportError:
        return None
    root = Path(comfyui_frontend_package.__file__).parent / "static"
    return root if (root / "index.html").is_file() else None


def frontend_version() -> str | None:
    try:
        import comfyui_frontend_package

        return comfyui_frontend_package.__version__
    except ImportError:
        return None


def extension_scripts() -> list[str]:
    """ComfyUI's GET /extensions: the URLs of the JS files under the web root's extensions/."""
    root = web_root()
    if root is None or not (root / "extensions").is_dir():
        return []
    return sorted("/" + p.relative_to(root).as_posix() for p in (root / "extensions").rglob("*.js"))


def static_router() -> APIRouter:
    """Routes serving the frontend's files ("/" -> index.html); empty without the package."""
    router = APIRouter()
    root = web_root()
    if root is None:  # no ComfyUI frontend installed: "/" opens our own page instead of a 404
        router.add_api_route("/", lambda: RedirectResponse("/app"), include_in_schema=False)
        return router

    @router.get("/", include_in_schema=False)
    def index():
        return FileResponse(root / "index.html", headers={"Cache-Control": "no-cache"})

    for entry in sorted(root.iterdir()):
        if entry.is_dir():
            _add_dir(router, root, entry.name)
        elif entry.name != "index.html":
            _add_file(router, entry)
    return router


def _add_dir(router: APIRouter, root: Path, name: str) -> None:
    @router.get(f"/{name}/{{path:path}}", include_in_schema=False)
    def static_file(path: str):
        if not path:
            raise HTTPException(404, "not found")
        return FileResponse(existing_file(root / name, path))


def _add_file(router: APIRouter, path: Path) -> None:
    @router.get(f"/{path.name}", include_in_schema=False)
    def static_file():
        return FileResponse(path)
