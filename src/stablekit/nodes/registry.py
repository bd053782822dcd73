"""The node registry: ComfyUI class names -> node classes, and the folders nodes read and write.

A node is one small class in ComfyUI's shape:

    @register
    class EmptyLatentImage:
        @classmethod
        def INPUT_TYPES(cls, folders=None):
            return {"required": {"width": ("INT", {"default": 512, "min": 16, "step": 8}), ...}}
        RETURN_TYPES = ("LATENT",)
        FUNCTION = "generate"
        def generate(self, width, height, batch_size=1): ...

registered under its class name (ComfyUI's exact `NODE_CLASS_MAPPINGS` key; `register(name=...)`
when the Python name cannot be it). INPUT_TYPES takes the engine's `Folders` (ComfyUI reads a
global folder_paths instead) so file lists are the files that exist. Executing nodes get `self.ctx`
(folders, events, interrupt flag) set by the executor before their FUNCTION is called.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from stablekit.errors import StablekitError

NODE_CLASS_MAPPINGS: dict[str, type] = {}
EMBEDDED_CHECKPOINT = "shapes.safetensors"  # the embedded model, always listed as a checkpoint
# ComfyUI's models/<kind> folders and the files each lists (pickles are never offered, but for
# upscalers: formats/upscalers.py reads their .pth/.pt as tensors only; its SUFFIXES).
MODEL_KINDS = {"checkpoints": (".safetensors",), "loras": (".safetensors",), "vae": (".safetensors",),
               "controlnet": (".safetensors",), "upscale_models": (".pth", ".pt", ".safetensors")}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def register(cls=None, *, name: str | None = None):
    """Class decorator: add a node class to NODE_CLASS_MAPPINGS under `name` (default: its class name)."""
    def add(node_cls):
        for attr in ("INPUT_TYPES", "RETURN_TYPES", "FUNCTION"):
            if not hasattr(node_cls, attr):
                raise TypeError(f"node class {node_cls.__name__} lacks {attr}")
        NODE_CLASS_MAPPINGS[name or node_cls.__name__] = node_cls
        return node_cls
    return add(cls) if cls is not None else add


def node_class(class_type: str) -> type | None:
    """The registered class for a ComfyUI class_type, or None (importing every node family first)."""
    load_node_families()
    return NODE_CLASS_MAPPINGS.get(class_type)


def load_node_families() -> dict[str, type]:
    """Import the node modules (each registers its classes); returns NODE_CLASS_MAPPINGS."""
    from stablekit.nodes import conditioning, control, image, latent, loaders, sampling  # noqa: F401

    return NODE_CLASS_MAPPINGS


@dataclass
class Folders:
    """Where nodes find models and images and write results (ComfyUI's models/, input/, output/, temp/).

    models: a folder with checkpoints/, loras/, vae/, controlnet/, upscale_models/ subfolders (files
    directly in it count as checkpoints too); None: only the embedded model. input: LoadImage's folder.
    output: SaveImage's folder. temp: PreviewImage's (a fresh temporary folder by default).
    """

    models: Path | None = None
    input: Path | None = None
    output: Path = Path("output")
    temp: Path | None = None
    _temp: Path | None = field(default=None, repr=False)

    def __post_init__(self):
        self.models = Path(self.models) if self.models is not None else None
        self.input = Path(self.input) if self.input is not None else None
        self.output = Path(self.output)

    def temp_dir(self) -> Path:
        if self.temp is not None:
            return Path(self.temp)
        if self._temp is None:
            self._temp = Path(tempfile.mkdtemp(prefix="stablekit-preview-"))
        return self._temp

    def _kind_dirs(self, kind: str) -> list[Path]:
        if self.models is None:
            return []
        dirs = [self.models / kind]
        if kind == "checkpoints":
            dirs.append(self.models)
        return [d for d in dirs if d.is_dir()]

    def list(self, kind: str) -> list[str]:
        """File names a combo input offers: relative posix paths under the kind's folder."""
        names: list[str] = [EMBEDDED_CHECKPOINT] if kind == "checkpoints" else []
        if kind == "input":
            roots, suffixes = ([self.input] if self.input is not None and self.input.is_dir() else []), IMAGE_SUFFIXES
        else:
            roots, suffixes = self._kind_dirs(kind), MODEL_KINDS[kind]
        for root in roots:
            recursive = not (kind == "checkpoints" and root == self.models)
            files = root.rglob("*") if recursive else root.iterdir()
            for path in sorted(files):
                if path.is_file() and path.suffix.lower() in suffixes:
                    name = path.relative_to(root).as_posix()
                    if name not in names:
                        names.append(name)
        return names

    def resolve(self, kind: str, name: str) -> Path:
        """The file a listed name means; names not listed (traversal, missing files) are refused."""
        from stablekit import EMBEDDED_MODEL

        if kind == "checkpoints" and name == EMBEDDED_CHECKPOINT:
            return EMBEDDED_MODEL
        roots = [self.input] if kind == "input" and self.input is not None else self._kind_dirs(kind)
        if name in self.list(kind):
            for root in roots:
                if (root / name).is_file():
                    return root / name
        where = {"input": "--input"}.get(kind, f"--models DIR/{kind}")
        raise StablekitError(f"{kind} file {name!r} not found; put it under {where} or pick one of: "
                             f"{', '.join(self.list(kind)[:8]) or 'none'}")
