"""Near-duplicate detection for `data prepare`: a 64-bit perceptual hash (imagehash.phash, a DCT
of the 32x32 grayscale image) compared by Hamming distance, confirmed by an 8x8 colour thumbnail."""
from __future__ import annotations

import numpy as np
from PIL import Image

from stablekit.data.prepare_walk import Skip


class DuplicateIndex:
    """Perceptual hashes of the kept images. A 64-bit pHash sees only luminance structure, so
    two flat images of different colours hash alike; an 8x8 colour thumbnail must agree too."""

    COLOR_TOLERANCE = 12.0  # mean absolute difference of the 8x8 RGB thumbnails, of 255

    def __init__(self, distance: int, capacity: int = 1024):
        self.distance = distance
        self.bits = np.zeros(max(1, capacity), dtype=np.uint64)  # grown by doubling: one vector compare per image
        self.thumbs: list[np.ndarray] = []
        self.names: list[str] = []

    def check(self, image: Image.Image, name: str) -> Skip | None:
        """Skip("duplicate") naming the kept image `image` repeats, else None (and it is kept)."""
        import imagehash

        bits = int(str(imagehash.phash(image)), 16)
        thumb = np.asarray(image.resize((8, 8), Image.Resampling.BOX), dtype=np.float32)
        n = len(self.names)
        dist = np.bitwise_count(self.bits[:n] ^ np.uint64(bits))
        for i in np.flatnonzero(dist <= self.distance):
            if np.abs(self.thumbs[i] - thumb).mean() <= self.COLOR_TOLERANCE:
                return Skip("duplicate", f"duplicate of {self.names[i]} (phash distance {int(dist[i])})")
        if n == len(self.bits):
            self.bits = np.concatenate([self.bits, np.zeros_like(self.bits)])
        self.bits[n] = bits
        self.thumbs.append(thumb)
        self.names.append(name)
        return None
