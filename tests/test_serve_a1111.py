"""The A1111 /sdapi/v1 API over HTTP (FastAPI TestClient, real app, real queue and workers) on the
tiny test model: responses in A1111's shapes, images equal to stablekit's own generation, progress,
interrupt, options, async jobs and bad payloads."""
from __future__ import annotations

import base64
import io
import json
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from serve_fixtures import tiny_pipeline, use_tiny_model

from stablekit.serve.app import create_app
from stablekit.serve.settings import ServeSettings

FAST = {"steps": 3, "width": 64, "height": 64, "sampler_name": "Euler a", "cfg_scale": 5}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    from fixtures import tiny_ldm_file

    models = tmp_path_factory.mktemp("models")
    (models / "checkpoints").mkdir()
    tiny_ldm_file("sd1", models / "checkpoints" / "other.safetensors", seed=1)
    app = create_app(ServeSettings(data_dir=tmp_path_factory.mktemp("a1111"), models_dir=models))
    use_tiny_model(app.state.stablekit)
    with TestClient(app) as c:
        yield c


def pixels(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB"))


def b64png(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def wait_done(client, job_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(f"/sdapi/v1/jobs/{job_id}").json()
        if body["status"] in ("done", "failed", "cancelled"):
            return body
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} not finished after {timeout} s")


def test_txt2img_returns_a1111_response_with_stablekit_images(client):
    r = client.post("/sdapi/v1/txt2img", json={**FAST, "prompt": "a red star", "seed": 7, "batch_size": 2,
                                                "n_iter": 2, "negative_prompt": "blue"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"images", "parameters", "info"} and len(body["images"]) == 4
    info = json.loads(body["info"])
    assert info["all_seeds"] == [7, 8, 9, 10] and info["seed"] == 7 and info["sampler_name"] == "Euler a"
    assert info["negative_prompt"] == "blue" and info["batch_size"] == 2 and len(info["infotexts"]) == 4
    # the echo carries every A1111 field with its default
    assert body["parameters"]["prompt"] == "a red star" and body["parameters"]["sampler_index"] == "Euler"
    assert body["parameters"]["enable_hr"] is False and body["parameters"]["n_iter"] == 2
    # each PNG carries its own infotext, and the pixels are stablekit's for the same settings
    for i, b64 in enumerate(body["images"]):
        with Image.open(io.BytesIO(base64.b64decode(b64))) as im:
            assert im.format == "PNG" and im.info["parameters"] == info["infotexts"][i]
    assert "Seed: 9, Size: 64x64" in info["infotexts"][2] and "Negative prompt: blue" in info["infotexts"][0]
    pipe = tiny_pipeline()
    second = pipe.generate("a red star", negative_prompt="blue", steps=3, cfg=5, sampler="Euler a", seed=9,
                           width=64, height=64, batch_size=2)
    for got, want in zip(body["images"][2:], second):
        assert np.array_equal(pixels(got), np.asarray(want))


def test_png_info_round_trip(client):
    body = client.post("/sdapi/v1/txt2img", json={**FAST, "prompt": "a, b: c", "seed": 3}).json()
    r = client.post("/sdapi/v1/png-info", json={"image": "data:image/png;base64," + body["images"][0]})
    assert r.status_code == 200
    got = r.json()
    assert got["info"] == json.loads(body["info"])["infotexts"][0]
    assert got["parameters"]["Prompt"] == "a, b: c" and got["parameters"]["Seed"] == "3"
    assert "stablekit" in got["items"]
    assert client.post("/sdapi/v1/png-info", json={"image": ""}).json()["info"] == ""


def test_img2img_and_inpainting_keep_unmasked_pixels(client):
    start = Image.new("RGB", (64, 64), (20, 120, 220))
    r = client.post("/sdapi/v1/img2img", json={**FAST, "init_images": [b64png(start)], "denoising_strength": 0.5,
                                                "seed": 1, "include_init_images": False})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["parameters"]["init_images"] is None
    assert "Denoising strength: 0.5" in json.loads(body["info"])["infotexts"][0]
    assert pixels(body["images"][0]).shape == (64, 64, 3)
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    r = client.post("/sdapi/v1/img2img", json={**FAST, "init_images": [b64png(start)], "mask": b64png(mask),
                                                "mask_blur": 0, "inpainting_fill": 1, "inpaint_full_res": False,
                                                "denoising_strength": 1.0, "seed": 2})
    assert r.status_code == 200, r.text
    out = pixels(r.json()["images"][0])
    keep = np.asarray(mask) == 0
    assert (out[keep] == [20, 120, 220]).all() and not (out[~keep] == [20, 120, 220]).all()
    # "Only masked" (A1111's default): the region is rendered at full size and pasted back
    r = client.post("/sdapi/v1/img2img", json={**FAST, "init_images": [b64png(start)], "mask": b64png(mask),
                                                "mask_blur": 0, "inpaint_full_res": True, "seed": 2})
    out = pixels(r.json()["images"][0])
    assert r.status_code == 200 and (out[:8] == [20, 120, 220]).all() and not (out[~keep] == [20, 120, 220]).all()


def test_options_switch_checkpoint_and_clip_skip(client):
    options = client.get("/sdapi/v1/options").json()
    assert options["sd_model_checkpoint"] == "shapes (embedded)"
    assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "missing"}).status_code == 404
    assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "shapes (embedded)",
                                                   "CLIP_stop_at_last_layers": 2}).status_code == 200
    info = json.loads(client.post("/sdapi/v1/txt2img", json={**FAST, "seed": 1}).json()["info"])
    assert info["clip_skip"] == 2 and "Clip skip: 2" in info["infotexts"][0]
    over = {**FAST, "override_settings": {"CLIP_stop_at_last_layers": 1}}
    assert "Clip skip" not in json.loads(client.post("/sdapi/v1/txt2img", json=over).json()["info"])["infotexts"][0]
    client.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 1})


