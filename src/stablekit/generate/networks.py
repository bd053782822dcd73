"""LoRA files and textual-inversion embeddings for one generation, used as A1111 uses them.

    request = ExtraNetworks.take(settings)     # loras=[(path, scale)], lora_dir=..., embeddings_dir=...
    with use_networks(encoder, request, prompt, negative) as used:   # LoRAs patched in, embeddings loaded
        ...encode, sample, decode...                                 # LoRAs removed on the way out
    used.infotext  # {"Lora hashes": "name: 0123456789ab, ...", "TI hashes": "..."}: A1111's fields
    used.record    # {"loras": [...], "embeddings": [...]}: what --from-png needs to apply them again

LoRA: `<lora:NAME:SCALE>` (or `<lyco:...>`, A1111's alias) in the prompt names NAME.safetensors under
the LoRA folder (adapters.find_adapter: the file stem, anywhere below it); explicit files come from
`--lora PATH[:SCALE]` / `loras=`. Only the prompt's tags load LoRAs, as A1111 parses extra networks
from the prompt only; tags in the negative prompt are taken out of its text and named in one warning.
Everything is patched into the weights in one `adapters.apply_adapters` call before the prompts are
encoded, and removed afterwards, also when the generation fails: after every call the model is the
base model bit for bit. The prompt encoder's cache is cleared both times (its entries were encoded
by other text-encoder weights).

Embeddings: every file of the embeddings folder is loaded (A1111 loads its whole folder) and used by
writing its file name in the prompt or the negative prompt. They stay in the tokenizer afterwards, as
in A1111 (new tokens change no existing row); Components.extra["embeddings"] remembers their files
so a later call still records them. A file named after a word of CLIP's vocabulary (`sks.safetensors`,
`cat.pt`) overrides that word in every prompt, as in A1111 (prompts/embedding_tokens.py), with a
one-line note when it is first loaded. A file that cannot be used with this model (another
architecture) is skipped unless the prompt names it.

Hashes as A1111 writes them: a LoRA's `sshs_model_hash` metadata, else the sha256 of its tensor data
(extensions-builtin/Lora/network.py); an embedding file's sha256 (textual_inversion.py); 12 hex digits.
"""
from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from stablekit.adapters import apply_adapters, find_adapter, load_embeddings, parse_adapter_spec
from stablekit.adapters.embeddings import embedding_files, overrides_word
from stablekit.errors import StablekitError
from stablekit.generate.notes import note, warn
from stablekit.prompts.embedding_tokens import embedding_names
from stablekit.prompts.parse import ExtraNetwork, ParsedPrompt

LORA_KINDS = ("lora", "lyco")
REGISTRY = "embeddings"  # Components.extra key: {name: Path} of the embeddings loaded into the tokenizer


@dataclass(frozen=True)
class ExtraNetworks:
    """What a generate() call asks for: explicit LoRA files with scales, where `<lora:NAME>` tags are
    looked up (folders, then single files matched by stem), and embedding folders or files."""

    loras: tuple[tuple[Path, float], ...] = ()
    lora_dir: tuple[Path, ...] = ()
    embeddings_dir: tuple[Path, ...] = ()

    SETTINGS = ("loras", "lora_dir", "embeddings_dir")

    @classmethod
    def take(cls, settings: dict) -> "ExtraNetworks":
        """Pop loras / lora_dir / embeddings_dir from generate()'s keyword settings, checked at once
        (one-line StablekitErrors naming the argument)."""
        loras = settings.pop("loras", None) or ()
        if isinstance(loras, (str, Path)) or not isinstance(loras, (list, tuple)):
            raise StablekitError(f"loras must be a list of (path, scale) pairs or 'path[:scale]' strings (got {loras!r})")
        parsed = []
        for item in loras:
            path, scale = parse_adapter_spec(item) if isinstance(item, str) else _pair(item)
            if not Path(path).is_file():
                raise StablekitError(f"LoRA file {path} does not exist; give a .safetensors LoRA (--lora PATH[:SCALE])")
            parsed.append((Path(path), _scale(scale, f"the scale of LoRA {path}")))
        lora_dir = _paths(settings.pop("lora_dir", None), "lora_dir", "--lora-dir")
        embeddings = _paths(settings.pop("embeddings_dir", None), "embeddings_dir", "--embeddings-dir")
        return cls(tuple(parsed), lora_dir, embeddings)


