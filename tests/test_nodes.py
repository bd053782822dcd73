"""The node engine: registry, validation in ComfyUI's shape, the cache, and the node families."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from stablekit.nodes import NODE_CLASS_MAPPINGS, Engine, Folders, NodeFailed, WorkflowInvalid, register
from stablekit.nodes.executor import Interrupted
from stablekit.nodes.registry import load_node_families
from stablekit.nodes.sampling import resolve, schedule
from stablekit.nodes.validate import validate_prompt

COMFY_NODES = ("CheckpointLoaderSimple CLIPTextEncode CLIPSetLastLayer EmptyLatentImage KSampler KSamplerAdvanced "
               "VAEDecode VAEEncode VAEEncodeForInpaint SetLatentNoiseMask LatentUpscale LatentUpscaleBy ImageScale "
               "ImageScaleBy LoadImage LoadImageMask SaveImage PreviewImage LoraLoader VAELoader ControlNetLoader "
               "ControlNetApply ControlNetApplyAdvanced").split()


def graph(**changes) -> dict:
    """ComfyUI's default graph on the embedded model, 64 px, 4 steps."""
    g = {
        "3": {"class_type": "KSampler", "inputs": {"cfg": 8, "denoise": 1, "latent_image": ["5", 0], "model": ["4", 0],
                                                   "negative": ["7", 0], "positive": ["6", 0], "sampler_name": "euler",
                                                   "scheduler": "normal", "seed": 1, "steps": 4}},
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "shapes.safetensors"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"batch_size": 1, "height": 64, "width": 64}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["4", 1], "text": "a red circle"}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["4", 1], "text": ""}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "t", "images": ["8", 0]}},
    }
    for key, value in changes.items():
        node, _, name = key.partition("__")
        if name:
            g[node]["inputs"][name] = value
        elif value is None:
            del g[node]
        else:
            g[node] = value
    return g


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("nodes")
    for name in ("models", "input", "output"):
        (root / name).mkdir()
    return root


@pytest.fixture(scope="module")
def engine(dirs):
    return Engine(Folders(dirs / "models", dirs / "input", dirs / "output"))


def pixels(engine, result) -> np.ndarray:
    (image,) = result.images()
    return np.asarray(Image.open(engine.folders.output / image["subfolder"] / image["filename"]))


def test_every_required_comfyui_node_is_registered_with_comfyuis_names():
    nodes = load_node_families()
    assert set(COMFY_NODES) <= set(nodes)
    k = nodes["KSampler"].INPUT_TYPES(Folders())["required"]
    assert list(k) == ["model", "seed", "steps", "cfg", "sampler_name", "scheduler", "positive", "negative",
                       "latent_image", "denoise"]
    assert {"euler", "euler_ancestral", "dpmpp_2m", "dpmpp_2m_sde_gpu", "ddim", "uni_pc"} <= set(k["sampler_name"][0])
    assert k["scheduler"][0] == ["normal", "karras", "exponential", "sgm_uniform", "simple", "ddim_uniform"]
    assert nodes["CheckpointLoaderSimple"].RETURN_TYPES == ("MODEL", "CLIP", "VAE")
    assert nodes["LoraLoader"].INPUT_TYPES(Folders())["required"].keys() >= {"strength_model", "strength_clip"}


def test_cache_reruns_only_what_depends_on_a_changed_input(engine):
    first = engine.run(graph())
    assert first.executed == ["5", "4", "7", "6", "3", "8", "9"] and first.cached == []
    before = engine.executions.copy()
    second = engine.run(graph(**{"3__seed": 2}))
    assert second.executed == ["3", "8", "9"] and second.cached == ["5", "4", "7", "6"]
    third = engine.run(graph(**{"3__seed": 2, "6__text": "a blue square"}))
    assert third.executed == ["6", "3", "8", "9"]
    again = engine.run(graph(**{"3__seed": 2, "6__text": "a blue square"}))
    assert again.executed == [] and again.images() == third.images()
    counts = engine.executions - before
    assert counts == {"3": 2, "8": 2, "9": 2, "6": 1}
    assert not np.array_equal(pixels(engine, first), pixels(engine, second))


def _response(prompt, folders=Folders()) -> dict:
    with pytest.raises(WorkflowInvalid) as info:
        Engine(folders).run(prompt)
    assert "\n" not in str(info.value)
    ok, error, good, node_errors, _ = validate_prompt(prompt, folders)
    assert not ok and info.value.response == {"error": error, "node_errors": node_errors}
    return info.value.response


def _only_error(response, node: str) -> dict:
    entry = response["node_errors"][node]
    assert entry["dependent_outputs"] == ["9"] and entry["class_type"] == graph()[node]["class_type"]
    assert response["error"]["type"] == "prompt_outputs_failed_validation"
    (error,) = entry["errors"]
    assert set(error) == {"type", "message", "details", "extra_info"}
    return error


