"""What a document attached to a message becomes before the model sees it.

UI-free and store-free (no gradio, no Redis): bytes and a file name in, a `PreparedDocument`
out, or a `DocumentRejected` whose message a user can act on. Images are not documents:
`detect_kind` returns None for them, so the caller hands them to images.py.

    doc = prepare_document(raw, name, max_bytes=s.max_document_bytes,
                           max_chars=s.max_document_chars)   # CPU bound: run in a thread
    part = document_part(doc)   # the text the model gets, inside the user message
    line = receipt(doc)         # one line for the chat's receipt

The kind is decided by content, not by name: a PDF named .bin is a PDF, binary data named
.txt is refused. Hostile input is bounded: the size is checked before anything is parsed,
pypdf runs with tighter decompression limits, at most `MAX_PDF_PAGES` pages are read and
extraction stops once `max_chars` is reached, and every pypdf failure becomes a
DocumentRejected (never a traceback for the user).
"""

from __future__ import annotations

import codecs
import hashlib
import html
import io
import logging
import re
import unicodedata
from dataclasses import dataclass
from pathlib import PurePosixPath

from charset_normalizer import from_bytes

log = logging.getLogger(__name__)

# Pages read from one PDF at most (its text may be cut there; the receipt says so). A real
# 100-page report is far below it; a "PDF bomb" of a million empty pages is not.
MAX_PDF_PAGES = 2_000
# pypdf's own limits (75 MB per stream, ...) are for every use of a PDF; reading the text of
# a 10 MB upload never needs that much, so a decompression bomb stops sooner. Applied per
# call through pypdf's context-local configuration, not process-wide.
_PYPDF_LIMITS = {
    "zlib_maximum_output_length": 32_000_000,
    "lzw_maximum_output_length": 32_000_000,
    "run_length_maximum_output_length": 32_000_000,
    "brotli_maximum_output_length": 32_000_000,
    "stream_decoding_work_maximum_length": 100_000_000,
    "page_tree_maximum_page_entries": 200_000,
}
# A text file may hold a few control characters (form feeds, ANSI colours in a log); more
# than this share of them means binary data that happens to decode.
_MAX_CONTROL_SHARE = 0.02
_ALLOWED_CONTROLS = frozenset("\t\n\r\f\v\x1b")
_MAX_NAME_CHARS = 120

_IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a")
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),  # before UTF-16 LE: it starts with the same two bytes
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
# Encodings charset-normalizer may name for Chinese text: decoded as GB18030 (their superset)
# when the bytes are valid GB2312, because short simplified-Chinese files are often guessed
# as Big5 (a few characters fit both; real Big5 text soon has trail bytes GB2312 forbids).
_CJK_GUESSES = frozenset({"big5", "cp950", "big5hkscs", "gb2312", "gbk", "gb18030", "hz"})
# Single-byte European code pages: charset-normalizer cannot tell them apart on short text
# (French cp1252 comes out as Baltic cp1257, German as cp1250), so Windows-1252, the legacy
# default of Western Europe and the Americas (Excel's CSV export there), wins when valid.
# The cost: a Central European legacy file (cp1250 Polish, Czech) reads wrong; UTF-8 never.
_LATIN_GUESSES = frozenset(
    {"cp1250", "cp1252", "cp1257", "cp775", "cp850", "cp857", "cp858", "mac_latin2", "mac_roman"}
    | {f"iso8859_{n}" for n in (1, 2, 3, 4, 9, 10, 13, 14, 15, 16)}
    | {"latin_1"}
)

