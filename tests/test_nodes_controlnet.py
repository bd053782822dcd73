"""ControlNetApply / ControlNetApplyAdvanced (nodes/control.py) on a tiny random SD1 checkpoint and
ControlNet: the same image as `Pipeline.generate(controlnets=[ControlUnit])` where the semantics
agree, ComfyUI's where they differ (positive-only control, percent window), and ComfyUI's errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from fixtures import tiny_controlnet, tiny_ldm_file
from PIL import Image

from stablekit.formats import load_model
from stablekit.formats.controlnet import save_controlnet
from stablekit.generate.control import ControlUnit
from stablekit.generate.pipeline import Pipeline
from stablekit.nodes import Engine, Folders, WorkflowInvalid
from stablekit.nodes.control import percent_to_sigma
from stablekit.nodes.image import to_uint8

PROMPT, NEGATIVE = "a photo of a cat", "blurry"
STEPS, CFG, SEED = 4, 5.0, 11


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cnnodes")
    for name in ("models/checkpoints", "models/controlnet", "input", "output"):
        (root / name).mkdir(parents=True)
    tiny_ldm_file("sd1", root / "models" / "checkpoints" / "tiny.safetensors")
    save_controlnet(tiny_controlnet("sd1"), root / "models" / "controlnet" / "cn.safetensors")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(root / "input" / "hint.png")
    return root


@pytest.fixture(scope="module")
def engine(dirs):
    return Engine(Folders(dirs / "models", dirs / "input", dirs / "output"), noise="a1111")


@pytest.fixture(scope="module")
def pipe(dirs):
    return Pipeline(load_model(dirs / "models" / "checkpoints" / "tiny.safetensors", dtype=torch.float32),
                    progress=False)


def graph(cfg=CFG, **nodes) -> dict:
    """A 64 px txt2img graph; KSampler's positive/negative come from nodes "pos"/"neg" (given or the encoders)."""
    g = {
        "3": {"class_type": "KSampler", "inputs": {"cfg": cfg, "denoise": 1, "latent_image": ["5", 0], "model": ["4", 0],
                                                   "negative": ["7", 0], "positive": ["6", 0], "sampler_name": "euler",
                                                   "scheduler": "normal", "seed": SEED, "steps": STEPS}},
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny.safetensors"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"batch_size": 1, "height": 64, "width": 64}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["4", 1], "text": PROMPT}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["4", 1], "text": NEGATIVE}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "cn", "images": ["8", 0]}},
        "10": {"class_type": "ControlNetLoader", "inputs": {"control_net_name": "cn.safetensors"}},
        "11": {"class_type": "LoadImage", "inputs": {"image": "hint.png"}},
    }
    g.update(nodes)
    return g


def apply(conditioning: str, strength: float) -> dict:
    return {"class_type": "ControlNetApply", "inputs": {"conditioning": [conditioning, 0], "control_net": ["10", 0],
                                                       "image": ["11", 0], "strength": strength}}


def advanced(strength: float, start: float = 0.0, end: float = 1.0) -> dict:
    return {"class_type": "ControlNetApplyAdvanced",
            "inputs": {"positive": ["6", 0], "negative": ["7", 0], "control_net": ["10", 0], "image": ["11", 0],
                       "strength": strength, "start_percent": start, "end_percent": end, "vae": ["4", 2]}}


def run(engine, g: dict) -> np.ndarray:
    (image,) = engine.run(g).images()
    return np.asarray(Image.open(engine.folders.output / image["subfolder"] / image["filename"]))


def with_advanced(**kw) -> dict:
    g = graph(**{"12": advanced(**kw)})
    g["3"]["inputs"].update(positive=["12", 0], negative=["12", 1])
    return g


def generate(pipe, dirs, cfg=CFG, **unit) -> np.ndarray:
    units = [ControlUnit(dirs / "models" / "controlnet" / "cn.safetensors", dirs / "input" / "hint.png", **unit)] if unit else None
    out = pipe.generate(PROMPT, negative_prompt=NEGATIVE, steps=STEPS, cfg=cfg, sampler="euler", schedule="normal",
                        seed=SEED, width=64, height=64, output="np", controlnets=units)[0]
    return to_uint8(torch.from_numpy(out))  # SaveImage's 8-bit conversion


def test_advanced_equals_generate_with_a_balanced_unit(engine, pipe, dirs):
    ours = run(engine, with_advanced(strength=0.7))
    assert np.array_equal(ours, generate(pipe, dirs, scale=0.7))
    assert not np.array_equal(ours, run(engine, graph()))  # the ControlNet changed the image


