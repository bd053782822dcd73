"""(image, condition, caption) datasets for ControlNet training, on the image-caption dataset.

Two layouts:
  a folder        images + same-name .txt captions, and a `conditioning/` subfolder holding one
                  same-name condition image per image (any image extension; another subfolder
                  with `conditioning_dir`)
  a kohya TOML    subsets with `conditioning_data_dir` (kohya-ss/sd-scripts' ControlNet datasets:
                  `image_dir` + `caption_extension` + `conditioning_data_dir` per subset)
Batches carry `conditioning_pixels` (float [B, 3, H, W] in [0, 1]), cropped, resized and flipped
exactly as their images (stablekit.data.dataset).
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from stablekit.errors import StablekitError

CONDITIONING_FOLDER = "conditioning"


def load_conditioning_dataset(source, resolution: int, conditioning_dir: str = "", caption_dropout: float = 0.0):
    """An ImageCaptionDataset whose every item has a condition image (see the module docstring).

    resolution: the training size (a TOML's own `resolution` wins); conditioning_dir: for a folder
    source, the condition folder ("" = SOURCE/conditioning; relative paths are under SOURCE);
    caption_dropout: share of captions replaced by "" (a TOML subset's `caption_dropout_rate` wins).
    """
    from stablekit.data.config import DatasetConfig, SubsetConfig
    from stablekit.data.dataset import load_dataset

    path = Path(source)
    if not path.exists():
        raise StablekitError(f"dataset {path} does not exist; give a folder with a {CONDITIONING_FOLDER}/ "
                             "subfolder or a kohya TOML with conditioning_data_dir")
    config = DatasetConfig(resolution=resolution, subset=SubsetConfig(caption_dropout_rate=caption_dropout))
    if path.is_dir():
        folder = Path(conditioning_dir) if conditioning_dir else path / CONDITIONING_FOLDER
        if not folder.is_absolute() and conditioning_dir:
            folder = path / folder
        if not folder.is_dir():
            raise StablekitError(f"no condition folder {folder}; put one same-name condition image per image "
                                 f"in {path / CONDITIONING_FOLDER}/ (or set conditioning_dir)")
        config = replace(config, subset=SubsetConfig(image_dir=str(path), conditioning_data_dir=str(folder),
                                                     caption_dropout_rate=caption_dropout))
    elif path.suffix.lower() != ".toml":
        raise StablekitError(f"{path}: ControlNet data is a folder with {CONDITIONING_FOLDER}/ or a kohya dataset "
                             "TOML with conditioning_data_dir")
    dataset = load_dataset(path, config)
    missing = [e.path for e in dataset.examples if e.conditioning is None]
    if missing:
        raise StablekitError(f"{len(missing)} image(s) without a condition image (first: {missing[0]}); set "
                             "conditioning_data_dir on every subset of the TOML")
    return dataset
