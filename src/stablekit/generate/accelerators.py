"""Opt-in lossy accelerators, by the names users know: DeepCache (generate/deepcache.py), token
merging (ToMe, generate/tome.py) and a tiny VAE decoder (TAESD, generate/tiny_vae.py).

They change the image (unlike generate/acceleration.py's exact path), so they are off unless asked
for, per call: `pipe.generate(..., deepcache=3, tome=0.5, tiny_vae="taesd")` or `stablekit generate
--deepcache 3 --tome 0.5 --tiny-vae taesd`. What was used goes into the image's parameters text
("DeepCache: 3", "Token merging ratio: 0.5" as A1111, "Tiny VAE: taesd, Tiny VAE hash: ...") and its
stablekit record.
"""
from __future__ import annotations

from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from stablekit.errors import StablekitError


@dataclass
class Accelerators:
    """The accelerators asked for in one generate() call (0 / None: off)."""

    deepcache: int = 0  # full UNet every N calls, shallow branch in between (N >= 2; 0 or 1: off)
    tiny_vae: str | None = None  # TAESD decoder file or AutoencoderTiny folder used to decode
    tome: float = 0.0  # share of tokens merged in the highest-resolution self-attention (0: off)

    SETTINGS = ("deepcache", "tiny_vae", "tome")

    @classmethod
    def take(cls, settings: dict) -> "Accelerators":
        """Remove this module's keys from a generate() settings dict and validate them."""
        found = cls(**{k: settings.pop(k) for k in cls.SETTINGS if k in settings and settings[k] is not None})
        n = found.deepcache
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise StablekitError(f"deepcache must be a whole number >= 0 (got {n!r}): a full UNet call every N steps, "
                                 "e.g. 3; 0 turns it off")
        from stablekit.generate.tome import check_ratio

        found.tome = check_ratio(found.tome)
        if found.tiny_vae is not None:
            if not isinstance(found.tiny_vae, (str, Path)):
                raise StablekitError(f"tiny_vae must be a path to a TAESD decoder or AutoencoderTiny folder "
                                     f"(got {found.tiny_vae!r})")
            from stablekit.generate.tiny_vae import decoder_file

            decoder_file(Path(found.tiny_vae))  # a bad path fails before any sampling
            found.tiny_vae = str(found.tiny_vae)
        return found

    def fields(self) -> dict:
        """A1111-style parameters-text fields (DeepCache is an A1111 extension's name too)."""
        out: dict = {"DeepCache": self.deepcache} if self.deepcache > 1 else {}
        if self.tome > 0:
            out["Token merging ratio"] = self.tome  # A1111's own field for the same tomesd math
        if self.tiny_vae:
            name, digest = _tiny_vae_identity(self.tiny_vae)
            out.update({"Tiny VAE": name, "Tiny VAE hash": digest})
        return out

    def record(self) -> dict:
        out: dict = {"deepcache": self.deepcache} if self.deepcache > 1 else {}
        if self.tome > 0:
            out["tome"] = self.tome
        if self.tiny_vae:
            name, digest = _tiny_vae_identity(self.tiny_vae)
            out["tiny_vae"] = {"name": name, "hash": digest, "path": self.tiny_vae}
        return out


def _tiny_vae_identity(path: str) -> tuple[str, str]:
    """(name, short sha256 of the decoder weights) of a tiny VAE path."""
    import hashlib

    from stablekit.generate.tiny_vae import decoder_file

    p = Path(path)
    file, _ = decoder_file(p)
    digest = hashlib.sha256(file.read_bytes()).hexdigest()[:10]  # a TAESD decoder is about 5 MB
    return (p.stem if p.is_file() else p.name), digest


@contextmanager
def use_accelerators(components, accelerators: Accelerators | None, used=None):
    """The accelerators on for the duration; their text/record fields added to `used` (UsedNetworks)."""
    from stablekit.generate.deepcache import deepcache
    from stablekit.generate.tiny_vae import tiny_vae_decoding
    from stablekit.generate.tome import tome

    if accelerators is None:
        yield None
        return
    if used is not None:
        used.infotext.update(accelerators.fields())
        used.record.update(accelerators.record())
    with ExitStack() as stack:
        stack.enter_context(tiny_vae_decoding(components, accelerators.tiny_vae))
        stack.enter_context(tome(components.unet, accelerators.tome))
        yield stack.enter_context(deepcache(components.unet, accelerators.deepcache))
