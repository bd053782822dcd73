"""A1111 prompt syntax and text encoding: weights, BREAK, 75-token chunks, clip skip, cache.

`parse_prompt_attention(text)` -> [(text, weight)]; `PromptEncoder(components).encode(prompt,
clip_skip=1)` -> Conditioning; `encode_pair(prompt, negative, clip_skip)` -> (cond, uncond).
See docs/prompts.md.
"""
from stablekit.prompts.conditioning import Conditioning
from stablekit.prompts.encode import PromptEncoder
from stablekit.prompts.parse import ExtraNetwork, ParsedPrompt, extract_extra_networks, parse_prompt_attention

__all__ = ["Conditioning", "ExtraNetwork", "ParsedPrompt", "PromptEncoder", "extract_extra_networks", "parse_prompt_attention"]
