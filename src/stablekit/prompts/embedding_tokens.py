"""Which token ids stand for a loaded textual-inversion embedding in a prompt.

adapters/embeddings.py gives an embedding named NAME (its file stem) with n vectors n added tokens:

- a NAME that is not a word of CLIP's vocabulary ("shapeemb") gets the tokens NAME, NAME_1, ...,
  NAME_{n-1} (diffusers' naming); the tokenizer finds NAME in the text itself.
- a NAME that is a vocabulary word ("sks", "cat") cannot be an added token: the tokenizer would
  hand back the word's existing id, and writing the embedding there would change a row of the
  model (why diffusers' load_textual_inversion refuses such names). Its rows go under the private
  tokens NAME</embedding>, NAME</embedding>_1, ..., and `override_ids` puts them wherever the
  name's own token ids stand in a prompt.

The second rule is A1111's for every name: `EmbeddingDatabase.register_embedding_by_name`
(modules/textual_inversion/textual_inversion.py) tokenizes the name with the ordinary tokenizer, and
`find_embedding_at_position`, called token by token from `tokenize_line` (modules/sd_hijack_clip.py),
replaces the longest matching run of ids with the embedding's vectors. So in A1111 an embeddings
folder holding `sks.safetensors` turns every "sks" of a prompt into that embedding, with no check
against the vocabulary; stablekit's prompt encoder does the same. (ComfyUI sidesteps the question:
an embedding is used only as `embedding:NAME` in the prompt, comfy/sd1_clip.py
`SDTokenizer.tokenize_with_weights`, and a bare "sks" stays the word.)
"""
from __future__ import annotations

import re

import torch

OVERRIDE = "</embedding>"  # suffix of the private tokens of an embedding named after a vocabulary word


def override_token(name: str) -> str:
    """The private added token holding the first row of an embedding whose name is a vocabulary word."""
    return name + OVERRIDE


def embedding_name(token: str) -> str:
    """The embedding name an added token belongs to (its first token; the private suffix removed)."""
    return token[: -len(OVERRIDE)] if token.endswith(OVERRIDE) else token


def _overrides(tokenizer) -> dict[int, list[tuple[list[int], int]]]:
    """{first id of NAME: [(NAME's ids, private token id)], longest first} for the overriding embeddings."""
    table: dict[int, list[tuple[list[int], int]]] = {}
    for token, token_id in tokenizer.get_added_vocab().items():
        if token.endswith(OVERRIDE):
            ids = tokenizer(embedding_name(token), add_special_tokens=False).input_ids
            if ids:
                table.setdefault(ids[0], []).append((ids, token_id))
    for matches in table.values():
        matches.sort(key=lambda m: len(m[0]), reverse=True)
    return table


def override_ids(token_lists: list[list[int]], tokenizer) -> list[list[int]]:
    """Replace each run of ids that spells an overriding embedding's NAME with its private token,
    scanning left to right and taking the longest match, as A1111's find_embedding_at_position."""
    table = _overrides(tokenizer)
    if not table:
        return token_lists
    out = []
    for ids in token_lists:
        result, i = [], 0
        while i < len(ids):
            for run, token_id in table.get(ids[i], ()):
                if ids[i:i + len(run)] == run:
                    result.append(token_id)
                    i += len(run)
                    break
            else:
                result.append(ids[i])
                i += 1
        out.append(result)
    return out


def embedding_spellings(tokenizer) -> dict[str, list[str]]:
    """{first token: [first token, NAME_1, ..., NAME_{n-1}]} for every loaded multi-vector embedding:
    the one definition of how an embedding is spelled in tokens (diffusers' naming, as textual
    inversion training adds them). A one-vector embedding is its first token alone and is not listed."""
    added = tokenizer.get_added_vocab()
    out = {}
    for token in added:
        i, extra = 1, []
        while f"{token}_{i}" in added:
            extra.append(f"{token}_{i}")
            i += 1
        if extra:
            out[token] = [token, *extra]
    return out


def expand_embedding_ids(token_lists: list[list[int]], tokenizer) -> list[list[int]]:
    """The ids a prompt is encoded with: overriding names replaced (`override_ids`), then each
    multi-vector embedding's first token followed by its others (NAME, NAME_1, ..., NAME_{n-1}, as
    diffusers' maybe_convert_prompt expands it), so an embedding is used by its name alone, as in A1111.
    A NAME already followed by all its other tokens (text from `adapters.expand_embeddings`, or a
    training caption spelled out) is left as it is, so spelling it out never adds vectors."""
    token_lists = override_ids(token_lists, tokenizer)
    follow = {tokenizer.convert_tokens_to_ids(first): tokenizer.convert_tokens_to_ids(spelled[1:])
              for first, spelled in embedding_spellings(tokenizer).items()}
    if not follow:
        return token_lists
    out = []
    for ids in token_lists:
        result = []
        for i, token in enumerate(ids):
            extra = follow.get(token, ())
            result += [token, *(() if ids[i + 1:i + 1 + len(extra)] == extra else extra)]
        out.append(result)
    return out


