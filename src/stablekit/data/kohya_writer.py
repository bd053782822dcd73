"""kohya sd-scripts' dataset files, written: the fine-tuning metadata JSON (what
`finetune/merge_captions_to_metadata.py` makes from .txt captions) and the dataset TOML
(`--dataset_config`, schema in kohya's docs/config_README: [general], [[datasets]],
[[datasets.subsets]]). Both are read by kohya and by stablekit.data.load_dataset.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from stablekit.data.captioning import list_images
from stablekit.errors import StablekitError


def collect_captions(folder: str | Path, caption_extension: str = ".txt",
                     recursive: bool = False) -> tuple[dict[Path, str], list[Path]]:
    """{image: caption} from same-name caption files (or folder/metadata.jsonl when there are
    none), and the images that have no caption."""
    folder = Path(folder)
    images = list_images(folder, recursive)
    jsonl = {}
    meta = folder / "metadata.jsonl"
    if meta.exists():
        for line in meta.read_text(encoding="utf-8").splitlines():
            if line.strip():
                rec = json.loads(line)
                jsonl[rec["file_name"]] = rec.get("text", rec.get("caption", ""))
    found, missing = {}, []
    for image in images:
        cap = image.with_suffix(caption_extension)
        if cap.exists():
            found[image] = cap.read_text(encoding="utf-8").strip()
        elif image.relative_to(folder).as_posix() in jsonl:
            found[image] = jsonl[image.relative_to(folder).as_posix()].strip()
        else:
            missing.append(image)
    return found, missing


def kohya_metadata(captions: dict[Path, str], full_path: bool = True) -> dict[str, dict]:
    """kohya's metadata: {image key: {"caption": text}}. The key is the image's full path with
    full_path (the lecture's `--full_path`), else its stem, which kohya resolves inside the
    subset's image_dir."""
    out = {}
    for image, text in sorted(captions.items()):
        key = str(image.absolute()) if full_path else image.stem
        if key in out:
            raise StablekitError(f"two images share the kohya key {key!r}; use full paths "
                                 f"(--full-path) or rename one")
        out[key] = {"caption": text}
    return out


def write_metadata_json(path: str | Path, metadata: dict, overwrite: bool = False) -> Path:
    """Write the metadata JSON (indented as kohya writes it); refuses to replace a file
    unless `overwrite`."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise StablekitError(f"{path} exists; pass --overwrite to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metadata, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


@dataclass
class Subset:
    """One [[datasets.subsets]] table (kohya's names). metadata_file makes it a fine-tuning
    subset; without it, a DreamBooth-style one reading caption files."""
    image_dir: str
    metadata_file: str | None = None
    num_repeats: int = 1
    is_reg: bool = False
    class_tokens: str | None = None
    caption_extension: str | None = None
    keep_tokens: int | None = None
    conditioning_data_dir: str | None = None


@dataclass
class DatasetToml:
    """A kohya dataset config with one dataset (what the lecture's labs write)."""
    subsets: list[Subset]
    resolution: int | tuple[int, int] = 512
    batch_size: int = 1
    enable_bucket: bool = False
    min_bucket_reso: int | None = None
    max_bucket_reso: int | None = None
    bucket_reso_steps: int | None = None
    shuffle_caption: bool = False
    keep_tokens: int | None = None
    caption_extension: str | None = None
    general_extra: dict = field(default_factory=dict)

    def validate(self) -> None:
        kinds = {s.metadata_file is not None for s in self.subsets}
        if len(kinds) > 1:  # kohya: a dataset is either fine-tuning or DreamBooth, never both
            raise StablekitError("a kohya dataset cannot mix subsets with metadata_file and caption-file "
                                 "subsets; write them as two datasets or use caption files for all")
        if any(s.is_reg and s.metadata_file for s in self.subsets):
            raise StablekitError("kohya's fine-tuning subsets (metadata_file) cannot be is_reg; "
                                 "use caption files for a regularisation set")

    def to_toml(self) -> str:
        """The TOML text, keys in kohya's documented order, unset values left out."""
        self.validate()
        general = {"shuffle_caption": self.shuffle_caption or None, "keep_tokens": self.keep_tokens,
                   "caption_extension": self.caption_extension, **self.general_extra}
        res = list(self.resolution) if isinstance(self.resolution, tuple) else self.resolution
        dataset = {"resolution": res, "batch_size": self.batch_size,
                   "enable_bucket": self.enable_bucket or None, "min_bucket_reso": self.min_bucket_reso,
                   "max_bucket_reso": self.max_bucket_reso, "bucket_reso_steps": self.bucket_reso_steps}
        parts = ["[general]", *_lines(general), "", "[[datasets]]", *_lines(dataset)]
        for s in self.subsets:
            parts += ["", "[[datasets.subsets]]", *_lines({
                "image_dir": s.image_dir, "metadata_file": s.metadata_file, "num_repeats": s.num_repeats,
                "is_reg": s.is_reg or None, "class_tokens": s.class_tokens,
                "caption_extension": s.caption_extension, "keep_tokens": s.keep_tokens,
                "conditioning_data_dir": s.conditioning_data_dir})]
        return "\n".join(parts) + "\n"

    def write(self, path: str | Path, overwrite: bool = False) -> Path:
        path = Path(path)
        if path.exists() and not overwrite:
            raise StablekitError(f"{path} exists; pass --overwrite to replace it")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_toml(), encoding="utf-8")
        return path


def _lines(table: dict) -> list[str]:
    return [f"{k} = {_value(v)}" for k, v in table.items() if v is not None]


def _value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    return json.dumps(str(v), ensure_ascii=False)  # JSON string escapes are valid TOML basic strings
