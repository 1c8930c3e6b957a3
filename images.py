"""Validate, optimise and encode user images for a vision model.

Pipeline of `prepare_image` (each step is there because of a measured trap, see notes/images.md):

1-3. refuse early and decode (image_decode.py): known non-images and oversized files are
   refused before a pixel is decoded; JPEGs decode at a reduced scale when that suffices;
4. normalise: alpha flattened onto white, 16-bit scaled to 8-bit, CMYK/palette to RGB;
5. size for the model: `image_profile` (image_tokens.py, from the model's facts) says how many
   pixels the chosen model can use; resample once (Lanczos for graphics, bicubic for photos),
   then apply EXIF orientation;
6. encode: photos as JPEG q85, graphics (few colours: screenshots, diagrams) as PNG;
   a small upright file without metadata that is already within the profile is sent as is.
   Re-encoded images carry no metadata (EXIF GPS positions never leave the server).

No global Pillow state is touched (no LOAD_TRUNCATED_IMAGES, no MAX_IMAGE_PIXELS, no warning
filters), so concurrent calls from threads cannot race.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import math
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import cast

from PIL import Image

# "X as X" marks a re-export: callers take the whole image API from this module.
from image_decode import ACCEPTED_FORMATS as ACCEPTED_FORMATS
from image_decode import (
    DRAFT_TOLERANCE,
    Decoded,
    ImageRejected,
    damaged,
    decode,
    format_bytes,
    has_private_metadata,
    orient,
    refuse_early,
)
from image_decode import MAX_PIXELS as MAX_PIXELS
from image_tokens import ABSOLUTE_MAX_SIDE as ABSOLUTE_MAX_SIDE
from image_tokens import ImageProfile, estimate_image_tokens, image_profile
from model_facts import DETAILS as DETAILS

DEFAULT_MAX_BYTES = 20 * 1024 * 1024

# Output encoding. q85 without optimize=True: optimize costs 3x the encode time for ~5 %.
JPEG_QUALITY = 85
# At most this many distinct colours (in a sample) marks a graphic: screenshot, chart, diagram.
GRAPHIC_MAX_COLOURS = 4096
# A file this small that needs no change is sent byte for byte (no generation loss, ~0 ms).
PASSTHROUGH_MAX_BYTES = 1024 * 1024

_MIME = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "GIF": "image/gif",
    "WEBP": "image/webp",
    "BMP": "image/bmp",
}
_EXTENSION = {mime: fmt.lower().replace("jpeg", "jpg") for fmt, mime in _MIME.items()}
_WHITE = (255, 255, 255)


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class PreparedImage:
    data: bytes = field(repr=False)  # the optimised bytes that are sent and stored
    mime: str  # "image/jpeg" | "image/png" | ...
    width: int
    height: int
    name: str  # original file name (display only)
    original_bytes: int
    original_width: int
    original_height: int
    original_format: str  # "JPEG", "PNG", ...

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def extension(self) -> str:
        return _EXTENSION.get(self.mime, "bin")

    def data_url(self) -> str:
        return f"data:{self.mime};base64,{base64.b64encode(self.data).decode('ascii')}"


# --------------------------------------------------------------------------- normalising


def _to_8bit(img: Image.Image) -> Image.Image:
    """16-bit and 32-bit grey (I;16, I, F) to L, scaled, not clipped (clipping gives white)."""
    if img.mode == "F":
        low, high = cast(tuple[float, float], img.getextrema())  # one band: (min, max)
        if high <= 1.0 and low >= 0.0:  # normalised floats
            return img.point(lambda v: v * 255.0).convert("L")
        if high > 255.0 or low < 0.0:
            span = (high - low) or 1.0
            return img.point(lambda v: (v - low) * 255.0 / span).convert("L")
        return img.convert("L")
    sixteen_bit = img.mode.startswith("I;16")  # known depth: a dark 16-bit scan stays dark
    img = img if img.mode == "I" else img.convert("I")
    low, high = cast(tuple[int, int], img.getextrema())
    if not sixteen_bit and low >= 0 and high <= 255:  # 32-bit container holding 8-bit values
        return img.convert("L")
    if sixteen_bit or (low >= 0 and high <= 65535):  # keep the tone, drop the low byte
        return img.point(lambda v: v * (1 / 256)).convert("L")
    span = (high - low) or 1
    return img.point(lambda v: (v - low) * (255 / span)).convert("L")


def _flatten(img: Image.Image) -> Image.Image:
    """Composite anything with alpha onto white (convert("RGB") would make it black)."""
    if img.mode in ("LA", "La"):
        img = img.convert("LA")
        background = Image.new("L", img.size, 255)
        background.paste(img.getchannel("L"), mask=img.getchannel("A"))
        return background
    img = img.convert("RGBA") if img.mode != "RGBA" else img
    background = Image.new("RGB", img.size, _WHITE)
    background.paste(img, mask=img.getchannel("A"))
    return background


def _has_alpha(img: Image.Image) -> bool:
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return True
    return img.mode in ("P", "L", "RGB") and "transparency" in img.info


def _working_mode(img: Image.Image) -> Image.Image:
    """Bring any decoded mode to one Pillow can resample well: L, LA, RGB or RGBA."""
    if img.mode in ("L", "RGB", "LA", "RGBA"):
        if "transparency" in img.info and img.mode in ("L", "RGB"):
            return img.convert("LA" if img.mode == "L" else "RGBA")
        return img
    if img.mode == "1":
        return img.convert("L")
    if img.mode.startswith("I") or img.mode == "F":
        return _to_8bit(img)
    if img.mode in ("P", "PA"):
        return img.convert("RGBA") if _has_alpha(img) else img.convert("RGB")
    return img.convert("RGBA" if _has_alpha(img) else "RGB")  # CMYK, YCbCr, LAB, RGBX...


def _resize(img: Image.Image, size: tuple[int, int], sharp: bool = True) -> Image.Image:
    if img.size == size:
        return img
    # Lanczos keeps small text crisp; on photos bicubic looks the same and is 35 % faster
    # (measured: 2000x1500 -> 1448x1086, 38 ms vs 28 ms). reducing_gap box-reduces by an
    # integer factor first when shrinking > 3x. Pillow premultiplies alpha when resampling
    # RGBA/LA, so transparent pixels leave no dark fringes.
    resample = Image.Resampling.LANCZOS if sharp else Image.Resampling.BICUBIC
    return img.resize(size, resample, reducing_gap=3.0)


# --------------------------------------------------------------------------- encoding


def _is_graphic(img: Image.Image, source_format: str) -> bool:
    """Few distinct colours = screenshot, chart, diagram, logo: PNG keeps text sharp.

    Colours are counted on a nearest-neighbour sample (no new colours are invented), so the
    test costs ~1 ms even on a big screenshot. JPEG sources are photos, or already lossy.
    """
    if source_format == "JPEG":
        return False
    if img.mode == "P":
        return True
    sample = img
    if img.width * img.height > 512 * 512:
        step = math.ceil(math.sqrt(img.width * img.height / (512 * 512)))
        sample = img.resize(
            (max(1, img.width // step), max(1, img.height // step)), Image.Resampling.NEAREST
        )
    return sample.getcolors(GRAPHIC_MAX_COLOURS) is not None


def _encode(img: Image.Image, png: bool, quality: int = JPEG_QUALITY) -> tuple[bytes, str]:
    buffer = io.BytesIO()
    if png:
        # level 6 is 2-3x slower than 3 for a few % smaller files on screenshots
        img.save(buffer, "PNG", compress_level=3)
        return buffer.getvalue(), "image/png"
    img.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue(), "image/jpeg"


def _encode_within(img: Image.Image, png: bool, max_bytes: int) -> tuple[bytes, str, Image.Image]:
    """Encode; if over the provider's byte limit, fall back to JPEG, then lower quality/size."""
    data, mime = _encode(img, png)
    quality = JPEG_QUALITY
    for _ in range(6):
        if len(data) <= max_bytes:
            break
        if mime == "image/png":  # a noisy graphic: JPEG is far smaller
            img = img if img.mode in ("RGB", "L") else img.convert("RGB")
        elif quality > 70:
            quality = 70
        else:
            img = _resize(img, (max(1, img.width * 3 // 4), max(1, img.height * 3 // 4)))
        data, mime = _encode(img, False, quality)
    return data, mime, img


def _can_pass_through(
    decoded: Decoded, raw: bytes, target: tuple[int, int], max_bytes: int
) -> bool:
    """Send the file itself when re-encoding could only lose quality and leak nothing.

    Only JPEG/PNG (every provider takes them), already within the profile, upright, opaque,
    8-bit, not animated (APNG, MPO), small, and without EXIF/XMP/text metadata, which may
    hold a GPS position: re-encoded images never carry metadata.
    """
    img = decoded.image
    return (
        decoded.format in ("JPEG", "PNG")
        and not decoded.animated
        and decoded.orientation == 1
        and (img.mode in ("L", "RGB") or (img.mode == "P" and decoded.format == "PNG"))
        and not _has_alpha(img)
        and target == img.size == (decoded.width, decoded.height)
        and len(raw) <= min(PASSTHROUGH_MAX_BYTES, max_bytes, _efficient_size(img))
        and (decoded.format == "JPEG" or _is_graphic(img, decoded.format))  # a PNG photo: JPEG
        and not has_private_metadata(img)  # last: PNG text is only safe to read when static
    )


def _efficient_size(img: Image.Image) -> int:
    """Bytes above which re-encoding pays: 4 bits a pixel (a q95 JPEG), 32 KB at least."""
    return max(32 * 1024, img.width * img.height // 2)


# --------------------------------------------------------------------------- public API


def _display_name(name: str) -> str:
    """Basename without control characters, at most 80 characters (it is shown to users)."""
    base = re.split(r"[\\/]", str(name or ""))[-1]
    base = "".join(ch for ch in base if ch.isprintable()).strip() or "image"
    return base if len(base) <= 80 else base[:38] + "…" + base[-38:]


def prepare_image(
    raw: bytes,
    *,
    name: str = "image",
    max_bytes: int = DEFAULT_MAX_BYTES,
    provider_id: str = "",
    model: str = "",
    detail: str = "auto",
) -> PreparedImage:
    """Validate and optimise one upload for `model`; raises ImageRejected with a user message."""
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise TypeError(f"raw must be bytes, got {type(raw).__name__}")
    raw = bytes(raw)
    name = _display_name(name)
    profile = image_profile(provider_id, model, detail)
    refuse_early(raw, name, max_bytes)
    decoded = decode(raw, name, profile.target_size)
    with decoded.image:
        target = profile.target_size(decoded.width, decoded.height)
        if _can_pass_through(decoded, raw, target, profile.max_bytes):
            data, mime, size = raw, _MIME[decoded.format], target
        else:
            data, mime, size = _transform(decoded, target, profile, name)
    return PreparedImage(
        data=data,
        mime=mime,
        width=size[0],
        height=size[1],
        name=name,
        original_bytes=len(raw),
        original_width=decoded.width,
        original_height=decoded.height,
        original_format=decoded.format,
    )


def _transform(
    decoded: Decoded, target: tuple[int, int], profile: ImageProfile, name: str
) -> tuple[bytes, str, tuple[int, int]]:
    """Flatten, resize (in file orientation), orient, encode."""
    swapped = decoded.orientation >= 5
    file_target = (target[1], target[0]) if swapped else target
    try:
        img = _working_mode(decoded.image)
        if img.mode in ("RGBA", "LA"):
            # Compositing onto white is linear, so flattening first gives the same pixels as a
            # premultiplied resize, and resampling 3 channels is 1/3 cheaper (96 -> 67 ms, 6 MP).
            img = _flatten(img)
        graphic = _is_graphic(img, decoded.format)
        resized = not _close_enough(img.size, file_target)
        if resized:
            img = _resize(img, file_target, sharp=graphic)
        img = orient(img, decoded.orientation)
        if graphic and resized:
            img = _to_palette(img)
        data, mime, img = _encode_within(img, graphic, profile.max_bytes)
    except (OSError, ValueError) as exc:
        # e.g. a palette that does not match its data: the file is broken, not our code
        raise damaged(name) from exc
    return data, mime, img.size


def _to_palette(img: Image.Image) -> Image.Image:
    """A resized screenshot has ~3000 blended colours; 256 look the same (RMS error ~2/255)
    and make the PNG 4x smaller and 6x faster to encode (measured: 373 KB -> 91 KB)."""
    if img.mode != "RGB":
        return img
    return img.quantize(256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)


def _close_enough(size: tuple[int, int], target: tuple[int, int]) -> bool:
    """A JPEG draft within tolerance below the target is sent at its decoded size."""
    return target[0] >= size[0] >= DRAFT_TOLERANCE * target[0] and (
        target[1] >= size[1] >= DRAFT_TOLERANCE * target[1]
    )


_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def _pool() -> ThreadPoolExecutor:
    """A small shared pool: bounds CPU and memory (a 50 MP RGBA decode is 200 MB) across
    all users, instead of the event loop's default executor shared with everything else."""
    global _executor
    with _executor_lock:
        if _executor is None:
            workers = max(2, min(4, os.cpu_count() or 2))
            _executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="images")
        return _executor


async def prepare_images(
    items: list[tuple[str, bytes]],
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    provider_id: str = "",
    model: str = "",
    detail: str = "auto",
) -> list[PreparedImage]:
    """Prepare several uploads concurrently in threads (Pillow releases the GIL).

    Returns them in order. If any is rejected, raises ImageRejected for the first bad one;
    its message and `.rejected` list every bad file, so the user can fix all at once.
    """
    loop = asyncio.get_running_loop()
    jobs = [
        loop.run_in_executor(
            _pool(),
            partial(
                prepare_image,
                raw,
                name=name,
                max_bytes=max_bytes,
                provider_id=provider_id,
                model=model,
                detail=detail,
            ),
        )
        for name, raw in items
    ]
    results = await asyncio.gather(*jobs, return_exceptions=True)
    for result in results:  # a bug or MemoryError is not a user error: let it through
        if isinstance(result, BaseException) and not isinstance(result, ImageRejected):
            raise result
    rejected = [r for r in results if isinstance(r, ImageRejected)]
    if rejected:
        first = rejected[0]
        if len(rejected) == 1:
            raise first
        raise ImageRejected(first.name, first.reason, others=tuple(rejected[1:]))
    return [r for r in results if isinstance(r, PreparedImage)]


# --------------------------------------------------------------------------- receipt, describe


def receipt_text(image: PreparedImage, provider_id: str, model: str, detail: str = "auto") -> str:
    """One line: what was sent. 'a.jpg: 4.9 MB 4000×3000 → 312 KB 1024×768 JPEG · ~765 …'"""
    original = (
        f"{format_bytes(image.original_bytes)} {image.original_width}×{image.original_height}"
    )
    fmt = image.extension.upper().replace("JPG", "JPEG")
    if _unchanged(image):
        sent = f"{original} {fmt}, sent as is"
    else:
        sent = f"{original} → {format_bytes(len(image.data))} {image.width}×{image.height} {fmt}"
    tokens = estimate_image_tokens(image.width, image.height, provider_id, model, detail)
    if tokens is None:
        cost = f"image tokens unknown for {model or provider_id or 'this model'}"
    else:
        cost = f"~{tokens:,} image tokens"
    return f"{image.name}: {sent} · {cost}"


def _unchanged(image: PreparedImage) -> bool:
    return len(image.data) == image.original_bytes and (image.width, image.height) == (
        image.original_width,
        image.original_height,
    )


# A small named palette: enough for the demo provider to say "mostly white and dark blue".
_COLOUR_NAMES: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("black", (0, 0, 0)),
    ("dark grey", (64, 64, 64)),
    ("grey", (128, 128, 128)),
    ("light grey", (200, 200, 200)),
    ("white", (255, 255, 255)),
    ("red", (220, 30, 30)),
    ("dark red", (128, 0, 0)),
    ("orange", (255, 140, 0)),
    ("brown", (140, 80, 30)),
    ("beige", (230, 210, 170)),
    ("yellow", (250, 220, 40)),
    ("olive", (128, 128, 0)),
    ("green", (40, 170, 60)),
    ("dark green", (0, 90, 30)),
    ("teal", (0, 128, 128)),
    ("cyan", (0, 220, 230)),
    ("light blue", (140, 190, 240)),
    ("blue", (30, 80, 220)),
    ("navy", (0, 0, 110)),
    ("purple", (120, 40, 160)),
    ("magenta", (230, 0, 200)),
    ("pink", (250, 160, 190)),
)


def _colour_name(rgb: tuple[int, int, int]) -> str:
    # weighted RGB distance ("redmean" approximation): cheap and close enough to perception
    r, g, b = rgb

    def distance(ref: tuple[int, int, int]) -> float:
        mean = (r + ref[0]) / 2
        dr, dg, db = r - ref[0], g - ref[1], b - ref[2]
        return (2 + mean / 256) * dr * dr + 4 * dg * dg + (2 + (255 - mean) / 256) * db * db

    return min(_COLOUR_NAMES, key=lambda item: distance(item[1]))[0]


def describe_image(raw: bytes) -> dict:
    """Size, format, mode and dominant colour names, for the offline demo provider.

    Raises ImageRejected on anything prepare_image would refuse.
    """
    raw = bytes(raw)
    refuse_early(raw, "image", DEFAULT_MAX_BYTES)
    decoded = decode(raw, "image", lambda w, h: (min(w, 128), min(h, 128)))
    with decoded.image:
        mode = decoded.image.mode
        try:
            img = _working_mode(decoded.image)
            img.thumbnail((64, 64), Image.Resampling.BOX)
            if img.mode in ("RGBA", "LA"):
                img = _flatten(img)
            palette = img.convert("RGB").quantize(colors=8, method=Image.Quantize.MEDIANCUT)
            counts = sorted(palette.getcolors() or [], reverse=True)
            rgb = palette.getpalette() or []
        except (OSError, ValueError) as exc:
            raise damaged("image") from exc
    shares: dict[str, int] = {}
    for count, colour in counts:
        index = cast(int, colour)  # a palette image's colours are palette indexes
        red, green, blue = rgb[index * 3 : index * 3 + 3]
        name = _colour_name((red, green, blue))
        shares[name] = shares.get(name, 0) + count
    total = sum(shares.values()) or 1
    ranked = sorted(shares, key=shares.__getitem__, reverse=True)
    # "mostly white and red": a colour on under 10 % of the picture is not worth naming
    colours = [name for name in ranked if shares[name] >= total * 0.10] or ranked[:1]
    return {
        "width": decoded.width,
        "height": decoded.height,
        "format": decoded.format,
        "mode": mode,
        "colours": colours[:3],
    }
