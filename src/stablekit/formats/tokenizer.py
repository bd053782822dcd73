"""The CLIP BPE tokenizer, built offline from the vocabulary file the `openai-clip` package ships.

SD 1.x, 2.x and SDXL all use OpenAI CLIP's byte-level BPE (49,408 tokens). The hub normally
supplies vocab.json/merges.txt; here we rebuild them exactly as OpenAI's `simple_tokenizer.py`
does: 256 byte symbols, the same with `</w>`, one token per merge line 1..48,894, then the two
special tokens. Check: "a photo of a cat" -> 49406, 320, 1125, 539, 320, 2368, 49407.
"""
from __future__ import annotations

import functools
import gzip
import importlib.util
from pathlib import Path

from stablekit.errors import StablekitError

N_MERGES = 49152 - 256 - 2  # merge lines used by OpenAI CLIP (48,894)


def _vocab_file() -> Path:
    # Locate the file without importing `clip` (its import pulls torchvision).
    spec = importlib.util.find_spec("clip")
    if spec is None or not spec.submodule_search_locations:
        raise StablekitError("the CLIP vocabulary is missing: install the 'openai-clip' package (pip install openai-clip)")
    path = Path(list(spec.submodule_search_locations)[0]) / "bpe_simple_vocab_16e6.txt.gz"
    if not path.exists():
        raise StablekitError(f"the CLIP vocabulary file {path} is missing: reinstall 'openai-clip'")
    return path


def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2/CLIP's reversible byte -> printable unicode table.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


@functools.lru_cache(maxsize=1)
def clip_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(vocab, merges) exactly as OpenAI CLIP builds them."""
    lines = gzip.open(_vocab_file()).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : N_MERGES + 1]]
    symbols = list(_bytes_to_unicode().values())
    symbols = symbols + [s + "</w>" for s in symbols]
    symbols += ["".join(m) for m in merges]
    symbols += ["<|startoftext|>", "<|endoftext|>"]
    return {s: i for i, s in enumerate(symbols)}, merges


def clip_tokenizer(pad_token: str = "<|endoftext|>", model_max_length: int = 77):
    """A transformers CLIPTokenizer with CLIP's exact ids, built offline.

    pad_token: SD 1.x pads with "<|endoftext|>"; SD 2.x and SDXL's second encoder pad with "!".
    """
    from transformers import CLIPTokenizer

    vocab, merges = clip_vocab_and_merges()
    return CLIPTokenizer(
        vocab=dict(vocab),
        merges=list(merges),
        pad_token=pad_token,
        model_max_length=model_max_length,
    )


def save_clip_tokenizer(tokenizer, folder) -> None:
    """Save a tokenizer the way SD's hub folders hold it: vocab.json + merges.txt + config.

    transformers 5 writes only tokenizer.json (3.6 MB for CLIP); vocab.json + merges.txt hold the
    same BPE in 1.4 MB and every transformers version reads them. A tokenizer with added tokens
    (textual inversion) is saved whole, since those live only in the full format.
    """
    import json
    from pathlib import Path

    folder = Path(folder)
    tokenizer.save_pretrained(str(folder))
    vocab, merges = clip_vocab_and_merges()
    if len(tokenizer) != len(vocab):
        return
    (folder / "tokenizer.json").unlink(missing_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, separators=(",", ":")), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8")
