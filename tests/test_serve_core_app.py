"""The server's foundation over HTTP (in-process TestClient): auth on every route, safe files, size
limits, error shapes, our job API with a generate job end to end on the tiny model, events, CLI."""
from __future__ import annotations

import argparse
import base64
import io
import json
import os
import time

import pytest
from fastapi import HTTPException
from fastapi.testclient import TestClient
from PIL import Image
from serve_fixtures import use_tiny_model
from starlette.websockets import WebSocketDisconnect

from stablekit.serve.app import create_app
from stablekit.serve.files import safe_name, safe_path
from stablekit.serve.security import bind_warning
from stablekit.serve.settings import ServeSettings, parse_api_auth


def _client(tmp_path, tiny=False, **settings) -> TestClient:
    app = create_app(ServeSettings(data_dir=tmp_path / "data", **settings))
    if tiny:
        use_tiny_model(app.state.stablekit)
    return TestClient(app)


def _wait(c: TestClient, job_id: str, timeout: float = 120) -> dict:
    job = c.get(f"/api/v1/jobs/{job_id}/wait", params={"timeout": timeout}).json()
    assert job["status"] in ("done", "failed", "cancelled"), job
    return job


# ----------------------------------------------------------------------------- security
def test_api_key_on_every_route_including_websockets(tmp_path):
    with _client(tmp_path, api_key="s3cret", workers=0) as c:
        for path in ("/api/v1/health", "/api/v1/jobs", "/app", "/api/v1/files/x.png", "/docs", "/nonexistent"):
            r = c.get(path)
            assert r.status_code == 401 and "unauthorized" in r.json()["error"], path
        assert c.get("/api/v1/health", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/api/v1/health", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.get("/api/v1/health", headers={"X-API-Key": "s3cret"}).status_code == 200
        with pytest.raises(WebSocketDisconnect):
            with c.websocket_connect("/api/v1/ws") as ws:
                ws.receive_text()
        r = c.get("/app", params={"token": "s3cret"})
        assert r.status_code == 200 and "stablekit_token=" in r.headers["set-cookie"]
        assert c.get("/api/v1/health").status_code == 200  # the browser's cookie from ?token= works
        c.cookies.clear()
        with c.websocket_connect("/api/v1/ws?token=s3cret") as ws:
            c.post("/api/v1/jobs", json={"kind": "sleep", "payload": {"seconds": 0}}, headers={"X-API-Key": "s3cret"})
            assert json.loads(ws.receive_text())["event"] == "job_queued"


def test_a1111_api_auth_is_http_basic(tmp_path):
    with _client(tmp_path, api_auth=parse_api_auth("alice:pw1,bob:pw2"), workers=0) as c:
        r = c.get("/api/v1/health")
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Basic")
        assert c.get("/api/v1/health", auth=("alice", "pw1")).status_code == 200
        assert c.get("/api/v1/health", auth=("bob", "pw2")).status_code == 200
        assert c.get("/api/v1/health", auth=("alice", "pw2")).status_code == 401
        assert c.get("/api/v1/health", headers={"Authorization": "Basic !!notbase64"}).status_code == 401


def test_settings_and_warnings():
    assert bind_warning(ServeSettings(host="0.0.0.0")).startswith("warning: serving on 0.0.0.0 without --api-key")
    assert bind_warning(ServeSettings(host="0.0.0.0", api_key="k")) is None
    assert bind_warning(ServeSettings()) is None and bind_warning(ServeSettings(host="127.0.0.2")) is None
    s = ServeSettings(data_dir="d")
    assert (s.output_dir, s.input_dir, s.user_dir) == (s.data_dir / "output", s.data_dir / "input", s.data_dir / "user")
    assert s.resolved_queue_url.startswith("sqlite:///") and s.resolved_queue_url.endswith("d/queue.sqlite3")
    from stablekit.errors import StablekitError

    for bad in ("alice", "alice:", ":pw"):
        with pytest.raises(StablekitError, match="USER:PASS"):
            parse_api_auth(bad)
    with pytest.raises(StablekitError, match="--workers"):
        ServeSettings(workers=-1)
    with pytest.raises(StablekitError, match="--models-dir"):
        ServeSettings(models_dir="/no/such/folder")


# ----------------------------------------------------------------------------- files
def test_safe_path_refuses_traversal_absolute_and_symlinks_out(tmp_path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.png").write_bytes(b"x")
    (tmp_path / "secret.txt").write_text("no")
    os.symlink(tmp_path / "secret.txt", root / "out.txt")
    os.symlink(root / "sub" / "a.png", root / "in.png")
    assert safe_path(root, "sub/a.png") == (root / "sub" / "a.png").resolve()
    assert safe_path(root, "in.png") == (root / "sub" / "a.png").resolve()
    cases = {"../secret.txt": 403, "sub/../../secret.txt": 403, "..\\secret.txt": 403, "out.txt": 403,
             "/etc/passwd": 400, "\\etc\\passwd": 400, "C:/Windows/win.ini": 400, "a\x00.png": 400, "": 400}
    for rel, status in cases.items():
        with pytest.raises(HTTPException) as err:
            safe_path(root, rel)
        assert err.value.status_code == status, rel
    assert safe_name("../../etc/passwd") == "passwd" and safe_name("..\\x.png") == "x.png"
    assert safe_name(".hidden") == "hidden" and safe_name(None) == "upload.png"


def test_http_file_routes_refuse_traversal(tmp_path):
    with _client(tmp_path, workers=0) as c:
        (tmp_path / "data" / "secret.txt").write_text("secret")
        for path in ("/api/v1/files/..%2Fsecret.txt", "/api/v1/files/%2Fetc%2Fpasswd", "/api/v1/files/..%5Csecret.txt",
                     "/api/v1/inputs/..%2F..%2Fsecret.txt", "/api/v1/files/jobs/..%2F..%2Fsecret.txt"):
            r = c.get(path)
            assert 400 <= r.status_code < 500 and "secret" != r.text, path
        r = c.post("/api/v1/generate", json={"prompt": "x", "init_image": "../secret.txt"})
        assert r.status_code == 403
        assert c.get("/api/v1/files/missing.png").status_code == 404


# ----------------------------------------------------------------------------- limits and errors
def test_body_and_upload_size_limits(tmp_path):
    with _client(tmp_path, workers=0, max_body_mb=1, max_upload_mb=1) as c:
        r = c.post("/api/v1/generate", content=b"x" * (2 * 1024 * 1024), headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and "--max-body-mb" in r.json()["error"]

        def chunks():
            for _ in range(3):
                yield b"x" * (512 * 1024)
        r = c.post("/api/v1/generate", content=chunks(), headers={"Content-Type": "application/json"})
        assert r.status_code == 413
    with _client(tmp_path, workers=0, max_body_mb=5, max_upload_mb=1) as c:
        r = c.post("/api/v1/uploads", files={"file": ("big.png", b"x" * (1024 * 1024 + 10), "image/png")})
        assert r.status_code == 413 and "--max-upload-mb" in r.json()["error"]
        r = c.post("/api/v1/uploads", files={"file": ("x.png", b"not an image", "image/png")})
        assert r.status_code == 400
        buf = io.BytesIO()
        Image.new("RGB", (16, 16), "red").save(buf, format="PNG")
        r = c.post("/api/v1/uploads", files={"file": ("../../evil.png", buf.getvalue(), "image/png")})
        assert r.status_code == 200 and r.json()["name"] == "evil.png"
        assert (tmp_path / "data" / "input" / "evil.png").is_file()
        r = c.post("/api/v1/uploads", files={"file": ("evil.png", buf.getvalue(), "image/png")})
        assert r.json()["name"] == "evil (1).png"  # never overwrites


def test_bad_requests_are_clear_4xx_never_500(tmp_path):
    with _client(tmp_path, workers=0) as c:
        r = c.post("/api/v1/generate", content=b"{not json", headers={"Content-Type": "application/json"})
        assert r.status_code == 422 and r.json()["error"].startswith("invalid request")
        r = c.post("/api/v1/jobs", json={"kind": 5})
        assert r.status_code == 422
        bad = {"steps": "many", "width": 30, "sampler": "nope", "bogus": 1, "model": "missing.safetensors",
               "strength": 0.5, "lora": ["nope"], "init_image": "data:image/png;base64,AAAA"}
        for key, value in bad.items():
            r = c.post("/api/v1/generate", json={"prompt": "x", key: value})
            assert r.status_code == 400 and r.json()["error"] and "Traceback" not in r.text, (key, r.text)
        assert c.post("/api/v1/jobs", json={"kind": "nope", "payload": {}}).status_code == 400
        assert c.post("/api/v1/jobs", json={"kind": "sleep", "payload": {"seconds": 99}}).status_code == 400
        assert c.get("/api/v1/jobs/nope").status_code == 404
        assert c.get("/api/v1/jobs", params={"status": "weird"}).status_code == 400
        assert c.post("/api/v1/models/current", json={"name": "nope"}).status_code == 400

        @c.app.get("/boom")
        async def boom():
            raise RuntimeError("a bug")
        r = TestClient(c.app, raise_server_exceptions=False).get("/boom")
        assert r.status_code == 500 and r.json()["error"] == "internal error: RuntimeError: a bug"


# ----------------------------------------------------------------------------- the job API
def test_generate_job_end_to_end_with_outputs_and_events(tmp_path):
    with _client(tmp_path, tiny=True, workers=1) as c:
        assert c.get("/api/v1/models").json()["checkpoints"][0] == {"name": "shapes.safetensors",
                                                                    "title": "shapes (embedded)"}
        r = c.post("/api/v1/generate", json={"prompt": "a red circle", "steps": 3, "seed": 5, "batch_size": 2,
                                             "width": 64, "height": 64, "negative": "blue"})
        assert r.status_code == 202 and r.json()["status"] in ("queued", "running")
        job_id = r.json()["id"]
        events = []
        with c.stream("GET", f"/api/v1/jobs/{job_id}/events") as stream:
            for line in stream.iter_lines():
                if line.startswith("event: "):
                    events.append(line[len("event: "):])
        assert events[0] == "job" and events[-1] == "job_finished"
        job = _wait(c, job_id)
        assert job["status"] == "done" and job["progress"]["step"] == job["progress"]["total"] == 3
        images = job["result"]["images"]
        assert [i["seed"] for i in images] == [5, 6] and "Negative prompt: blue" in images[0]["parameters"]
        outputs = c.get(f"/api/v1/jobs/{job_id}/outputs").json()["outputs"]
        assert outputs[1]["record"]["seed"] == 6 and outputs[0]["record"]["steps"] == 3
        png = c.get(images[0]["url"])
        assert png.status_code == 200 and Image.open(io.BytesIO(png.content)).size == (64, 64)
        assert Image.open(io.BytesIO(png.content)).info["parameters"] == images[0]["parameters"]
        assert (tmp_path / "data" / "output" / images[0]["filename"]).is_file()
        # img2img and inpaint with base64 images stored as inputs
        buf = io.BytesIO()
        Image.new("RGB", (64, 64), "green").save(buf, format="PNG")
        b64 = base64.b64encode(buf.getvalue()).decode()
        mask = io.BytesIO()
        Image.new("L", (64, 64), 255).save(mask, format="PNG")
        r = c.post("/api/v1/generate", json={"prompt": "x", "steps": 2, "init_image": "data:image/png;base64," + b64,
                                             "mask": base64.b64encode(mask.getvalue()).decode(), "strength": 0.9})
        assert r.status_code == 202 and r.json()["payload"]["init_image"].startswith("jobs/")
        done = _wait(c, r.json()["id"])
        assert done["status"] == "done", done["error"]
        assert "Denoising strength: 0.9" in done["result"]["images"][0]["parameters"]
        listed = c.get("/api/v1/jobs", params={"status": "done"}).json()["jobs"]
        assert [j["id"] for j in listed] == [r.json()["id"], job_id]


def test_cancel_queued_and_running_jobs(tmp_path):
    with _client(tmp_path, workers=1) as c:
        running = c.post("/api/v1/jobs", json={"kind": "sleep", "payload": {"seconds": 5}}).json()
        queued = c.post("/api/v1/jobs", json={"kind": "sleep", "payload": {"seconds": 5}}).json()
        deadline = time.monotonic() + 30
        while c.get(f"/api/v1/jobs/{running['id']}").json()["status"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert c.get(f"/api/v1/jobs/{queued['id']}").json()["position"] == 0
        assert c.post(f"/api/v1/jobs/{queued['id']}/cancel").json() == {"cancelled": True, "status": "cancelled"}
        assert c.post(f"/api/v1/jobs/{running['id']}/cancel").json()["cancelled"] is True
        job = _wait(c, running["id"], 30)
        assert job["status"] == "cancelled" and job["finished"] - job["started"] < 4
        assert c.delete(f"/api/v1/jobs/{running['id']}").json() == {"deleted": True}
        assert c.get(f"/api/v1/jobs/{running['id']}").status_code == 404


def test_page_is_served(tmp_path):
    with _client(tmp_path, workers=0) as c:
        r = c.get("/app")
        assert r.status_code == 200 and "EventSource" in r.text and "/api/v1/generate" in r.text


def test_cli_register_serve_and_worker_every_flag_has_help():
    from stablekit.cli import ArgumentParser
    from stablekit.cli import serve as serve_cli

    parser = ArgumentParser(prog="stablekit")
    serve_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve", "--port", "7861", "--data-dir", "d", "--api-key", "k", "--api-auth", "u:p",
                              "--workers", "2", "--queue-url", "sqlite:///q.db"])
    assert (args.host, args.port, args.api_key, args.workers, args.func) == ("127.0.0.1", 7861, "k", 2,
                                                                               serve_cli.run_serve)
    args = parser.parse_args(["worker", "--queue-url", "postgresql://u@h/db", "--once"])
    assert args.func == serve_cli.run_worker and args.once and args.data_dir == "stablekit-data"
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                for a in sub._actions:
                    if a.option_strings and a.option_strings != ["-h", "--help"]:
                        assert a.help and a.help.strip(), (name, a.option_strings)


def test_idempotency_key_makes_retries_return_the_same_job(tmp_path):
    with _client(tmp_path, workers=0) as c:
        first = c.post("/api/v1/generate", json={"prompt": "x"}, headers={"Idempotency-Key": "req-1"}).json()
        again = c.post("/api/v1/generate", json={"prompt": "x"}, headers={"Idempotency-Key": "req-1"}).json()
        assert first["id"] == again["id"] == "req-1" and len(c.get("/api/v1/jobs").json()["jobs"]) == 1
        other = c.post("/api/v1/jobs", json={"kind": "sleep", "payload": {}, "id": "req-1"})
        assert other.status_code == 409
        assert c.post("/api/v1/jobs", json={"kind": "sleep", "payload": {}, "id": "bad id!"}).status_code == 400
