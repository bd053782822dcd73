"""The LoRAs and embeddings a PNG was made with, found again for `--from-png`.

A stablekit record lists every LoRA applied ("loras": name, path, scale, hash, tag) and every
embedding used ("embeddings": name, path, hash); an A1111 PNG has only its `Lora hashes` and
`TI hashes` fields and the `<lora:...>` tags in its prompt. Either way:
- a prompt tag is found by name in --lora-dir, else at the recorded path;
- a LoRA given with --lora (not a tag) is taken from its recorded path, else by name from
  --lora-dir; --lora on the command line replaces them;
- an embedding is taken from --embeddings-dir by name, else from its recorded path.
What cannot be found is refused in one line before the model loads; a file whose hash differs from
the recorded one is used with a one-line warning (the image will differ).
"""
from __future__ import annotations

from pathlib import Path

from stablekit.adapters import find_adapter
from stablekit.adapters.embeddings import embedding_files
from stablekit.errors import StablekitError
from stablekit.generate.networks import LORA_KINDS, embedding_hash, find_lora, lora_hash
from stablekit.generate.notes import warn
from stablekit.prompts.parse import ParsedPrompt


def parse_hashes(text) -> dict[str, str]:
    """A1111's "name: hash, name: hash" field -> {name: hash} (as its lora_script.infotext_pasted reads it)."""
    pairs = [part.split(":", 1) for part in str(text or "").split(",") if ":" in part]
    return {name.strip(): value.strip() for name, value in pairs}


def _check_hash(kind: str, name: str, path: Path, recorded: str | None, actual: str) -> None:
    if recorded and recorded != actual:
        warn(f"{kind} {name!r} ({path}) has hash {actual}, the image was made with {recorded}; the result will differ")


def replay_networks(png: str, info: dict, prompt: str, lora_dir=None, embeddings_dir=None,
                    loras: list | None = None) -> dict:
    """generate() keyword arguments (loras, lora_dir, embeddings_dir) that apply the LoRAs and embeddings
    of `png` (read_png_info output `info`) again for `prompt` (the PNG's, or the one given instead)."""
    record = info.get("stablekit") or {}
    fields = info.get("fields") or {}
    entries = [e for e in record.get("loras") or [] if isinstance(e, dict) and "name" in e]
    hashes = {e["name"]: e.get("hash") for e in entries} if entries else parse_hashes(fields.get("Lora hashes"))
    recorded = [Path(e["path"]) for e in entries if e.get("tag") and e.get("path") and Path(e["path"]).is_file()]
    sources = ([Path(lora_dir)] if lora_dir else []) + recorded
    for tag in ParsedPrompt.parse(prompt).networks:
        if tag.kind not in LORA_KINDS:
            continue
        try:
            path = find_lora(tag.name, tuple(sources))
        except StablekitError:
            raise StablekitError(f"{png} was made with LoRA {tag.name!r} (hash {hashes.get(tag.name) or 'unknown'}), "
                                 f"found neither in --lora-dir nor at its recorded path; give --lora-dir FOLDER "
                                 f"holding {tag.name}.safetensors") from None
        _check_hash("LoRA", tag.name, path, hashes.get(tag.name), lora_hash(path))
    if loras is None:
        loras = [_recorded_lora(png, e, lora_dir) for e in entries if not e.get("tag")]
    return {"loras": loras, "lora_dir": sources, "embeddings_dir": _embeddings(png, record, fields, embeddings_dir)}


def _recorded_lora(png: str, entry: dict, lora_dir) -> tuple[str, float]:
    """A --lora file of the record: at its recorded path, else by name in --lora-dir."""
    name, path = entry["name"], Path(entry.get("path") or "")
    if not path.is_file():
        if not lora_dir:
            raise StablekitError(f"{png} was made with LoRA file {entry.get('path')} (hash {entry.get('hash')}), which is "
                                 f"missing; give --lora-dir FOLDER holding {name}.safetensors, or --lora PATH")
        path = find_adapter(name, lora_dir)
    _check_hash("LoRA", name, path, entry.get("hash"), lora_hash(path))
    return str(path), float(entry.get("scale", 1.0))


def _embeddings(png: str, record: dict, fields: dict, folder) -> list[Path]:
    """Embedding sources: --embeddings-dir if given, else the recorded files; each used name checked."""
    entries = [e for e in record.get("embeddings") or [] if isinstance(e, dict) and "name" in e]
    wanted = {e["name"]: (e.get("hash"), e.get("path")) for e in entries} if entries else \
        {name: (h, None) for name, h in parse_hashes(fields.get("TI hashes")).items()}
    if folder:
        files = {p.stem: p for p in embedding_files(folder)}
        for name, (h, _) in wanted.items():
            if name not in files:
                raise StablekitError(f"{png} was made with embedding {name!r} (hash {h}), which is not in {folder}; "
                                     "give --embeddings-dir FOLDER holding it")
            _check_hash("embedding", name, files[name], h, embedding_hash(files[name]))
        return [Path(folder)]
    sources = []
    for name, (h, path) in wanted.items():
        if not path or not Path(path).is_file():
            raise StablekitError(f"{png} was made with embedding {name!r} (hash {h}); give --embeddings-dir FOLDER "
                                 "holding it")
        _check_hash("embedding", name, Path(path), h, embedding_hash(path))
        sources.append(Path(path))
    return sources
