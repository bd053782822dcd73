"""What every trainer needs: image-caption datasets, encoders over them, on-disk caches, validation grids."""
from stablekit.data.arrays import LatentData, PixelData, image_grid, to_pixels, to_u8
from stablekit.data.encode import encode_latents, encode_text

__all__ = ["LatentData", "PixelData", "encode_latents", "encode_text", "image_grid", "to_pixels", "to_u8"]
