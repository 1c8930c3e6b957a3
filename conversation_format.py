"""The export/import file of one conversation ("chat-history", version 1), as pydantic models.

`HistoryStore.export_json` writes it; `parse_export` reads one back (from any source, so every
part is checked and bounded here). The models are the format's one definition: its JSON schema,
published in docs/export-format.md, is `ExportFile.model_json_schema()` (a test keeps the two
equal). Unknown fields are kept on messages and image references (newer exports round-trip),
kept as extra meta fields when they are plain strings, and ignored at the top level.

Errors are `ValueError`s with one short sentence that says where and what is wrong: the UI and
the API show them after "Import failed: ". Nothing here imports gradio, Redis or Pillow.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

EXPORT_FORMAT: Final = "chat-history"
EXPORT_VERSION: Final = 2  # 2: versions, branches and feedback (a version-1 file reads the same)
READ_VERSIONS: Final = (1, 2)

# Ceilings of a file, far above what this app exports (HISTORY_MAX_MESSAGES, 200 by default;
# MAX_IMAGES_PER_MESSAGE, 8): past them a file is refused, below them it is trimmed and cut
# to the settings by conversation_import.py, with a note in the messages.
MAX_MESSAGES = 10_000
MAX_IMAGES_PER_MESSAGE = 100
MAX_PARTS_PER_MESSAGE = 1_000
MAX_TEXT_CHARS = 1_000_000  # one message's content or reasoning; cut further on import
MAX_DEPTH = 64  # nesting of objects and lists: 8, and 4 more per level of branches
MAX_VERSIONS = 100  # of one message (the app keeps 20)
MAX_ROLE_CHARS = 32
# Meta: at most this many fields are kept (the first ones), each value cut to its limit.
MAX_META_FIELDS = 32
MAX_META_CHARS = 500
MAX_TITLE_CHARS = 200

SCHEMA_DOC = Path(__file__).with_name("docs") / "export-format.md"
SCHEMA_BEGIN, SCHEMA_END = "<!-- schema:begin -->", "<!-- schema:end -->"

# Meta fields the store sets itself (and the ids, which are access keys): dropped on import.
_DROPPED_META = frozenset({"id", "browser", "updated", "bytes"})
_NAMED_META = frozenset({"title", "role", "provider", "model"})
_FIELD_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_SHA_RE = re.compile(r"[0-9a-f]{64}")
_CREATED_RE = re.compile(r"\d{1,12}(\.\d{1,9})?")

Blobs = dict[str, tuple[bytes, str]]


class ImageRef(BaseModel):
    """An image of a message: its hash, and in an export its bytes (base64) and mime type.
    A reference without `data` (the image had expired when exported) is kept as it is."""

    model_config = ConfigDict(extra="allow", strict=True)

    sha256: str | None = Field(
        default=None, description="SHA-256 of the bytes, recomputed on import"
    )
    name: str | None = Field(default=None, max_length=1000)
    mime: str | None = Field(
        default=None, max_length=100, description="image/*; required with data"
    )
    width: int | None = None
    height: int | None = None
    data: str | None = Field(
        default=None, description="the image's bytes, base64 (standard alphabet)"
    )

    _raw: bytes | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _decode(self) -> ImageRef:
        if self.data is None:
            if self.sha256 is None or _SHA_RE.fullmatch(self.sha256) is None:
                raise ValueError("an image without 'data' needs its 'sha256' (image hash)")
            return self
        if self.mime is None or not self.mime.startswith("image/"):
            raise ValueError("an image's 'mime' must be image/*")
        try:
            self._raw = base64.b64decode(self.data, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("an image's 'data' is not valid base64") from None
        # Recomputed: a file's claim cannot point another conversation's image key elsewhere.
        self.sha256 = hashlib.sha256(self._raw).hexdigest()
        return self


class ContentPart(BaseModel):
    """One part of an OpenAI-style content list, e.g. {"type": "text", "text": "..."}."""

    model_config = ConfigDict(extra="allow", strict=True)

    type: str = Field(max_length=64)
    text: str | None = Field(default=None, max_length=MAX_TEXT_CHARS)


class Message(BaseModel):
    """One message, as stored: fields this version does not know are kept as they are."""

    model_config = ConfigDict(extra="allow", strict=True)

    role: str = Field(min_length=1, max_length=MAX_ROLE_CHARS, description="user, assistant...")
    content: Annotated[str, Field(max_length=MAX_TEXT_CHARS)] | list[ContentPart] = Field(
        "", description="text, or content parts"
    )
    images: list[ImageRef] | None = Field(default=None, max_length=MAX_IMAGES_PER_MESSAGE)
    reasoning: str | None = Field(default=None, max_length=MAX_TEXT_CHARS)
    status: str | None = Field(
        default=None, max_length=32, description="complete, incomplete, error"
    )
    error: str | None = Field(default=None, max_length=10_000)
    provider: str | None = Field(default=None, max_length=200)
    model: str | None = Field(default=None, max_length=500)
    created: int | float | None = Field(default=None, description="unix seconds")
    usage: dict[str, Any] | None = Field(
        default=None, description="token counts as the provider gave"
    )
    receipts: list[str] | None = Field(default=None, max_length=MAX_IMAGES_PER_MESSAGE)
    feedback: Literal["up", "down"] | None = Field(
        default=None, description="the user's thumbs up or down on an answer"
    )
    versions: list[Version | None] | None = Field(
        default=None,
        max_length=MAX_VERSIONS,
        description="every version of this message, oldest first; null in the place of "
        "the one shown (this message itself)",
    )
    version: int | None = Field(default=None, ge=0, description="the shown version's index")

    @model_validator(mode="before")
    @classmethod
    def _shape(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            raise ValueError("not an object")
        content = data.get("content", "")
        if not isinstance(content, str | list):
            raise ValueError("'content' must be a string or a list of parts")
        if isinstance(content, list) and len(content) > MAX_PARTS_PER_MESSAGE:
            raise ValueError(f"has more than {MAX_PARTS_PER_MESSAGE:,} content parts")
        images = data.get("images")
        if images is not None and not isinstance(images, list):
            raise ValueError("'images' must be a list of objects")
        return data

    def stored(self) -> dict[str, Any]:
        """The message as the store keeps it: as given, images without their bytes (those of
        its other versions and their branches too)."""
        out = self.model_dump(exclude_unset=True, exclude={"images", "versions", "after"})
        if self.images:
            out["images"] = [
                ref.model_dump(exclude_unset=True, exclude={"data"}) for ref in self.images
            ]
        if self.versions is not None:
            out["versions"] = [v.stored() if v is not None else None for v in self.versions]
        return out

    def image_refs(self) -> list[ImageRef]:
        """Its images and those of its other versions and their branches."""
        refs = list(self.images or [])
        for version in self.versions or []:
            if version is not None:
                refs += version.image_refs()
        return refs


class Version(Message):
    """Another version of a message, and the messages that followed it (its branch)."""

    after: list[Message] | None = Field(default=None, max_length=MAX_MESSAGES)

    def stored(self) -> dict[str, Any]:
        out = super().stored()
        if self.after is not None:
            out["after"] = [m.stored() for m in self.after]
        return out

    def image_refs(self) -> list[ImageRef]:
        return super().image_refs() + [r for m in self.after or [] for r in m.image_refs()]


class Meta(BaseModel):
    """The conversation's meta: title, role, provider, model, and other plain-string fields.
    `id`, `browser`, `updated` and `bytes` are dropped (the store sets them), `created` is kept
    when it is unix seconds; with the four named fields (always present), at most
    MAX_META_FIELDS are kept (the first ones), each cut to MAX_META_CHARS characters (the
    title to MAX_TITLE_CHARS)."""

    model_config = ConfigDict(extra="allow", strict=True)
    __pydantic_extra__: dict[str, str]

    title: str = ""
    role: str = ""
    provider: str = ""
    model: str = ""
    created: str | None = Field(
        default=None, pattern=_CREATED_RE.pattern, description="unix seconds"
    )

    @model_validator(mode="before")
    @classmethod
    def _bound(cls, data: Any) -> Any:
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise ValueError("'meta' must be an object")
        kept: dict[str, Any] = {}
        room = MAX_META_FIELDS - len(_NAMED_META)  # for the fields other than the named ones
        for name, value in data.items():
            if not isinstance(name, str) or name in _DROPPED_META:
                continue
            if name == "created":  # an export's own clock; anything else means "now"
                if isinstance(value, str) and _CREATED_RE.fullmatch(value) and room > 0:
                    kept[name], room = value, room - 1
                continue
            if not _FIELD_RE.fullmatch(name):
                raise ValueError(f"meta field {name!r:.70} cannot be set")
            if not isinstance(value, str):
                raise ValueError(f"meta field {name!r} must be a string, not {_json_type(value)}")
            if name in _NAMED_META or room > 0:
                room -= name not in _NAMED_META
                kept[name] = value[: MAX_TITLE_CHARS if name == "title" else MAX_META_CHARS]
        return kept

    def stored(self) -> dict[str, str]:
        return {name: value for name, value in self.model_dump().items() if value is not None}


class ExportFile(BaseModel):
    """A conversation export: {"format": "chat-history", "version": 2, "meta", "messages"}."""

    model_config = ConfigDict(
        extra="ignore",
        strict=True,
        title="Conversation export (chat-history, version 2)",
    )

    format: Literal["chat-history"] = EXPORT_FORMAT
    version: Literal[1, 2] = EXPORT_VERSION
    meta: Meta = Field(default_factory=lambda: Meta.model_validate({}))
    messages: list[Message] = Field(max_length=MAX_MESSAGES, description="oldest first")

    @model_validator(mode="before")
    @classmethod
    def _shape(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            raise ValueError("expected a JSON object (a conversation export)")
        version = data.get("version", EXPORT_VERSION)
        if data.get("format", EXPORT_FORMAT) != EXPORT_FORMAT or (
            type(version) is not int or version not in READ_VERSIONS
        ):
            raise ValueError(
                f"unsupported format or version: this app reads {EXPORT_FORMAT!r} versions "
                f"{' and '.join(map(str, READ_VERSIONS))}"
            )
        messages = data.get("messages")
        if not isinstance(messages, list):
            raise ValueError("'messages' must be a list")
        if len(messages) > MAX_MESSAGES:
            raise ValueError(f"too many messages ({len(messages):,}; at most {MAX_MESSAGES:,})")
        if _too_deep(data, MAX_DEPTH):
            raise ValueError(f"nested too deeply (more than {MAX_DEPTH} levels)")
        return data

    def blobs(self) -> Blobs:
        """The images that came with their bytes, by their real hash: (bytes, mime)."""
        found: Blobs = {}
        for message in self.messages:
            for ref in message.image_refs():
                if ref._raw is not None and ref.sha256 and ref.mime:
                    found[ref.sha256] = (ref._raw, ref.mime)
        return found


Message.model_rebuild()


def load_json(text: str) -> Any:
    """An export file's text as JSON; ValueError says what is wrong."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise ValueError("that file is not JSON. Pick a file exported from this app.") from None
    except RecursionError:
        raise ValueError("that JSON is nested too deeply to be a conversation export.") from None


