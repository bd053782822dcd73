"""ComfyUI's websocket, /ws?clientId=ID (server.py websocket_handler).

On connect: {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": N}}, "sid": ID}}.
Then the execution messages of the prompts this client queued (and of prompts queued with no
client id, which ComfyUI broadcasts) as {"type", "data"} JSON: execution_start, execution_cached,
executing, progress, executed, execution_success, execution_error, execution_interrupted; live
previews as binary frames (preview.py); and a new "status" whenever the queue length changes.
`executing` with node None is sent when the queue reports the prompt finished (done, failed or
interrupted), so, as with ComfyUI, /history has its entry by the time a client sees it.
"""
from __future__ import annotations

import asyncio
import contextlib
import uuid

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from stablekit.serve.comfy.jobs import KIND, PREFIX

router = APIRouter()
EXECUTION_EVENTS = ("execution_start", "execution_cached", "executing", "progress", "executed",
                    "execution_success", "execution_error", "execution_interrupted")
QUEUE_EVENTS = ("job_queued", "job_started", "job_finished")
STATUS_POLL = 2.0  # seconds: also notice queue changes made by other processes


def _remaining(state) -> int:
    counts = state.queue.counts()
    return int(counts.get("queued", 0)) + int(counts.get("running", 0))


def status_message(remaining: int, sid: str | None = None) -> dict:
    data = {"status": {"exec_info": {"queue_remaining": remaining}}}
    if sid is not None:
        data["sid"] = sid
    return {"type": "status", "data": data}


@router.websocket("/ws")
async def websocket_handler(websocket: WebSocket):
    state = websocket.app.state.stablekit
    sid = websocket.query_params.get("clientId") or uuid.uuid4().hex
    sub = state.events.subscribe(None)  # filtered here: ComfyUI also sends client-less prompts to all
    try:
        await websocket.accept()  # subscribed first, so nothing published once the client is in is missed
    except Exception:
        sub.close()
        raise
    owners: dict[str, tuple] = {}  # job id -> (the client that queued it, job kind)
    reader = asyncio.create_task(_drain(websocket))
    try:
        remaining = await asyncio.to_thread(_remaining, state)
        await websocket.send_json(status_message(remaining, sid))
        while not reader.done():
            event = await sub.get(STATUS_POLL)
            if event is None or event.event in QUEUE_EVENTS:
                now = await asyncio.to_thread(_remaining, state)
                if now != remaining:
                    remaining = now
                    await websocket.send_json(status_message(remaining))
                if event is None:
                    continue
            if event.event == "job_finished":
                if await _for_client(state, owners, event.job_id, sid, KIND):
                    await websocket.send_json({"type": "executing", "data": {"node": None, "prompt_id": event.job_id}})
                continue
            name = event.event[len(PREFIX):] if event.event.startswith(PREFIX) else None
            if name not in EXECUTION_EVENTS and name != "preview":
                continue
            if "prompt_id" not in event.data or not await _for_client(state, owners, event.job_id, sid):
                continue  # another client's prompt
            if name == "preview":
                if event.binary:
                    await websocket.send_bytes(event.binary)
            else:
                await websocket.send_json({"type": name, "data": event.data})
    except (WebSocketDisconnect, RuntimeError):
        pass  # the client went away mid-send
    finally:
        sub.close()
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await reader


async def _for_client(state, owners: dict, job_id: str | None, sid: str, kind: str | None = None) -> bool:
    """Whether a job's events go to this client: it queued the job, or nobody named a client."""
    if job_id is None:
        return kind is None
    if job_id not in owners:
        job = await asyncio.to_thread(state.queue.get, job_id)
        owners[job_id] = (job.client_id, job.kind) if job is not None else (None, None)
        if len(owners) > 1000:
            owners.pop(next(iter(owners)))
    client, job_kind = owners[job_id]
    return client in (None, sid) and (kind is None or job_kind == kind)


async def _drain(websocket: WebSocket) -> None:
    """Read (and ignore) what the client sends, so a disconnect is noticed."""
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        while (await websocket.receive())["type"] != "websocket.disconnect":
            pass
