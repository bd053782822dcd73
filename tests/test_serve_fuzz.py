"""The bad-input suite (issue 10): every route of the app gets malformed JSON, invalid UTF-8, wrong
top-level types, absurd nesting, wrong-typed fields, over-size bodies, traversal paths, unknown nodes
and cyclic graphs; every answer must be below 500 (4xx where the input is wrong), carry no traceback,
and the server must go on serving. No job runs here (start_workers=False)."""
from __future__ import annotations

import copy
import io
import json
import re

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from stablekit.serve.app import create_app
from stablekit.serve.settings import ServeSettings
from test_serve_comfy import default_prompt

# Blocking A1111 routes wait for their job, which never runs here: they get only bodies that cannot be valid.
BLOCKING = {"/sdapi/v1/txt2img", "/sdapi/v1/img2img"}
MALFORMED = [b"{not json", b"\xff\xfe\x00garbage", b"[1, 2]", b'"text"', b"42", b"[" * 100000 + b"]" * 100000,
             b'{"a": ' * 50000 + b"1" + b"}" * 50000]
EMPTYISH = [b"null", b"{}", b'{"prompt": null}']
BAD_VALUES = [None, "", "x" * 5000, -1, 10 ** 30, 1e308, float("nan"), True, [], {}, [1, "a"], {"a": {"b": []}},
              "../../etc/passwd", "/etc/passwd", "a\x00b"]
PATH_VALUES = ["..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd", "..%5C..%5Cwin.ini", "x" * 3000, "%00", "%2e%2e"]


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    data = tmp_path_factory.mktemp("fuzz") / "data"
    app = create_app(ServeSettings(data_dir=data, max_body_mb=1, max_upload_mb=1), start_workers=False)
    (data / "secret.txt").parent.mkdir(parents=True, exist_ok=True)
    (data / "secret.txt").write_text("TOPSECRET-CONTENT")
    with TestClient(app, raise_server_exceptions=False) as c:
        c.fastapi = app
        yield c


def _check(r, what):
    assert r.status_code < 500, (what, r.status_code, r.text[:300])
    assert "Traceback" not in r.text and "TOPSECRET" not in r.text, what


def _routes(app):
    """(method, path) of every HTTP route in the app's OpenAPI schema."""
    for path, methods in app.openapi()["paths"].items():
        for method in methods:
            if method.upper() in ("GET", "POST", "PUT", "PATCH", "DELETE"):
                yield method.upper(), path


def _fill(path: str, value: str) -> str:
    return re.sub(r"\{[^}]+\}", value, path)


@pytest.mark.slow  # about 1,300 requests: 10-20 s on 2 busy cores
def test_every_route_survives_malformed_bodies_and_paths(client):
    routes = list(_routes(client.fastapi))
    assert len(routes) > 60  # our API, A1111's and ComfyUI's (with /api aliases)
    for method, path in routes:
        url = _fill(path, "nope")
        if method in ("POST", "PUT", "PATCH", "DELETE"):
            for body in MALFORMED + ([] if path in BLOCKING else EMPTYISH):
                r = client.request(method, url, content=body, headers={"Content-Type": "application/json"})
                _check(r, (method, path, body[:20]))
                if path in BLOCKING or path.endswith(("/prompt", "/generate", "/jobs")):
                    assert 400 <= r.status_code < 500 or body in EMPTYISH, (method, path, body[:20], r.status_code)
            r = client.request(method, url, content=b"x" * (2 * 1024 * 1024), headers={"Content-Type": "application/json"})
            assert r.status_code == 413, (method, path, r.status_code)
        if "{" in path:
            for value in PATH_VALUES:
                r = client.request(method, _fill(path, value), content=b"{}" if method != "GET" else None)
                _check(r, (method, path, value))
    assert client.get("/api/v1/health").json()["ok"] is True