# mime and the receipt's label, by extension, for content that is text. A fixed table, not
# the `mimetypes` module: that one reads the host's /etc/mime.types, so it varies by machine.
_TEXT_TYPES: dict[str, tuple[str, str]] = {
    ".txt": ("text/plain", "text"),
    ".text": ("text/plain", "text"),
    ".log": ("text/plain", "log"),
    ".md": ("text/markdown", "Markdown"),
    ".markdown": ("text/markdown", "Markdown"),
    ".rst": ("text/x-rst", "reStructuredText"),
    ".csv": ("text/csv", "CSV"),
    ".tsv": ("text/tab-separated-values", "TSV"),
    ".json": ("application/json", "JSON"),
    ".jsonl": ("application/x-ndjson", "JSON Lines"),
    ".ndjson": ("application/x-ndjson", "JSON Lines"),
    ".xml": ("application/xml", "XML"),
    ".html": ("text/html", "HTML"),
    ".htm": ("text/html", "HTML"),
    ".css": ("text/css", "CSS"),
    ".yaml": ("application/yaml", "YAML"),
    ".yml": ("application/yaml", "YAML"),
    ".toml": ("application/toml", "TOML"),
    ".ini": ("text/plain", "INI"),
    ".cfg": ("text/plain", "config"),
    ".tex": ("text/x-tex", "TeX"),
    ".sql": ("application/sql", "SQL"),
    ".py": ("text/x-python", "Python"),
    ".js": ("text/javascript", "JavaScript"),
    ".mjs": ("text/javascript", "JavaScript"),
    ".ts": ("text/x-typescript", "TypeScript"),
    ".tsx": ("text/x-typescript", "TypeScript"),
    ".jsx": ("text/javascript", "JavaScript"),
    ".java": ("text/x-java", "Java"),
    ".kt": ("text/x-kotlin", "Kotlin"),
    ".go": ("text/x-go", "Go"),
    ".rs": ("text/x-rust", "Rust"),
    ".c": ("text/x-c", "C"),
    ".h": ("text/x-c", "C"),
    ".cpp": ("text/x-c++", "C++"),
    ".cc": ("text/x-c++", "C++"),
    ".hpp": ("text/x-c++", "C++"),
    ".cs": ("text/x-csharp", "C#"),
    ".rb": ("text/x-ruby", "Ruby"),
    ".php": ("text/x-php", "PHP"),
    ".swift": ("text/x-swift", "Swift"),
    ".sh": ("text/x-shellscript", "shell script"),
    ".bash": ("text/x-shellscript", "shell script"),
    ".ps1": ("text/plain", "PowerShell"),
    ".r": ("text/x-r", "R"),
    ".lua": ("text/x-lua", "Lua"),
    ".vue": ("text/plain", "Vue"),
}
_PLAIN = ("text/plain", "text")


class DocumentRejected(ValueError):
    """str(exc) is one short sentence for the user: which file, and what to do about it."""

    def __init__(self, name: str, message: str):
        self.name = name
        super().__init__(message)


@dataclass(frozen=True)
class PreparedDocument:
    """A document ready for the model and the store.

    sha256 is of the raw bytes (the store keeps a document once by it, like images). `text`
    is what the model reads: extracted, newlines normalised to "\\n", cut to `max_chars`.
    `chars` counts the full text; for a PDF cut short it counts the text of the pages read,
    which stopped early on purpose (`pages_read` says where), so it is a lower bound.
    """

    sha256: str
    name: str
    mime: str
    kind: str  # "pdf" or "text"
    text: str
    pages: int | None  # PDF: its page count; text: None
    chars: int
    truncated: bool
    size: int  # bytes
    pages_read: int | None = None  # PDF: pages whose text is in `text` (all unless cut short)


# --------------------------------------------------------------------------- kind


def detect_kind(raw: bytes, name: str) -> str | None:
    """ "pdf", "text", or None (an image, or binary data): by content, whatever the name.

    `name` is unused today and kept so that a caller need not change if a kind ever needs it
    (e.g. to tell Markdown from plain text); the mime comes from the name in prepare_document.
    """
    if raw.lstrip(b" \t\r\n\f\x00")[:5] == b"%PDF-":
        return "pdf"
    if _is_image(raw):
        return None
    return "text" if _decode_text(raw) is not None else None


def _is_image(raw: bytes) -> bool:
    if raw.startswith(_IMAGE_MAGIC):
        return True
    return raw[:4] == b"RIFF" and raw[8:12] == b"WEBP"


def _decode_text(raw: bytes) -> str | None:
    """The text of `raw` (BOM, UTF-8, else the detected charset), or None for binary data."""
    text = _decode_bytes(raw)
    if text is None or _looks_binary(text):
        return None
    return text


