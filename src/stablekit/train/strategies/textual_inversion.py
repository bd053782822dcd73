"""Textual inversion (Gal et al. 2022): a new word whose embedding vectors are the only thing that trains.

The placeholder token becomes `vectors` new tokens ("<tok>", "<tok>_1", ...; diffusers' naming)
in the tokenizer(s), and each caption's "<tok>" is expanded to all of them (as A1111 expands an
embedding's name into its vectors). The embedding matrix itself stays frozen: a forward hook on
the token-embedding layer substitutes the trainable vectors for the new ids, so no optimizer,
weight decay or mixed-precision cast can touch another row (the Keras tutorial and diffusers'
script restore the other rows after each step instead). The new rows are written into the matrix
for sampling and export. SDXL: one set of vectors per text encoder ("clip_l", "clip_g").
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from stablekit.errors import StablekitError
from stablekit.train.strategies.sd import SDStrategy


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
    name: str = "textual-inversion"

    def __post_init__(self):
        super().__post_init__()
        if self.vectors < 1:
            raise StablekitError(f"vectors must be >= 1 (got {self.vectors})")
        c = self.components
        tokens = placeholder_tokens(self.token, self.vectors)
        self.parts = {"clip_l" if c.is_sdxl else "emb_params": _Vectors(c.text_encoder, c.tokenizer, tokens, self.init_word)}
        if c.is_sdxl:
            tok2 = c.tokenizer_2 or c.tokenizer
            # one tokenizer object shared by both encoders already holds the tokens
            if tok2 is c.tokenizer:
                raise StablekitError("SDXL textual inversion needs a tokenizer per text encoder")
            self.parts["clip_g"] = _Vectors(c.text_encoder_2, tok2, tokens, self.init_word)
        expanded = " ".join(tokens)
        pattern = re.compile(re.escape(self.token))
        self.caption_hook = lambda caption: (pattern.sub(expanded, caption) if self.token in caption
                                             else f"{expanded} {caption}".strip())

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
