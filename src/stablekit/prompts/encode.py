"""Prompt text -> Conditioning for SD 1.x, SD 2.x and SDXL, with A1111's semantics.

Follows A1111 `modules/sd_hijack_clip.py` (FrozenCLIPEmbedderWithCustomWords), `sd_emphasis.py`
("Original" emphasis), `sd_hijack_open_clip.py` and `sd_models_xl.py`:

- the prompt is parsed (`parse_prompt_attention`), `<lora:...>` tags are removed, runs are cut
  into 75-token chunks (`chunks.split_chunks`), each chunk framed as 77 ids and encoded;
- per-token weights multiply the chunk's hidden states, then the chunk is rescaled so its mean
  is the unweighted mean again (`z *= original_mean / new_mean`); chunks are concatenated;
- which hidden state: SD 1.x uses hidden_states[-clip_skip] then the final layer norm
  (clip_skip 1 = last_hidden_state); SD 2.x takes the text encoder's last_hidden_state, whose
  config already ends at the penultimate OpenCLIP layer (23 of 24 layers); SDXL concatenates
  both encoders' hidden_states[-2] without the final norm, and its pooled embedding is
  text_encoder_2's text_embeds of the first chunk. A1111 ignores clip skip for SD 2.x and SDXL
  (its defaults), and so do we.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch

from stablekit.errors import StablekitError
from stablekit.prompts.chunks import CHUNK_LENGTH, Chunk, frame_chunk, split_chunks
from stablekit.prompts.conditioning import Conditioning
from stablekit.prompts.embedding_tokens import embedding_ids
from stablekit.prompts.parse import ParsedPrompt, parse_prompt_attention
from stablekit.prompts.schedule import prompt_schedule


@dataclass
class _TextEncoder:
    """One text encoder and how its output is read."""

    model: torch.nn.Module
    tokenizer: object
    layer: str  # "skip": hidden_states[-clip_skip] + final norm; "last"; "penultimate" (no norm)
    pooled: bool = False  # return text_embeds (SDXL's text_encoder_2)
    chunk_length: int = CHUNK_LENGTH

    @property
    def pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return self.tokenizer.eos_token_id if pad is None else pad

    def frame(self, chunks: list[Chunk]) -> tuple[torch.Tensor, torch.Tensor]:
        tok = self.tokenizer
        framed = [frame_chunk(c, tok.bos_token_id, tok.eos_token_id, self.pad_id, self.chunk_length) for c in chunks]
        device = next(self.model.parameters()).device
        ids = torch.tensor([f[0] for f in framed], dtype=torch.long, device=device)
        weights = torch.tensor([f[1] for f in framed], dtype=torch.float32, device=device)
        return ids, weights

    def __call__(self, chunks: list[Chunk], clip_skip: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Hidden states [n_chunks, 77, D] with weights applied, and pooled [1, D2] or None."""
        ids, weights = self.frame(chunks)
        want_hidden = self.layer == "penultimate" or (self.layer == "skip" and clip_skip > 1)
        out = self.model(input_ids=ids, output_hidden_states=want_hidden)
        if self.layer == "penultimate":
            z = out.hidden_states[-2]
        elif want_hidden:
            z = out.hidden_states[-clip_skip]
            z = getattr(self.model, "text_model", self.model).final_layer_norm(z)
        else:
            z = out.last_hidden_state
        pooled = out.text_embeds[:1] if self.pooled else None
        return apply_weights(z, weights), pooled


