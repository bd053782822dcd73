"""Ground-truth renderer of the shapes world (docs: /work/shared/specs/shapes-world.md).

One object on a solid background, 64x64 RGB. Shapes are drawn at 4x supersampling with PIL
and box-filtered down, so edges are anti-aliased and a pixel fully inside the object keeps the
exact palette color. Geometry is in continuous image coordinates: the image spans [0, 64] on both
axes, y grows downwards, and the object center is the center of its circumscribed circle.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from stablekit.errors import StablekitError

IMAGE_SIZE = 64
SUPERSAMPLE = 4

BASE_SHAPES = ("circle", "square", "triangle", "star")
RESERVED_SHAPES = ("hexagon", "cross", "diamond")
ALL_SHAPES = BASE_SHAPES + RESERVED_SHAPES

PALETTE = {
    "red": (220, 40, 40),
    "green": (40, 170, 70),
    "blue": (40, 80, 220),
    "yellow": (240, 210, 40),
    "purple": (140, 60, 190),
    "orange": (245, 130, 30),
    "white": (240, 240, 240),
    "black": (25, 25, 25),
}
COLORS = tuple(PALETTE)
TEAL = (0, 160, 160)  # reserved for the DreamBooth subject, never in base data
ALL_COLORS = {**PALETTE, "teal": TEAL}

SIZES = {"small": (14.0, 18.0), "large": (30.0, 36.0)}  # circumscribed diameter range, px
POSITIONS = {
    "center": (32.0, 32.0),
    "left": (18.0, 32.0),
    "right": (46.0, 32.0),
    "top": (32.0, 18.0),
    "bottom": (32.0, 46.0),
}
POSITION_JITTER = 3.0  # px, uniform in each axis
MAX_ROTATION = 10.0  # degrees, uniform
OUTLINE_STROKE = 3.0  # px
FIT_MARGIN = 1.0  # px kept free between a shifted-in object and the frame

STAR_INNER_RATIO = math.cos(math.radians(72)) / math.cos(math.radians(36))  # regular pentagram
CROSS_HALF_EXTENT = 1.0 / math.hypot(1.0, 1.0 / 3.0)  # arm length such that circumradius = 1


@dataclass(frozen=True)
class ShapeSpec:
    """Everything that determines one rendered image.

    `position` names one of POSITIONS; the drawn center is that point plus (`dx`, `dy`), shifted
    inward when the object would not fit the frame. `diameter` is the circumscribed diameter in
    px and `rotation` is in degrees (positive = counter-clockwise on screen).
    """

    shape: str = "circle"
    color: str = "red"
    background: str = "blue"
    size: str = "large"
    position: str = "center"
    rotation: float = 0.0
    dx: float = 0.0
    dy: float = 0.0
    diameter: float = 33.0
    hollow: bool = False

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ShapeSpec":
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})


def _unit_polygon(shape: str) -> np.ndarray:
    """Vertices of `shape` with circumradius 1, centered at 0, in screen coordinates (y down)."""
    def ring(angles_deg, radii=1.0):
        a = np.radians(np.asarray(angles_deg, dtype=np.float64))
        r = np.broadcast_to(np.asarray(radii, dtype=np.float64), a.shape)
        return np.stack([r * np.cos(a), -r * np.sin(a)], axis=1)  # screen y points down

    if shape == "square":
        return ring([45, 135, 225, 315])
    if shape == "diamond":
        return ring([0, 90, 180, 270])
    if shape == "triangle":
        return ring([90, 210, 330])  # point up
    if shape == "hexagon":
        return ring([0, 60, 120, 180, 240, 300])  # vertices left/right: flat top
    if shape == "star":
        angles = 90 + 36 * np.arange(10)
        radii = np.where(np.arange(10) % 2 == 0, 1.0, STAR_INNER_RATIO)
        return ring(angles, radii)  # first point up
    if shape == "cross":
        a, w = CROSS_HALF_EXTENT, CROSS_HALF_EXTENT / 3.0
        pts = [(a, w), (w, w), (w, a), (-w, a), (-w, w), (-a, w),
               (-a, -w), (-w, -w), (-w, -a), (w, -a), (w, -w), (a, -w)]
        return np.asarray(pts, dtype=np.float64)
    raise StablekitError(f"unknown shape {shape!r}; use one of {', '.join(ALL_SHAPES)}")


_UNIT_POLYGONS = {s: _unit_polygon(s) for s in ALL_SHAPES if s != "circle"}


def _inset(poly: np.ndarray, t: float) -> np.ndarray:
    """Polygon whose edges are `poly`'s moved `t` px inward (mitred), for the outline style."""
    nxt = np.roll(poly, -1, axis=0)
    d = nxt - poly
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    # The interior lies left of each edge direction when the signed area is positive.
    area = 0.5 * np.sum(poly[:, 0] * nxt[:, 1] - nxt[:, 0] * poly[:, 1])
    normal = np.stack([-d[:, 1], d[:, 0]], axis=1) * (1.0 if area > 0 else -1.0)
    p = poly + t * normal  # a point on each offset edge line
    out = []
    for i in range(len(poly)):
        j = i - 1  # previous edge meets edge i at vertex i
        a1, d1, a2, d2 = p[j], d[j], p[i], d[i]
        den = d1[0] * d2[1] - d1[1] * d2[0]
        s = ((a2[0] - a1[0]) * d2[1] - (a2[1] - a1[1]) * d2[0]) / den
        out.append(a1 + s * d1)
    return np.asarray(out)