def embedding_ids(texts: list[str], tokenizer) -> list[list[int]]:
    """Token ids of each text (no BOS/EOS, not truncated) with every loaded embedding spelled once:
    what the prompt encoder (prompts/encode.py) and textual-inversion training (`caption_ids`) both
    read, so a caption and a prompt with the same text give the same ids."""
    ids = tokenizer(list(texts), add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
    return expand_embedding_ids(ids, tokenizer)


def caption_ids(texts: list[str], tokenizer, max_length: int | None = None) -> torch.Tensor:
    """[B, max_length] ids of training captions: `embedding_ids`, cut to max_length - 2, framed as
    BOS ... EOS and padded with the tokenizer's pad token (EOS without one). For text without
    embeddings this is exactly `tokenizer(texts, padding="max_length", truncation=True)` (tested)."""
    max_length = int(max_length or tokenizer.model_max_length)
    pad = tokenizer.eos_token_id if tokenizer.pad_token_id is None else tokenizer.pad_token_id
    rows = []
    for ids in embedding_ids(texts, tokenizer):
        row = [tokenizer.bos_token_id, *ids[:max_length - 2], tokenizer.eos_token_id]
        rows.append(row + [pad] * (max_length - len(row)))
    return torch.tensor(rows, dtype=torch.long)


def embedding_token_spelling(text: str, tokenizer) -> list[str]:
    """The embedding tokens `text` is read with, in order (e.g. ["<h>", "<h>_1", ...]): a record of
    how a prompt spelled its embeddings (benchmarks write it beside their figures)."""
    added = set(tokenizer.get_added_vocab()) - set(tokenizer.all_special_tokens)
    tokens = tokenizer.convert_ids_to_tokens(embedding_ids([text], tokenizer)[0])
    return [t for t in tokens if t in added]


def spell_embeddings(prompt: str, tokenizer) -> str:
    """The prompt as text a tokenizer reads with the loaded embeddings: an overriding NAME written as
    its private token (`override_text`), each multi-vector NAME as "NAME NAME_1 ... NAME_{n-1}"
    (`embedding_spellings`). A NAME already spelled out is left as it is, and NAME_1 is not read as
    NAME, so spelling twice changes nothing (tokenizing the result gives `embedding_ids`' ids)."""
    prompt = override_text(prompt, tokenizer)
    spellings = embedding_spellings(tokenizer)
    if not spellings:
        return prompt
    firsts = sorted(spellings, key=len, reverse=True)  # one pass, longest name first: no rescans
    runs = "|".join(re.escape(f) + "(?:" + "".join(rf"\s+{re.escape(t)}" for t in spellings[f][1:]) + ")?"
                    for f in firsts)
    lookup = {f: " ".join(spellings[f]) for f in firsts}
    return re.sub(rf"(?:{runs})(?!_\d)", lambda m: lookup[next(f for f in firsts if m.group(0).startswith(f))],
                  prompt)


def embedding_names(text: str, tokenizer) -> list[str]:
    """The embedding names a prompt text uses, in order of first use (each added token's name)."""
    ids = override_ids([tokenizer(text, add_special_tokens=False, verbose=False).input_ids], tokenizer)[0]
    added = set(tokenizer.get_added_vocab())
    return list(dict.fromkeys(embedding_name(t) for t in tokenizer.convert_ids_to_tokens(ids) if t in added))


def override_text(prompt: str, tokenizer) -> str:
    """The prompt with each overriding embedding's NAME written as its private token, for code that
    tokenizes the text itself (adapters.expand_embeddings). NAME matches where CLIP's tokenizer
    would cut it out: case-insensitively and not inside a longer run of letters ("sks," and "SKS"
    match, "tasks" does not)."""
    tokens = {embedding_name(t).lower(): t for t in tokenizer.get_added_vocab() if t.endswith(OVERRIDE)}
    if not tokens:
        return prompt
    names = "|".join(re.escape(n) for n in sorted(tokens, key=len, reverse=True))  # one pass: no rescans
    return re.sub(rf"(?<![^\W\d_])({names})(?![^\W\d_])", lambda m: tokens[m.group(1).lower()], prompt,
                  flags=re.IGNORECASE)
