"""A real stablekit server on a loopback port driven as ComfyUI's script_examples/websockets_api_example.py
drives ComfyUI: connect /ws?clientId=, POST /prompt, read messages until `executing` with node None,
then GET /history/{id} and /view. A second run with only the seed changed reports the unchanged
nodes in execution_cached and re-executes only the sampler and what follows."""
import json
import socket
import struct
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

import pytest
import uvicorn
import websocket  # the websocket-client package, as ComfyUI's example uses

from stablekit.metadata import read_image_info
from stablekit.serve.app import create_app
from stablekit.serve.settings import ServeSettings
from test_serve_comfy import default_prompt


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("comfy-server")
    app = create_app(ServeSettings(data_dir=data, workers=1))
    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not srv.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    yield f"127.0.0.1:{port}", data
    srv.should_exit = True
    thread.join(20)


def _post(addr, path, body):
    req = urllib.request.Request(f"http://{addr}{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    body = urllib.request.urlopen(req).read()
    return json.loads(body) if body else None


def _get(addr, path):
    return urllib.request.urlopen(f"http://{addr}{path}").read()


def _run(addr, client_id, prompt):
    """Queue a prompt and collect the websocket messages until it is done (the example's get_images)."""
    ws = websocket.WebSocket()
    ws.connect(f"ws://{addr}/ws?clientId={client_id}")
    ws.settimeout(600)
    try:
        first = json.loads(ws.recv())
        assert first["type"] == "status" and first["data"]["sid"] == client_id
        prompt_id = _post(addr, "/prompt", {"prompt": prompt, "client_id": client_id})["prompt_id"]
        messages, frames = [], []
        while True:
            out = ws.recv()
            if isinstance(out, str):
                msg = json.loads(out)
                messages.append(msg)
                if msg["type"] == "executing" and msg["data"]["node"] is None \
                        and msg["data"]["prompt_id"] == prompt_id:
                    break
            else:
                frames.append(out)
    finally:
        ws.close()
    return prompt_id, messages, frames


def _of(messages, kind):
    return [m["data"] for m in messages if m["type"] == kind]


@pytest.mark.slow
def test_websocket_client_runs_default_workflow_and_cache(server):
    addr, data = server
    client_id = str(uuid.uuid4())
    prompt_id, messages, frames = _run(addr, client_id, default_prompt(**{"3__seed": 1}))
    kinds = [m["type"] for m in messages]
    assert kinds.index("execution_start") < kinds.index("execution_cached") < kinds.index("executing")
    assert "execution_success" in kinds and "execution_error" not in kinds
    assert [p["value"] for p in _of(messages, "progress")] == [1, 2]
    assert _of(messages, "progress")[0] == {"value": 1, "max": 2, "prompt_id": prompt_id, "node": "3"}
    executed = _of(messages, "executed")
    assert [e["node"] for e in executed] == ["9"]
    image = executed[0]["output"]["images"][0]
    assert image["type"] == "output" and image["filename"].endswith(".png")
    # binary previews: event type 1 (PREVIEW_IMAGE), image type 1 (JPEG), then the JPEG
    assert len(frames) == 2 and all(struct.unpack(">II", f[:8]) == (1, 1) and f[8:10] == b"\xff\xd8" for f in frames)

    history = json.loads(_get(addr, f"/history/{prompt_id}"))[prompt_id]
    assert history["status"]["status_str"] == "success" and history["status"]["completed"] is True
    assert history["outputs"]["9"]["images"] == [image]
    assert history["prompt"][1] == prompt_id and history["prompt"][4] == ["9"]
    assert [m[0] for m in history["status"]["messages"]] == ["execution_start", "execution_cached",
                                                              "execution_success"]
    query = urllib.parse.urlencode({"filename": image["filename"], "subfolder": image["subfolder"],
                                    "type": image["type"]})
    png = _get(addr, f"/view?{query}")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    saved = data / "output" / image["subfolder"] / image["filename"]
    assert saved.read_bytes() == png
    assert json.loads(read_image_info(saved)["text"]["prompt"])["3"]["inputs"]["seed"] == 1
    assert prompt_id in json.loads(_get(addr, "/api/history?max_items=5"))

    # only the seed changed: loader, text encoders and the empty latent come from the cache
    second, messages, _ = _run(addr, client_id, default_prompt(**{"3__seed": 2}))
    assert sorted(_of(messages, "execution_cached")[0]["nodes"]) == ["4", "5", "6", "7"]
    assert [d["node"] for d in _of(messages, "executing")] == ["3", "8", "9", None]
    other = _of(messages, "executed")[0]["output"]["images"][0]
    assert other["filename"] != image["filename"]

    status = json.loads(_get(addr, "/prompt"))
    assert status == {"exec_info": {"queue_remaining": 0}}


def test_websocket_status_and_http_errors_on_real_server(server):
    addr, _ = server
    ws = websocket.create_connection(f"ws://{addr}/api/ws?clientId=abc", timeout=30)
    try:
        msg = json.loads(ws.recv())
        assert msg == {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": "abc"}}
    finally:
        ws.close()
    for body in (b"{", b"[]", json.dumps({"prompt": {"1": {"class_type": "Nope", "inputs": {}}}}).encode()):
        req = urllib.request.Request(f"http://{addr}/prompt", data=body, headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req)
        assert err.value.code == 400 and "node_errors" in json.loads(err.value.read())
    assert json.loads(_get(addr, "/queue")) == {"queue_running": [], "queue_pending": []}


def _read_until_done(ws, prompt_ids):
    """Messages (JSON ones) until `executing` node None arrived for every prompt id."""
    messages, left = [], set(prompt_ids)
    while left:
        out = ws.recv()
        if isinstance(out, str):
            msg = json.loads(out)
            messages.append(msg)
            if msg["type"] == "executing" and msg["data"]["node"] is None:
                left.discard(msg["data"]["prompt_id"])
    return messages


@pytest.mark.slow
def test_interrupt_and_failure_reach_client_and_history(server):
    addr, data = server
    ws = websocket.create_connection(f"ws://{addr}/ws?clientId=c2", timeout=600)
    try:
        ws.recv()  # status
        long = _post(addr, "/prompt", {"prompt": default_prompt(**{"3__steps": 200, "3__seed": 3}),
                                       "client_id": "c2"})["prompt_id"]
        (data / "input").mkdir(exist_ok=True)
        (data / "input" / "gone.png").write_bytes(_tiny_png())
        gone = _post(addr, "/prompt", {"client_id": "c2", "prompt": {
            "1": {"class_type": "LoadImage", "inputs": {"image": "gone.png"}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "gone"}}}})["prompt_id"]
        (data / "input" / "gone.png").unlink()  # after validation, before it runs
        while True:  # wait until the long prompt samples, then interrupt it
            out = ws.recv()
            if isinstance(out, str) and json.loads(out)["type"] == "progress":
                break
        _post(addr, "/interrupt", {"prompt_id": long})
        messages = _read_until_done(ws, [long, gone])
    finally:
        ws.close()
    kinds = [(m["type"], m["data"].get("prompt_id")) for m in messages]
    assert ("execution_interrupted", long) in kinds and ("execution_error", gone) in kinds
    error = next(m["data"] for m in messages if m["type"] == "execution_error")
    assert "gone.png" in error["exception_message"]
    history = json.loads(_get(addr, "/history"))
    assert history[long]["status"]["status_str"] == "error"
    assert history[long]["status"]["messages"][-1][0] == "execution_interrupted"
    assert history[gone]["status"]["messages"][-1][0] == "execution_error"
    assert json.loads(_get(addr, "/prompt")) == {"exec_info": {"queue_remaining": 0}}


def _tiny_png() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buf, format="PNG")
    return buf.getvalue()
