"""Weighted prompt runs -> 75-token chunks, as A1111's `FrozenCLIPEmbedderWithCustomWords` fills them.

A1111 `modules/sd_hijack_clip.py` (`tokenize_line`): each weighted run is tokenized on its own
(no BOS/EOS), tokens fill chunks of 75; BREAK closes the current chunk; when a chunk is full and
a comma lies within the last `backtrack` (A1111's "comma_padding_backtrack", default 20) tokens,
the text after that comma moves to the next chunk so a phrase is not cut in two. Each chunk is
then framed as BOS + 75 tokens (padded) + EOS = 77 ids. Pure Python, no model needed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

from stablekit.prompts.parse import is_break

CHUNK_LENGTH = 75
COMMA_BACKTRACK = 20


@dataclass
class Chunk:
    """Up to `CHUNK_LENGTH` prompt token ids and one weight per id (no BOS/EOS yet)."""

    tokens: list[int] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)


def split_chunks(
    runs: Sequence[tuple[str, float]],
    tokenize: Callable[[list[str]], list[list[int]]],
    comma_id: int | None,
    length: int = CHUNK_LENGTH,
    backtrack: int = COMMA_BACKTRACK,
) -> list[Chunk]:
    """Fill chunks from (text, weight) runs; always at least one chunk (empty for "").

    tokenize: texts -> token ids without special tokens (one list per text).
    comma_id: the id of ",</w>" (None disables comma back-tracking, as backtrack=0 does).
    """
    texts = [text for text, _ in runs]
    token_lists = tokenize(texts) if texts else []
    chunks: list[Chunk] = []
    chunk = Chunk()
    last_comma = -1  # index in chunk.tokens of the last comma, -1 if none

    def close() -> None:
        nonlocal chunk, last_comma
        chunks.append(chunk)
        chunk, last_comma = Chunk(), -1

    for run, ids in zip(runs, token_lists):
        if is_break(run):
            close()
            continue
        weight = run[1]
        for token in ids:
            if token == comma_id:
                last_comma = len(chunk.tokens)
            elif (
                backtrack
                and len(chunk.tokens) == length
                and last_comma != -1
                and len(chunk.tokens) - last_comma <= backtrack
            ):
                # Move what follows the comma to the next chunk.
                cut = last_comma + 1
                moved = Chunk(chunk.tokens[cut:], chunk.weights[cut:])
                del chunk.tokens[cut:], chunk.weights[cut:]
                close()
                chunk = moved
            if len(chunk.tokens) == length:
                close()
            chunk.tokens.append(token)
            chunk.weights.append(weight)

    if chunk.tokens or not chunks:
        close()
    return chunks


def frame_chunk(chunk: Chunk, bos: int, eos: int, pad: int, length: int = CHUNK_LENGTH) -> tuple[list[int], list[float]]:
    """BOS + tokens + EOS + pad..., length + 2 ids, with weight 1.0 on every added id.

    A1111 pads with EOS and, where the tokenizer's pad id differs (OpenCLIP: "!" = 0), turns
    everything after the first EOS into pad ids; writing EOS then pads is the same thing.
    """
    n_pad = length - len(chunk.tokens)
    ids = [bos, *chunk.tokens, eos] + [pad] * n_pad
    weights = [1.0, *chunk.weights, 1.0] + [1.0] * n_pad
    return ids, weights