def validate_export(data: Any) -> ExportFile:
    """`data` (parsed JSON) as an ExportFile; ValueError with one clear sentence if it is not."""
    try:
        return ExportFile.model_validate(data)
    except ValidationError as err:
        raise ValueError(explain(err)) from None


def parse_export(data: Any) -> tuple[dict[str, str], list[dict[str, Any]], Blobs]:
    """Validate an export; returns (meta, messages without inline data, images by real hash)."""
    export = validate_export(data)
    return export.meta.stored(), [m.stored() for m in export.messages], export.blobs()


def explain(err: ValidationError) -> str:
    """The most specific of pydantic's errors as "where: what", e.g. "message 3, image 0: an
    image's 'data' is not valid base64" (never the input itself: it may be megabytes)."""
    errors = err.errors(include_url=False, include_input=False)
    # A union (content: str | parts) reports every member; the deepest is the one that applied.
    first = max(errors, key=lambda e: len(e["loc"]))
    where, field = _where(first["loc"])
    if first["type"] == "value_error":
        problem = str(first["ctx"]["error"]) if "ctx" in first else first["msg"]
    else:
        problem = first["msg"][:1].lower() + first["msg"][1:]
        if field:
            problem = f"{field!r}: {problem}"
    return f"{where}: {problem}" if where and not problem.startswith(where) else problem


