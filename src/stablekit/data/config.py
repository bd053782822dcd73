"""Dataset settings as typed dataclasses, and kohya's dataset TOML validated into them.

kohya's layout: `[general]` holds defaults for everything, each `[[datasets]]` entry a group
with its own resolution and bucketing, each `[[datasets.subsets]]` entry a folder (image_dir) or
a metadata JSON (metadata_file) with its own captions and augmentations. A value set lower wins
(subset > dataset > general), as in kohya's config_util. Unknown keys are errors that name the key.
"""
from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from stablekit.errors import StablekitError

# kohya keys stablekit reads but does not implement: accepted at their off value only.
UNSUPPORTED_OFF = {"color_aug": False, "face_crop_aug_range": None, "token_warmup_min": 1, "token_warmup_step": 0,
                   "caption_tag_dropout_rate": 0.0, "caption_dropout_every_n_epochs": 0, "alpha_mask": False,
                   "enable_wildcard": False, "keep_tokens_separator": "", "secondary_separator": None,
                   "custom_attributes": None, "network_multiplier": 1.0, "cache_info": False,
                   "resize_interpolation": None}


@dataclass
class SubsetConfig:
    """One source of images (kohya's subset keys): where they are and how each is augmented."""

    image_dir: str | None = None
    metadata_file: str | None = None  # kohya metadata JSON {image: {"caption": ..., "tags": ...}}
    conditioning_data_dir: str | None = None  # ControlNet: same-name conditioning images
    caption_extension: str = ".txt"
    class_tokens: str | None = None  # DreamBooth: the caption of images without a caption file
    is_reg: bool = False  # regularisation / class images (prior preservation)
    num_repeats: int = 1
    shuffle_caption: bool = False
    keep_tokens: int = 0
    caption_separator: str = ","
    caption_prefix: str = ""
    caption_suffix: str = ""
    caption_dropout_rate: float = 0.0
    flip_aug: bool = False
    random_crop: bool = False


@dataclass
class DatasetConfig:
    """Settings of a dataset: size and bucketing (kohya's dataset keys) plus subset defaults.

    For a folder, metadata.jsonl or CSV source these are all the settings; for a kohya TOML they
    are the defaults under its [general] section (the TOML wins where it sets a value).
    resolution: int or (width, height): the training size, the bucket area with bucketing.
    strict_images: an undecodable image is fatal (else skipped and counted in `skipped`).
    """

    resolution: int | tuple[int, int] = 512
    batch_size: int | None = None  # a default for the trainer; the loop's batch size decides
    enable_bucket: bool = False
    min_bucket_reso: int = 256
    max_bucket_reso: int = 1024
    bucket_reso_steps: int = 64
    bucket_no_upscale: bool = False
    strict_images: bool = False
    caption_column: str | None = None  # jsonl/CSV: the caption column (default: text or caption)
    subset: SubsetConfig = field(default_factory=SubsetConfig)

    @property
    def size(self) -> tuple[int, int]:
        r = self.resolution
        return (r, r) if isinstance(r, int) else (int(r[0]), int(r[1]))

    def validate(self) -> "DatasetConfig":
        w, h = self.size
        if w < 8 or h < 8:
            raise StablekitError(f"dataset resolution must be at least 8 (got {self.resolution})")
        if self.enable_bucket and not self.bucket_no_upscale and not (
                self.min_bucket_reso <= min(w, h) and max(w, h) <= self.max_bucket_reso):
            raise StablekitError(f"bucket sizes {self.min_bucket_reso}..{self.max_bucket_reso} must contain the "
                                 f"resolution {w}x{h}: set min_bucket_reso / max_bucket_reso")
        s = self.subset
        if s.num_repeats < 1 or s.keep_tokens < 0 or not 0 <= s.caption_dropout_rate <= 1:
            raise StablekitError(f"num_repeats must be >= 1, keep_tokens >= 0, caption_dropout_rate in [0, 1] "
                                 f"(got {s.num_repeats}, {s.keep_tokens}, {s.caption_dropout_rate})")
        return self


_SUBSET_KEYS = {f.name for f in dataclasses.fields(SubsetConfig)}
_GROUP_KEYS = {f.name for f in dataclasses.fields(DatasetConfig)} - {"subset", "strict_images", "caption_column"}


