"""Textual inversion (Gal et al. 2022): a new word whose embedding vectors are the only thing that trains.

The placeholder token becomes `vectors` new tokens ("<tok>", "<tok>_1", ...; diffusers' naming)
in the tokenizer(s). Captions keep the name "<tok>" (a caption without it gets it in front); the
caption ids come from prompts/embedding_tokens.caption_ids, which spells the name into all its
tokens with the function the prompt encoder uses at generation, so training and inference read the
same ids (as A1111 expands an embedding's name into its vectors; a caption already spelled out
"<tok> <tok>_1 ..." is not spelled again). The embedding matrix itself stays frozen: a forward hook on
the token-embedding layer substitutes the trainable vectors for the new ids, so no optimizer,
weight decay or mixed-precision cast can touch another row (the Keras tutorial and diffusers'
script restore the other rows after each step instead). The new rows are written into the matrix
for sampling and export. SDXL: one set of vectors per text encoder ("clip_l", "clip_g").

Images without a caption file (a bare folder, as diffusers' textual_inversion.py and the Keras
tutorial take) arrive with the empty caption; each step gives each of them a template drawn at
random with the placeholder in it ("a photo of a <tok>"), as those scripts do.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from stablekit.errors import StablekitError
from stablekit.train.strategies.sd import SDStrategy


# The textual-inversion paper's captions (Gal et al. 2022: CLIP's ImageNet prompt templates), the
# lists diffusers' textual_inversion.py uses for --learnable_property object / style, without the
# ones that say the image is dark or dirty: the Keras tutorial found that a caption saying
# something untrue of the images (it dropped "a dark photo of the {}") makes a worse embedding, and
# nothing is known of a bare folder's images. The varied wording is the point: what is the same in
# every caption is the token, so the token, not the sentence, has to carry the images' content.
OBJECT_TEMPLATES = (
    "a photo of a {}", "a rendering of a {}", "a cropped photo of the {}", "the photo of a {}",
    "a photo of a clean {}", "a photo of my {}", "a photo of the cool {}", "a close-up photo of a {}",
    "a bright photo of the {}", "a cropped photo of a {}", "a photo of the {}", "a good photo of the {}",
    "a photo of one {}", "a close-up photo of the {}", "a rendition of the {}", "a photo of the clean {}",
    "a rendition of a {}", "a photo of a nice {}", "a good photo of a {}", "a photo of the nice {}",
    "a photo of the small {}", "a photo of the weird {}", "a photo of the large {}", "a photo of a cool {}",
    "a photo of a small {}",
)
STYLE_TEMPLATES = (
    "a painting in the style of {}", "a rendering in the style of {}", "a cropped painting in the style of {}",
    "the painting in the style of {}", "a clean painting in the style of {}", "a picture in the style of {}",
    "a cool painting in the style of {}", "a close-up painting in the style of {}",
    "a bright painting in the style of {}", "a good painting in the style of {}", "a rendition in the style of {}",
    "a nice painting in the style of {}", "a small painting in the style of {}",
    "a weird painting in the style of {}", "a large painting in the style of {}",
)
TEMPLATES = {"object": OBJECT_TEMPLATES, "style": STYLE_TEMPLATES}


def check_templates(templates) -> tuple[str, ...]:
    """The templates as a tuple; each must hold "{}" (where the token goes)."""
    bad = [t for t in templates if not isinstance(t, str) or "{}" not in t]
    if bad:
        raise StablekitError(f"caption template {bad[0]!r} has no '{{}}' for the token; write e.g. 'a photo of a {{}}'")
    return tuple(templates)


def template_captions(captions: list[str], templates, token: str, rng) -> list[str]:
    """Empty captions (images without a caption file) become a random template with `token`.

    The draw comes from a generator of its own, seeded by the step's generator (the same in every
    process), over the whole global batch and then sliced: a resumed or data-parallel run picks
    the same captions as one unbroken process, and the noise draws are untouched.
    """
    if not templates or all(c.strip() for c in captions):
        return list(captions)
    g = torch.Generator().manual_seed((rng.generator.initial_seed() * 31 + 17) % (2**63))
    start = rng.start or 0
    picks = torch.randint(len(templates), (max(rng.total or 0, start + len(captions)),), generator=g)
    picks = picks[start:start + len(captions)].tolist()
    return [c if c.strip() else templates[k].replace("{}", token) for c, k in zip(captions, picks)]


def placeholder_tokens(token: str, vectors: int) -> list[str]:
    return [token] + [f"{token}_{i}" for i in range(1, vectors)]


class _Vectors:
    """The trainable rows of one text encoder and the hook that puts them into its embedding output."""

    def __init__(self, text_encoder, tokenizer, tokens: list[str], init_word: str):
        vocab = tokenizer.get_vocab()
        for t in tokens:
            if t in vocab or f"{t}</w>" in vocab:
                raise StablekitError(f"the placeholder token {t!r} is already in the vocabulary; "
                                     f"pick a new string such as <{t.strip('<>')}-new>")
        init_ids = tokenizer(init_word, add_special_tokens=False).input_ids
        if not init_word.strip() or not init_ids:
            raise StablekitError(f"the initializer word {init_word!r} has no tokens; give a word such as 'shape'")
        if tokenizer.add_tokens(tokens) != len(tokens):
            raise StablekitError(f"could not add the placeholder tokens {tokens}; pick another --token")
        self.ids = tokenizer.convert_tokens_to_ids(tokens)
        text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        self.embedding = text_encoder.get_input_embeddings()
        self.embedding.weight.requires_grad_(False)
        weight = self.embedding.weight
        init = weight[[init_ids[i % len(init_ids)] for i in range(len(tokens))]].detach().float().clone()
        self.first = min(self.ids)
        if self.ids != list(range(self.first, self.first + len(tokens))):
            raise StablekitError(f"placeholder ids {self.ids} are not consecutive; use a fresh tokenizer")
        self.param = torch.nn.Parameter(init.to(weight.device))
        self.write()
        self.hook = self.embedding.register_forward_hook(self._substitute)

    def _substitute(self, module, inputs, output):
        ids = inputs[0]
        new = (ids >= self.first) & (ids < self.first + len(self.ids))
        if not bool(new.any()):
            return output
        rows = self.param.to(output.device, output.dtype)[(ids - self.first).clamp(0, len(self.ids) - 1)]
        return torch.where(new[..., None], rows, output)

    @torch.no_grad()
    def write(self) -> None:
        """Copy the trained vectors into the embedding matrix's new rows (for export and for use without the hook)."""
        w = self.embedding.weight
        w[self.first:self.first + len(self.ids)] = self.param.to(w.dtype).to(w.device)


