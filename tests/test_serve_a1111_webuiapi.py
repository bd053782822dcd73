"""The real A1111 client, the `webuiapi` package, unchanged against a real uvicorn server on a free
loopback port (tiny test model; the same app `stablekit serve` runs)."""
from __future__ import annotations

import pytest
from PIL import Image
from serve_fixtures import UvicornThread, use_tiny_model

from stablekit.serve.app import create_app
from stablekit.serve.settings import ServeSettings

webuiapi = pytest.importorskip("webuiapi")


def test_webuiapi_client_works_unchanged(tmp_path):
    import requests

    app = create_app(ServeSettings(data_dir=tmp_path, api_auth=[("ann", "secret")]))  # A1111's --api-auth
    use_tiny_model(app.state.stablekit)
    with UvicornThread(app) as server:
        assert requests.get(f"{server.url}/sdapi/v1/sd-models", timeout=30).status_code == 401
        api = webuiapi.WebUIApi(host="127.0.0.1", port=server.port, sampler="Euler a", steps=3,
                                username="ann", password="secret")

        result = api.txt2img(prompt="a red star", negative_prompt="blue", seed=11, width=64, height=64,
                             batch_size=2, cfg_scale=6)
        assert len(result.images) == 2 and result.images[0].size == (64, 64)
        assert result.info["all_seeds"] == [11, 12] and result.info["sampler_name"] == "Euler a"
        assert result.parameters["prompt"] == "a red star"
        text = result.images[1].info["parameters"]
        assert text == result.info["infotexts"][1] and "Seed: 12" in text and "CFG scale: 6" in text

        info = api.png_info(result.images[1])  # webuiapi re-encodes the PIL image with its text chunks
        assert info.info == text and info.parameters["Seed"] == "12" and info.parameters["Sampler"] == "Euler a"

        start = Image.new("RGB", (64, 64), (200, 40, 40))
        mask = Image.new("L", (64, 64), 0)
        mask.paste(255, (8, 8, 40, 40))
        out = api.img2img(images=[start], prompt="a circle", width=64, height=64, denoising_strength=0.6, seed=3)
        assert out.images[0].size == (64, 64) and out.info["denoising_strength"] == 0.6
        out = api.img2img(images=[start], mask_image=mask, prompt="a circle", width=64, height=64, seed=3)
        assert out.images[0].convert("RGB").getpixel((60, 60)) == (200, 40, 40)  # outside the mask: kept

        titles = [m["title"] for m in api.get_sd_models()]
        assert titles[0] == "shapes (embedded)" and api.util_get_model_names() == sorted(titles)
        assert "Euler a" in api.util_get_sampler_names() and "karras" in api.util_get_scheduler_names()
        api.util_set_model("shapes (embedded)")
        assert api.util_get_current_model() == "shapes (embedded)"
        api.set_options({"CLIP_stop_at_last_layers": 2})
        assert api.get_options()["CLIP_stop_at_last_layers"] == 2
        assert "Clip skip: 2" in api.txt2img(prompt="x", width=64, height=64, seed=1).info["infotexts"][0]

        for call in (api.get_upscalers, api.get_latent_upscale_modes, api.get_loras, api.get_prompt_styles,
                     api.get_embeddings, api.get_memory, api.get_cmd_flags, api.get_sd_vae, api.get_scripts,
                     api.get_schedulers, api.get_progress, api.refresh_checkpoints, api.interrupt, api.skip):
            call()  # each raises on a non-JSON or failed answer
        api.util_wait_for_ready(check_interval=0.1)
        with pytest.raises(RuntimeError, match="404"):
            api.txt2img(prompt="x", sampler_name="no such sampler", width=64, height=64)