def _decode_bytes(raw: bytes) -> str | None:
    for bom, encoding in _BOMS:
        if raw.startswith(bom):
            try:
                return raw.decode(encoding)
            except UnicodeDecodeError:
                return None
    try:
        return raw.decode("utf-8")  # most files, and charset detection is the slow path
    except UnicodeDecodeError:
        pass
    if b"\x00" in raw:  # binary (UTF-16 without a BOM is not worth the false positives)
        return None
    best = from_bytes(raw).best()
    if best is None:
        return None
    encoding = best.encoding.lower()  # Python codec names: "big5", "gb18030", "cp1252"...
    if encoding in _CJK_GUESSES and _valid(raw, "gb2312"):
        encoding = "gb18030"
    elif encoding in _LATIN_GUESSES and _valid(raw, "cp1252"):
        encoding = "cp1252"
    try:
        return raw.decode(encoding)
    except (UnicodeDecodeError, LookupError):
        return str(best)


def _valid(raw: bytes, encoding: str) -> bool:
    try:
        raw.decode(encoding)
    except UnicodeDecodeError:
        return False
    return True


def _looks_binary(text: str) -> bool:
    if "\x00" in text:
        return True
    sample = text[:65_536]
    controls = sum(
        1 for ch in sample if ch not in _ALLOWED_CONTROLS and unicodedata.category(ch) == "Cc"
    )
    return controls > _MAX_CONTROL_SHARE * max(len(sample), 1)


# --------------------------------------------------------------------------- prepare


def prepare_document(raw: bytes, name: str, *, max_bytes: int, max_chars: int) -> PreparedDocument:
    """Check and extract one attached document. Raises DocumentRejected with a message for
    the user. CPU bound (pypdf, charset detection): callers run it in a worker thread."""
    name = clean_name(name)
    size = len(raw)
    if size > max_bytes:
        raise DocumentRejected(
            name,
            f"{name} is {_mb(size)}; documents may be at most {_mb(max_bytes)}.",
        )
    if not raw.strip():
        raise DocumentRejected(name, f"{name} is empty: attach a file with some text in it.")
    kind = detect_kind(raw, name)
    sha256 = hashlib.sha256(raw).hexdigest()
    if kind == "pdf":
        text, pages, pages_read, complete = _pdf_text(raw, name, max_chars)
        full = _normalise(text)
        cut = full[:max_chars]
        return PreparedDocument(
            sha256=sha256,
            name=name,
            mime="application/pdf",
            kind="pdf",
            text=cut,
            pages=pages,
            chars=len(full),
            truncated=len(full) > max_chars or not complete,
            size=size,
            pages_read=pages_read,
        )
    if kind == "text":
        decoded = _decode_text(raw)
        assert decoded is not None  # detect_kind said "text"
        full = _normalise(decoded)
        mime, _label = _text_type(name)
        return PreparedDocument(
            sha256=sha256,
            name=name,
            mime=mime,
            kind="text",
            text=full[:max_chars],
            pages=None,
            chars=len(full),
            truncated=len(full) > max_chars,
            size=size,
        )
    if _is_image(raw):
        raise DocumentRejected(name, f"{name} is an image: attach it as an image.")
    raise DocumentRejected(name, f"{name} is not a text file (binary data).")


def _pdf_text(raw: bytes, name: str, max_chars: int) -> tuple[str, int, int, bool]:
    """(text, page count, pages read, read to the end) of a PDF, or DocumentRejected.

    pypdf raises many types on damaged input (its own, but also ValueError, KeyError,
    RecursionError...), so everything but an encrypted file is "damaged": the user can do
    the same thing about each.
    """
    import pypdf  # imported on first use: the app starts without paying for it

    try:
        with pypdf.apply_configuration(None, **_PYPDF_LIMITS):
            reader = pypdf.PdfReader(io.BytesIO(raw))
            if reader.is_encrypted and not _open_without_password(reader):
                raise DocumentRejected(
                    name, f"{name} is encrypted: remove its password and attach it again."
                )
            return _read_pages(reader, name, max_chars)
    except DocumentRejected:
        raise
    except pypdf.errors.FileNotDecryptedError:
        raise DocumentRejected(
            name, f"{name} is encrypted: remove its password and attach it again."
        ) from None
    except pypdf.errors.DependencyError:  # AES without the `cryptography` package
        log.warning("PDF %s needs a decryption library pypdf could not import", name)
        raise DocumentRejected(
            name, f"{name} is encrypted: remove its password and attach it again."
        ) from None
    except Exception as exc:  # hostile input: any failure is "damaged"
        log.info("PDF %s could not be read: %s: %s", name, type(exc).__name__, exc)
        raise DocumentRejected(
            name, f"{name} could not be read: it is damaged or not a PDF."
        ) from None


