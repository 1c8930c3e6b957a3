"""Refusing and decoding untrusted image bytes: steps 1-3 of images.prepare_image.

1. refuse before decoding anything: empty, over `max_bytes`, or a known non-image signature
   (SVG, PDF, HTML, HEIC, TIFF...), with a message that names the file and what to send;
2. `Image.open` restricted to the accepted formats (lazy: header only), then a hard pixel
   limit on the declared size before a single pixel is decoded;
3. decode only the first frame; JPEGs at 1/2, 1/4 or 1/8 scale by libjpeg (`draft`) when
   that lands within 5 % of the target, which is most of the speed-up.

Every failure inside Pillow on hostile or damaged bytes becomes `ImageRejected`, whose text
is the user-facing message.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Callable
from dataclasses import dataclass

from PIL import ExifTags, Image, UnidentifiedImageError

ACCEPTED_FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP")
MAX_PIXELS = 50_000_000
# A JPEG decoded at 1/k scale is used as is when it is at least this fraction of the target:
# e.g. 4000x3000 at 1/4 = 1000x750 for a 1024x768 target (2.4 % smaller, ~4x faster).
DRAFT_TOLERANCE = 0.95
ACCEPTED_TEXT = "Send a JPEG, PNG, GIF, WEBP or BMP image."


class ImageRejected(ValueError):
    """str(exc) is the user-facing message, naming the file and what to do."""

    def __init__(self, name: str, reason: str, *, others: tuple[ImageRejected, ...] = ()):
        self.name = name
        self.reason = reason
        # Every rejected file of a batch, this one first (prepare_images fills `others`).
        self.rejected: tuple[ImageRejected, ...] = (self, *others)
        message = f'"{name}" was not sent: {reason}'
        if others:
            also = "; ".join(f'"{o.name}" ({_first_sentence(o.reason)})' for o in others)
            message += f" Also not sent: {also}."
        super().__init__(message)

    def __reduce__(self):  # picklable despite the custom signature (e.g. across processes)
        return _rebuild_rejected, (self.name, self.reason, self.rejected[1:])


def _rebuild_rejected(name: str, reason: str, others: tuple) -> ImageRejected:
    return ImageRejected(name, reason, others=others)


def format_bytes(size: int) -> str:
    """1536 -> '1.5 KB'; 5_138_022 -> '4.9 MB' (binary units, like MAX_IMAGE_MB)."""
    if size < 1024:
        return f"{size} B"
    if size < 1024 * 1024:
        kb = size / 1024
        return f"{kb:.1f} KB" if kb < 10 else f"{kb:.0f} KB"
    return f"{size / (1024 * 1024):.1f} MB"


def _first_sentence(text: str) -> str:
    return text.split(". ", 1)[0].rstrip(".")


# --------------------------------------------------------------------------- refusing early

_HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"hevx", b"mif1", b"msf1", b"heim", b"heis")
# (signature test, what it is). Checked before Pillow sees the bytes, so the message can say
# what the file is instead of "not an image".
_SIGNATURES: tuple[tuple[Callable[[bytes], bool], str], ...] = (
    (lambda h: h.startswith(b"%PDF"), "PDF documents are not supported"),
    (lambda h: h[4:8] == b"ftyp" and h[8:12] in _HEIF_BRANDS, "HEIC/HEIF photos are not supported"),
    (lambda h: h[4:8] == b"ftyp" and h[8:12] in (b"avif", b"avis"), "AVIF is not supported"),
    (lambda h: h[4:8] == b"ftyp", "video files are not supported"),
    (lambda h: h[:4] in (b"II*\x00", b"MM\x00*"), "TIFF is not supported"),
    (lambda h: h.startswith(b"8BPS"), "Photoshop (PSD) files are not supported"),
    (lambda h: h.startswith(b"\x00\x00\x01\x00"), "ICO icons are not supported"),
    (lambda h: h.startswith(b"\xff\x0a") or h[4:8] == b"JXL ", "JPEG XL is not supported"),
    (lambda h: h.startswith(b"PK\x03\x04"), "it is a ZIP archive (or an Office file)"),
)


def _sniff_text(head: bytes) -> str | None:
    """SVG and HTML are text: look past a BOM, whitespace and an XML prolog or comments."""
    text = head[:2048].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if not text.startswith(b"<"):
        return None
    if b"<svg" in text:
        return "SVG is not supported"
    if re.search(rb"<(!doctype html|html|head|body|meta|script|div|title)\b", text):
        return "it is a web page (HTML), not an image"
    return None


def refuse_early(raw: bytes, name: str, max_bytes: int) -> None:
    if not raw:
        raise ImageRejected(name, f"the file is empty. {ACCEPTED_TEXT}")
    if len(raw) > max_bytes:
        raise ImageRejected(
            name,
            f"the file is {format_bytes(len(raw))}; the limit is {format_bytes(max_bytes)}. "
            "Send a smaller image.",
        )
    head = bytes(raw[:2048])
    for test, what in _SIGNATURES:
        if test(head):
            raise ImageRejected(name, f"{what}. {ACCEPTED_TEXT}")
    text_kind = _sniff_text(head)
    if text_kind:
        raise ImageRejected(name, f"{text_kind}. {ACCEPTED_TEXT}")


def too_many_pixels(name: str, width: int, height: int) -> ImageRejected:
    megapixels = width * height / 1_000_000
    return ImageRejected(
        name,
        f"the image is {width}×{height} ({megapixels:,.0f} megapixels); the limit is "
        f"{MAX_PIXELS // 1_000_000} megapixels. Send a smaller image.",
    )


def damaged(name: str) -> ImageRejected:
    return ImageRejected(
        name,
        "the image data is damaged or incomplete (was the upload cut short?). "
        f"Export it again and resend, or {ACCEPTED_TEXT[0].lower()}{ACCEPTED_TEXT[1:]}",
    )


# --------------------------------------------------------------------------- decoding


@dataclass
class Decoded:
    image: Image.Image  # loaded, first frame, still in its file mode, not yet oriented
    format: str  # "JPEG" for MPO too
    width: int  # original size as the user sees it (after EXIF orientation)
    height: int
    orientation: int  # EXIF orientation 1..8
    animated: bool


TRANSPOSE = {
    2: (Image.Transpose.FLIP_LEFT_RIGHT,),
    3: (Image.Transpose.ROTATE_180,),
    4: (Image.Transpose.FLIP_TOP_BOTTOM,),
    5: (Image.Transpose.TRANSPOSE,),
    6: (Image.Transpose.ROTATE_270,),
    7: (Image.Transpose.TRANSVERSE,),
    8: (Image.Transpose.ROTATE_90,),
}
_PRIVATE_INFO_KEYS = ("exif", "xmp", "XML:com.adobe.xmp", "comment", "photoshop", "Raw profile")


def _draft_size(img: Image.Image, target: tuple[int, int]) -> tuple[int, int] | None:
    """The size to ask libjpeg for: the smallest 1/k scale still >= 95 % of the target."""
    width, height = img.size
    for k in (8, 4, 2):
        w, h = math.ceil(width / k), math.ceil(height / k)
        if w >= DRAFT_TOLERANCE * target[0] and h >= DRAFT_TOLERANCE * target[1]:
            return width // k, height // k
    return None


def _orientation(img: Image.Image) -> int:
    """EXIF orientation 1..8; a malformed EXIF block is ignored, the pixels may be fine."""
    try:
        value = img.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # EXIF parsers raise many types on junk; orientation is optional
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def has_private_metadata(img: Image.Image) -> bool:
    if any(key in img.info for key in _PRIVATE_INFO_KEYS):
        return True
    return bool(getattr(img, "text", None))  # PNG tEXt/iTXt/zTXt chunks


def _looks_accepted(raw: bytes) -> bool:
    """The file starts like an accepted format: a failure to open it means it is damaged."""
    return raw.startswith((b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM")) or (
        raw[:4] == b"RIFF" and raw[8:12] == b"WEBP"
    )


def _open_checked(raw: bytes, name: str) -> Image.Image:
    """Image.open (header only) restricted to accepted formats, plus the hard pixel limit."""
    try:
        img = Image.open(io.BytesIO(raw), formats=ACCEPTED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow refuses > 179 MP at open (or warns > 89 MP, an error under -W error).
        found = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(found.group(1)) / 1_000_000:,.0f} megapixels" if found else "too large"
        raise ImageRejected(
            name,
            f"the image is {size}; the limit is {MAX_PIXELS // 1_000_000} megapixels. "
            "Send a smaller image.",
        ) from None
    except Exception as exc:  # header parsers raise OSError, ValueError... on broken headers
        if isinstance(exc, UnidentifiedImageError) and not _looks_accepted(raw):
            raise ImageRejected(
                name, f"it is not a JPEG, PNG, GIF, WEBP or BMP image. {ACCEPTED_TEXT}"
            ) from None
        raise damaged(name) from None
    width, height = img.size
    if width <= 0 or height <= 0:
        raise damaged(name)
    if width * height > MAX_PIXELS:
        img.close()
        raise too_many_pixels(name, width, height)
    return img


def decode(raw: bytes, name: str, target_for: Callable[[int, int], tuple[int, int]]) -> Decoded:
    """Open, check, and decode the first frame (JPEGs at a reduced scale when possible).

    Every failure inside Pillow on hostile or damaged bytes becomes ImageRejected: decoders
    raise OSError, SyntaxError, ValueError, struct.error, EOFError... for broken input.
    """
    img = _open_checked(raw, name)
    full = img.size
    try:
        fmt = "JPEG" if img.format == "MPO" else str(img.format)
        if fmt == "JPEG":
            size = _draft_size(img, target_for(*img.size))
            if size is not None:
                img.draft(None, size)
        orientation = _orientation(img) if fmt in ("JPEG", "WEBP") else 1
        animated = bool(getattr(img, "is_animated", False))
        img.load()
        if fmt == "PNG":  # PNG EXIF may sit after the image data: read it once loaded
            orientation = _orientation(img)
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise too_many_pixels(name, *img.size) from None
    except Exception:  # any decoder failure on untrusted bytes means "damaged"
        raise damaged(name) from None
    # the full-resolution size (draft shrank `img`), as the user sees it (oriented)
    width, height = (full[1], full[0]) if orientation >= 5 else full
    return Decoded(img, fmt, width, height, orientation, animated)


def orient(img: Image.Image, orientation: int) -> Image.Image:
    for method in TRANSPOSE.get(orientation, ()):
        img = img.transpose(method)
    return img
