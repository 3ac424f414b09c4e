"""Upload decoding: bad bytes, bombs and odd modes are refused or turned into plain RGB."""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from PIL import Image

from models.images import DEFAULT_MAX_PIXELS, ImageError, load_image, to_rgb
from tests.conftest import IMAGES, ROOT


def encode(image: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A tiny, valid-looking PNG whose header declares ``width`` × ``height`` RGB pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def test_real_photo_loads_as_rgb() -> None:
    image = load_image((IMAGES / "astronaut.png").read_bytes(), DEFAULT_MAX_PIXELS)
    assert image.mode == "RGB" and image.size == (512, 512)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"this is not an image at all", "not a recognised image"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "not a recognised image"),
    ],
)
def test_garbage_is_refused(data: bytes, message: str) -> None:
    with pytest.raises(ImageError, match=message):
        load_image(data, DEFAULT_MAX_PIXELS)


def test_truncated_png_is_refused() -> None:
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = encode(Image.fromarray(noise), "PNG")
    with pytest.raises(ImageError, match="truncated or corrupt"):
        load_image(data[: len(data) // 2], DEFAULT_MAX_PIXELS)


def test_tiny_image_is_refused() -> None:
    with pytest.raises(ImageError, match="at least"):
        load_image(encode(Image.new("RGB", (1, 1)), "PNG"), DEFAULT_MAX_PIXELS)


def test_decompression_bomb_is_refused_from_the_header() -> None:
    bomb = png_declaring(30000, 30000)  # 900 MP declared in ~100 bytes
    assert len(bomb) < 200
    with pytest.raises(ImageError, match="pixels"):
        load_image(bomb, DEFAULT_MAX_PIXELS)
    # Below Pillow's own bomb threshold, our limit is what refuses it, before decoding.
    with pytest.raises(ImageError, match=r"3000×3000 = 9000000 pixels; the limit is 1000000"):
        load_image(png_declaring(3000, 3000), 1_000_000)


def test_unlisted_format_is_refused() -> None:
    data = encode(Image.new("RGB", (32, 32)), "TIFF")
    with pytest.raises(ImageError, match="supported formats"):
        load_image(data, DEFAULT_MAX_PIXELS)


def test_grayscale_becomes_grey_rgb() -> None:
    image = load_image(encode(Image.new("L", (32, 32), 77), "PNG"), DEFAULT_MAX_PIXELS)
    assert image.mode == "RGB" and image.getpixel((3, 3)) == (77, 77, 77)


def test_16_bit_grayscale_is_rescaled_not_clipped() -> None:
    image = load_image(encode(Image.new("I;16", (32, 32), 40000), "PNG"), DEFAULT_MAX_PIXELS)
    assert image.getpixel((0, 0)) == (156, 156, 156)  # 40000 / 257


def test_cmyk_jpeg_becomes_rgb() -> None:
    data = encode(Image.new("CMYK", (32, 32), (0, 255, 255, 0)), "JPEG", quality=95)
    image = load_image(data, DEFAULT_MAX_PIXELS)
    red, green, blue = image.getpixel((16, 16))  # type: ignore[misc]
    assert image.mode == "RGB" and red > 240 and green < 15 and blue < 15


def test_alpha_is_composited_over_white() -> None:
    rgba = Image.new("RGBA", (32, 32), (255, 0, 0, 0))  # invisible red
    rgba.putpixel((0, 0), (0, 0, 255, 255))  # one opaque blue pixel
    image = load_image(encode(rgba, "PNG"), DEFAULT_MAX_PIXELS)
    assert image.getpixel((5, 5)) == (255, 255, 255)
    assert image.getpixel((0, 0)) == (0, 0, 255)


def test_palette_with_transparency() -> None:
    palette = Image.new("P", (32, 32), 1)
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    image = load_image(encode(palette, "PNG", transparency=0), DEFAULT_MAX_PIXELS)
    assert image.getpixel((1, 1)) == (10, 200, 30)


def test_exif_rotation_is_applied() -> None:
    stored = Image.new("RGB", (40, 20), (0, 0, 255))  # landscape as stored: blue...
    stored.paste((255, 0, 0), (0, 0, 20, 20))  # ...with a red left half
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    image = load_image(encode(stored, "JPEG", exif=exif, quality=95), DEFAULT_MAX_PIXELS)
    assert image.size == (20, 40)  # portrait, as a viewer shows it
    top = image.getpixel((10, 5))  # the red half is now on top
    bottom = image.getpixel((10, 35))
    assert top[0] > 200 and top[2] < 60  # type: ignore[index]
    assert bottom[2] > 200 and bottom[0] < 60  # type: ignore[index]


def test_animated_gif_gives_first_frame() -> None:
    frames = [Image.new("RGB", (32, 32), colour) for colour in ((255, 0, 0), (0, 255, 0))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    image = load_image(data, DEFAULT_MAX_PIXELS)
    assert image.getpixel((4, 4)) == (255, 0, 0)


def test_to_rgb_accepts_open_images() -> None:
    assert to_rgb(Image.new("LA", (20, 20), (0, 0))).getpixel((0, 0)) == (255, 255, 255)
    assert to_rgb(Image.new("1", (20, 20), 1)).getpixel((0, 0)) == (255, 255, 255)


def test_module_does_not_import_torch() -> None:
    code = "import sys, models.images; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