def test_validation_errors_have_comfyuis_shape_and_types():
    missing = graph()
    del missing["3"]["inputs"]["steps"]
    assert _only_error(_response(missing), "3") == {"type": "required_input_missing", "message": "Required input is missing",
                                                    "details": "steps", "extra_info": {"input_name": "steps"}}
    error = _only_error(_response(graph(**{"3__sampler_name": "euler_magic"})), "3")
    assert error["type"] == "value_not_in_list" and error["details"].startswith("sampler_name: 'euler_magic' not in [")
    error = _only_error(_response(graph(**{"8__samples": ["4", 0]})), "8")
    assert error["type"] == "return_type_mismatch"
    assert error["details"] == "samples, received_type(MODEL) mismatch input_type(LATENT)"
    assert _only_error(_response(graph(**{"3__steps": 0})), "3")["type"] == "value_smaller_than_min"
    assert _only_error(_response(graph(**{"3__steps": "many"})), "3")["type"] == "invalid_input_type"
    assert _only_error(_response(graph(**{"3__denoise": float("nan")})), "3")["type"] == "invalid_input_type"
    assert _only_error(_response(graph(**{"3__positive": ["77", 0]})), "3")["type"] == "bad_linked_input"

    unknown = _response(graph(**{"5": {"class_type": "EmptyLatentMagic", "inputs": {}}}))
    assert unknown == {"error": {"type": "invalid_prompt", "message": "Cannot execute because node EmptyLatentMagic "
                                 "does not exist.", "details": "Node ID '#5'", "extra_info": {}}, "node_errors": {}}
    assert _response(graph(**{"9": None}))["error"]["type"] == "prompt_no_outputs"
    assert _response([1, 2])["error"]["type"] == "invalid_prompt"

    cycle = graph(**{"6__clip": ["10", 0]})
    cycle["10"] = {"class_type": "CLIPSetLastLayer", "inputs": {"clip": ["11", 0], "stop_at_clip_layer": -1}}
    cycle["11"] = {"class_type": "CLIPSetLastLayer", "inputs": {"clip": ["10", 0], "stop_at_clip_layer": -1}}
    response = _response(cycle)
    (node,) = response["node_errors"]
    (error,) = response["node_errors"][node]["errors"]
    assert error["type"] == "dependency_cycle" and set(error["extra_info"]["cycle"]) == {"10", "11"}


def test_widget_values_are_converted_as_comfyui_does(engine):
    engine.run(graph())
    result = engine.run(graph(**{"3__steps": "4", "3__cfg": "8", "5__width": 64.0}))
    assert result.executed == []  # "4" -> 4, "8" -> 8.0, 64.0 -> 64: the same signature as before


def test_a_new_node_is_one_small_class(engine):
    @register
    class InvertImageForTest:
        @classmethod
        def INPUT_TYPES(cls, folders=None):
            return {"required": {"image": ("IMAGE",)}}

        RETURN_TYPES = ("IMAGE",)
        FUNCTION = "invert"

        def invert(self, image):
            return (1.0 - image,)

    try:
        base = pixels(engine, engine.run(graph()))
        inverted = graph(**{"9__images": ["10", 0]})
        inverted["10"] = {"class_type": "InvertImageForTest", "inputs": {"image": ["8", 0]}}
        result = engine.run(inverted)
        assert result.executed == ["10", "9"]
        assert np.abs(pixels(engine, result).astype(int) - (255 - base.astype(int))).max() <= 1
    finally:
        del NODE_CLASS_MAPPINGS["InvertImageForTest"]


def test_comfyui_denoise_and_advanced_step_semantics(engine):
    import stablekit

    d = stablekit.load(progress=False).denoiser
    sampling = resolve("euler", "karras")
    assert torch.equal(schedule(sampling, 10, 0.5, d), sampling.sigmas(20, d)[-11:])
    assert len(schedule(sampling, 10, 0.0, d)) == 0
    adv = graph(**{"3": {"class_type": "KSamplerAdvanced", "inputs": {
        "model": ["4", 0], "add_noise": "enable", "noise_seed": 1, "steps": 4, "cfg": 8, "sampler_name": "euler",
        "scheduler": "normal", "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0],
        "start_at_step": 0, "end_at_step": 10000, "return_with_leftover_noise": "disable"}}})
    # KSamplerAdvanced over all steps with noise = KSampler at denoise 1, same seed
    assert np.array_equal(pixels(engine, engine.run(adv)), pixels(engine, engine.run(graph())))