def _open_without_password(reader) -> bool:
    """An owner-password-only PDF (printing/copying restricted) opens with an empty user
    password; every viewer shows it, so its text is read too."""
    return bool(reader.decrypt(""))


def _read_pages(reader, name: str, max_chars: int) -> tuple[str, int, int, bool]:
    """Page texts until `max_chars` (a little more: the caller cuts) or MAX_PDF_PAGES."""
    pages = len(reader.pages)
    parts: list[str] = []
    total = 0
    read = 0
    for page in reader.pages:
        if read >= MAX_PDF_PAGES or total > max_chars:
            break
        page_text = (page.extract_text() or "").strip()
        read += 1
        if page_text:
            parts.append(page_text)
            total += len(page_text) + 2
    text = "\n\n".join(parts)
    if not text:
        raise DocumentRejected(
            name,
            f"{name} has no text layer (a scanned document?): paste its text or attach it "
            "as images.",
        )
    return text, pages, read, read == pages


def _normalise(text: str) -> str:
    """One newline convention ("\\n") for the model, the store and the character count."""
    return text.replace("\r\n", "\n").replace("\r", "\n").lstrip("\ufeff")


def clean_name(name: str) -> str:
    """The file's own name (no directories, no control characters, not too long)."""
    base = PurePosixPath((name or "").replace("\\", "/")).name
    base = "".join(ch for ch in base if unicodedata.category(ch)[0] != "C").strip()
    if len(base) > _MAX_NAME_CHARS:
        stem, dot, ext = base.rpartition(".")
        keep = _MAX_NAME_CHARS - len(ext) - 2 if dot and len(ext) <= 10 else _MAX_NAME_CHARS - 1
        base = base[:keep] + "…" + (f".{ext}" if dot and len(ext) <= 10 else "")
    return base or "document"


def _text_type(name: str) -> tuple[str, str]:
    suffix = PurePosixPath(name.lower()).suffix
    return _TEXT_TYPES.get(suffix, _PLAIN)


def _mb(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MB"


# --------------------------------------------------------------------------- for the model


_CLOSING_TAG = re.compile(r"</(document)", re.IGNORECASE)


def document_part(doc: PreparedDocument) -> str:
    """The document as the model reads it, one text part of the user message:

        <document name="report.pdf" type="application/pdf" pages="12" truncated="false">
        ...
        </document>

    Why this shape: an XML-like wrapper is what the major providers' own guides recommend for
    long documents in a prompt; every model tells where a file starts and ends, which file a
    passage came from (several may be attached), and whether it saw all of it, so it can say
    "the part I was given" instead of guessing. The name is attribute-escaped, and a literal
    "</document" inside the text is escaped too, so a file cannot close its own wrapper and
    pose as the user's words.
    """
    attrs = [f'name="{html.escape(doc.name, quote=True)}"', f'type="{doc.mime}"']
    if doc.pages is not None:
        attrs.append(f'pages="{doc.pages}"')
    attrs.append(f'truncated="{"true" if doc.truncated else "false"}"')
    body = _CLOSING_TAG.sub(r"&lt;/\1", doc.text)
    return f"<document {' '.join(attrs)}>\n{body}\n</document>"


def receipt(doc: PreparedDocument) -> str:
    """One line for the chat's receipt, like images.receipt_text:
    "report.pdf: PDF, 12 pages, 48,213 characters", "notes.txt: text, 230,000 characters,
    cut to 100,000", or for a long PDF "...: PDF, 500 pages, cut to 100,000 characters at
    page 41"."""
    if doc.kind == "pdf":
        pages = f"{doc.pages:,} page{'s' if doc.pages != 1 else ''}"
        label = f"PDF, {pages}"
    else:
        label = _text_type(doc.name)[1]
    if not doc.truncated:
        return f"{doc.name}: {label}, {doc.chars:,} characters"
    sent = len(doc.text)
    if doc.kind == "pdf" and doc.pages_read is not None and doc.pages_read < (doc.pages or 0):
        return f"{doc.name}: {label}, cut to {sent:,} characters at page {doc.pages_read:,}"
    return f"{doc.name}: {label}, cut to {sent:,} of {doc.chars:,} characters"