def test_strength_above_a1111s_range_multiplies_the_residuals(engine, pipe, dirs):
    # ComfyUI allows strength up to 10; A1111's weight stops at 2: compare where both exist, and that 3 differs
    assert np.array_equal(run(engine, with_advanced(strength=2.0)), generate(pipe, dirs, scale=2.0))
    assert not np.array_equal(run(engine, with_advanced(strength=3.0)), run(engine, with_advanced(strength=2.0)))


def test_apply_on_the_positive_reaches_the_negative_too(engine, pipe, dirs):
    # ComfyUI's ControlNetApply sets control_apply_to_uncond: a negative without controls takes the positive's
    g = graph(**{"12": apply("6", 0.7)})
    g["3"]["inputs"]["positive"] = ["12", 0]
    assert np.array_equal(run(engine, g), generate(pipe, dirs, scale=0.7))
    one = graph(cfg=1.0, **{"12": apply("6", 0.7)})  # at cfg 1 only the positive is evaluated, in both
    one["3"]["inputs"]["positive"] = ["12", 0]
    assert np.array_equal(run(engine, one), generate(pipe, dirs, cfg=1.0, scale=0.7))


def test_each_conditioning_gets_only_its_own_controls(engine):
    both = run(engine, with_advanced(strength=0.7))
    # Advanced's positive alone: the negative prompt's half of the CFG batch gets no residuals
    positive_only = with_advanced(strength=0.7)
    positive_only["3"]["inputs"]["negative"] = ["7", 0]
    mine = run(engine, positive_only)
    assert not np.array_equal(mine, both) and not np.array_equal(mine, run(engine, graph()))
    # ControlNetApply on each prompt: two controls, each on its half; equal to Advanced up to running the
    # halves as separate batches
    each = graph(**{"12": apply("6", 0.7), "13": apply("7", 0.7)})
    each["3"]["inputs"].update(positive=["12", 0], negative=["13", 0])
    assert np.abs(run(engine, each).astype(int) - both.astype(int)).max() <= 1
    weaker = graph(**{"12": apply("6", 0.7), "13": apply("7", 0.3)})
    weaker["3"]["inputs"].update(positive=["12", 0], negative=["13", 0])
    assert not np.array_equal(run(engine, weaker), both)


def test_strength_zero_and_an_empty_window_equal_no_controlnet_exactly(engine):
    plain = run(engine, graph())
    zero = graph(**{"12": apply("6", 0.0)})
    zero["3"]["inputs"]["positive"] = ["12", 0]
    assert np.array_equal(run(engine, zero), plain)
    assert np.array_equal(run(engine, with_advanced(strength=0.0)), plain)
    # end_percent 0: ComfyUI's window [percent_to_sigma(0), percent_to_sigma(0)] = [inf, inf] holds no step
    assert np.array_equal(run(engine, with_advanced(strength=1.0, end=0.0)), plain)
    late = run(engine, with_advanced(strength=1.0, start=0.5))
    assert not np.array_equal(late, plain) and not np.array_equal(late, run(engine, with_advanced(strength=1.0)))


def test_percent_to_sigma_is_comfyuis(pipe):
    d = pipe.denoiser
    assert percent_to_sigma(d, 0.0) == 999999999.9 and percent_to_sigma(d, 1.0) == 0.0
    assert percent_to_sigma(d, 0.5) == pytest.approx(float(d.t_to_sigma(torch.tensor(499.5))))
    assert percent_to_sigma(d, 0.001) == pytest.approx(float(d.t_to_sigma(torch.tensor(998.001))))


def test_bad_inputs_give_comfyuis_node_errors(engine):
    for strength, kind in ((11.0, "value_bigger_than_max"), ("strong", "invalid_input_type")):
        g = with_advanced(strength=1.0)
        g["12"]["inputs"]["strength"] = strength
        with pytest.raises(WorkflowInvalid) as info:
            engine.run(g)
        response = info.value.response
        assert response["error"]["type"] == "prompt_outputs_failed_validation"
        entry = response["node_errors"]["12"]
        assert entry["class_type"] == "ControlNetApplyAdvanced" and entry["dependent_outputs"] == ["9"]
        (error,) = entry["errors"]
        assert error["type"] == kind and error["extra_info"]["input_name"] == "strength"
    g = graph(**{"12": apply("6", 1.0)})
    g["3"]["inputs"]["positive"] = ["12", 0]
    g["12"]["inputs"]["image"] = ["10", 0]
    with pytest.raises(WorkflowInvalid) as info:
        engine.run(g)
    (error,) = info.value.response["node_errors"]["12"]["errors"]
    assert error["type"] == "return_type_mismatch"
    assert error["details"] == "image, received_type(CONTROL_NET) mismatch input_type(IMAGE)"