def _type_ok(default, value) -> bool:
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if isinstance(default, float):
        return isinstance(value, (int, float))
    if isinstance(default, int):
        return isinstance(value, int)
    if isinstance(default, str):
        return isinstance(value, str)
    return value is None or isinstance(value, (str, int))  # optional path / text / number


def _typed(cls, values: dict, where: str):
    """Build dataclass `cls` from values, checking each value's type against the field default."""
    for f in dataclasses.fields(cls):
        if f.name not in values or f.name == "subset":
            continue
        v = values[f.name]
        if f.name == "resolution":
            ok = isinstance(v, int) and not isinstance(v, bool) or (
                isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, int) for x in v))
            values[f.name] = v if isinstance(v, int) or not ok else (int(v[0]), int(v[1]))
        else:
            ok = _type_ok(f.default, v)
        if not ok:
            raise StablekitError(f"{where}: {f.name} = {v!r} has the wrong type (expected like {f.default!r})")
    return cls(**values)


def _check_keys(table: dict, allowed: set[str], where: str) -> dict:
    out = {}
    for key, value in table.items():
        if key in UNSUPPORTED_OFF:
            if value != UNSUPPORTED_OFF[key] and value not in (None, False, 0, ""):
                raise StablekitError(f"{where}: kohya option {key} = {value!r} is not supported by stablekit; remove it")
            continue
        if key not in allowed:
            raise StablekitError(f"{where}: unknown key {key!r}; valid keys: {', '.join(sorted(allowed))}")
        out[key] = value
    return out


@dataclass
class KohyaGroup:
    """One [[datasets]] entry: its group settings and its subsets."""

    config: DatasetConfig
    subsets: list[SubsetConfig]


def read_kohya_toml(path: Path, defaults: DatasetConfig | None = None) -> list[KohyaGroup]:
    """Parse and validate a kohya dataset TOML into groups of typed subsets. Relative
    image_dir / metadata_file / conditioning_data_dir are resolved against the TOML's folder
    when they exist there, else kept relative to the working directory (kohya's behaviour)."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise StablekitError(f"cannot read dataset TOML {path}: {exc}") from None
    base = defaults or DatasetConfig()
    top = _check_keys({k: v for k, v in data.items()}, {"general", "datasets"}, str(path))
    general = _check_keys(top.get("general", {}), _GROUP_KEYS | _SUBSET_KEYS, f"{path} [general]")
    datasets = top.get("datasets", [])
    if not isinstance(datasets, list) or not datasets:
        raise StablekitError(f"{path}: no [[datasets]] entries; add one with a [[datasets.subsets]] image_dir")
    groups = []
    for i, ds in enumerate(datasets):
        where = f"{path} datasets[{i}]"
        ds = _check_keys(ds, _GROUP_KEYS | _SUBSET_KEYS | {"subsets"}, where)
        group_values = {**{k: v for k, v in dataclasses.asdict(base).items() if k in _GROUP_KEYS},
                        **{k: v for k, v in general.items() if k in _GROUP_KEYS},
                        **{k: v for k, v in ds.items() if k in _GROUP_KEYS}}
        group = _typed(DatasetConfig, group_values, where)
        group.strict_images, group.caption_column = base.strict_images, base.caption_column
        subsets = []
        for j, sub in enumerate(ds.get("subsets", [])):
            swhere = f"{where}.subsets[{j}]"
            sub = _check_keys(sub, _SUBSET_KEYS, swhere)
            values = {**dataclasses.asdict(base.subset), **{k: v for k, v in general.items() if k in _SUBSET_KEYS},
                      **{k: v for k, v in ds.items() if k in _SUBSET_KEYS}, **sub}
            subset = _typed(SubsetConfig, values, swhere)
            if not subset.image_dir and not subset.metadata_file:
                raise StablekitError(f"{swhere}: give image_dir (a folder of images) or metadata_file (kohya JSON)")
            for key in ("image_dir", "metadata_file", "conditioning_data_dir"):
                value = getattr(subset, key)
                if value and not Path(value).is_absolute() and (path.parent / value).exists():
                    setattr(subset, key, str(path.parent / value))
            subsets.append(subset)
        if not subsets:
            raise StablekitError(f"{where}: no [[datasets.subsets]]; add one with image_dir")
        group.subset = subsets[0]
        groups.append(KohyaGroup(group.validate(), subsets))
    return groups
