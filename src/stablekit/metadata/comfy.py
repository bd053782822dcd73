"""ComfyUI's PNG metadata: the "prompt" (API-format graph) and "workflow" (UI graph) text chunks.

ComfyUI's SaveImage writes `prompt` as json.dumps(prompt) and every extra_pnginfo entry
(`workflow`) as json.dumps(value), as tEXt chunks through PIL's PngInfo.add_text. `comfy_pnginfo`
writes the same; `read_comfy_chunks` reads them back from a PNG's text chunks (as
`read_image_info(path)["text"]` returns them) and `params_from_comfy_prompt` turns a graph with
one KSampler into GenerationParams fields, for png-info and `generate --from-png`.
"""
from __future__ import annotations

import json

from PIL.PngImagePlugin import PngInfo

from stablekit.errors import StablekitError

PROMPT_KEY = "prompt"
WORKFLOW_KEY = "workflow"


def comfy_pnginfo(prompt: dict | None, extra_pnginfo: dict | None) -> PngInfo:
    """The PNG text chunks ComfyUI's SaveImage writes (prompt first, then each extra entry)."""
    info = PngInfo()
    if prompt is not None:
        info.add_text(PROMPT_KEY, json.dumps(prompt))
    for key, value in (extra_pnginfo or {}).items():
        info.add_text(key, json.dumps(value))
    return info


def read_comfy_chunks(text: dict) -> dict | None:
    """{"prompt": dict, "workflow": dict | None} from PNG text chunks; None when there is no prompt."""
    raw = text.get(PROMPT_KEY)
    if raw is None:
        return None
    out = {}
    for key in (PROMPT_KEY, WORKFLOW_KEY):
        if text.get(key) is None:
            out[key] = None
            continue
        try:
            out[key] = json.loads(text[key])
        except ValueError as exc:
            raise StablekitError(f"the PNG's ComfyUI '{key}' chunk is not valid JSON ({exc})") from None
    if not isinstance(out[PROMPT_KEY], dict):
        raise StablekitError("the PNG's ComfyUI 'prompt' chunk is not a node graph (a JSON object)")
    return out


def _text_of(prompt: dict, link) -> str | None:
    """The text of the CLIPTextEncode a conditioning link leads to (through pass-through nodes)."""
    seen = set()
    while isinstance(link, list) and link and str(link[0]) in prompt and str(link[0]) not in seen:
        seen.add(str(link[0]))
        node = prompt[str(link[0])]
        inputs = node.get("inputs", {})
        if node.get("class_type") == "CLIPTextEncode":
            return inputs.get("text") if isinstance(inputs.get("text"), str) else None
        link = inputs.get("conditioning") or inputs.get("positive")
    return None


def params_from_comfy_prompt(prompt: dict) -> dict:
    """GenerationParams fields (prompt, negative_prompt, steps, cfg, sampler, schedule, seed,
    width, height) of a graph with exactly one KSampler / KSamplerAdvanced; StablekitError else."""
    samplers = [n for n in prompt.values() if isinstance(n, dict) and n.get("class_type") in ("KSampler", "KSamplerAdvanced")]
    if len(samplers) != 1:
        raise StablekitError(f"the ComfyUI graph has {len(samplers)} samplers; only a graph with one KSampler "
                             "maps onto generate's settings (run it with 'stablekit workflow run' instead)")
    inputs = samplers[0].get("inputs", {})
    fields = {"steps": inputs.get("steps"), "cfg": inputs.get("cfg"), "sampler": inputs.get("sampler_name"),
              "schedule": inputs.get("scheduler"), "seed": inputs.get("seed", inputs.get("noise_seed")),
              "prompt": _text_of(prompt, inputs.get("positive")),
              "negative_prompt": _text_of(prompt, inputs.get("negative"))}
    latent = inputs.get("latent_image")
    if isinstance(latent, list) and str(latent[0]) in prompt:
        node = prompt[str(latent[0])]
        if node.get("class_type") == "EmptyLatentImage":
            fields.update(width=node["inputs"].get("width"), height=node["inputs"].get("height"))
    return {k: v for k, v in fields.items() if v is not None}
