"""What every trainer needs: image-caption datasets in the layouts users have (folder + .txt,
metadata.jsonl, CSV, kohya TOML / metadata JSON) with buckets and augmentations, encoders over
them, on-disk latent and text caches, and validation grids made by the generation API."""
from stablekit.data.arrays import LatentData, PixelData, image_grid, to_pixels, to_u8
from stablekit.data.config import DatasetConfig, SubsetConfig
from stablekit.data.dataset import ImageCaptionDataset, load_dataset
from stablekit.data.encode import encode_latents, encode_text

__all__ = ["DatasetConfig", "ImageCaptionDataset", "LatentData", "PixelData", "SubsetConfig", "encode_latents",
           "encode_text", "image_grid", "load_dataset", "to_pixels", "to_u8"]
