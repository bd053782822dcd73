"""Opt-in lossy accelerators, by the names users know: DeepCache (generate/deepcache.py).

They change the image (unlike generate/acceleration.py's exact path), so they are off unless asked
for, per call: `pipe.generate(..., deepcache=3)` or `stablekit generate --deepcache 3`. What was used
goes into the image's parameters text ("DeepCache: 3") and its stablekit record.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

from stablekit.errors import StablekitError


@dataclass
class Accelerators:
    """The accelerators asked for in one generate() call (0: off)."""

    deepcache: int = 0  # full UNet every N calls, shallow branch in between (N >= 2; 0 or 1: off)

    SETTINGS = ("deepcache",)

    @classmethod
    def take(cls, settings: dict) -> "Accelerators":
        """Remove this module's keys from a generate() settings dict and validate them."""
        found = cls(**{k: settings.pop(k) for k in cls.SETTINGS if k in settings and settings[k] is not None})
        n = found.deepcache
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise StablekitError(f"deepcache must be a whole number >= 0 (got {n!r}): a full UNet call every N steps, "
                                 "e.g. 3; 0 turns it off")
        return found

    def fields(self) -> dict:
        """A1111-style parameters-text fields (DeepCache is an A1111 extension's name too)."""
        return {"DeepCache": self.deepcache} if self.deepcache > 1 else {}

    def record(self) -> dict:
        return {"deepcache": self.deepcache} if self.deepcache > 1 else {}


@contextmanager
def use_accelerators(components, accelerators: Accelerators | None, used=None):
    """The accelerators on for the duration; their text/record fields added to `used` (UsedNetworks)."""
    from stablekit.generate.deepcache import deepcache

    if accelerators is None:
        yield None
        return
    if used is not None:
        used.infotext.update(accelerators.fields())
        used.record.update(accelerators.record())
    with deepcache(components.unet, accelerators.deepcache) as dc:
        yield dc
