"""The A1111 API's pieces without a model: request fields, the request -> Pipeline mapping,
inpainting pre-processing, options, styles and the list endpoints' shapes."""
from __future__ import annotations

import base64
import io
import json
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from stablekit.samplers import SAMPLER_NAMES
from stablekit.serve.a1111 import listings
from stablekit.serve.a1111 import options as opts
from stablekit.serve.a1111.fields import PayloadError, normalize
from stablekit.serve.a1111.images import crop_region, decode_image, fill_masked, prepare_mask
from stablekit.serve.a1111.info import build_info
from stablekit.serve.a1111.plan import build
from stablekit.serve.settings import ServeSettings
from stablekit.serve.state import ModelManager


@pytest.fixture()
def state(tmp_path):
    settings = ServeSettings(data_dir=tmp_path)
    return SimpleNamespace(settings=settings, models=ModelManager(settings))


def b64png(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_normalize_fills_a1111_defaults_and_coerces_types():
    req = normalize("txt2img", {"prompt": "a star", "steps": "12", "cfg_scale": 5, "seed": 3.0,
                                "enable_hr": "true", "width": None, "unknown_field": 1})
    assert req["steps"] == 12 and req["cfg_scale"] == 5.0 and req["seed"] == 3 and req["enable_hr"] is True
    assert req["width"] == 512 and req["sampler_index"] == "Euler" and req["n_iter"] == 1
    assert "unknown_field" not in req
    assert normalize("img2img", {})["denoising_strength"] == 0.75


@pytest.mark.parametrize("body, words", [
    ([1, 2], "JSON object"), ({"steps": "many"}, "steps"), ({"cfg_scale": "nan"}, "cfg_scale"),
    ({"prompt": 5}, "prompt"), ({"styles": "x"}, "styles"), ({"enable_hr": 2}, "enable_hr"),
    ({"seed": True}, "seed"), ({"override_settings": []}, "override_settings"),
])
def test_normalize_refuses_wrong_types_in_one_line(body, words):
    with pytest.raises(PayloadError) as info:
        normalize("txt2img", body)
    assert words in str(info.value) and "\n" not in str(info.value) and info.value.status == 422


def test_plan_maps_a1111_fields_onto_pipeline_settings(state):
    req = normalize("txt2img", {"prompt": "p", "negative_prompt": "n", "sampler_name": "DPM++ 2M Karras",
                                "steps": 7, "cfg_scale": 4.5, "width": 70, "height": 64, "batch_size": 2, "n_iter": 3,
                                "seed_resize_from_w": -1, "override_settings": {"CLIP_stop_at_last_layers": 2},
                                "enable_hr": True, "hr_resize_x": 140, "hr_second_pass_steps": 3,
                                "denoising_strength": 0.4, "hr_upscaler": "None"})
    plan = build("txt2img", req, state)
    s = plan.settings
    assert (s["sampler"], s["schedule"]) == ("DPM++ 2M", "Karras")  # the pre-1.9 label split
    assert (s["width"], s["height"], s["cfg"], s["clip_skip"], s["seed_resize_from_w"]) == (64, 64, 4.5, 2, 0)
    assert plan.n_iter == 3 and s["batch_size"] == 2 and s["negative_prompt"] == "n"
    assert plan.checkpoint == "shapes.safetensors"
    h = plan.hires
    assert (h.scale, h.steps, h.denoise, h.upscaler) == (140 / 64, 3, 0.4, "Lanczos")


@pytest.mark.parametrize("body, status, words", [
    ({"sampler_name": "nope"}, 404, "unknown sampler"),
    ({"scheduler": "beta"}, 422, "unknown schedule"),
    ({"override_settings": {"sd_model_checkpoint": "missing.safetensors"}}, 404, "unknown checkpoint"),
    ({"override_settings": {"sd_vae": "other.safetensors"}}, 422, "sd_vae"),
    ({"tiling": True}, 422, "tiling"),
    ({"script_name": "x/y/z plot"}, 422, "Script"),
    ({"alwayson_scripts": {"ControlNet": {"args": []}}}, 422, "ControlNet"),
    ({"enable_hr": True, "hr_resize_x": 1024, "hr_resize_y": 300}, 422, "aspect ratio"),
    ({"enable_hr": True, "hr_sampler_name": "DDIM"}, 422, "hr_sampler_name"),
    ({"enable_hr": True, "hr_upscaler": "ESRGAN_4x"}, 422, "upscaler"),
    ({"steps": 0}, 422, "steps"), ({"cfg_scale": -1}, 422, "cfg_scale"), ({"n_iter": 0}, 422, "n_iter"),
    ({"subseed_strength": 2}, 422, "subseed_strength"), ({"width": 100000}, 422, "width"),
    ({"seed": 2**70}, 422, "seed"), ({"width": 4096, "height": 4096, "batch_size": 2}, 422, "batch_size"),
    ({"enable_hr": True, "width": 2048, "height": 2048, "hr_scale": 4}, 422, "hires fix"),
])
def test_plan_refuses_what_stablekit_cannot_do(state, body, status, words):
    with pytest.raises(PayloadError) as info:
        build("txt2img", normalize("txt2img", body), state)
    assert info.value.status == status and words in str(info.value), str(info.value)


def test_img2img_plan_decodes_inputs_and_refuses_unsupported(state):
    image = Image.new("RGB", (40, 24), (200, 10, 10))
    mask = Image.new("L", (40, 24), 0)
    mask.paste(255, (8, 8, 16, 16))
    req = normalize("img2img", {"init_images": ["data:image/png;base64," + b64png(image)], "mask": b64png(mask),
                                "width": 64, "height": 32, "inpaint_full_res": False, "inpainting_fill": 1,
                                "mask_blur": 0, "denoising_strength": 0.5})
    plan = build("img2img", req, state)
    assert plan.mode == "inpaint" and plan.init.size == (64, 32) and plan.mask.size == (64, 32)
    assert plan.strength == 0.5 and plan.box is None
    for body, status, words in [({}, 404, "Init image"), ({"init_images": ["AAAA"]}, 422, "init_images[0]"),
                                ({"init_images": [b64png(image)] * 2}, 422, "one init image"),
                                ({"init_images": [b64png(image)], "resize_mode": 2}, 422, "resize_mode"),
                                ({"init_images": [b64png(image)], "inpainting_fill": 2}, 422, "inpainting_fill"),
                                ({"init_images": ["http://x/y.png"]}, 422, "URL"),
                                ({"init_images": [b64png(image)], "denoising_strength": 1.5}, 422, "denoising")]:
        with pytest.raises(PayloadError) as info:
            build("img2img", normalize("img2img", body), state)
        assert info.value.status == status and words in str(info.value), str(info.value)


def test_only_masked_crops_the_masked_region_at_the_output_aspect(state):
    mask = Image.new("L", (100, 100), 0)
    mask.paste(255, (40, 45, 50, 55))
    assert crop_region(mask, 0, 64, 64) == (40, 45, 50, 55)
    assert crop_region(mask, 5, 128, 64) == (25, 40, 65, 60)  # 2:1, padded by 5
    assert crop_region(Image.new("L", (10, 10), 0), 4, 8, 8) is None
    image = Image.new("RGB", (64, 64), (0, 0, 255))
    small = Image.new("L", (64, 64), 0)
    small.paste(255, (24, 28, 34, 38))
    req = normalize("img2img", {"init_images": [b64png(image)], "mask": b64png(small), "width": 64, "height": 64,
                                "inpaint_full_res_padding": 10, "mask_blur": 0})
    plan = build("img2img", req, state)
    assert plan.box == (14, 18, 44, 48) and plan.init.size == (64, 64) and plan.original.size == (64, 64)
    assert plan.mask.getpixel((32, 32)) == 255 and plan.mask.getpixel((0, 0)) == 0  # the crop, scaled up


def test_fill_and_mask_preparation_follow_a1111():
    image = Image.new("RGB", (32, 32), (10, 200, 30))
    image.paste((255, 255, 255), (12, 12, 20, 20))
    mask = Image.new("L", (32, 32), 0)
    mask.paste(255, (12, 12, 20, 20))
    filled = np.asarray(fill_masked(image, mask)).astype(int)
    assert np.abs(filled[16, 16] - [10, 200, 30]).max() <= 2  # the hole takes its surroundings' colour
    assert (filled[0, 0] == [10, 200, 30]).all()  # outside the mask: unchanged
    prepared = prepare_mask(mask.convert("RGB"), (64, 64), True, 0, 0)
    assert prepared.size == (64, 64) and prepared.getpixel((0, 0)) == 255 and prepared.getpixel((32, 32)) == 0
    with pytest.raises(PayloadError):
        decode_image("not base64 at all!", "mask")


def test_options_store_styles_and_clip_skip(state):
    (state.settings.data_dir / "styles.csv").write_text(
        'name,prompt,negative_prompt\nsharp,"{prompt}, sharp focus",blurry\nplain,"on white",\n', encoding="utf-8")
    assert opts.apply_styles(state, "a star", "", ["sharp", "plain", "unknown"]) == \
        ("a star, sharp focus, on white", "blurry")
    assert [s["name"] for s in listings.prompt_styles(state)] == ["sharp", "plain"]
    opts.set_options(state, {"CLIP_stop_at_last_layers": 3, "some_extension_option": "kept"})
    got = opts.get_options(state)
    assert got["CLIP_stop_at_last_layers"] == 3 and got["some_extension_option"] == "kept"
    assert got["sd_model_checkpoint"] == "shapes (embedded)"
    plan = build("txt2img", normalize("txt2img", {"styles": ["sharp"], "prompt": "x"}), state)
    assert plan.settings["clip_skip"] == 3 and plan.prompt == "x, sharp focus"
    for bad in ({"CLIP_stop_at_last_layers": 0}, {"sd_model_checkpoint": "nope"}, {"sd_vae": "x.pt"}, ["x"]):
        with pytest.raises(PayloadError):
            opts.set_options(state, bad)
    assert opts.get_options(state)["CLIP_stop_at_last_layers"] == 3  # a refused change changes nothing


def test_list_endpoints_use_a1111_shapes_and_stablekit_names(state):
    names = [s["name"] for s in listings.samplers()]
    assert names == list(SAMPLER_NAMES)
    euler_a = listings.samplers()[names.index("Euler a")]
    assert "euler_ancestral" in euler_a["aliases"] and set(euler_a) == {"name", "aliases", "options"}
    sched = {s["name"]: s for s in listings.schedulers()}
    assert sched["karras"]["label"] == "Karras" and sched["automatic"]["label"] == "Automatic"
    assert {"name", "label", "aliases", "default_rho", "need_inner_model"} == set(sched["karras"])
    models = listings.sd_models(state)
    assert models[0]["title"] == "shapes (embedded)" and models[0]["filename"].endswith("shapes.safetensors")
    assert set(models[0]) == {"title", "model_name", "hash", "sha256", "filename", "config"}
    assert "Latent (bicubic)" in [m["name"] for m in listings.latent_upscale_modes()]
    assert [u["name"] for u in listings.upscalers()][:2] == ["None", "Lanczos"]
    assert listings.embeddings(state) == {"loaded": {}, "skipped": {}}
    assert listings.scripts() == {"txt2img": [], "img2img": []}
    assert set(listings.memory()) == {"ram", "cuda"}


def test_info_is_a1111_processed_js(state):
    plan = build("txt2img", normalize("txt2img", {"prompt": "p", "seed": 4, "batch_size": 2}), state)
    texts = ["p\nSteps: 50, Sampler: Euler, Schedule type: Automatic, CFG scale: 7, Seed: 4, Size: 512x512, Lora hashes: \"a: 1\"",
             "p\nSteps: 50, Sampler: Euler, Schedule type: Automatic, CFG scale: 7, Seed: 5, Size: 512x512"]
    info = json.loads(build_info(plan, texts, [4, 5], [9, 10]))
    assert info["all_seeds"] == [4, 5] and info["seed"] == 4 and info["infotexts"] == texts
    assert info["all_prompts"] == ["p", "p"] and info["sampler_name"] == "Euler" and info["cfg_scale"] == 7
    assert info["extra_generation_params"] == {"Lora hashes": "a: 1"}
    for key in ("subseed", "all_subseeds", "width", "height", "steps", "batch_size", "restore_faces",
                "sd_model_hash", "denoising_strength", "index_of_first_image", "styles", "job_timestamp", "clip_skip"):
        assert key in info