def shape_outline(spec: ShapeSpec) -> np.ndarray | None:
    """The drawn polygon of `spec` before fitting, centered at 0 (None for a circle)."""
    if spec.shape == "circle":
        return None
    if spec.shape not in _UNIT_POLYGONS:
        _unit_polygon(spec.shape)  # raises the error naming valid shapes
    r = spec.diameter / 2.0
    th = math.radians(spec.rotation)
    rot = np.array([[math.cos(th), math.sin(th)], [-math.sin(th), math.cos(th)]])  # y down
    return (_UNIT_POLYGONS[spec.shape] * r) @ rot.T


def spec_center(spec: ShapeSpec) -> tuple[float, float]:
    """The drawn center: position + jitter, shifted inward until the object fits the frame."""
    if spec.position not in POSITIONS:
        raise StablekitError(f"unknown position {spec.position!r}; use one of {', '.join(POSITIONS)}")
    px, py = POSITIONS[spec.position]
    cx, cy = px + spec.dx, py + spec.dy
    poly = shape_outline(spec)
    if poly is None:
        lo = hi = np.array([spec.diameter / 2.0] * 2)
        lo = -lo
    else:
        lo, hi = poly.min(axis=0), poly.max(axis=0)
    center = np.array([cx, cy])
    low_edge = FIT_MARGIN - lo          # the smallest center that fits
    high_edge = IMAGE_SIZE - FIT_MARGIN - hi  # the largest center that fits
    center = np.minimum(np.maximum(center, low_edge), high_edge)
    return float(center[0]), float(center[1])


def render_alpha(spec: ShapeSpec) -> np.ndarray:
    """Coverage of the object per pixel, float32 [64, 64] in [0, 1] (the exact object mask)."""
    ss = SUPERSAMPLE
    n = IMAGE_SIZE * ss
    cx, cy = spec_center(spec)
    canvas = Image.new("L", (n, n), 0)
    draw = ImageDraw.Draw(canvas)

    def to_px(pts):  # continuous coords -> supersampled PIL coords (pixel centers at integers)
        return [(float(x * ss - 0.5), float(y * ss - 0.5)) for x, y in pts]

    def fill(radius_or_poly, value):
        if isinstance(radius_or_poly, float):
            r = radius_or_poly
            draw.ellipse([(cx - r) * ss, (cy - r) * ss, (cx + r) * ss - 1, (cy + r) * ss - 1], fill=value)
        else:
            draw.polygon(to_px(radius_or_poly + [cx, cy]), fill=value)

    poly = shape_outline(spec)
    outer = spec.diameter / 2.0 if poly is None else poly
    fill(outer, 255)
    if spec.hollow:
        inner = spec.diameter / 2.0 - OUTLINE_STROKE if poly is None else _inset(poly, OUTLINE_STROKE)
        fill(inner, 0)
    small = canvas.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def _rgb(name: str) -> np.ndarray:
    if name not in ALL_COLORS:
        raise StablekitError(f"unknown color {name!r}; use one of {', '.join(ALL_COLORS)}")
    return np.asarray(ALL_COLORS[name], dtype=np.float32)


def render(spec: ShapeSpec) -> np.ndarray:
    """Render `spec` as a uint8 [64, 64, 3] sRGB image (alpha-blended object on its background)."""
    if spec.color == spec.background:
        raise StablekitError(f"object and background are both {spec.color!r}; pick different colors")
    alpha = render_alpha(spec)[..., None]
    bg, fg = _rgb(spec.background), _rgb(spec.color)
    return np.rint(bg + (fg - bg) * alpha).astype(np.uint8)


def sample_spec(
    rng: np.random.Generator,
    shapes=BASE_SHAPES,
    colors=COLORS,
    backgrounds=COLORS,
    sizes=tuple(SIZES),
    positions=tuple(POSITIONS),
    hollow: bool = False,
    **fixed,
) -> ShapeSpec:
    """Draw a random spec; `fixed` pins any field (e.g. shape="hexagon", color="teal").

    Every random field is drawn in the same order whatever is pinned, so pinning one field does
    not change the others for the same generator state. The object color is drawn among `colors`
    minus the background. `hollow=True` (the outline style) forces the large size.
    """
    background = str(rng.choice(list(backgrounds)))

    def clashes(bg):  # the object could not get a color different from this background
        if "color" in fixed:
            return fixed["color"] == bg
        return all(c == bg for c in colors)

    if "background" not in fixed and clashes(background):  # never in the default stream
        fine = [b for b in backgrounds if not clashes(b)]
        background = str(rng.choice(fine)) if fine else background
    obj_choices = [c for c in colors if c != fixed.get("background", background)]
    color = str(rng.choice(obj_choices)) if obj_choices else None
    shape = str(rng.choice(list(shapes)))
    size = str(rng.choice(list(sizes)))
    position = str(rng.choice(list(positions)))
    u = rng.random(4)
    values = dict(shape=shape, color=color, background=background, size=size, position=position,
                  hollow=bool(hollow))
    values.update(fixed)
    if values["hollow"]:
        values["size"] = "large"
    if values["color"] is None or values["color"] == values["background"]:
        raise StablekitError(f"no object color differs from background {values['background']!r}; "
                             f"pass colors that include another one")
    lo, hi = SIZES[values["size"]]
    values.setdefault("rotation", float((2 * u[0] - 1) * MAX_ROTATION))
    values.setdefault("dx", float((2 * u[1] - 1) * POSITION_JITTER))
    values.setdefault("dy", float((2 * u[2] - 1) * POSITION_JITTER))
    values.setdefault("diameter", float(lo + (hi - lo) * u[3]))
    return ShapeSpec(**values)
