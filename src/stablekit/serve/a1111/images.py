"""Images in and out of the A1111 API: base64 <-> PIL, and A1111's inpainting pre-processing.

`decode_image` reads what A1111's decode_base64_to_image reads (plain base64 or a `data:image/...;base64,`
URL); URLs to fetch are refused (the server is offline). `fill_masked` is A1111's "fill" masked
content (modules/masking.py `fill`: the hole filled with ever less blurred copies of the pixels
around it); `crop_region` / `paste_region` are its "Only masked" inpainting (inpaint_full_res):
the masked region plus padding, widened to the output's aspect ratio, is inpainted at the full
output size and pasted back.
"""
from __future__ import annotations

import base64
import binascii
import io

from PIL import Image, ImageFilter, ImageOps

from stablekit.serve.a1111.fields import PayloadError

MAX_PIXELS = 4096 * 4096  # refuse decompression bombs before decoding


def decode_image(data: str, what: str) -> Image.Image:
    """A base64 image (PNG, JPEG, WebP ...) as a loaded PIL image; a PayloadError otherwise."""
    if not isinstance(data, str) or not data.strip():
        raise PayloadError(f"{what} must be a base64-encoded image (got {type(data).__name__})")
    text = data.strip()
    if text.startswith(("http://", "https://")):
        raise PayloadError(f"{what} is a URL; this server does not fetch URLs: send the image as base64")
    if text.startswith("data:image/"):
        text = text.split(",", 1)[-1]
    try:
        raw = base64.b64decode(text, validate=False)
        image = Image.open(io.BytesIO(raw))
        if image.width * image.height > MAX_PIXELS:
            raise PayloadError(f"{what} is {image.width}x{image.height}; at most {MAX_PIXELS} pixels are accepted")
        image.load()
    except PayloadError:
        raise
    except (binascii.Error, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise PayloadError(f"{what} is not a valid base64-encoded image ({type(exc).__name__})") from None
    return image


def encode_png(path_or_bytes) -> str:
    """Base64 text of a PNG file (its bytes as written, metadata chunks included)."""
    raw = path_or_bytes if isinstance(path_or_bytes, bytes) else open(path_or_bytes, "rb").read()
    return base64.b64encode(raw).decode("ascii")


def pil_png_b64(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return encode_png(buf.getvalue())


def prepare_mask(mask: Image.Image, size: tuple[int, int], invert: bool, blur_x: int, blur_y: int) -> Image.Image:
    """A1111's mask handling before processing: greyscale (alpha counts as the mask when the
    image has one), inverted on request, resized to the image, Gaussian-blurred by mask_blur."""
    if mask.mode in ("RGBA", "LA"):
        mask = mask.getchannel("A") if mask.getextrema()[-1] != (255, 255) else mask.convert("L")
    mask = mask.convert("L")
    if invert:
        mask = ImageOps.invert(mask)
    if mask.size != size:
        mask = mask.resize(size, Image.LANCZOS)
    if blur_x > 0 or blur_y > 0:
        # A1111 1.5+ blurs x and y separately; one 2-D blur of the mean radius is what mask_blur means
        mask = mask.filter(ImageFilter.GaussianBlur((blur_x + blur_y) / 2))
    return mask


def fill_masked(image: Image.Image, mask: Image.Image) -> Image.Image:
    """A1111's inpainting_fill=0 ("fill"): the masked area replaced by blurred surroundings."""
    keep = ImageOps.invert(mask.convert("L"))
    masked = Image.new("RGBa", image.size)
    masked.paste(image.convert("RGBA").convert("RGBa"), mask=keep)
    result = Image.new("RGBA", image.size)
    for radius, repeats in ((256, 1), (64, 1), (16, 2), (4, 4), (2, 2), (0, 1)):
        blurred = masked.filter(ImageFilter.GaussianBlur(radius)).convert("RGBA")
        for _ in range(repeats):
            result.alpha_composite(blurred)
    return result.convert("RGB")


def crop_region(mask: Image.Image, padding: int, width: int, height: int) -> tuple[int, int, int, int] | None:
    """The box "Only masked" inpainting works on: the mask's bounding box plus `padding`, widened to
    the width:height aspect ratio and kept inside the image; None for an empty mask."""
    box = mask.point(lambda v: 255 if v > 0 else 0).getbbox()
    if box is None:
        return None
    w_img, h_img = mask.size
    x1, y1, x2, y2 = max(0, box[0] - padding), max(0, box[1] - padding), min(w_img, box[2] + padding), \
        min(h_img, box[3] + padding)
    want = width / height
    bw, bh = x2 - x1, y2 - y1
    if bw / bh < want:  # widen
        grow = int(bh * want) - bw
        x1, x2 = x1 - grow // 2, x2 + grow - grow // 2
    else:  # heighten
        grow = int(bw / want) - bh
        y1, y2 = y1 - grow // 2, y2 + grow - grow // 2
    # shift back inside the image, then clip
    if x1 < 0:
        x2, x1 = x2 - x1, 0
    if x2 > w_img:
        x1, x2 = max(0, x1 - (x2 - w_img)), w_img
    if y1 < 0:
        y2, y1 = y2 - y1, 0
    if y2 > h_img:
        y1, y2 = max(0, y1 - (y2 - h_img)), h_img
    return x1, y1, x2, y2


def paste_region(original: Image.Image, result: Image.Image, mask: Image.Image, box) -> Image.Image:
    """The inpainted crop resized back into its box of the original, blended through the mask."""
    x1, y1, x2, y2 = box
    patch = result.convert("RGB").resize((x2 - x1, y2 - y1), Image.LANCZOS)
    full = original.convert("RGB").copy()
    layer = full.copy()
    layer.paste(patch, (x1, y1))
    return Image.composite(layer, full, mask.convert("L"))
