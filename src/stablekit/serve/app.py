"""The FastAPI app: one process serving our job API, A1111's /sdapi/v1 and ComfyUI's routes.

`create_app(settings)` opens the queue, builds the ServerState, imports the job kinds and the
routers (ROUTER_MODULES; a missing module is skipped so API branches land separately), wraps
everything in the security middleware, and on startup requeues jobs a dead process left running
and starts `settings.workers` worker threads.
"""
from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from stablekit.errors import StablekitError
from stablekit.serve.jobs import load_kinds
from stablekit.serve.queue import open_queue
from stablekit.serve.relay import relay_remote_jobs
from stablekit.serve.runner import WorkerPool, recover_orphans
from stablekit.serve.security import SecurityMiddleware
from stablekit.serve.settings import ServeSettings
from stablekit.serve.state import ServerState

log = logging.getLogger("stablekit.serve")

ROUTER_MODULES = ["stablekit.serve.ownapi", "stablekit.serve.trainpage", "stablekit.serve.a1111.routes",
                  "stablekit.serve.comfy.routes"]


def create_app(settings: ServeSettings, *, start_workers: bool = True) -> FastAPI:
    """The server app for these settings. start_workers=False: jobs wait for `stablekit worker`
    processes (or a test that runs them itself)."""
    settings.make_dirs()
    queue = open_queue(settings.resolved_queue_url)
    state = ServerState(settings=settings, queue=queue)
    load_kinds()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        recover_orphans(state)
        pool = WorkerPool(state, settings.workers if start_workers else 0).start()
        app.state.pool = pool
        poller = asyncio.create_task(relay_remote_jobs(state))
        try:
            yield
        finally:
            poller.cancel()
            await asyncio.to_thread(pool.stop)
            queue.close()

    app = FastAPI(title="stablekit", version=_version(), lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.stablekit = state
    _error_handlers(app)
    for name in ROUTER_MODULES:
        module = _optional_module(name)
        if module is not None:
            app.include_router(module.router)
    app.add_middleware(SecurityMiddleware, settings=settings)
    return app


def _version() -> str:
    from stablekit import __version__

    return __version__


def _optional_module(name: str):
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and name.startswith(exc.name):
            log.warning("routes: %s not found, skipped", name)
            return None
        raise


def _error(status: int, message: str, **extra) -> JSONResponse:
    return JSONResponse({"error": message, "detail": message, **extra}, status_code=status)


def _error_handlers(app: FastAPI) -> None:
    """User mistakes -> 400, malformed requests -> 422, never a traceback in a response."""

    @app.exception_handler(StablekitError)
    async def stablekit_error(request: Request, exc: StablekitError):
        return _error(400, str(exc))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = f"invalid request: {where + ': ' if where else ''}{first.get('msg', 'malformed')}"
        return JSONResponse({"error": message, "detail": _jsonable(errors)}, status_code=422)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        detail = exc.detail
        message = detail if isinstance(detail, str) else "request failed"
        return JSONResponse({"error": message, "detail": detail}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(RecursionError)
    async def too_deep(request: Request, exc: RecursionError):  # json.loads of absurdly nested input
        return _error(400, "the request body is nested too deeply to read; send plain JSON objects and lists")

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception):  # a bug: logged with its traceback, answered in one line
        log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
        return _error(500, f"internal error: {type(exc).__name__}: {exc}")


def _jsonable(errors: list) -> list:
    """Validation errors as strict JSON (their "input" may hold NaN or objects JSON cannot carry)."""
    out = []
    for e in errors:
        row = {}
        for k, v in e.items():
            if k == "ctx":
                continue
            try:
                json.dumps(v, allow_nan=False)
                row[k] = v
            except (TypeError, ValueError):
                row[k] = str(v)[:200]
        out.append(row)
    return out