def _pair(item) -> tuple:
    if not isinstance(item, (list, tuple)) or len(item) != 2:
        raise StablekitError(f"each of loras must be (path, scale) or 'path[:scale]' (got {item!r})")
    return item


def _scale(value, what: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise StablekitError(f"{what} must be a number (got {value!r})") from None


def _paths(value, name: str, flag: str) -> tuple[Path, ...]:
    if value is None:
        return ()
    items = [value] if isinstance(value, (str, Path)) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(i, (str, Path)) for i in items):
        raise StablekitError(f"{name} must be a folder path or a list of paths (got {value!r})")
    for item in map(Path, items):
        if not item.exists():
            raise StablekitError(f"{flag} {item} does not exist; give an existing folder")
    return tuple(map(Path, items))


@dataclass(frozen=True)
class LoraUse:
    """One LoRA applied: its name as mentioned (the tag's NAME, or the file stem), file, scale, where it
    came from (tag True: a prompt tag, so the prompt brings it back; False: --lora / loras=)."""

    name: str
    path: Path
    scale: float
    tag: bool

    @cached_property
    def hash(self) -> str:
        return lora_hash(self.path)


def lora_hash(path) -> str:
    """A1111's shorthash of a LoRA file: `sshs_model_hash` metadata, else the addnet hash; 12 hex digits."""
    from stablekit.formats.lora_keys import addnet_hash
    from stablekit.formats.weights import open_weights

    return (open_weights(path).metadata.get("sshs_model_hash") or addnet_hash(path))[:12]


def embedding_hash(path) -> str:
    """A1111's shorthash of an embedding: the file's sha256, 12 hex digits."""
    from stablekit.formats.hashes import sha256_file

    return sha256_file(path)[:12]


def tag_scale(tag: ExtraNetwork) -> float:
    """The strength of `<lora:NAME:TE:UNET>` read as A1111 does (te= / unet= named too; UNET defaults
    to TE, TE to 1). stablekit applies one strength per LoRA, so TE and UNET must agree."""
    text = f"<{tag.kind}:{':'.join(tag.items)}>"
    pos, named = tag.positional, tag.named
    te = _scale(named.get("te", pos[1] if len(pos) > 1 else 1.0), f"the strength in {text}")
    unet = _scale(named.get("unet", pos[2] if len(pos) > 2 else te), f"the strength in {text}")
    if te != unet or "dyn" in named or len(pos) > 3:
        raise StablekitError(f"{text}: stablekit applies one strength to a whole LoRA; write <{tag.kind}:{tag.name}:SCALE> "
                             "(separate text-encoder/UNet strengths and dyn are not supported)")
    return te


def find_lora(name: str, sources: tuple[Path, ...]) -> Path:
    """NAME.safetensors from the first source that has it: a folder (searched as A1111 does) or a file
    with that stem. Not found: the first folder's one-line error, which lists what it holds."""
    folders = [s for s in sources if s.is_dir()]
    for source in sources:
        if source.is_dir():
            with contextlib.suppress(StablekitError):
                return find_adapter(name, source)
        elif source.stem == name and source.is_file():
            return source
    if folders:
        find_adapter(name, folders[0])  # raises the error naming the folder and its files
    raise StablekitError(f"<lora:{name}:...> needs a LoRA folder: pass --lora-dir DIR (Python: lora_dir=) "
                         f"holding {name}.safetensors")


def resolve_loras(request: ExtraNetworks, prompt: ParsedPrompt) -> list[LoraUse]:
    """The LoRAs a generation applies: the prompt's tags (found by name) then the explicit files.
    Needs no model, so the CLI calls it before loading one."""
    uses = [LoraUse(t.name, find_lora(t.name, request.lora_dir), tag_scale(t), True)
            for t in prompt.networks if t.kind in LORA_KINDS]
    return uses + [LoraUse(path.stem, path, scale, False) for path, scale in request.loras]


