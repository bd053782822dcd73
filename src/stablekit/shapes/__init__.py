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