def test_image_and_latent_nodes(engine, dirs):
    rgba = np.zeros((48, 40, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 255
    rgba[:24, :, 3] = 0  # top half transparent: ComfyUI's mask = 1 - alpha
    Image.fromarray(rgba).save(dirs / "input" / "in.png")
    g = graph(**{"3__latent_image": ["12", 0], "3__denoise": 0.5})
    g["10"] = {"class_type": "LoadImage", "inputs": {"image": "in.png"}}
    g["11"] = {"class_type": "ImageScale", "inputs": {"image": ["10", 0], "upscale_method": "bilinear", "width": 64,
                                                      "height": 64, "crop": "center"}}
    g["12"] = {"class_type": "VAEEncodeForInpaint", "inputs": {"pixels": ["11", 0], "vae": ["4", 2],
                                                               "mask": ["13", 0], "grow_mask_by": 6}}
    g["13"] = {"class_type": "LoadImageMask", "inputs": {"image": "in.png", "channel": "alpha"}}
    g["14"] = {"class_type": "LatentUpscaleBy", "inputs": {"samples": ["3", 0], "upscale_method": "nearest-exact",
                                                           "scale_by": 2.0}}
    g["8"]["inputs"]["samples"] = ["14", 0]
    g["15"] = {"class_type": "PreviewImage", "inputs": {"images": ["16", 0]}}
    g["16"] = {"class_type": "ImageScaleBy", "inputs": {"image": ["10", 0], "upscale_method": "lanczos", "scale_by": 0.5}}
    result = engine.run(g)
    (saved,) = result.outputs["9"]["images"]
    assert Image.open(engine.folders.output / saved["filename"]).size == (128, 128)
    preview = result.outputs["15"]["images"][0]
    assert preview["type"] == "temp"
    assert Image.open(engine.folders.temp_dir() / preview["filename"]).size == (20, 24)
    # SetLatentNoiseMask + LatentUpscale on an empty latent: the sampler still makes the model's latents
    g2 = graph(**{"3__latent_image": ["20", 0]})
    g2["20"] = {"class_type": "LatentUpscale", "inputs": {"samples": ["5", 0], "upscale_method": "bilinear",
                                                          "width": 96, "height": 0, "crop": "disabled"}}
    assert pixels(engine, engine.run(g2)).shape == (96, 96, 3)
    bad = graph(**{"10": {"class_type": "LoadImage", "inputs": {"image": "../../etc/passwd"}}, "9__images": ["10", 0]})
    assert _response(bad, engine.folders)["node_errors"]["10"]["errors"][0]["type"] == "value_not_in_list"


def test_lora_loader_patches_only_its_branch(engine, dirs):
    import stablekit
    from adapter_fixtures import random_peft_lora
    from stablekit.formats.lora_peft import save_peft_lora

    (dirs / "models" / "loras").mkdir(exist_ok=True)
    components = stablekit.load(progress=False).components
    unet, texts = random_peft_lora(components, rank=4)
    save_peft_lora(dirs / "models" / "loras" / "style.safetensors", unet, texts, alpha=4.0, rank=4)
    base = pixels(engine, engine.run(graph()))

    def with_lora(strength_model, strength_clip):
        g = graph(**{"3__model": ["10", 0], "6__clip": ["10", 1], "7__clip": ["10", 1]})
        g["10"] = {"class_type": "LoraLoader", "inputs": {"model": ["4", 0], "clip": ["4", 1], "lora_name": "style.safetensors",
                                                          "strength_model": strength_model, "strength_clip": strength_clip}}
        return pixels(engine, engine.run(g))

    assert np.array_equal(with_lora(0.0, 0.0), base)
    model_only, both = with_lora(1.0, 0.0), with_lora(1.0, 1.0)
    assert not np.array_equal(model_only, base) and not np.array_equal(both, model_only)
    assert np.array_equal(pixels(engine, engine.run(graph(**{"3__seed": 1}))), base)  # weights restored exactly


def test_a_controlnet_for_another_architecture_fails_in_one_line(engine, dirs):
    # tiny_controlnet("sd1") does not fit the embedded shapes model: named, not half-applied
    from fixtures import tiny_controlnet
    from stablekit.formats.controlnet import save_controlnet

    (dirs / "models" / "controlnet").mkdir(exist_ok=True)
    save_controlnet(tiny_controlnet("sd1"), dirs / "models" / "controlnet" / "cn.safetensors")
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(dirs / "input" / "hint.png")
    g = graph(**{"3__positive": ["12", 0]})
    g["10"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": "cn.safetensors"}}
    g["11"] = {"class_type": "LoadImage", "inputs": {"image": "hint.png"}}
    g["12"] = {"class_type": "ControlNetApply", "inputs": {"conditioning": ["6", 0], "control_net": ["10", 0],
                                                           "image": ["11", 0], "strength": 1.0}}
    with pytest.raises(NodeFailed, match=r"is for another architecture") as err:
        engine.run(g)
    assert "\n" not in str(err.value)


def test_interrupt_stops_the_run_and_events_have_comfyuis_names(dirs):
    events = []
    engine = Engine(Folders(output=dirs / "output"))

    def listener(name, data):
        events.append(name)
        if name == "progress" and data["value"] == 2:
            engine.interrupt()

    engine.listener = listener
    with pytest.raises(Interrupted):
        engine.run(graph(**{"3__seed": 3}))
    assert events[:3] == ["execution_start", "execution_cached", "executing"]
    assert events[-1] == "execution_interrupted" and events.count("progress") == 2
    events.clear()
    engine.listener = lambda name, data: events.append((name, json.dumps({k: v for k, v in data.items() if k != "x0"})))
    engine.run(graph(**{"3__seed": 3}))
    names = [n for n, _ in events]
    assert names[-3:] == ["executed", "executing", "execution_success"] and names.count("progress") == 4