@dataclass
class TextualInversionStrategy(SDStrategy):
    token: str = "<concept>"
    init_word: str = "object"
    vectors: int = 1
    templates: tuple[str, ...] = OBJECT_TEMPLATES  # captions of images without one ("{}" = the token)
    name: str = "textual-inversion"

    def __post_init__(self):
        super().__post_init__()
        if self.vectors < 1:
            raise StablekitError(f"vectors must be >= 1 (got {self.vectors})")
        self.templates = check_templates(self.templates)
        c = self.components
        tokens = placeholder_tokens(self.token, self.vectors)
        self.parts = {"clip_l" if c.is_sdxl else "emb_params": _Vectors(c.text_encoder, c.tokenizer, tokens, self.init_word)}
        if c.is_sdxl:
            tok2 = c.tokenizer_2 or c.tokenizer
            # one tokenizer object shared by both encoders already holds the tokens
            if tok2 is c.tokenizer:
                raise StablekitError("SDXL textual inversion needs a tokenizer per text encoder")
            self.parts["clip_g"] = _Vectors(c.text_encoder_2, tok2, tokens, self.init_word)
        token = self.token  # the name only: caption_ids (train/strategies/sd.py) spells it into its tokens
        self.caption_hook = lambda caption: caption if token in caption else f"{token} {caption}".strip()

    def loss(self, batch: dict, rng):
        captions = template_captions(batch["captions"], self.templates, self.token, rng)
        return super().loss({**batch, "captions": captions}, rng)

    def to(self, device) -> None:
        super().to(device)
        for v in self.parts.values():  # before the optimizer exists: the Parameter object stays the same
            v.param.data = v.param.data.to(device)

    def trainable_parameters(self):
        return [v.param for v in self.parts.values()]

    def learned(self) -> torch.Tensor | dict[str, torch.Tensor]:
        """The vectors [n, dim] (SD 1.x/2.x) or {"clip_l": ..., "clip_g": ...} (SDXL), float32 CPU."""
        out = {k: v.param.detach().float().cpu().clone() for k, v in self.parts.items()}
        return out if self.components.is_sdxl else out["emb_params"]

    def write(self) -> None:
        for v in self.parts.values():
            v.write()

    def samples(self, step: int):
        self.write()
        return super().samples(step)

    def state_dict(self) -> dict:
        return {k: v.param.detach().clone() for k, v in self.parts.items()}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            for k, v in self.parts.items():
                v.param.copy_(state[k])
        self.write()
