"""Textual-inversion embeddings: the A1111 layouts and the diffusers one.

As A1111 (`modules/textual_inversion/textual_inversion.py`, `create_embedding_from_data`) reads them:
  `.pt` (A1111's own training output): a pickled dict {"string_to_token": {"*": 265},
      "string_to_param": {"*": Tensor [n, dim]}, "name", "step", "sd_checkpoint", "sd_checkpoint_name"};
      read here with torch.load(weights_only=True), which rebuilds only tensors and plain containers.
  `.safetensors`: {"emb_params": Tensor [n, dim]} (SD 1.x / 2.x), or for SDXL
      {"clip_l": [n, 768], "clip_g": [n, 1280]} (one row set per text encoder).
  diffusers (`learned_embeds.safetensors` / `.bin`): {"<token>": Tensor [dim] or [n, dim]}.
The embedding's name in prompts is the file name without suffix (A1111), whatever the file says.
"""
from __future__ import annotations

from pathlib import Path

import torch

from stablekit.errors import StablekitError

SUFFIXES = (".pt", ".safetensors", ".bin")
SDXL_KEYS = ("clip_l", "clip_g")


def _read_raw(path: Path) -> tuple[dict, dict[str, str]]:
    if path.suffix.lower() == ".safetensors":
        from stablekit.formats.weights import open_weights

        weights = open_weights(path)
        return {k: weights.get(k) for k in weights.keys()}, dict(weights.metadata)
    if path.suffix.lower() not in (".pt", ".bin"):
        raise StablekitError(f"{path}: embeddings are .pt, .bin or .safetensors files")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # weights_only refuses anything but tensors and plain containers
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise StablekitError(f"cannot read embedding {path}: {first}") from None
    if not isinstance(data, dict):
        raise StablekitError(f"{path} holds a {type(data).__name__}, not an embedding dict")
    return data, {}


def load_embedding(path) -> dict:
    """{"name": file stem, "vectors": Tensor [n, dim] or {"clip_l", "clip_g"}, "format", "metadata"}.

    format is "a1111-pt", "a1111-safetensors", "sdxl" or "diffusers"; metadata holds the other
    fields of an A1111 .pt (step, sd_checkpoint, ...) or the safetensors metadata.
    """
    path = Path(path)
    if not path.is_file():
        raise StablekitError(f"{path} does not exist")
    data, metadata = _read_raw(path)
    if "string_to_param" in data:
        params = data["string_to_param"]
        if not isinstance(params, dict) or len(params) != 1:
            raise StablekitError(f"{path}: string_to_param must hold exactly one tensor")
        vectors = next(iter(params.values()))
        extra = {k: v for k, v in data.items() if k not in ("string_to_param", "string_to_token")}
        return {"name": path.stem, "vectors": vectors.detach(), "format": "a1111-pt", "metadata": extra}
    if all(k in data for k in SDXL_KEYS):
        return {"name": path.stem, "vectors": {k: data[k] for k in SDXL_KEYS}, "format": "sdxl", "metadata": metadata}
    tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
    if len(tensors) != 1:
        raise StablekitError(f"{path}: not an embedding ({len(tensors)} tensors: {', '.join(sorted(tensors)[:4])}); "
                             "expected string_to_param, emb_params, clip_l+clip_g or one diffusers token")
    key, vectors = next(iter(tensors.items()))
    vectors = vectors if vectors.dim() == 2 else vectors.reshape(1, -1)
    fmt = "a1111-safetensors" if key == "emb_params" else "diffusers"
    meta = dict(metadata)
    if fmt == "diffusers":
        meta["token"] = key
    return {"name": path.stem, "vectors": vectors, "format": fmt, "metadata": meta}


def save_a1111_embedding(path, name: str, vectors, metadata: dict | None = None) -> None:
    """Write an embedding A1111 (and diffusers' load_textual_inversion) reads.

    vectors: Tensor [n, dim] (SD 1.x / 2.x) or {"clip_l": [n, 768], "clip_g": [n, 1280]} (SDXL).
    A `.pt` path gives A1111's pickle layout (string_to_param; metadata fields such as step and
    sd_checkpoint are stored beside it), a `.safetensors` path {"emb_params"} or {"clip_l", "clip_g"}
    with metadata as safetensors strings. SDXL embeddings are safetensors only, as in A1111.
    """
    from stablekit.formats.weights import write_safetensors

    path = Path(path)
    metadata = dict(metadata or {})
    if isinstance(vectors, dict):
        if set(vectors) != set(SDXL_KEYS):
            raise StablekitError(f"SDXL embedding needs exactly clip_l and clip_g, got {sorted(vectors)}")
        tensors = {k: vectors[k].detach().contiguous() for k in SDXL_KEYS}
    else:
        if vectors.dim() != 2:
            raise StablekitError(f"embedding vectors must be [n, dim], got {tuple(vectors.shape)}")
        tensors = {"emb_params": vectors.detach().contiguous()}
    if path.suffix.lower() == ".pt":
        if "emb_params" not in tensors:
            raise StablekitError(f"{path}: SDXL embeddings are written as .safetensors (A1111 reads them only so)")
        data = {"string_to_token": {"*": 265}, "string_to_param": {"*": tensors["emb_params"]}, "name": name,
                "step": int(metadata.pop("step", 0)), "sd_checkpoint": metadata.pop("sd_checkpoint", None),
                "sd_checkpoint_name": metadata.pop("sd_checkpoint_name", None)}
        data.update({k: v for k, v in metadata.items() if isinstance(v, (str, int, float))})
        torch.save(data, path)
        return
    if path.suffix.lower() != ".safetensors":
        raise StablekitError(f"{path}: write embeddings as .pt or .safetensors")
    metadata.setdefault("name", name)
    write_safetensors(path, [(k, (lambda t=t: t), tuple(t.shape), t.dtype) for k, t in tensors.items()],
                      {k: str(v) for k, v in metadata.items() if v is not None})


def save_diffusers_embedding(path, token: str, vectors: torch.Tensor) -> None:
    """diffusers' textual-inversion layout: {token: Tensor [n, dim]} in a .safetensors file."""
    from stablekit.formats.weights import write_safetensors

    if not isinstance(vectors, torch.Tensor) or vectors.dim() != 2:
        raise StablekitError("diffusers embeddings hold one [n, dim] tensor (SDXL: use save_a1111_embedding)")
    t = vectors.detach().contiguous()
    write_safetensors(path, [(token, lambda: t, tuple(t.shape), t.dtype)], {"format": "pt"})
