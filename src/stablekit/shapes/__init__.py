"""The shapes world: ground-truth renderer, captions, judge, fixed eval prompts, evaluation.

Spec: /work/shared/specs/shapes-world.md; guide: docs/shapes-world.md. The renderer and captions
need only numpy and PIL; the judge and evaluation are imported lazily.
"""
from stablekit.shapes.captions import (
    ATTRIBUTES, caption, caption_with_attrs, make_batch, render_dataset, sample_item,
)
from stablekit.shapes.render import (
    ALL_COLORS, ALL_SHAPES, BASE_SHAPES, COLORS, PALETTE, POSITIONS, RESERVED_SHAPES, SIZES, TEAL,
    ShapeSpec, render, render_alpha, sample_spec, spec_center,
)


_LAZY = {
    "Judge": "stablekit.shapes.judge",
    "evaluate_images": "stablekit.shapes.evaluate",
    "evaluate_model": "stablekit.shapes.evaluate",
    "load_prompt_set": "stablekit.shapes.prompts",
    "PromptItem": "stablekit.shapes.prompts",
}


def __getattr__(name):  # the judge needs torch: import it only when asked for
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'stablekit.shapes' has no attribute {name!r}")
