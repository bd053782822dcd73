"""ComfyUI-compatible routes on the stablekit server, through FastAPI's TestClient (no jobs run
here: start_workers=False; the websocket run is in test_serve_comfy_ws.py)."""
import copy
import io
import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from stablekit.nodes import NODE_CLASS_MAPPINGS, load_node_families
from stablekit.nodes.sampling import COMFY_SAMPLERS, COMFY_SCHEDULERS
from stablekit.serve.app import create_app
from stablekit.serve.comfy.frontend import web_root
from stablekit.serve.settings import ServeSettings

FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "comfyui-default-api.json"


def default_prompt(**changes) -> dict:
    """ComfyUI's default graph on the embedded model, 64 px, 2 steps."""
    prompt = json.loads(FIXTURE.read_text())
    prompt["4"]["inputs"]["ckpt_name"] = "shapes.safetensors"
    prompt["5"]["inputs"].update(width=64, height=64)
    prompt["3"]["inputs"]["steps"] = 2
    for key, value in changes.items():
        node, name = key.split("__")
        prompt[node]["inputs"][name] = value
    return prompt


@pytest.fixture()
def client(tmp_path):
    app = create_app(ServeSettings(data_dir=tmp_path / "data", max_body_mb=1), start_workers=False)
    with TestClient(app) as c:
        yield c


def _png(color=(200, 30, 30), size=(16, 16), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format="PNG")
    return buf.getvalue()


def test_object_info_describes_every_node(client):
    info = client.get("/object_info").json()
    assert set(info) == set(load_node_families())
    ks = info["KSampler"]
    assert ks["input"]["required"]["sampler_name"][0] == list(COMFY_SAMPLERS)
    assert ks["input"]["required"]["scheduler"][0] == list(COMFY_SCHEDULERS)
    assert ks["input"]["required"]["steps"] == ["INT", {"default": 20, "min": 1, "max": 10000}]
    assert ks["input_order"]["required"][:3] == ["model", "seed", "steps"]
    assert ks["output"] == ["LATENT"] and ks["output_name"] == ["LATENT"] and ks["category"] == "sampling"
    ckpt = info["CheckpointLoaderSimple"]
    assert ckpt["input"]["required"]["ckpt_name"][0][0] == "shapes.safetensors"
    assert ckpt["output"] == ["MODEL", "CLIP", "VAE"] and ckpt["display_name"] == "Load Checkpoint"
    assert info["SaveImage"]["output_node"] is True and info["KSampler"]["output_node"] is False
    assert info["ControlNetApplyAdvanced"]["output_name"] == ["positive", "negative"]
    # one node, and the /api alias, answer the same
    assert client.get("/api/object_info/KSampler").json() == {"KSampler": ks}
    assert client.get("/object_info/NoSuchNode").json() == {}


def test_object_info_lists_uploaded_images(client):
    assert client.get("/object_info/LoadImage").json()["LoadImage"]["input"]["required"]["image"][0] == []
    r = client.post("/upload/image", files={"image": ("red.png", _png(), "image/png")})
    assert r.status_code == 200 and r.json() == {"name": "red.png", "subfolder": "", "type": "input"}
    assert client.get("/object_info/LoadImage").json()["LoadImage"]["input"]["required"]["image"][0] == ["red.png"]


