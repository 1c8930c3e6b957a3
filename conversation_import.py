"""What an imported conversation may bring: bounded meta and messages, and its images as
the image pipeline left them (re-encoded and sized like uploads; not an image: dropped, with
a note in the message). ChatService.import_conversation does the I/O; this is plain data.

The entry point is `parse_import` (validate with conversation_format's models, then trim and
cut to the settings); `ParsedImport.apply_prepared` puts the prepared images in. The other
functions are its steps. Nothing here imports gradio, Redis or Pillow.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from conversation_format import (
    Blobs,
    load_json,
    parse_export,
)
from conversation_tree import walk

# Answers are not limited by MAX_MESSAGE_CHARS (the model writes them): an exported answer
# may be longer than a user message, so other roles get this many times the limit.
OTHER_ROLES_FACTOR = 5

ImageItem = tuple[str, str, bytes]  # (sha256 in the file, name, raw bytes)


@dataclass
class ParsedImport:
    """A validated export, bounded to the settings: what a new conversation will hold."""

    meta: dict[str, str]
    messages: list[dict]
    blobs: Blobs

    def image_items(self) -> list[ImageItem]:
        """The images to put through the image pipeline, once per hash."""
        return image_items(self.messages, self.blobs)

    def apply_prepared(self, prepared: Mapping[str, Any], dropped: Mapping[str, str]) -> list[dict]:
        """The messages with each image's ref rewritten to its prepared image (old sha ->
        images.PreparedImage), or left out with a note (old sha -> reason)."""
        return apply_prepared(self.messages, prepared, dropped)


def parse_import(
    data: str | object, *, max_messages: int, max_chars: int, max_images: int
) -> ParsedImport:
    """An export (its JSON text, or already parsed) validated, then bounded: its last
    `max_messages` messages, each cut to `max_chars` (answers 5x) and `max_images` images, a
    note in each message saying what was cut. ValueError with a clear sentence for a file
    that is not an export. CPU-bound on big files (base64, hashes): run it in a thread."""
    if isinstance(data, str):
        data = load_json(data)
    meta, messages, blobs = parse_export(data)
    messages = bound_messages(messages[-max_messages:], max_chars=max_chars, max_images=max_images)
    return ParsedImport(meta, messages, blobs)  # meta: bounded by conversation_format.Meta


def note(message: dict, text: str) -> None:
    """Append a note to a message's content (a string, or OpenAI-style parts)."""
    content = message.get("content")
    if isinstance(content, list):
        message["content"] = [*content, {"type": "text", "text": text}]
    else:
        body = content if isinstance(content, str) else ""
        message["content"] = f"{body}\n\n{text}" if body else text


def _cut(value: Any, limit: int) -> tuple[Any, bool]:
    if isinstance(value, str) and len(value) > limit:
        return value[:limit], True
    if isinstance(value, list):
        out, cut, used = [], False, 0
        for part in value:
            text = part.get("text") if isinstance(part, dict) else None
            if isinstance(text, str):
                room = max(0, limit - used)
                if len(text) > room:
                    part, cut = {**part, "text": text[:room]}, True
                used += len(part["text"])
            out.append(part)
        return out, cut
    return value, False


def bound_messages(messages: list[dict], *, max_chars: int, max_images: int) -> list[dict]:
    """Each message's text (content, reasoning) cut to its role's limit and its images to
    MAX_IMAGES_PER_MESSAGE, each cut said in a note."""
    out = []
    for message in messages:
        message = dict(message)
        limit = max_chars if message.get("role") == "user" else OTHER_ROLES_FACTOR * max_chars
        notes = []
        for name in ("content", "reasoning"):
            message[name], cut = _cut(message.get(name), limit)
            if message[name] is None:
                message.pop(name)
            if cut:
                notes.append(f"[{name} cut on import: longer than {limit:,} characters]")
        refs = message.get("images") or []
        if len(refs) > max_images:
            message["images"] = refs[:max_images]
            notes.append(
                f"[{len(refs) - max_images} image(s) left out on import: at most "
                f"{max_images} per message]"
            )
        for text in notes:
            note(message, text)
        out.append(message)
    return out


def image_items(messages: list[dict], blobs: Mapping[str, tuple[bytes, str]]) -> list[ImageItem]:
    """(old sha256, name, raw bytes) of each image the messages carry (their other versions'
    too), once per hash."""
    names: dict[str, str] = {}
    for message in walk(messages):
        for ref in message.get("images") or []:
            sha = ref.get("sha256")
            if sha in blobs and sha not in names:
                names[sha] = str(ref.get("name") or "image")[:80]
    return [(sha, name, blobs[sha][0]) for sha, name in names.items()]


def apply_prepared(
    messages: list[dict], prepared: Mapping[str, Any], dropped: Mapping[str, str]
) -> list[dict]:
    """Refs rewritten to their prepared image (`prepared`: old sha -> images.PreparedImage);
    refs whose image was refused (`dropped`: old sha -> reason) removed, with a note. In
    other versions and their branches too."""
    return [_apply(message, prepared, dropped) for message in messages]


def _apply(message: dict, prepared: Mapping[str, Any], dropped: Mapping[str, str]) -> dict:
    message = dict(message)
    versions = message.get("versions")
    if isinstance(versions, list):
        message["versions"] = [
            _apply(v, prepared, dropped) if isinstance(v, dict) else v for v in versions
        ]
    after = message.get("after")
    if isinstance(after, list):
        message["after"] = apply_prepared(after, prepared, dropped)
    refs = message.get("images") or []
    if not refs:
        return message
    kept = []
    for ref in refs:
        sha = ref.get("sha256")
        if sha in dropped:
            name = str(ref.get("name") or "image")[:80]
            note(message, f"[image “{name}” left out on import: {dropped[sha]}]")
        elif sha in prepared:
            image = prepared[sha]
            kept.append(
                {
                    **ref,
                    "sha256": image.sha256,
                    "mime": image.mime,
                    "width": image.width,
                    "height": image.height,
                }
            )
        else:  # exported after it expired: a reference without bytes, kept as it was
            kept.append(ref)
    message["images"] = kept
    if not kept:
        message.pop("images")
    return message