_CONTAINERS = {"messages": "message", "images": "image", "content": "part", "receipts": "receipt"}


def _where(loc: tuple[int | str, ...]) -> tuple[str, str]:
    """("messages", 3, "images", 0, "mime") -> ("message 3, image 0", "mime")."""
    parts: list[str] = []
    field = ""
    names = [p for p in loc if isinstance(p, int) or re.fullmatch(r"[A-Za-z_]\w*", p)]
    names = [p for p in names if p not in ("str", "int", "float", "list", "dict")]
    for index, name in enumerate(names):
        following = names[index + 1] if index + 1 < len(names) else None
        if isinstance(name, str) and name in _CONTAINERS and isinstance(following, int):
            parts.append(f"{_CONTAINERS[name]} {following}")
        elif name == "meta" and index == 0:
            parts.append("meta")
        elif isinstance(name, str):
            field = name
    return ", ".join(parts), field


def _json_type(value: Any) -> str:
    names = {bool: "a boolean", int: "a number", float: "a number", list: "a list"}
    return "null" if value is None else names.get(type(value), "an object")


def _too_deep(data: Any, limit: int) -> bool:
    """True when objects and lists nest more than `limit` levels (walked without recursion)."""
    stack: list[tuple[Any, int]] = [(data, 1)] if isinstance(data, dict | list) else []
    while stack:
        value, depth = stack.pop()
        if depth > limit:
            return True
        items = value.values() if isinstance(value, dict) else value
        stack.extend((item, depth + 1) for item in items if isinstance(item, dict | list))
    return False


def schema_json() -> str:
    """The published JSON schema, as docs/export-format.md shows it."""
    return json.dumps(ExportFile.model_json_schema(), indent=2, ensure_ascii=False)


def schema_block() -> str:
    return f"{SCHEMA_BEGIN}\n```json\n{schema_json()}\n```\n{SCHEMA_END}"


def write_schema_doc(path: Path = SCHEMA_DOC) -> bool:
    """Rewrite the schema block of the doc; True when it changed."""
    text = path.read_text(encoding="utf-8")
    start, end = text.index(SCHEMA_BEGIN), text.index(SCHEMA_END) + len(SCHEMA_END)
    updated = text[:start] + schema_block() + text[end:]
    if updated != text:
        path.write_text(updated, encoding="utf-8")
    return updated != text


if __name__ == "__main__":  # python conversation_format.py: refresh docs/export-format.md
    print("updated" if write_schema_doc() else "unchanged", SCHEMA_DOC, file=sys.stderr)