def test_post_prompt_queues_and_queue_routes(client):
    r = client.post("/prompt", json={"prompt": default_prompt(), "client_id": "c1"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"prompt_id", "number", "node_errors"} and body["node_errors"] == {}
    second = client.post("/api/prompt", json={"prompt": default_prompt()}).json()
    assert second["number"] > body["number"]
    assert client.get("/prompt").json() == {"exec_info": {"queue_remaining": 2}}
    pending = client.get("/queue").json()
    assert pending["queue_running"] == []
    number, prompt_id, prompt, extra, outputs = pending["queue_pending"][0]
    assert (number, prompt_id, outputs) == (body["number"], body["prompt_id"], ["9"])
    assert prompt["4"]["inputs"]["ckpt_name"] == "shapes.safetensors" and extra["client_id"] == "c1"
    assert client.post("/queue", json={"delete": [body["prompt_id"]]}).status_code == 200
    assert [q[1] for q in client.get("/queue").json()["queue_pending"]] == [second["prompt_id"]]
    assert client.post("/api/queue", json={"clear": True}).status_code == 200
    assert client.get("/queue").json()["queue_pending"] == []
    assert client.get("/history").json() == {}  # deleted before running: not history
    assert client.get(f"/history/{second['prompt_id']}").json() == {}


def test_client_given_prompt_id_is_used_and_a_retry_queues_nothing_new(client):
    wanted = "6f1c2b8e-0d55-4c4e-9a57-0f0d1b6b7c11"
    first = client.post("/prompt", json={"prompt": default_prompt(), "prompt_id": wanted, "client_id": "c1"})
    assert first.status_code == 200 and first.json()["prompt_id"] == wanted
    again = client.post("/api/prompt", json={"prompt": default_prompt(), "prompt_id": wanted}).json()
    assert (again["prompt_id"], again["number"]) == (wanted, first.json()["number"])
    assert [q[1] for q in client.get("/queue").json()["queue_pending"]] == [wanted]
    for bad in ("../x", "a" * 65, 5, ""):
        r = client.post("/prompt", json={"prompt": default_prompt(), "prompt_id": bad})
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_prompt", bad
    taken = client.post("/api/v1/jobs", json={"kind": "sleep", "payload": {}, "id": "sleepy"}).json()["id"]
    r = client.post("/prompt", json={"prompt": default_prompt(), "prompt_id": taken})
    assert r.status_code == 409 and "another kind" in r.json()["error"]["message"]
    assert client.get("/prompt").json() == {"exec_info": {"queue_remaining": 2}}


def _error_type(r):
    assert r.status_code == 400, r.text
    body = r.json()
    assert set(body) == {"error", "node_errors"} and set(body["error"]) >= {"type", "message", "details"}
    return body


@pytest.mark.parametrize("make, kind", [
    (lambda: b"{not json", "invalid_prompt"),
    (lambda: json.dumps({"nope": 1}).encode(), "no_prompt"),
    (lambda: json.dumps({"prompt": [1, 2]}).encode(), "invalid_prompt"),
    (lambda: json.dumps({"prompt": {"1": {"class_type": "NoSuchNode", "inputs": {}}}}).encode(), "invalid_prompt"),
])
def test_bad_prompts_get_comfyui_errors(client, make, kind):
    assert _error_type(client.post("/prompt", content=make()))["error"]["type"] == kind
    assert client.get("/prompt").status_code == 200  # still serving


def test_node_errors_wrong_type_and_cycle(client):
    body = _error_type(client.post("/prompt", json={"prompt": default_prompt(**{"3__steps": "many"})}))
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    assert body["node_errors"]["3"]["errors"][0]["type"] == "invalid_input_type"
    assert body["node_errors"]["3"]["class_type"] == "KSampler"
    assert body["node_errors"]["3"]["dependent_outputs"] == ["9"]
    cyclic = default_prompt()
    cyclic["5"] = {"class_type": "LatentUpscaleBy", "inputs": {"samples": ["3", 0], "upscale_method": "nearest-exact",
                                                                 "scale_by": 1.0}}
    body = _error_type(client.post("/prompt", json={"prompt": cyclic}))
    assert any(e["type"] == "dependency_cycle" for entry in body["node_errors"].values() for e in entry["errors"])
    body = _error_type(client.post("/prompt", json={"prompt": default_prompt(**{"4__ckpt_name": "missing.ckpt"})}))
    assert body["node_errors"]["4"]["errors"][0]["type"] == "value_not_in_list"
    assert client.get("/queue").json()["queue_pending"] == []


def test_huge_payload_is_413_and_server_keeps_serving(client):
    prompt = default_prompt(**{"6__text": "x" * (2 * 1024 * 1024)})
    r = client.post("/prompt", json={"prompt": prompt})
    assert r.status_code == 413
    assert client.get("/system_stats").status_code == 200


def test_view_serves_only_the_three_folders(client, tmp_path):
    out = tmp_path / "data" / "output"
    (out / "sub").mkdir(parents=True)
    (out / "sub" / "a.png").write_bytes(_png())
    (tmp_path / "data" / "secret.txt").write_text("no")
    r = client.get("/view", params={"filename": "a.png", "subfolder": "sub", "type": "output"})
    assert r.status_code == 200 and r.content == (out / "sub" / "a.png").read_bytes()
    assert client.get("/api/view", params={"filename": "a.png [output]", "subfolder": "sub"}).status_code == 200
    r = client.get("/view", params={"filename": "a.png", "subfolder": "sub", "preview": "jpeg;50"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    rgb = client.get("/view", params={"filename": "a.png", "subfolder": "sub", "channel": "a"})
    assert Image.open(io.BytesIO(rgb.content)).mode == "RGBA"
    for params in ({"filename": "../secret.txt", "type": "output"}, {"filename": "secret.txt", "subfolder": ".."},
                   {"filename": "secret.txt", "subfolder": "/etc"}, {"filename": "passwd", "subfolder": "../../../etc"},
                   {"filename": "a.png", "type": "models"}):
        assert client.get("/view", params=params).status_code in (400, 403), params
    assert client.get("/view", params={"filename": "none.png"}).status_code == 404
    assert client.get("/view").status_code == 400


def test_uploads(client, tmp_path):
    first = client.post("/upload/image", files={"image": ("in.png", _png(), "image/png")}).json()
    again = client.post("/upload/image", files={"image": ("in.png", _png(), "image/png")}).json()
    other = client.post("/upload/image", files={"image": ("in.png", _png((0, 0, 255)), "image/png")}).json()
    assert first["name"] == again["name"] == "in.png" and other["name"] == "in (1).png"
    over = client.post("/upload/image", data={"overwrite": "true", "subfolder": "masks"},
                       files={"image": ("../../evil.png", _png(), "image/png")}).json()
    assert over == {"name": "evil.png", "subfolder": "masks", "type": "input"}
    assert (tmp_path / "data" / "input" / "masks" / "evil.png").is_file()
    assert client.post("/upload/image", files={"image": ("x.png", b"not an image", "image/png")}).status_code == 400
    assert client.post("/upload/image", data={"subfolder": "../.."},
                       files={"image": ("y.png", _png(), "image/png")}).status_code == 403
    assert client.post("/upload/image", content=b"garbage",
                       headers={"content-type": "multipart/form-data; boundary=zz"}).status_code == 400
    mask = _png((0, 0, 0, 0), mode="RGBA")
    r = client.post("/upload/mask", data={"original_ref": json.dumps({"filename": "in.png", "type": "input"})},
                    files={"image": ("clipspace-mask.png", mask, "image/png")})
    assert r.status_code == 200, r.text
    saved = Image.open(tmp_path / "data" / "input" / r.json()["name"])
    assert saved.mode == "RGBA" and saved.getpixel((0, 0)) == (200, 30, 30, 0)


def test_userdata_and_settings(client, tmp_path):
    assert client.get("/api/users").json()["storage"] == "server"
    assert client.post("/api/settings", json={"Comfy.Locale": "en", "Comfy.X": 1}).status_code == 200
    assert client.post("/api/settings/Comfy.X", json=2).status_code == 200
    assert client.get("/api/settings").json() == {"Comfy.Locale": "en", "Comfy.X": 2}
    assert client.get("/api/settings/Comfy.X").json() == 2
    wf = json.dumps({"nodes": [], "links": []}).encode()
    r = client.post("/api/userdata/workflows%2Fa.json?overwrite=true&full_info=true", content=wf)
    assert r.status_code == 200 and r.json()["path"] == "workflows/a.json"
    assert client.post("/api/userdata/workflows%2Fa.json?overwrite=false", content=wf).status_code == 409
    listing = client.get("/api/userdata", params={"dir": "workflows", "recurse": "true", "full_info": "true"}).json()
    assert [f["path"] for f in listing] == ["a.json"]
    assert client.get("/api/userdata/workflows%2Fa.json").content == wf
    assert client.post("/api/userdata/workflows%2Fa.json/move/workflows%2Fb.json").status_code == 200
    assert client.get("/api/userdata", params={"dir": "workflows"}).json() == ["b.json"]
    assert client.delete("/api/userdata/workflows%2Fb.json").status_code == 204
    assert client.get("/api/userdata", params={"dir": "nothing"}).status_code == 404
    assert client.get("/api/userdata/..%2F..%2Fqueue.sqlite3").status_code in (400, 403)
    assert client.post("/api/userdata/..%2Fescape.json", content=b"{}").status_code in (400, 403)
    assert not (tmp_path / "data" / "user" / "escape.json").exists()


def test_misc_routes(client):
    stats = client.get("/api/system_stats").json()
    assert {"os", "ram_total", "python_version", "pytorch_version"} <= set(stats["system"])
    assert stats["devices"][0]["type"] in ("cpu", "cuda")
    assert client.get("/embeddings").json() == []
    assert "checkpoints" in client.get("/models").json()
    assert client.get("/models/checkpoints").json()[0] == "shapes.safetensors"
    assert client.get("/models/../etc").status_code == 404
    assert client.get("/api/experiment/models/checkpoints").json()[0] == {"name": "shapes.safetensors", "pathIndex": 0}
    assert isinstance(client.get("/api/extensions").json(), list)
    assert client.post("/interrupt").status_code == 200
    assert client.post("/api/free", json={"unload_models": True}).status_code == 200
    assert client.post("/api/history", json={"clear": True}).status_code == 200
    assert client.post("/queue", content=b"[").status_code == 400


@pytest.mark.skipif(web_root() is None, reason="comfyui-frontend-package is not installed")
def test_frontend_static_files(client):
    r = client.get("/")
    assert r.status_code == 200 and "<html" in r.text.lower()
    script = next(p for p in (web_root() / "assets").iterdir() if p.suffix == ".js")
    r = client.get(f"/assets/{script.name}")
    assert r.status_code == 200 and "javascript" in r.headers["content-type"]
    assert client.get("/assets/..%2F..%2F__init__.py").status_code in (400, 403, 404)


def test_jobs_api_for_the_frontend_queue_panel(client):
    ids = [client.post("/prompt", json={"prompt": default_prompt()}).json()["prompt_id"] for _ in range(3)]
    page = client.get("/api/jobs", params={"status": "in_progress,pending", "limit": 2}).json()
    assert page["pagination"] == {"offset": 0, "limit": 2, "total": 3, "has_more": True}
    assert [j["status"] for j in page["jobs"]] == ["pending", "pending"] and page["jobs"][0]["id"] == ids[2]
    detail = client.get(f"/api/jobs/{ids[0]}").json()
    assert detail["workflow"]["prompt"]["9"]["class_type"] == "SaveImage" and detail["outputs"] == {}
    assert client.post(f"/api/jobs/{ids[0]}/cancel").status_code == 200
    assert client.post("/api/jobs/cancel", json={"job_ids": [ids[1]]}).status_code == 200
    cancelled = client.get("/api/jobs", params={"status": "cancelled"}).json()["jobs"]
    assert sorted(j["id"] for j in cancelled) == sorted(ids[:2])
    assert client.get("/api/jobs", params={"status": "bogus"}).status_code == 400
    assert client.get("/api/jobs/nope").status_code == 404
    assert client.post("/api/jobs/cancel", content=b"{").status_code == 400


def test_root_opens_our_page_when_the_frontend_is_not_installed(monkeypatch):
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from stablekit.serve.comfy import frontend

    monkeypatch.setattr(frontend, "web_root", lambda: None)
    app = FastAPI()
    app.include_router(frontend.static_router())
    r = TestClient(app).get("/", follow_redirects=False)
    assert r.status_code in (302, 307) and r.headers["location"] == "/app"
