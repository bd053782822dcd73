"""Loader nodes: CheckpointLoaderSimple, VAELoader, LoraLoader, ControlNetLoader, UpscaleModelLoader
(ComfyUI names).

Files come from the engine's Folders (models/checkpoints, loras, vae, controlnet, upscale_models); the embedded
shapes model is the checkpoint "shapes.safetensors". Checkpoints load exactly as `stablekit.load`
loads them (generate/acceleration.py: the dtype and layout measured fastest on this machine, unless
STABLEKIT_DTYPE says otherwise), so a workflow is as fast as the CLI; stand-alone VAEs stay fp32.
"""
from __future__ import annotations

import torch

from stablekit.errors import StablekitError
from stablekit.nodes.registry import register
from stablekit.nodes.values import ClipHandle, ModelHandle, VaeHandle

STRENGTH = {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01}


def _file_state(folders, kind: str, name) -> list:
    """IS_CHANGED for loaders: a replaced file (other size or mtime) is loaded again."""
    try:
        stat = folders.resolve(kind, name).stat()
        return [stat.st_size, stat.st_mtime_ns]
    except (StablekitError, OSError, TypeError):
        return []


@register
class CheckpointLoaderSimple:
    @classmethod
    def INPUT_TYPES(cls, folders=None):
        return {"required": {"ckpt_name": (folders.list("checkpoints") if folders else [],)}}

    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    FUNCTION = "load_checkpoint"
    CATEGORY = "loaders"

    @classmethod
    def IS_CHANGED(cls, folders, ckpt_name=None, **_):
        return _file_state(folders, "checkpoints", ckpt_name)

    def load_checkpoint(self, ckpt_name):
        import stablekit

        # stablekit.load's fast default (dtype auto: measured per machine; STABLEKIT_DTYPE overrides), not fp32
        path = self.ctx.folders.resolve("checkpoints", ckpt_name)
        components = stablekit.load(path, dtype=None, progress=False).components
        return ModelHandle(components), ClipHandle(components), VaeHandle(components)


@register
class VAELoader:
    @classmethod
    def INPUT_TYPES(cls, folders=None):
        return {"required": {"vae_name": (folders.list("vae") if folders else [],)}}

    RETURN_TYPES = ("VAE",)
    FUNCTION = "load_vae"
    CATEGORY = "loaders"

    @classmethod
    def IS_CHANGED(cls, folders, vae_name=None, **_):
        return _file_state(folders, "vae", vae_name)

    def load_vae(self, vae_name):
        """A whole checkpoint's VAE (formats.load_model). Stand-alone VAE files need a VAE-only
        loader in stablekit.formats, which does not exist yet: those are refused in one line."""
        from stablekit.formats import load_model

        path = self.ctx.folders.resolve("vae", vae_name)
        try:
            components = load_model(path, dtype=torch.float32)
        except StablekitError as exc:
            raise StablekitError(f"cannot load VAE {vae_name!r} ({exc}); stand-alone VAE files are not supported "
                                 "yet: put a whole checkpoint whose VAE you want under models/vae") from None
        return (VaeHandle(components),)


@register
class LoraLoader:
    @classmethod
    def INPUT_TYPES(cls, folders=None):
        return {"required": {"model": ("MODEL",), "clip": ("CLIP",),
                             "lora_name": (folders.list("loras") if folders else [],),
                             "strength_model": ("FLOAT", STRENGTH), "strength_clip": ("FLOAT", STRENGTH)}}

    RETURN_TYPES = ("MODEL", "CLIP")
    FUNCTION = "load_lora"
    CATEGORY = "loaders"

    @classmethod
    def IS_CHANGED(cls, folders, lora_name=None, **_):
        return _file_state(folders, "loras", lora_name)

    def load_lora(self, model, clip, lora_name, strength_model, strength_clip):
        from stablekit.adapters.apply import match_adapter
        from stablekit.formats.lora_keys import load_lora_file

        path = str(self.ctx.folders.resolve("loras", lora_name))
        match_adapter(load_lora_file(path), model.components)  # a LoRA that does not fit fails here, by name
        return (ModelHandle(model.components, model.loras + ((path, float(strength_model)),)),
                clip.with_(loras=clip.loras + ((path, float(strength_clip)),)))


@register
class ControlNetLoader:
    @classmethod
    def INPUT_TYPES(cls, folders=None):
        return {"required": {"control_net_name": (folders.list("controlnet") if folders else [],)}}

    RETURN_TYPES = ("CONTROL_NET",)
    FUNCTION = "load_controlnet"
    CATEGORY = "loaders"

    @classmethod
    def IS_CHANGED(cls, folders, control_net_name=None, **_):
        return _file_state(folders, "controlnet", control_net_name)

    def load_controlnet(self, control_net_name):
        from stablekit.formats.controlnet import load_controlnet

        return (load_controlnet(self.ctx.folders.resolve("controlnet", control_net_name)),)


@register
class UpscaleModelLoader:
    """An ESRGAN-family upscaler (ESRGAN, Real-ESRGAN, SRVGGNetCompact; generate/upscale_models.py) from
    models/upscale_models; ComfyUI reads more architectures through spandrel, those are one line here."""

    @classmethod
    def INPUT_TYPES(cls, folders=None):
        return {"required": {"model_name": (folders.list("upscale_models") if folders else [],)}}

    RETURN_TYPES = ("UPSCALE_MODEL",)
    FUNCTION = "load_model"
    CATEGORY = "loaders"

    @classmethod
    def IS_CHANGED(cls, folders, model_name=None, **_):
        return _file_state(folders, "upscale_models", model_name)

    def load_model(self, model_name):
        from stablekit.devices import resolve_device
        from stablekit.generate.upscale_models import load_upscaler

        return (load_upscaler(self.ctx.folders.resolve("upscale_models", model_name), resolve_device("auto")),)