@pytest.mark.parametrize("path, valid", [
    pytest.param("/api/v1/generate", {"prompt": "x", "steps": 4, "cfg": 7, "seed": 1, "width": 64, "height": 64,
                                      "sampler": "Euler", "batch_size": 1, "init_image": "a.png", "mask": "a.png", "strength": 0.5, "lora": [],
                          "model": "shapes.safetensors", "hires_scale": 2}, marks=pytest.mark.slow),
    ("/api/v1/jobs", {"kind": "generate", "payload": {"prompt": "x"}, "client_id": "c", "front": False, "id": "abc"}),
    pytest.param("/sdapi/v1/txt2img/async", {"prompt": "x", "steps": 4, "width": 64, "height": 64, "seed": 1,
                                             "cfg_scale": 7,
                                 "sampler_name": "Euler", "n_iter": 1, "batch_size": 1, "override_settings": {},
                                 "enable_hr": False, "styles": []}, marks=pytest.mark.slow),
    ("/sdapi/v1/img2img/async", {"prompt": "x", "init_images": ["x"], "denoising_strength": 0.5, "mask": None,
                                 "steps": 4}),
    pytest.param("/sdapi/v1/options", {"sd_model_checkpoint": "shapes.safetensors", "CLIP_stop_at_last_layers": 1},
                 marks=pytest.mark.slow),
    ("/sdapi/v1/png-info", {"image": "x"}),
    ("/prompt", {"prompt": default_prompt(), "client_id": "c", "prompt_id": "p1", "extra_data": {}, "front": False}),
    ("/queue", {"delete": ["a"], "clear": False}),
    ("/interrupt", {"prompt_id": "a"}),
    pytest.param("/api/v1/models/current", {"name": "shapes.safetensors"}, marks=pytest.mark.slow),
])
def test_wrong_typed_fields_are_4xx(client, path, valid):
    for key in valid:
        for value in BAD_VALUES:
            body = {**copy.deepcopy(valid), key: value}
            r = client.post(path, content=json.dumps(body, allow_nan=True), headers={"Content-Type": "application/json"})
            _check(r, (path, key, value if not isinstance(value, str) else value[:20]))
    assert client.get("/api/v1/health").status_code == 200


def _graphs():
    base = default_prompt()
    yield "unknown node", {**base, "10": {"class_type": "NoSuchNode", "inputs": {}}}
    g = copy.deepcopy(base)
    g["5"] = {"class_type": "LatentUpscaleBy", "inputs": {"samples": ["3", 0], "upscale_method": "nearest-exact",
                                                          "scale_by": 1.0}}
    yield "cycle", g
    g = copy.deepcopy(base)
    g["8"]["inputs"]["samples"] = ["8", 0]
    yield "self loop", g
    for node, name, value in [("3", "steps", "many"), ("3", "seed", [1]), ("3", "sampler_name", "nope"),
                              ("3", "model", ["99", 0]), ("3", "model", ["4", 7]), ("3", "model", ["4"]),
                              ("3", "latent_image", ["6", 0]), ("5", "width", -64), ("5", "width", 10 ** 9),
                              ("4", "ckpt_name", "../../etc/passwd"), ("9", "filename_prefix", "../../x"),
                              ("3", "denoise", float("nan"))]:
        g = copy.deepcopy(base)
        g[node]["inputs"][name] = value
        yield f"{node}.{name}={value!r}", g
    yield "no class_type", {"1": {"inputs": {}}}
    yield "inputs not a dict", {"1": {"class_type": "KSampler", "inputs": [1]}}
    yield "node not a dict", {"1": 5}
    yield "no output node", {k: v for k, v in base.items() if k != "9"}
    yield "empty", {}
    load = {"1": {"class_type": "LoadImage", "inputs": {"image": "../../secret.txt"}},
            "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}
    yield "traversal in LoadImage", load


@pytest.mark.parametrize("name, graph", list(_graphs()), ids=[n for n, _ in _graphs()])
def test_bad_workflows_are_400_with_comfyui_errors(client, name, graph):
    r = client.post("/prompt", content=json.dumps({"prompt": graph}, allow_nan=True))
    _check(r, name)
    assert r.status_code == 400 and set(r.json()) >= {"error", "node_errors"}, (name, r.text[:300])
    assert client.get("/queue").json()["queue_pending"] == []


def test_traversal_in_file_routes_and_uploads(client):
    for url in ("/view?filename=../secret.txt", "/view?filename=secret.txt&subfolder=..", "/view?filename=x&type=weird",
                "/view?filename=%2Fetc%2Fpasswd", "/api/view?filename=..%5Csecret.txt", "/userdata/..%2Fsecret.txt",
                "/api/userdata/%2E%2E%2Fsecret.txt", "/api/v1/files/..%2Fsecret.txt", "/api/v1/inputs/..%2Fsecret.txt",
                "/api/v1/files/%2Fetc%2Fpasswd"):
        r = client.get(url)
        _check(r, url)
        assert 400 <= r.status_code < 500, (url, r.status_code)
    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, format="PNG")
    for route in ("/upload/image", "/api/upload/mask", "/api/v1/uploads"):
        for form, files in [({"subfolder": "../.."}, {"image": ("x.png", png.getvalue())}),
                            ({"type": "../"}, {"image": ("x.png", png.getvalue())}),
                            ({}, {"image": ("x.png", b"not an image")}),
                            ({}, {"file": ("../../evil.png", b"x" * (2 * 1024 * 1024))}),
                            ({}, {})]:
            r = client.post(route, data=form, files=files or None)
            _check(r, (route, form))
            assert 400 <= r.status_code < 500, (route, form, r.status_code, r.text[:200])
    assert not (client.fastapi.state.stablekit.settings.data_dir.parent / "evil.png").exists()
    assert client.get("/system_stats").status_code == 200