def test_switching_checkpoints_by_options_and_per_request(client):
    titles = [m["title"] for m in client.get("/sdapi/v1/sd-models").json()]
    assert titles == ["shapes (embedded)", "other.safetensors"]
    first = client.post("/sdapi/v1/txt2img", json={**FAST, "seed": 4}).json()
    assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "other"}).status_code == 200
    assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == "other.safetensors"
    other = client.post("/sdapi/v1/txt2img", json={**FAST, "seed": 4}).json()
    assert not np.array_equal(pixels(first["images"][0]), pixels(other["images"][0]))  # other weights
    back = client.post("/sdapi/v1/txt2img", json={
        **FAST, "seed": 4, "override_settings": {"sd_model_checkpoint": "shapes (embedded)"}}).json()
    assert np.array_equal(pixels(first["images"][0]), pixels(back["images"][0]))
    assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == "other.safetensors"  # restored
    client.post("/sdapi/v1/txt2img", json={**FAST, "override_settings_restore_afterwards": False,
                                           "override_settings": {"sd_model_checkpoint": "shapes (embedded)"}})
    assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == "shapes (embedded)"  # kept


def test_hires_fix_through_the_api(client):
    r = client.post("/sdapi/v1/txt2img", json={**FAST, "seed": 2, "enable_hr": True, "hr_scale": 2,
                                                "hr_second_pass_steps": 2, "denoising_strength": 0.5,
                                                "hr_upscaler": "Latent (nearest)"})
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert pixels(r.json()["images"][0]).shape == (128, 128, 3)
    assert "Hires upscale: 2" in info["infotexts"][0] and "Hires upscaler: Latent (nearest)" in info["infotexts"][0]
    assert info["denoising_strength"] == 0.5 and info["extra_generation_params"]["Hires steps"] == "2"


def test_list_endpoints_answer_in_a1111_shapes(client):
    for path, kind in [("samplers", list), ("schedulers", list), ("upscalers", list), ("latent-upscale-modes", list),
                       ("sd-models", list), ("sd-vae", list), ("loras", list), ("embeddings", dict),
                       ("prompt-styles", list), ("scripts", dict), ("memory", dict), ("cmd-flags", dict),
                       ("progress", dict)]:
        r = client.get(f"/sdapi/v1/{path}")
        assert r.status_code == 200 and isinstance(r.json(), kind), path
    assert client.get("/sdapi/v1/sd-models").json()[0]["title"] == "shapes (embedded)"
    assert client.post("/sdapi/v1/refresh-checkpoints").status_code == 200


