"""Real-world and hostile images, generated in code (no binary blobs in the repository).

Shared by tests/test_images.py and bench/bench_images.py.
"""

from __future__ import annotations

import io
import random
import struct
import zlib

from PIL import Image, ImageDraw, ImageFont

RED = (255, 0, 0)
GREEN = (0, 255, 0)
BLUE = (0, 0, 255)


def encode(img: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, fmt, **params)
    return buffer.getvalue()


def photo_image(width: int = 4000, height: int = 3000, seed: int = 1) -> Image.Image:
    """Smooth gradients, blurred shapes and sensor-like noise: compresses like a photo."""
    rnd = random.Random(seed)
    red = Image.linear_gradient("L").resize((width, height))
    green = Image.linear_gradient("L").rotate(90).resize((width, height))
    blue = Image.radial_gradient("L").resize((width, height))
    img = Image.merge("RGB", (red, green, blue))
    draw = ImageDraw.Draw(img)
    for _ in range(60):
        x, y, size = (
            rnd.randrange(width),
            rnd.randrange(height),
            rnd.randrange(width // 80, width // 6),
        )
        colour = (rnd.randrange(256), rnd.randrange(256), rnd.randrange(256))
        draw.ellipse((x, y, x + size, y + size), fill=colour)
    # independent noise per channel, like a sensor: a photo has tens of thousands of colours
    noise = Image.merge("RGB", [Image.effect_noise((width, height), 40) for _ in range(3)])
    return Image.blend(img, noise, 0.15)


def photo_jpeg(width: int = 4000, height: int = 3000, quality: int = 95, **params) -> bytes:
    return encode(photo_image(width, height), "JPEG", quality=quality, **params)


def screenshot_image(width: int = 1920, height: int = 1080, font_size: int = 14) -> Image.Image:
    """A UI: title bar, sidebar, white content pane with lines of small anti-aliased text."""
    img = Image.new("RGB", (width, height), (246, 247, 249))
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=font_size)
    draw.rectangle((0, 0, width, 48), fill=(36, 41, 47))
    draw.text((16, 14), "Settings - Chat app", font=font, fill=(255, 255, 255))
    draw.rectangle((0, 48, 260, height), fill=(230, 233, 237))
    for i, label in enumerate(["General", "Models", "History", "Images", "About"]):
        draw.text((24, 72 + i * 32), label, font=font, fill=(30, 30, 30))
    draw.rectangle(
        (280, 68, width - 20, height - 20), fill=(255, 255, 255), outline=(208, 215, 222)
    )
    line = "The quick brown fox jumps over the lazy dog 0123456789 - error: KeyError('model')"
    for row, y in enumerate(range(90, height - 40, font_size + 8)):
        colour = (200, 30, 30) if row % 7 == 3 else (36, 41, 47)
        draw.text((300, y), f"{row:03d}  {line}", font=font, fill=colour)
    return img


def screenshot_png(width: int = 1920, height: int = 1080) -> bytes:
    return encode(screenshot_image(width, height), "PNG")