def apply_weights(z: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """A1111's "Original" emphasis: z *= w per token, then restore each chunk's mean.

    z: [n, T, D]; weights: [n, T]. Computed in float32 (A1111 multiplies fp16 states by fp32
    weights, which promotes the same way), returned in z's dtype. Chunks with all weights 1 are
    returned unchanged.
    """
    if bool((weights == 1.0).all()):
        return z
    z32 = z.float()
    original_mean = z32.mean(dim=(1, 2), keepdim=True)
    z32 = z32 * weights[..., None]
    new_mean = z32.mean(dim=(1, 2), keepdim=True)
    return (z32 * (original_mean / new_mean)).to(z.dtype)


class PromptEncoder:
    """Encodes A1111-syntax prompts with a model's text encoder(s), caching each distinct prompt.

    The cache holds up to `cache_size` (prompt, clip_skip) results (least recently used dropped);
    results are shared tensors, treat them as read-only. Call `clear_cache()` after changing the
    text encoder's weights (LoRA, textual inversion, training). Encoding runs without gradients.

    zero_empty_negative: an empty negative prompt becomes all zeros (hidden states and pooled).
        A1111 and diffusers do this for SDXL only; None means "True for SDXL".
    """

    def __init__(self, components, cache_size: int = 64, zero_empty_negative: bool | None = None):
        self.components = components
        arch = components.arch
        if components.text_encoder is None or components.tokenizer is None:
            raise StablekitError(f"model {components.name or arch!r} has no text encoder/tokenizer; prompts cannot be encoded")
        if components.is_sdxl:
            self.encoders = [
                _TextEncoder(components.text_encoder, components.tokenizer, "penultimate"),
                _TextEncoder(components.text_encoder_2, components.tokenizer_2 or components.tokenizer, "penultimate", pooled=True),
            ]
        elif arch in ("sd2", "sd2-v"):
            self.encoders = [_TextEncoder(components.text_encoder, components.tokenizer, "last")]
        else:
            self.encoders = [_TextEncoder(components.text_encoder, components.tokenizer, "skip")]
        # Chunk length follows the tokenizer (75 for CLIP's 77), for smaller CLIP-style encoders.
        tok = components.tokenizer
        self.chunk_length = min(CHUNK_LENGTH, int(getattr(tok, "model_max_length", 77)) - 2)
        for encoder in self.encoders:
            encoder.chunk_length = self.chunk_length
        self.zero_empty_negative = components.is_sdxl if zero_empty_negative is None else zero_empty_negative
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[str, int], Conditioning] = OrderedDict()
        self._comma_id = tok.get_vocab().get(",</w>")

    @property
    def clip_skip_applies(self) -> bool:
        """Whether clip_skip changes the result (SD 1.x-style encoders only, as in A1111)."""
        return self.encoders[0].layer == "skip"

    def clear_cache(self) -> None:
        self._cache.clear()

    def chunks(self, prompt: str | ParsedPrompt) -> list[Chunk]:
        """The prompt's 75-token chunks (token ids and weights), after removing <lora:...> tags."""
        text = ParsedPrompt.parse(prompt).text
        tok = self.encoders[0].tokenizer

        def tokenize(texts: list[str]) -> list[list[int]]:
            return embedding_ids(texts, tok)  # embeddings spelled as training spells its captions

        return split_chunks(parse_prompt_attention(text), tokenize, self._comma_id, self.chunk_length)

    def encode(self, prompt: str | ParsedPrompt, clip_skip: int = 1) -> Conditioning:
        """Conditioning of one prompt: hidden_states [1, 77*k, D], pooled [1, D2] for SDXL.

        clip_skip: A1111's "Clip skip" (1 = last layer, 2 = penultimate, ...). `<lora:...>` tags
        are removed first (pass a ParsedPrompt to have that done once by the caller).
        """
        return self._encode_text(ParsedPrompt.parse(prompt).text, clip_skip)

    def _encode_text(self, text: str, clip_skip: int) -> Conditioning:
        key = (text, self._check_clip_skip(clip_skip))
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        chunks = self.chunks(ParsedPrompt(text))
        with torch.no_grad():
            parts = [encoder(chunks, key[1]) for encoder in self.encoders]
        hidden = torch.cat([z for z, _ in parts], dim=-1)  # [k, 77, D]
        cond = Conditioning(hidden.reshape(1, -1, hidden.shape[-1]), parts[-1][1])
        if self.cache_size > 0:
            self._cache[key] = cond
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return cond

    def encode_pair(self, prompt: str | ParsedPrompt, negative: str | ParsedPrompt | None,
                    clip_skip: int = 1) -> tuple[Conditioning, Conditioning]:
        """(cond, uncond) for classifier-free guidance, padded to the same number of chunks.

        The shorter one is extended with chunks of the empty prompt, as A1111's "pad prompt/
        negative prompt" does. An empty (or None) negative is zeros when `zero_empty_negative`
        (SDXL).
        """
        negative = ParsedPrompt.parse(negative or "")
        uncond = [(1, self._encode_text(negative.text, clip_skip))] if negative.text else None
        conds, unconds = self._guidance_pair([(1, self.encode(prompt, clip_skip))], uncond, clip_skip)
        return conds[0][1], unconds[0][1]

    def encode_schedule(self, prompt: str | ParsedPrompt, steps: int, clip_skip: int = 1,
                        hires_steps: int | None = None) -> list[tuple[int, Conditioning]]:
        """[(last_step, Conditioning)] for prompt editing `[a:b:when]` and alternation `[a|b]`.

        One entry for a prompt without them. Each distinct text is encoded once (cache). Pick
        the entry for a sampler step with `stablekit.prompts.schedule.at_step(schedule, step)`.
        """
        text = ParsedPrompt.parse(prompt).text  # A1111 removes <lora:...> before scheduling
        return [(end, self._encode_text(t, clip_skip)) for end, t in prompt_schedule(text, steps, hires_steps)]

    def encode_pair_schedule(self, prompt: str | ParsedPrompt, negative: str | ParsedPrompt | None, steps: int,
                             clip_skip: int = 1, hires_steps: int | None = None):
        """(cond schedule, uncond schedule) for CFG with prompt editing: encode_schedule of both,
        with encode_pair's rules (empty negative, padding to one chunk count) applied once."""
        negative = ParsedPrompt.parse(negative or "")
        conds = self.encode_schedule(prompt, steps, clip_skip, hires_steps)
        unconds = self.encode_schedule(negative, steps, clip_skip, hires_steps) if negative.text else None
        return self._guidance_pair(conds, unconds, clip_skip)

    def _guidance_pair(self, conds: list, unconds: list | None, clip_skip: int) -> tuple[list, list]:
        """The one place for CFG's pairing rules. unconds None means an empty negative: zeros
        shaped like the (padded) prompt when `zero_empty_negative` (SDXL), else the empty prompt's
        encoding. Everything is padded with empty-prompt chunks to one chunk count."""
        if unconds is None and self.zero_empty_negative:
            # Zeros padded with zeros: attention over all-zero keys and values gives what a
            # shorter all-zero context gives, so this matches A1111's unpadded run exactly.
            n = max(self.n_chunks(c) for _, c in conds)
            conds = [(end, self.pad(c, n, clip_skip)) for end, c in conds]
            zero = conds[0][1]
            pooled = None if zero.pooled is None else torch.zeros_like(zero.pooled)
            return conds, [(conds[-1][0], Conditioning(torch.zeros_like(zero.hidden_states), pooled))]
        if unconds is None:
            unconds = [(conds[-1][0], self._encode_text("", clip_skip))]
        n = max(self.n_chunks(c) for _, c in conds + unconds)
        return ([(end, self.pad(c, n, clip_skip)) for end, c in conds],
                [(end, self.pad(c, n, clip_skip)) for end, c in unconds])

    def encode_batch(self, prompts: list[str | ParsedPrompt], clip_skip: int = 1) -> Conditioning:
        """Conditioning for several prompts [B, 77*k, D], each padded to the longest with empty chunks."""
        conds = [self.encode(p, clip_skip) for p in prompts]
        n = max(self.n_chunks(c) for c in conds)
        return Conditioning.cat([self.pad(c, n, clip_skip) for c in conds])

    def pad(self, cond: Conditioning, n_chunks: int, clip_skip: int = 1) -> Conditioning:
        """Extend cond to n_chunks chunks with the empty prompt's encoding (pooled unchanged)."""
        missing = n_chunks - self.n_chunks(cond)
        if missing <= 0:
            return cond
        empty = self._encode_text("", clip_skip).hidden_states
        hidden = torch.cat([cond.hidden_states, empty.repeat(cond.hidden_states.shape[0], missing, 1)], dim=1)
        return Conditioning(hidden, cond.pooled)

    def n_chunks(self, cond: Conditioning) -> int:
        """How many 77-token chunks a Conditioning holds."""
        return cond.hidden_states.shape[1] // (self.chunk_length + 2)

    def _check_clip_skip(self, clip_skip: int) -> int:
        layers = self.encoders[0].model.config.num_hidden_layers
        if isinstance(clip_skip, bool) or not isinstance(clip_skip, (int, float)) or clip_skip != int(clip_skip) or not 1 <= clip_skip <= layers:
            raise StablekitError(f"clip skip must be an integer from 1 to {layers} (got {clip_skip!r}); 1 uses the last layer, 2 the one before")
        return int(clip_skip) if self.clip_skip_applies else 1

