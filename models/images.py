"""Decode and sanitise uploaded images into plain RGB.

Light on purpose (Pillow + numpy, no torch): the HTTP API imports it to refuse bad uploads
with a 4xx before a job is queued, and the worker runs the same code again on what it gets.

Policy, in order:
- only the formats in ``ALLOWED_FORMATS`` are opened (content is sniffed, names are ignored);
- the declared size is checked against ``max_pixels`` from the header, before any pixel is
  decoded (a 30000×30000 PNG of a few hundred bytes is refused without inflating it);
- sides shorter than ``min_side`` are refused (nothing useful can be edited in them);
- truncated or corrupt data is refused (Pillow's LOAD_TRUNCATED_IMAGES is left off);
- the EXIF orientation is applied, so the pixels are the way a viewer shows them;
- an embedded ICC profile is converted to sRGB when Pillow's colour management can read it;
- every mode becomes 8-bit RGB: alpha is composited over white (transparent pixels often hide
  arbitrary colours), 16-bit and float greyscale are rescaled rather than clipped, CMYK and
  palette images are converted. Animated files give their first frame.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

logger = logging.getLogger(__name__)

ALLOWED_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "BMP", "GIF")
DEFAULT_MAX_PIXELS = 40_000_000  # 40 MP: every phone camera, well below Pillow's bomb limit
MIN_SIDE = 16  # px; a face or scene needs at least this much to be aligned or inverted
ALPHA_BACKGROUND = (255, 255, 255)  # transparent pixels become white
UINT16_TO_UINT8 = 257.0  # 65535 / 255
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError)


class ImageError(ValueError):
    """An upload that is not a usable image; the message says why, for the client.

    ``status`` is the HTTP status the API answers with: 415 not an image it reads, 413 too many
    pixels, 422 a readable image it cannot use (empty, too small).
    """

    def __init__(self, message: str, status: int = 415) -> None:
        super().__init__(message)
        self.status = status


def load_image(
    data: bytes,
    max_pixels: int,
    *,
    min_side: int = MIN_SIDE,
    formats: Sequence[str] = ALLOWED_FORMATS,
) -> Image.Image:
    """Decode ``data`` into a loaded 8-bit RGB image, or raise ``ImageError``."""
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be positive, got {max_pixels}")
    if not data:
        raise ImageError("the image is empty (0 bytes)", status=422)
    try:
        image = Image.open(io.BytesIO(data), formats=list(formats))
    except UnidentifiedImageError:
        raise ImageError(
            f"not a recognised image; supported formats: {', '.join(formats)}"
        ) from None
    except Image.DecompressionBombError as exc:
        raise ImageError(
            f"the image declares too many pixels (limit {max_pixels}): {exc}", status=413
        ) from None
    except _DECODE_ERRORS as exc:
        raise ImageError(f"the image header is corrupt: {exc}") from None

    width, height = image.size
    if width * height > max_pixels:
        raise ImageError(
            f"the image is {width}×{height} = {width * height} pixels; "
            f"the limit is {max_pixels} pixels",
            status=413,
        )
    if min(width, height) < min_side:
        raise ImageError(
            f"the image is {width}×{height}; each side needs at least {min_side} px", status=422
        )
    try:
        image.load()
    except Image.DecompressionBombError as exc:
        raise ImageError(
            f"the image declares too many pixels (limit {max_pixels}): {exc}", status=413
        ) from None
    except _DECODE_ERRORS as exc:
        raise ImageError(f"the image data is truncated or corrupt: {exc}") from None
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """Orientation applied, sRGB where a profile says otherwise, 8-bit RGB; a new image."""
    image = _apply_orientation(image)
    image = _to_srgb(image)
    mode = image.mode
    if mode == "RGB":
        return image.copy()
    if mode.startswith("I") or mode == "F":
        return _scaled_grey(image).convert("RGB")
    if mode in _ALPHA_MODES or (mode in ("P", "L", "RGB") and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*ALPHA_BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    try:
        return image.convert("RGB")
    except ValueError as exc:
        raise ImageError(f"cannot convert an image of mode {mode} to RGB: {exc}") from None


def _apply_orientation(image: Image.Image) -> Image.Image:
    """Rotate/flip as the EXIF orientation tag says; a broken EXIF block is ignored."""
    try:
        return ImageOps.exif_transpose(image)
    except _DECODE_ERRORS + (KeyError,) as exc:
        logger.warning("ignoring an unreadable EXIF orientation: %s", exc)
        return image


def _to_srgb(image: Image.Image) -> Image.Image:
    """Convert RGB/CMYK pixels from an embedded ICC profile to sRGB (best effort)."""
    icc = image.info.get("icc_profile")
    if not icc or image.mode not in ("RGB", "RGBA", "CMYK"):
        return image
    alpha = image.getchannel("A") if image.mode == "RGBA" else None
    base = image.convert("RGB") if image.mode == "RGBA" else image
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        converted = ImageCms.profileToProfile(
            base, source, ImageCms.createProfile("sRGB"), outputMode="RGB"
        )
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError) as exc:
        logger.info("ignoring an unusable ICC profile: %s", exc)
        return image
    assert converted is not None  # profileToProfile returns the image unless inPlace
    if alpha is not None:
        converted.putalpha(alpha)
    return converted


def _scaled_grey(image: Image.Image) -> Image.Image:
    """16-bit / 32-bit / float greyscale to 8-bit 'L', rescaled rather than clipped."""
    values = np.asarray(image, dtype=np.float64)  # (H, W)
    if image.mode == "F":
        top = float(values.max()) if values.size else 0.0
        values = values * 255.0 if top <= 1.0 else values
    elif image.mode.startswith("I;16") or float(values.max(initial=0.0)) > 255.0:
        values = values / UINT16_TO_UINT8
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")
