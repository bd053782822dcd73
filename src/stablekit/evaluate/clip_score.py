"""CLIP score (Hessel et al. 2021) of images against their prompts, from a local CLIP model.

score = 100 * max(cos(image embedding, text embedding), 0), averaged over pairs: the definition
torchmetrics' CLIPScore uses (w = 100), so figures compare with published ones when the same
CLIP (e.g. openai/clip-vit-large-patch14) is given. The model is a transformers CLIPModel folder
on disk; nothing is downloaded. Images are preprocessed as CLIP's image processor does (shortest
side resized bicubic to the model's size, centre crop, CLIP's mean/std), in plain PIL/numpy
because transformers' fast processors need torchvision, which cannot be installed here.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from stablekit.errors import StablekitError

# OpenAI CLIP's normalisation (used when the folder has no preprocessor_config.json)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ClipScorer:
    """Loads a CLIPModel (and tokenizer) from `path` once; call with (images, prompts)."""

    def __init__(self, path: str | Path, batch_size: int = 32):
        from transformers import CLIPModel

        path = Path(path)
        if not (path / "config.json").is_file():
            raise StablekitError(f"no CLIP model at {path} (config.json missing); pass --clip DIR with a "
                                 f"transformers CLIPModel folder (e.g. openai/clip-vit-large-patch14 saved locally)")
        try:
            self.model = CLIPModel.from_pretrained(str(path), local_files_only=True).eval()
        except (OSError, ValueError) as exc:
            raise StablekitError(f"cannot load a CLIPModel from {path}: {str(exc).splitlines()[0]}") from None
        self.tokenizer = _tokenizer(path)
        self.size = int(self.model.config.vision_config.image_size)
        self.mean, self.std = CLIP_MEAN, CLIP_STD
        pre = path / "preprocessor_config.json"
        if pre.is_file():
            cfg = json.loads(pre.read_text())
            self.mean, self.std = tuple(cfg.get("image_mean", self.mean)), tuple(cfg.get("image_std", self.std))
        self.batch_size = batch_size
        self.name = path.name

    def preprocess(self, images_u8: np.ndarray) -> torch.Tensor:
        """uint8 [n, H, W, 3] -> normalised [n, 3, size, size] float."""
        out = []
        for im in images_u8:
            pil = Image.fromarray(im)
            scale = self.size / min(pil.size)
            w, h = max(self.size, round(pil.width * scale)), max(self.size, round(pil.height * scale))
            pil = pil.resize((w, h), Image.BICUBIC)
            left, top = (w - self.size) // 2, (h - self.size) // 2
            out.append(np.asarray(pil.crop((left, top, left + self.size, top + self.size)), np.float32) / 255)
        x = (np.stack(out) - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()

    @torch.no_grad()
    def scores(self, images, prompts: list[str]) -> np.ndarray:
        """Per-pair CLIP scores (100 * clipped cosine)."""
        from stablekit.evaluate.fid import quantize

        images = quantize(images)
        if len(images) != len(prompts):
            raise StablekitError(f"{len(images)} images but {len(prompts)} prompts; pass one prompt per image")
        out = []
        max_len = int(self.model.config.text_config.max_position_embeddings)
        for s in range(0, len(images), self.batch_size):
            tok = self.tokenizer(list(prompts[s:s + self.batch_size]), padding="max_length", truncation=True,
                                 max_length=max_len, return_tensors="pt")
            text = _embeds(self.model.get_text_features(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"]))
            img = _embeds(self.model.get_image_features(pixel_values=self.preprocess(images[s:s + self.batch_size])))
            out.append((100 * (img * text).sum(-1).clamp(min=0)).numpy())
        return np.concatenate(out) if out else np.zeros(0)

    def __call__(self, images, prompts: list[str]) -> float:
        """Mean CLIP score over the pairs."""
        return float(self.scores(images, prompts).mean())


def _embeds(out) -> torch.Tensor:
    """transformers 5 may return a model output instead of a tensor from get_*_features."""
    t = out if isinstance(out, torch.Tensor) else getattr(out, "pooler_output", None)
    if t is None:
        t = out[0]
    t = t.float()
    return t / t.norm(dim=-1, keepdim=True).clamp(min=1e-12)


def _tokenizer(path: Path):
    """The folder's own tokenizer, else the project's offline CLIP BPE tokenizer."""
    from transformers import CLIPTokenizer

    if (path / "tokenizer.json").is_file() or (path / "vocab.json").is_file():
        try:
            return CLIPTokenizer.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError):
            pass
    from stablekit.formats import clip_tokenizer

    return clip_tokenizer()
