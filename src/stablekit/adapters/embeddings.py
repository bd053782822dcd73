"""Textual-inversion embeddings on loaded text encoders: new tokens, new embedding rows.

An embedding named NAME with n vectors becomes the tokens NAME, NAME_1, ..., NAME_{n-1} in the
tokenizer(s) and n new rows of the text encoder's token embedding (SDXL: the clip_l rows in
text_encoder, the clip_g rows in text_encoder_2, the same tokens in both tokenizers). This is the
naming diffusers' `load_textual_inversion` uses, so a prompt written for one works in the other;
`expand_embeddings` turns NAME into "NAME NAME_1 ..." as diffusers' `maybe_convert_prompt` does.
Existing rows are never changed (resizing copies them); loading the same name again overwrites
only its own rows.
"""
from __future__ import annotations

from pathlib import Path

import torch

from stablekit.errors import StablekitError
from stablekit.formats.embeddings_a1111 import SUFFIXES, load_embedding


def embedding_files(folder_or_files) -> list[Path]:
    """The embedding files of a folder (recursively, sorted, as A1111 scans it) or the files given."""
    items = [folder_or_files] if isinstance(folder_or_files, (str, Path)) else list(folder_or_files)
    files = []
    for item in map(Path, items):
        if item.is_dir():
            files += sorted(p for p in item.rglob("*") if p.suffix.lower() in SUFFIXES and p.is_file())
        elif item.is_file():
            files.append(item)
        else:
            raise StablekitError(f"{item} does not exist; give an embeddings folder or files")
    return files


def token_names(name: str, count: int) -> list[str]:
    return [name] + [f"{name}_{i}" for i in range(1, count)]


def _targets(components, name: str, vectors) -> list[tuple[object, object, torch.Tensor]]:
    """(tokenizer, text encoder, rows) per text encoder, with the width checked."""
    if isinstance(vectors, dict):
        if not components.is_sdxl:
            raise StablekitError(f"embedding {name!r} is for SDXL (clip_l + clip_g); the model is {components.arch}")
        pairs = [(components.tokenizer, components.text_encoder, vectors["clip_l"]),
                 (components.tokenizer_2, components.text_encoder_2, vectors["clip_g"])]
    else:
        if components.is_sdxl:
            raise StablekitError(f"embedding {name!r} has one vector set ({vectors.shape[-1]} wide); SDXL "
                                 "needs clip_l and clip_g, so it was made for SD 1.x/2.x")
        pairs = [(components.tokenizer, components.text_encoder, vectors)]
    for tokenizer, encoder, rows in pairs:
        width = encoder.get_input_embeddings().weight.shape[1]
        if rows.dim() != 2 or rows.shape[1] != width:
            raise StablekitError(f"embedding {name!r} is {tuple(rows.shape)}; the model's text encoder takes "
                                 f"{width}-wide vectors, so it was made for another architecture")
        if rows.shape[0] != pairs[0][2].shape[0]:
            raise StablekitError(f"embedding {name!r}: clip_l and clip_g have different vector counts")
    return pairs


def add_embedding(components, name: str, vectors) -> list[str]:
    """Add one embedding's tokens and rows; returns its token names. Fails if NAME is a word CLIP knows."""
    pairs = _targets(components, name, vectors)
    tokens = token_names(name, pairs[0][2].shape[0])
    for tokenizer, encoder, rows in pairs:
        added = tokenizer.get_added_vocab()
        vocab = tokenizer.get_vocab()
        for token in tokens:
            # CLIP's vocabulary holds whole words as "word</w>" and word beginnings as "word"
            if token not in added and (token in vocab or token + "</w>" in vocab):
                raise StablekitError(f"embedding name {token!r} is already a token of the vocabulary; rename the file")
        tokenizer.add_tokens([t for t in tokens if t not in added])
        if len(tokenizer) > encoder.get_input_embeddings().weight.shape[0]:
            # the new rows' random init is overwritten below; keep it off the caller's RNG stream
            with torch.random.fork_rng(devices=[]):
                encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        table = encoder.get_input_embeddings().weight
        with torch.no_grad():
            table[tokenizer.convert_tokens_to_ids(tokens)] = rows.to(device=table.device, dtype=table.dtype)
    return tokens


def load_embeddings(components, folder_or_files) -> list[str]:
    """Load textual-inversion embeddings (A1111 .pt / .safetensors, SDXL clip_l+clip_g, diffusers)
    into the tokenizer(s) and text encoder(s); returns the embedding names (file stems) usable in
    prompts. Prompts need `expand_embeddings` for embeddings with more than one vector."""
    names = []
    for path in embedding_files(folder_or_files):
        emb = load_embedding(path)
        add_embedding(components, emb["name"], emb["vectors"])
        names.append(emb["name"])
    return names


def expand_embeddings(prompt: str, tokenizer) -> str:
    """Write each multi-vector embedding NAME in a prompt as "NAME NAME_1 ... NAME_{n-1}"."""
    added = tokenizer.get_added_vocab()
    for token in sorted(set(tokenizer.tokenize(prompt)) & set(added), key=len, reverse=True):
        extra, i = [], 1
        while f"{token}_{i}" in added:
            extra.append(f"{token}_{i}")
            i += 1
        if extra:
            prompt = prompt.replace(token, " ".join([token, *extra]))
    return prompt
