"""The server's hires upscaler models: found under --models-dir's ESRGAN/ and RealESRGAN/ (A1111's
folders) and upscale_models/ (ComfyUI's) beside $STABLEKIT_UPSCALER_DIR, listed by /sdapi/v1/upscalers,
used by name (never by path) by A1111's hr_upscaler and the job API's hires_upscaler."""
from __future__ import annotations

import io
import json
import time

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from serve_fixtures import use_tiny_model
from test_upscale_models import _random, _save

from stablekit.generate import upscale_models
from stablekit.generate.upscale_models import CompactNet
from stablekit.serve.app import create_app
from stablekit.serve.settings import ServeSettings

FAST = {"steps": 2, "width": 64, "height": 64, "seed": 3}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    for sub, name, scale in (("ESRGAN", "4x-Foo.pth", 4), ("RealESRGAN", "RealESRGAN_x2plus.pth", 2),
                             ("upscale_models", "2x-Bar.safetensors", 2)):
        (root / sub).mkdir()
        _save(root / sub / name, _random(CompactNet(3, 3, 4, 1, scale), seed=scale))
    env = tmp_path_factory.mktemp("env")
    _save(env / "4x-Env.safetensors", _random(CompactNet(3, 3, 4, 1, 4)))
    return root, env


@pytest.fixture(scope="module")
def client(models, tmp_path_factory):
    app = create_app(ServeSettings(data_dir=tmp_path_factory.mktemp("data"), models_dir=models[0], workers=1))
    use_tiny_model(app.state.stablekit)
    with TestClient(app) as c:
        yield c


@pytest.fixture()
def passes(monkeypatch):
    """The image sizes every model pass ran on (the worker thread shares this process)."""
    seen = []
    original = upscale_models.run_model
    monkeypatch.setattr(upscale_models, "run_model", lambda m, image: seen.append(image.size) or original(m, image))
    return seen


def test_settings_name_the_three_folders(tmp_path):
    assert ServeSettings(data_dir=tmp_path, models_dir=tmp_path).upscaler_dirs == tuple(
        str(tmp_path / d) for d in ("ESRGAN", "RealESRGAN", "upscale_models"))
    assert ServeSettings(data_dir=tmp_path).upscaler_dirs == ()


def test_a1111_upscalers_lists_every_folder(client, models, monkeypatch):
    root, env = models
    monkeypatch.setenv("STABLEKIT_UPSCALER_DIR", str(env))
    items = client.get("/sdapi/v1/upscalers").json()
    assert [u["name"] for u in items] == ["None", "Lanczos", "Nearest", "2x-Bar", "4x-Env", "4x-Foo", "R-ESRGAN 2x+"]
    paths = {u["name"]: u["model_path"] for u in items}
    assert paths["4x-Foo"] == str(root / "ESRGAN" / "4x-Foo.pth")
    assert paths["R-ESRGAN 2x+"] == str(root / "RealESRGAN" / "RealESRGAN_x2plus.pth")
    assert paths["2x-Bar"] == str(root / "upscale_models" / "2x-Bar.safetensors")
    flags = client.get("/sdapi/v1/cmd-flags").json()
    assert flags["esrgan_models_path"] == str(root / "ESRGAN")
    assert flags["realesrgan_models_path"] == str(root / "RealESRGAN")


def test_a1111_hr_upscaler_by_name(client, passes):
    r = client.post("/sdapi/v1/txt2img", json={**FAST, "enable_hr": True, "hr_scale": 1.5, "hr_second_pass_steps": 2,
                                                "denoising_strength": 0.5, "hr_upscaler": "R-ESRGAN 2x+"})
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert "Hires upscaler: R-ESRGAN 2x+" in info["infotexts"][0]
    assert passes == [(64, 64)]  # one 2x pass of the RealESRGAN/ model, then Lanczos to 96x96


@pytest.mark.parametrize("name, words", [
    ("4x-Missing", "unknown hires upscaler '4x-Missing'"),
    ("{root}/ESRGAN/4x-Foo.pth", "unknown hires upscaler"),  # a path on the server's disk is no name
])
def test_a1111_unknown_names_and_paths_are_one_line(client, models, name, words):
    r = client.post("/sdapi/v1/txt2img", json={**FAST, "enable_hr": True, "hr_scale": 2,
                                                "hr_upscaler": name.format(root=models[0])})
    assert 400 <= r.status_code < 500, r.text
    detail = r.json()["detail"]
    assert words in detail and "4x-Foo" in detail and "R-ESRGAN 2x+" in detail and "\n" not in detail
    assert "give a path" not in detail


def _wait(client, job_id: str) -> dict:
    deadline = time.monotonic() + 120
    while (job := client.get(f"/api/v1/jobs/{job_id}").json())["status"] not in ("done", "failed", "cancelled"):
        assert time.monotonic() < deadline, job
        time.sleep(0.1)
    return job


def test_job_api_hires_upscaler_by_name(client, models, passes):
    r = client.post("/api/v1/generate", json={"prompt": "a red circle", **FAST, "hires_scale": 2, "hires_steps": 2,
                                              "hires_upscaler": "2x-bar"})
    assert r.status_code == 202, r.text
    job = _wait(client, r.json()["id"])
    assert job["status"] == "done", job["error"]
    (image,) = job["result"]["images"]
    assert "Hires upscaler: 2x-Bar" in image["parameters"]
    assert Image.open(io.BytesIO(client.get(image["url"]).content)).size == (128, 128)
    assert passes == [(64, 64)]
    for bad in ("4x-Missing", str(models[0] / "ESRGAN" / "4x-Foo.pth")):
        r = client.post("/api/v1/generate", json={"prompt": "x", **FAST, "hires_scale": 2, "hires_upscaler": bad})
        assert r.status_code == 400 and "unknown hires upscaler" in r.json()["error"], r.text
