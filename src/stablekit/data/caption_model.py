"""Captions from an image-captioning model in a local folder (BLIP, BLIP-2, GIT through
transformers), as the lecture's labs do with BLIP-2, offline: the folder is read with
local_files_only and nothing reaches a hub. Batched; resumability comes from
captioning.caption_folder, which only asks for images without a caption.
"""
from __future__ import annotations

from pathlib import Path

from PIL import Image

from stablekit.errors import StablekitError


class ModelCaptioner:
    """Wraps a transformers image-to-text model + processor saved with save_pretrained."""

    def __init__(self, path: str | Path, device: str = "cpu", max_new_tokens: int = 40,
                 prompt: str | None = None, num_beams: int = 1):
        import torch
        from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

        path = Path(path)
        if not (path / "config.json").exists():
            raise StablekitError(f"no captioning model at {path} (config.json missing); give the folder a "
                                 f"transformers model was saved to with save_pretrained")
        model_type = AutoConfig.from_pretrained(path, local_files_only=True).model_type
        try:
            self.processor = AutoProcessor.from_pretrained(path, local_files_only=True)
            self.model = AutoModelForImageTextToText.from_pretrained(path, local_files_only=True)
        except (ValueError, OSError) as exc:
            raise StablekitError(f"cannot load {path} as an image-captioning model ({model_type}): "
                                 f"{str(exc).splitlines()[0]}; use a BLIP, BLIP-2 or GIT folder") from None
        self.model.to(device).eval()
        self.device = device
        self.torch = torch
        self.max_new_tokens = max_new_tokens
        self.prompt = prompt
        self.num_beams = num_beams

    def caption_images(self, images: list[Image.Image]) -> list[str]:
        """One caption per image, greedy (or beam) decoding: deterministic for a given model."""
        rgb = [im.convert("RGB") for im in images]
        kwargs = {"images": rgb, "return_tensors": "pt"}
        if self.prompt:  # BLIP's conditional captioning: the text starts the caption
            kwargs["text"] = [self.prompt] * len(rgb)
        inputs = self.processor(**kwargs).to(self.device)
        with self.torch.no_grad():
            ids = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False,
                                      num_beams=self.num_beams)
        texts = self.processor.batch_decode(ids, skip_special_tokens=True)
        return [" ".join(t.split()) for t in texts]

    def __call__(self, paths: list[Path]) -> list[str | None]:
        """Captions for image files; None where the model produced only special tokens, so the
        folder writer reports the image instead of writing an empty caption."""
        images = []
        for p in paths:
            with Image.open(p) as im:
                images.append(im.convert("RGB"))
        return [t or None for t in self.caption_images(images)]
