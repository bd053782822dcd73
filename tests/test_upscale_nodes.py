"""ComfyUI's upscaler nodes (UpscaleModelLoader, ImageUpscaleWithModel) in the node engine and through
the server's /object_info and /prompt, on tiny random-weight ESRGAN-family files."""
from __future__ import annotations

import io
import time

import numpy as np
import pytest
import torch
from PIL import Image
from test_upscale_models import _random, _save, spandrel  # noqa: F401 (spandrel: the reference fixture)

from stablekit.generate.upscale_models import CompactNet, RRDBNet, load_upscaler, upscale_tensor
from stablekit.nodes import Engine, Folders, NodeFailed, WorkflowInvalid, load_node_families
from stablekit.nodes.image import to_uint8
from stablekit.nodes.validate import validate_prompt

X2 = "RealESRGAN_x2plus.pth"  # pixel-unshuffle 2: spandrel pads its input to a multiple of 4
LISTED = [X2, "broken.pth", "sub/4x-Compact.safetensors"]  # .pth/.pt/.safetensors, recursively; not notes.txt


def upscale_graph(model_name: str = X2, image: str = "in.png") -> dict:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": image}},
        "2": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": model_name}},
        "3": {"class_type": "ImageUpscaleWithModel", "inputs": {"upscale_model": ["2", 0], "image": ["1", 0]}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "up"}},
    }


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("upscale-nodes")
    ups = root / "models" / "upscale_models"
    ups.mkdir(parents=True)
    (root / "input").mkdir()
    _save(ups / X2, _random(RRDBNet(3, 3, 16, 1, 32, 2, shuffle=2), seed=5), "params_ema")
    (ups / "sub").mkdir()
    _save(ups / "sub" / "4x-Compact.safetensors", _random(CompactNet(3, 3, 8, 2, 4), seed=6))
    (ups / "notes.txt").write_text("not a model")
    (ups / "broken.pth").write_bytes(b"not a pickle")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (13, 10, 3), dtype=np.uint8)).save(root / "input" / "in.png")
    return root


def _folders(root) -> Folders:
    return Folders(root / "models", root / "input", root / "output")


def _input(root) -> torch.Tensor:
    return torch.from_numpy(np.asarray(Image.open(root / "input" / "in.png"), dtype=np.float32) / 255)[None]


def test_nodes_have_comfyuis_names_inputs_and_outputs(dirs):
    nodes = load_node_families()
    loader, upscale = nodes["UpscaleModelLoader"], nodes["ImageUpscaleWithModel"]
    assert loader.INPUT_TYPES(_folders(dirs)) == {"required": {"model_name": (LISTED,)}}
    assert (loader.RETURN_TYPES, loader.FUNCTION, loader.CATEGORY) == (("UPSCALE_MODEL",), "load_model", "loaders")
    assert upscale.INPUT_TYPES(Folders()) == {"required": {"upscale_model": ("UPSCALE_MODEL",), "image": ("IMAGE",)}}
    assert (upscale.RETURN_TYPES, upscale.FUNCTION, upscale.CATEGORY) == (("IMAGE",), "upscale", "image/upscaling")


def test_workflow_upscales_as_comfyui_runs_the_model(dirs, spandrel):  # noqa: F811
    engine = Engine(_folders(dirs))
    result = engine.run(upscale_graph())
    assert sorted(result.executed) == ["1", "2", "3", "4"]
    (saved,) = result.images()
    got = np.asarray(Image.open(engine.folders.output / saved["filename"]))
    path = dirs / "models" / "upscale_models" / X2
    ours = upscale_tensor(load_upscaler(path), _input(dirs))
    assert ours.shape == (1, 26, 20, 3) and np.array_equal(got, to_uint8(ours[0]))
    # ComfyUI's call: spandrel's descriptor on the RGB floats (it pads 13x10 to 16x12), clamped
    theirs = spandrel.ModelLoader().load_from_file(str(path))
    with torch.inference_mode():
        expected = theirs(_input(dirs).movedim(-1, 1)).clamp(0, 1).movedim(1, -1)
    assert torch.allclose(ours, expected, atol=1e-5, rtol=0) and ours.std() > 0.01
    # the RGB floats as they are: not A1111's 8-bit BGR pass (upscale_with_model)
    from stablekit.generate.upscale_models import upscale_with_model

    a1111 = np.asarray(upscale_with_model(load_upscaler(path), Image.open(dirs / "input" / "in.png"), 20, 26))
    assert not np.array_equal(a1111, got)
    # a second run reuses every node; a model in a subfolder, 4x, runs too
    assert engine.run(upscale_graph()).executed == []
    sub = engine.run(upscale_graph("sub/4x-Compact.safetensors"))
    assert sub.executed == ["2", "3", "4"]