def test_async_job_progress_and_interrupt(client):
    client.post("/sdapi/v1/options", json={"show_progress_every_n_steps": 1})
    r = client.post("/sdapi/v1/txt2img/async", json={**FAST, "steps": 400, "n_iter": 3, "seed": 5})
    job_id = r.json()["job_id"]
    deadline, seen = time.monotonic() + 120, None
    while time.monotonic() < deadline:
        p = client.get("/sdapi/v1/progress").json()
        if p["state"]["sampling_step"] >= 2 and p["current_image"]:
            seen = p
            break
        time.sleep(0.05)
    assert seen is not None, "no progress with a preview seen"
    assert seen["state"]["job_count"] == 3 and seen["state"]["sampling_steps"] == 400
    assert 0 < seen["progress"] <= 1 and seen["eta_relative"] >= 0 and seen["state"]["job_id"] == job_id
    assert Image.open(io.BytesIO(base64.b64decode(seen["current_image"]))).size == (64, 64)
    assert client.post("/sdapi/v1/interrupt").status_code == 200
    done = wait_done(client, job_id)
    assert done["status"] == "done" and json.loads(done["result"]["info"])["interrupted"] is True
    assert len(done["result"]["images"]) < 3
    client.post("/sdapi/v1/options", json={"show_progress_every_n_steps": 10})
    idle = client.get("/sdapi/v1/progress").json()
    assert idle["progress"] == 0 and idle["state"]["job_count"] == 0 and idle["current_image"] is None
    r = client.post("/sdapi/v1/img2img/async", json={**FAST, "init_images": [b64png(Image.new("RGB", (64, 64)))]})
    assert wait_done(client, r.json()["job_id"])["result"]["images"]
    assert client.get("/sdapi/v1/jobs/0123").status_code == 404


def test_skip_ends_the_current_batch_only(client):
    job_id = client.post("/sdapi/v1/txt2img/async", json={**FAST, "steps": 300, "n_iter": 3, "seed": 5}).json()["job_id"]

    def wait_for(cond):
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            state = client.get("/sdapi/v1/progress?skip_current_image=true").json()["state"]
            if state["job_id"] == job_id and cond(state):
                return state
            time.sleep(0.05)
        raise AssertionError("progress never got there")

    wait_for(lambda s: s["job_no"] == 0 and s["sampling_step"] >= 2)
    assert client.post("/sdapi/v1/skip").status_code == 200
    wait_for(lambda s: s["job_no"] == 1 and s["sampling_step"] >= 2)  # the job goes on with its next batch
    assert client.post("/sdapi/v1/skip").status_code == 200  # each skip ends one batch (the flag is consumed)
    wait_for(lambda s: s["job_no"] == 2)
    assert client.delete(f"/sdapi/v1/jobs/{job_id}").json()["cancelled"] is True  # interrupt that one too
    done = wait_done(client, job_id)
    info = json.loads(done["result"]["info"])
    assert done["status"] == "done" and done["result"]["images"] == [] and info["interrupted"] is True


@pytest.mark.parametrize("path, body", [
    ("txt2img", b"{oops"), ("txt2img", b"[1, 2]"), ("txt2img", b'{"steps": "x"}'), ("txt2img", b'{"width": -64}'),
    ("txt2img", b'{"sampler_name": "Euler z"}'), ("txt2img", b'{"alwayson_scripts": {"ADetailer": {}}}'),
    ("img2img", b'{"prompt": "x"}'), ("img2img", b'{"init_images": ["!!"]}'), ("png-info", b'{"image": 5}'),
    ("png-info", b'{"image": "aGVsbG8="}'), ("options", b'{"sd_vae": "x.safetensors"}'), ("options", b"3"),
])
def test_bad_payloads_get_one_line_4xx(client, path, body):
    r = client.post(f"/sdapi/v1/{path}", content=body, headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    detail = r.json()["detail"]
    assert isinstance(detail, str) and detail and "\n" not in detail and "Traceback" not in detail


def test_async_routes_take_an_idempotency_key(client):
    key = {"Idempotency-Key": "retry-me-1"}
    first = client.post("/sdapi/v1/txt2img/async", json={**FAST, "seed": 9}, headers=key).json()
    again = client.post("/sdapi/v1/txt2img/async", json={**FAST, "seed": 9}, headers=key).json()
    assert first["job_id"] == again["job_id"] == "retry-me-1" and first["number"] == again["number"]
    other = client.post("/sdapi/v1/img2img/async", json={**FAST, "init_images": [b64png(Image.new("RGB", (64, 64)))]},
                        headers=key)
    assert other.status_code == 409  # the key names a job of another kind
    bad = client.post("/sdapi/v1/txt2img/async", json=FAST, headers={"Idempotency-Key": "../x"})
    assert bad.status_code == 422 and "Idempotency-Key" in bad.json()["detail"]
    assert wait_done(client, "retry-me-1")["status"] == "done"
