"""What an imported conversation may bring: bounded meta and messages, and its images as
the image pipeline left them (re-encoded and sized like uploads; not an image: dropped, with
a note in the message). ChatService.import_conversation does the I/O; this is plain data.

Nothing here imports gradio, Redis or Pillow.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

MAX_META_FIELDS = 32
MAX_META_CHARS = 500
MAX_TITLE_CHARS = 200
# Answers are not limited by MAX_MESSAGE_CHARS (the model writes them): an exported answer
# may be longer than a user message, so other roles get this many times the limit.
OTHER_ROLES_FACTOR = 5


def parse_json(text: str) -> dict:
    """An export file's text as its top-level object; ValueError says what is wrong."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        raise ValueError("that file is not JSON. Pick a file exported from this app.") from None
    except RecursionError:
        raise ValueError("that JSON is nested too deeply to be a conversation export.") from None
    if not isinstance(data, dict):
        raise ValueError("that JSON is not a conversation export.")
    return data


def bound_meta(meta: Mapping[str, str]) -> dict[str, str]:
    """At most MAX_META_FIELDS fields, each value cut to MAX_META_CHARS (title shorter)."""
    kept: dict[str, str] = {}
    for name, value in meta.items():
        if len(kept) >= MAX_META_FIELDS:
            break
        kept[name] = value[: MAX_TITLE_CHARS if name == "title" else MAX_META_CHARS]
    return kept


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


def image_items(messages: list[dict], blobs: Mapping[str, tuple[bytes, str]]) -> list[tuple]:
    """(old sha256, name, raw bytes) of each image the messages carry, once per hash."""
    names: dict[str, str] = {}
    for message in messages:
        for ref in message.get("images") or []:
            sha = ref.get("sha256")
            if sha in blobs and sha not in names:
                names[sha] = str(ref.get("name") or "image")[:80]
    return [(sha, name, blobs[sha][0]) for sha, name in names.items()]


def apply_prepared(
    messages: list[dict], prepared: Mapping[str, Any], dropped: Mapping[str, str]
) -> list[dict]:
    """Refs rewritten to their prepared image (`prepared`: old sha -> images.PreparedImage);
    refs whose image was refused (`dropped`: old sha -> reason) removed, with a note."""
    out = []
    for message in messages:
        refs = message.get("images") or []
        if not refs:
            out.append(message)
            continue
        message, kept = dict(message), []
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
        out.append(message)
    return out