def test_alpha_channel_is_resized_bilinearly():
    model = CompactNet(3, 3, 4, 1, 2)
    rgba = torch.rand(2, 5, 7, 4, generator=torch.Generator().manual_seed(3))
    out = upscale_tensor(model, rgba)
    assert out.shape == (2, 10, 14, 4)
    assert torch.equal(out[..., :3], upscale_tensor(model, rgba[..., :3]))
    alpha = torch.nn.functional.interpolate(rgba[..., 3:].movedim(-1, 1), size=(10, 14), mode="bilinear")
    assert torch.equal(out[..., 3:], alpha.movedim(1, -1))


def test_a_missing_model_file_is_comfyuis_node_error(dirs):
    engine = Engine(_folders(dirs))
    ok, error, good, node_errors, _ = validate_prompt(upscale_graph("4x-Missing.pth"), engine.folders)
    assert not ok and error["type"] == "prompt_outputs_failed_validation" and good == []
    assert list(node_errors) == ["2"]
    entry = node_errors["2"]
    assert entry["class_type"] == "UpscaleModelLoader" and entry["dependent_outputs"] == ["4"]
    (err,) = entry["errors"]
    assert err["type"] == "value_not_in_list" and err["details"].startswith("model_name: '4x-Missing.pth' not in")
    assert err["extra_info"]["input_name"] == "model_name"
    with pytest.raises(WorkflowInvalid) as raised:
        engine.run(upscale_graph("../upscale_models/" + X2))  # no path tricks: only listed names
    assert "\n" not in str(raised.value) and raised.value.response["node_errors"]["2"]["errors"][0]["type"] == \
        "value_not_in_list"


def test_a_file_that_is_no_upscaler_fails_in_one_line(dirs):
    broken = upscale_graph()
    broken["2"]["inputs"]["model_name"] = "broken.pth"
    with pytest.raises(NodeFailed, match="node 2 \\(UpscaleModelLoader\\): .*broken.pth") as raised:
        Engine(_folders(dirs)).run(broken)
    assert "\n" not in str(raised.value)


def test_server_lists_the_models_and_runs_the_workflow(dirs, tmp_path):
    from fastapi.testclient import TestClient

    from stablekit.serve.app import create_app
    from stablekit.serve.settings import ServeSettings

    app = create_app(ServeSettings(data_dir=tmp_path, models_dir=dirs / "models", workers=1))
    with TestClient(app) as client:
        info = client.get("/object_info/UpscaleModelLoader").json()["UpscaleModelLoader"]
        assert info["input"]["required"]["model_name"] == [LISTED]
        assert (info["output"], info["display_name"]) == (["UPSCALE_MODEL"], "Load Upscale Model")
        up = client.get("/object_info/ImageUpscaleWithModel").json()["ImageUpscaleWithModel"]
        assert up["input_order"] == {"required": ["upscale_model", "image"]} and up["output"] == ["IMAGE"]
        assert client.get("/models/upscale_models").json() == LISTED
        # a missing file: 400 with ComfyUI's node_errors
        r = client.post("/prompt", json={"prompt": upscale_graph("4x-Missing.pth")})
        assert r.status_code == 400 and r.json()["node_errors"]["2"]["errors"][0]["type"] == "value_not_in_list"
        # the upload, the run through the queue, the saved image
        with open(dirs / "input" / "in.png", "rb") as f:
            assert client.post("/upload/image", files={"image": ("in.png", f, "image/png")}).status_code == 200
        prompt_id = client.post("/prompt", json={"prompt": upscale_graph()}).json()["prompt_id"]
        deadline = time.monotonic() + 120
        while not (history := client.get(f"/history/{prompt_id}").json()):
            assert time.monotonic() < deadline, "the prompt did not finish"
            time.sleep(0.1)
        (image,) = history[prompt_id]["outputs"]["4"]["images"]
        png = client.get("/view", params=image).content
    path = dirs / "models" / "upscale_models" / X2
    expected = to_uint8(upscale_tensor(load_upscaler(path), _input(dirs))[0])
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), expected)
