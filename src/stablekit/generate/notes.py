"""One-line notes and warnings on stderr: things a user should know that are not errors.

Kept to one line each (the CLI's style for errors too), printed as `stablekit: note: ...` or
`stablekit: warning: ...`. Extra-network tags (`<lora:name:0.8>`) are loaded by generate/networks.py,
which warns here about the tags it cannot apply.
"""
from __future__ import annotations

import sys


def note(message: str) -> None:
    """Print `stablekit: note: <message>` to stderr (one line)."""
    print(f"stablekit: note: {message}", file=sys.stderr)


def warn(message: str) -> None:
    """Print `stablekit: warning: <message>` to stderr (one line)."""
    print(f"stablekit: warning: {message}", file=sys.stderr)


def size_note(width: int, height: int, native: int) -> str | None:
    """A note when width x height is far (4x or more in pixels) from the model's native square size.

    The UNet's work per step grows at least with the pixel count (convolutions linearly, attention
    faster), so the pixel ratio is a lower bound on the slowdown per step.
    """
    ratio = width * height / float(native * native)
    if ratio >= 4:
        return (f"{width}x{height} is {ratio:.0f}x the pixels of this model's native {native}x{native}: expect each "
                f"step to take at least {ratio:.0f}x as long, and images unlike its training size")
    if ratio <= 0.25:
        return (f"{width}x{height} is 1/{1 / ratio:.0f} of the pixels of this model's native {native}x{native}: "
                "faster, but the model was not trained at this size")
    return None