@dataclass
class UsedNetworks:
    """What one generation used, and how the image's metadata says so."""

    loras: list[LoraUse] = field(default_factory=list)
    embeddings: dict[str, Path] = field(default_factory=dict)  # name -> file, in order of use

    @cached_property
    def infotext(self) -> dict:
        """A1111's `Lora hashes` and `TI hashes` fields ("name: hash, ..."; ":" and "," dropped from names)."""
        def pairs(items) -> str | None:
            seen = dict.fromkeys(f"{re.sub('[:,]', '', name)}: {h}" for name, h in items)
            return ", ".join(seen) or None

        fields = {"Lora hashes": pairs((u.name, u.hash) for u in self.loras),
                  "TI hashes": pairs((n, embedding_hash(p)) for n, p in self.embeddings.items())}
        return {k: v for k, v in fields.items() if v}

    @cached_property
    def record(self) -> dict:
        """The stablekit record's "loras" and "embeddings" entries (left out when empty)."""
        out = {}
        if self.loras:
            out["loras"] = [{"name": u.name, "path": str(u.path.resolve()), "scale": u.scale, "hash": u.hash,
                             "tag": u.tag} for u in self.loras]
        if self.embeddings:
            out["embeddings"] = [{"name": n, "path": str(p.resolve()), "hash": embedding_hash(p)}
                                 for n, p in self.embeddings.items()]
        return out


def load_embedding_files(components, sources: tuple[Path, ...], prompts: list[str]) -> None:
    """Load every embedding file of `sources` into the model and register it. A file that does not fit
    is skipped, unless one of `prompts` names it: then its one-line error is raised. A file that
    overrides a vocabulary word is noted once, when it is first registered."""
    registry = components.extra.setdefault(REGISTRY, {})
    for path in embedding_files(list(sources)):
        try:
            load_embeddings(components, [path])
        except StablekitError:
            if any(re.search(rf"(?<!\w){re.escape(path.stem)}(?!\w)", text) for text in prompts):
                raise
            continue
        if registry.get(path.stem) != path and overrides_word(components, path.stem):
            note(f"embedding {path} overrides the word {path.stem!r} in prompts (as in A1111); "
                 "rename the file to keep the word")
        registry[path.stem] = path


def used_embeddings(components, texts: list[str]) -> dict[str, Path]:
    """The registered embeddings the texts use (as the prompt encoder finds them), in order."""
    registry = components.extra.get(REGISTRY) or {}
    found: dict[str, Path] = {}
    if registry:
        for text in texts:
            for name in embedding_names(text, components.tokenizer):
                if name in registry:
                    found.setdefault(name, registry[name])
    return found


@contextlib.contextmanager
def use_networks(encoder, request: ExtraNetworks, prompt: ParsedPrompt, negative: ParsedPrompt):
    """Apply a request's LoRAs and embeddings for the body of the `with`, yielding UsedNetworks;
    the LoRAs are removed (weights restored bit for bit) on the way out, whatever happened."""
    components = encoder.components
    others = [t for t in prompt.networks if t.kind not in LORA_KINDS]
    if others:
        warn(f"not applied: {_tags(others)} (stablekit loads LoRA/LyCORIS tags only; the tags were removed from the prompt)")
    if negative.networks:
        warn(f"not applied: {_tags(negative.networks)} in the negative prompt (as A1111, only the prompt's tags "
             "load networks; the tags were removed from the negative prompt)")
    loras = resolve_loras(request, prompt)
    if request.embeddings_dir:
        load_embedding_files(components, request.embeddings_dir, [prompt.text, negative.text])
    applied = apply_adapters(components, [(u.path, u.scale) for u in loras]) if loras else None
    if applied is not None or request.embeddings_dir:
        encoder.clear_cache()
    try:
        yield UsedNetworks(loras, used_embeddings(components, [prompt.text, negative.text]))
    finally:
        if applied is not None:
            applied.remove()
            encoder.clear_cache()


def _tags(networks) -> str:
    return ", ".join(f"<{n.kind}:{':'.join(n.items)}>" for n in networks)
