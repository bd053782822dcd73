"""Textual-inversion embeddings on loaded text encoders: new tokens, new embedding rows.

An embedding named NAME with n vectors becomes the tokens NAME, NAME_1, ..., NAME_{n-1} in the
tokenizer(s) and n new rows of the text encoder's token embedding (SDXL: the clip_l rows in
text_encoder, the clip_g rows in text_encoder_2, the same tokens in both tokenizers). This is the
naming diffusers' `load_textual_inversion` uses, so a prompt written for one works in the other;
`expand_embeddings` turns NAME into "NAME NAME_1 ..." as diffusers' `maybe_convert_prompt` does.
Existing rows are never changed (resizing copies them); loading the same name again overwrites
only its own rows.

A NAME that is a word of CLIP's vocabulary ("sks", "cat") overrides that word, as in A1111: its
rows go under private tokens and the prompt encoder uses them wherever the word stands
(prompts/embedding_tokens.py says how, and what A1111 and ComfyUI do). diffusers'
load_textual_inversion refuses such names instead; stablekit accepts them everywhere because
A1111's embeddings folder is how these files are used (and how `stablekit train dreambooth --lora
--identifier-lr` names its identifier embedding, OUT/sks.safetensors), and one rule for the Python
API and the folder is simpler than two. `overrides_word` tells when it happens.
"""
from __future__ import annotations

from pathlib import Path

import torch

from stablekit.errors import StablekitError
from stablekit.formats.embeddings_a1111 import SUFFIXES, load_embedding
from stablekit.prompts.embedding_tokens import override_token, spell_embeddings


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


def _in_vocabulary(tokenizer, tokens: list[str]) -> bool:
    """Whether any of the tokens is a word CLIP knows, as a whole word ("word</w>") or a word beginning
    (the base vocabulary, ids below vocab_size: not the tokens added for embeddings)."""
    vocab, size = tokenizer.get_vocab(), tokenizer.vocab_size
    return any(vocab.get(w, size) < size for t in tokens for w in (t.lower(), t.lower() + "</w>"))


def add_embedding(components, name: str, vectors) -> list[str]:
    """Add one embedding's tokens and rows; returns its token names (NAME, NAME_1, ...; for a NAME
    that is a vocabulary word the private NAME</embedding>, ..., which override the word)."""
    pairs = _targets(components, name, vectors)
    count = pairs[0][2].shape[0]
    tokens = token_names(name, count)
    if _in_vocabulary(pairs[0][0], tokens):
        tokens = token_names(override_token(name), count)
    for tokenizer, encoder, rows in pairs:
        added = tokenizer.get_added_vocab()
        tokenizer.add_tokens([t for t in tokens if t not in added])
        if len(tokenizer) > encoder.get_input_embeddings().weight.shape[0]:
            # the new rows' random init is overwritten below; keep it off the caller's RNG stream
            with torch.random.fork_rng(devices=[]):
                encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        table = encoder.get_input_embeddings().weight
        ids = tokenizer.convert_tokens_to_ids(tokens)
        if min(ids) < tokenizer.vocab_size:
            raise StablekitError(f"embedding {name!r}: the tokenizer gave an existing id for {tokens}; "
                                 "rename the file")  # never write over a row of the model
        with torch.no_grad():
            table[ids] = rows.to(device=table.device, dtype=table.dtype)
    return tokens


def overrides_word(components, name: str) -> bool:
    """Whether the loaded embedding NAME overrides a word of the vocabulary (A1111's rule: it does)."""
    return override_token(name) in components.tokenizer.get_added_vocab()


def load_embeddings(components, folder_or_files) -> list[str]:
    """Load textual-inversion embeddings (A1111 .pt / .safetensors, SDXL clip_l+clip_g, diffusers)
    into the tokenizer(s) and text encoder(s); returns the embedding names (file stems) usable in
    prompts. stablekit's prompt encoder uses them by name; text given to a tokenizer directly needs
    `expand_embeddings` first (multi-vector embeddings, names that override a vocabulary word)."""
    names = []
    for path in embedding_files(folder_or_files):
        emb = load_embedding(path)
        add_embedding(components, emb["name"], emb["vectors"])
        names.append(emb["name"])
    return names


def expand_embeddings(prompt: str, tokenizer) -> str:
    """The prompt as a tokenizer must read it to use the loaded embeddings: a NAME that overrides a
    vocabulary word written as its private token, and each multi-vector embedding NAME as
    "NAME NAME_1 ... NAME_{n-1}" (prompts/embedding_tokens.spell_embeddings, the spelling the prompt
    encoder and training use; text already spelled out stays as it is)."""
    return spell_embeddings(prompt, tokenizer)
