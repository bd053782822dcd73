"""DreamBooth with pivotal tuning: the identifier's own token-embedding row(s) train at `identifier_lr`.

DreamBooth's text encoder, frozen or trained at a slow rate, never moves the identifier's row
("sks": norm 0.084 on the embedded model), so "a sks square" reads like "a square" (cosine 0.983)
and prior preservation teaches the UNet that the two prompts draw the same thing
(docs/reports/teach.md, session 5). Training that row at a textual-inversion rate beside the UNet
(diffusers' train_dreambooth_lora_sdxl_advanced.py --train_text_encoder_ti, kohya's "pivotal
tuning"; here starting from the identifier's existing row) separates the two.

The identifier is the words of `instance_prompt` that are not in `class_prompt`; its token ids
train. As in textual inversion (strategies/textual_inversion.py), the embedding matrix itself stays
frozen and a forward hook substitutes the trainable rows for those ids, so no optimizer step, weight
decay or cast can touch another row; `write()` puts the rows into the matrix for export (full
DreamBooth: they travel in the checkpoint's text encoder; DreamBooth-LoRA: an A1111 embedding per
identifier word is written beside the LoRA, export.py). SDXL: one set of rows per text encoder.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from stablekit.errors import StablekitError
from stablekit.train.strategies.finetune import FinetuneStrategy
from stablekit.train.strategies.lora import LoraStrategy


def identifier_words(instance_prompt: str, class_prompt: str) -> list[str]:
    """The words of the instance prompt not in the class prompt ("a sks square" vs "a square": ["sks"]).

    One-line errors when there is no class prompt to tell them apart, or no such word.
    """
    if not class_prompt.strip():
        raise StablekitError("identifier_lr needs --class-prompt to tell the identifier from the class noun "
                             "(e.g. 'a square' for 'a sks square'); add --prior-loss-weight 0 to train without prior preservation")
    known = set(class_prompt.lower().split())
    words = list(dict.fromkeys(w for w in instance_prompt.split() if w.lower() not in known))
    if not words:
        raise StablekitError(f"the instance prompt {instance_prompt!r} has no identifier word that the class prompt "
                             f"{class_prompt!r} lacks; write one in, e.g. 'a sks square' with class prompt 'a square', "
                             "or set identifier_lr 0")
    return words


class IdentifierRows:
    """The trainable identifier rows of one text encoder and the hook that puts them into its embedding output."""

    def __init__(self, text_encoder, tokenizer, words: list[str], class_prompt: str):
        class_ids = set(tokenizer(class_prompt, add_special_tokens=False).input_ids)
        self.word_ids = {}
        for w in words:
            ids = tokenizer(w, add_special_tokens=False).input_ids
            shared = [tokenizer.convert_ids_to_tokens(i) for i in ids if i in class_ids]
            if not ids or shared:
                raise StablekitError(f"the identifier {w!r} shares tokens {shared} with the class prompt "
                                     f"{class_prompt!r}; use a rare word of its own, e.g. 'sks'")
            self.word_ids[w] = ids
        self.ids = list(dict.fromkeys(i for ids in self.word_ids.values() for i in ids))
        self.embedding = text_encoder.get_input_embeddings()
        self.embedding.weight.requires_grad_(False)  # even with train_text_encoder: only these rows move
        weight = self.embedding.weight
        self.param = torch.nn.Parameter(weight[self.ids].detach().float().clone())
        index = torch.full((weight.shape[0],), -1, dtype=torch.long)
        index[self.ids] = torch.arange(len(self.ids))
        self.index = index.to(weight.device)
        self.hook = self.embedding.register_forward_hook(self._substitute)

    def _substitute(self, module, inputs, output):
        ids = inputs[0]
        pos = self.index.to(ids.device)[ids]
        hit = pos >= 0
        if not bool(hit.any()):
            return output
        rows = self.param.to(output.device, output.dtype)[pos.clamp(min=0)]
        return torch.where(hit[..., None], rows, output)

    def to(self, device) -> None:
        self.param.data = self.param.data.to(device)  # before the optimizer exists: same Parameter object
        self.index = self.index.to(device)

    @torch.no_grad()
    def write(self) -> None:
        """Copy the trained rows into the embedding matrix (for export and for use without the hook)."""
        w = self.embedding.weight
        w[self.ids] = self.param.to(w.device, w.dtype)

    def word_vectors(self, word: str) -> torch.Tensor:
        """The rows of one identifier word, [n_tokens, dim], float32 CPU."""
        pos = [self.ids.index(i) for i in self.word_ids[word]]
        return self.param.detach().float().cpu()[pos].clone()


class PivotalMixin:
    """Adds identifier rows to a DreamBooth strategy (full or LoRA); needs the fields below."""

    identifier_lr: float
    instance_prompt: str
    class_prompt: str

    def __post_init__(self):
        super().__post_init__()
        c = self.components
        self.identifier = identifier_words(self.instance_prompt, self.class_prompt)
        self.rows = {"clip_l" if c.is_sdxl else "emb_params":
                     IdentifierRows(c.text_encoder, c.tokenizer, self.identifier, self.class_prompt)}
        if c.is_sdxl:
            self.rows["clip_g"] = IdentifierRows(c.text_encoder_2, c.tokenizer_2 or c.tokenizer, self.identifier,
                                                 self.class_prompt)
        if self.caption_hook is None:
            self.caption_hook = _same  # the rows train: text states must not come from the encoder cache

    def to(self, device) -> None:
        super().to(device)
        for r in self.rows.values():
            r.to(device)

    def trainable_parameters(self):
        """The method's own groups plus the identifier rows in a group of their own at identifier_lr."""
        from stablekit.train.optim import ParamGroups

        base = super().trainable_parameters()
        text_ids = getattr(base, "text_ids", set())
        main = [p for p in base if id(p) not in text_ids]
        text = [p for p in base if id(p) in text_ids]
        return ParamGroups(main, text, extra=[([r.param for r in self.rows.values()], self.identifier_lr)])

    def write_identifier(self) -> None:
        for r in self.rows.values():
            r.write()

    def identifier_embeddings(self) -> dict[str, torch.Tensor | dict[str, torch.Tensor]]:
        """{word: vectors [n, dim] (SD 1.x/2.x) or {"clip_l", "clip_g"} (SDXL)} for A1111 embedding files."""
        out = {}
        for w in self.identifier:
            parts = {k: r.word_vectors(w) for k, r in self.rows.items()}
            if self.components.is_sdxl and parts["clip_l"].shape[0] != parts["clip_g"].shape[0]:
                raise StablekitError(f"the identifier {w!r} has a different token count per SDXL tokenizer; use a plain word such as 'sks'")
            out[w] = parts if self.components.is_sdxl else parts["emb_params"]
        return out

    def state_dict(self) -> dict:
        return {**super().state_dict(), "identifier_rows": {k: r.param.detach().clone() for k, r in self.rows.items()}}

    def load_state_dict(self, state: dict) -> None:
        state = dict(state)
        rows = state.pop("identifier_rows")
        super().load_state_dict(state)
        with torch.no_grad():
            for k, r in self.rows.items():
                r.param.copy_(rows[k])


def _same(caption: str) -> str:
    return caption


@dataclass
class PivotalFinetuneStrategy(PivotalMixin, FinetuneStrategy):
    identifier_lr: float = 5e-3
    instance_prompt: str = ""
    class_prompt: str = ""
    name: str = "dreambooth"


@dataclass
class PivotalLoraStrategy(PivotalMixin, LoraStrategy):
    identifier_lr: float = 5e-3
    instance_prompt: str = ""
    class_prompt: str = ""
    name: str = "dreambooth-lora"