def rgba_png(width: int = 64, height: int = 48) -> bytes:
    """Left half fully transparent (black, as many tools store it), right half opaque red."""
    img = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    img.paste((255, 0, 0, 255), (width // 2, 0, width, height))
    return encode(img, "PNG")


def rgba_photo_png(width: int = 3000, height: int = 2000) -> bytes:
    """A 6 MP photo-like RGBA PNG with a transparent vignette (a cut-out product shot)."""
    img = photo_image(width, height).convert("RGBA")
    alpha = Image.radial_gradient("L").resize((width, height)).point(lambda v: 255 - v)
    img.putalpha(alpha)
    return encode(img, "PNG", compress_level=6)


def la_png() -> bytes:
    img = Image.new("LA", (40, 40), (0, 0))  # transparent black
    img.paste((100, 255), (20, 0, 40, 40))
    return encode(img, "PNG")


def palette_transparent_png() -> bytes:
    img = Image.new("P", (40, 40), 0)
    img.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)  # index 0 black (transparent), 1 blue
    img.paste(1, (20, 0, 40, 40))
    return encode(img, "PNG", transparency=0)


def palette_transparent_gif() -> bytes:
    img = Image.new("P", (40, 40), 0)
    img.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    img.paste(1, (20, 0, 40, 40))
    return encode(img, "GIF", transparency=0)


def gray16_png(value: int = 32768, size: tuple[int, int] = (64, 64)) -> bytes:
    return encode(Image.new("I;16", size, value), "PNG")


def cmyk_jpeg() -> bytes:
    return encode(Image.new("CMYK", (64, 64), (0, 255, 255, 0)), "JPEG", quality=95)  # red


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (48, 48), colour) for colour in (RED, GREEN, BLUE)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def animated_webp() -> bytes:
    frames = [Image.new("RGB", (48, 48), colour) for colour in (RED, GREEN, BLUE)]
    return encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], duration=100)


def mpo_jpeg() -> bytes:
    """A multi-picture JPEG (phones write these for depth maps / HDR gain maps)."""
    first, second = Image.new("RGB", (64, 48), RED), Image.new("RGB", (64, 48), BLUE)
    return encode(first, "MPO", save_all=True, append_images=[second], quality=95)


def exif_rotated_jpeg(orientation: int = 6) -> bytes:
    """Stored landscape 400x300 with a red block in the stored top-left corner."""
    img = Image.new("RGB", (400, 300), (200, 200, 200))
    img.paste(RED, (0, 0, 60, 60))
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(img, "JPEG", quality=95, exif=exif.tobytes())


def exif_gps_jpeg() -> bytes:
    """A small upright JPEG whose EXIF holds a GPS position (must not be passed through)."""
    img = photo_image(320, 240)
    exif = Image.Exif()
    exif[0x010F] = "PhoneMaker"
    gps = exif.get_ifd(0x8825)
    gps[1], gps[2] = "N", (48.0, 51.0, 29.0)
    return encode(img, "JPEG", quality=90, exif=exif.tobytes())


def bmp_screenshot() -> bytes:
    return encode(screenshot_image(800, 600), "BMP")


def png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def png_declaring(width: int, height: int) -> bytes:
    """A valid-looking 1-bit PNG header declaring width x height, with almost no data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", idat)
        + (png_chunk(b"IEND", b""))
    )


def gif_declaring(width: int, height: int) -> bytes:
    """A GIF whose logical screen is width x height, holding one 1x1 frame."""
    header = b"GIF89a" + struct.pack("<HHBBB", width, height, 0, 0, 0)
    frame = b"," + struct.pack("<HHHHB", 0, 0, 1, 1, 0) + b"\x02\x02\x44\x01\x00"
    return header + frame + b";"


SVG = b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>'
HTML = b"<!DOCTYPE html><html><head><title>Login</title></head><body>hi</body></html>"
PDF = b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\n"
HEIC = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64


def small_samples() -> dict[str, bytes]:
    """Tiny valid files of every accepted format and common mode: seeds for the fuzz test."""
    photo = photo_image(48, 32)
    return {
        "jpeg": encode(photo, "JPEG", quality=80),
        "jpeg_progressive": encode(photo, "JPEG", quality=80, progressive=True),
        "jpeg_exif": exif_rotated_jpeg(8)[:],
        "png": encode(photo, "PNG"),
        "png_rgba": rgba_png(24, 16),
        "png_palette": palette_transparent_png(),
        "png_16bit": gray16_png(40000, (16, 16)),
        "gif": animated_gif(),
        "webp": encode(photo, "WEBP", quality=80),
        "webp_animated": animated_webp(),
        "bmp": encode(photo, "BMP"),
        "bmp_rle": encode(photo.convert("P"), "BMP"),
    }
