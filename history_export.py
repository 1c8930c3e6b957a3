"""A stored conversation as an export: the JSON document (conversation_format.ExportFile's
shape) and the Markdown one. Plain data: HistoryStore reads, this writes."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from conversation_format import EXPORT_FORMAT, EXPORT_VERSION
from conversation_tree import walk
from history_records import ImageBlob, Message

# Left out of an export: the ids are access keys, and an export is meant to be shared.
PRIVATE_META = ("id", "browser")


def export_document(
    meta: Mapping[str, str], messages: list[Message], blobs: Mapping[str, ImageBlob]
) -> dict[str, Any]:
    """{"format", "version", "meta", "messages"}; each image reference whose bytes are still
    stored carries them ("data", base64) and their "mime". Changes `messages` in place."""
    for message in walk(messages):  # other versions and their branches too
        for ref in message.get("images") or []:
            if (blob := blobs.get(ref.get("sha256"))) is not None:
                ref["mime"] = blob[1]
                ref["data"] = base64.b64encode(blob[0]).decode("ascii")
    return {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "meta": {k: v for k, v in meta.items() if k not in PRIVATE_META},
        "messages": messages,
    }


def markdown_document(
    meta: Mapping[str, str], messages: list[Message], blobs: Mapping[str, ImageBlob]
) -> str:
    """Title, a meta line, then one `### Role` section per message. Images are data: URLs
    when their bytes are in `blobs`, else `![name](sha256:<hash>)`."""
    lines = [f"# {meta.get('title') or 'Conversation'}", "", _meta_line(meta), ""]
    for message in messages:
        lines += [f"### {str(message.get('role') or 'message').capitalize()}", ""]
        lines += [_content_text(message.get("content")), ""]
        for ref in message.get("images") or []:
            lines += [_image_markdown(ref, blobs.get(ref.get("sha256"))), ""]
    return "\n".join(lines).rstrip() + "\n"


def _meta_line(meta: Mapping[str, str]) -> str:
    parts = [f"{name}: {meta[name]}" for name in ("role", "provider", "model") if meta.get(name)]
    try:
        created = datetime.fromtimestamp(float(meta.get("created", "")), UTC)
        parts.append(f"created: {created:%Y-%m-%d %H:%M} UTC")
    except ValueError:
        pass
    return "_" + " · ".join(parts) + "_" if parts else ""


def _content_text(content: Any) -> str:
    """Plain text of a message: a string, or the text parts of an OpenAI-style content list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [p.get("text", "") for p in content if isinstance(p, dict)]
        return "\n\n".join(t for t in texts if isinstance(t, str))
    return "" if content is None else str(content)


def _image_markdown(ref: dict, blob: ImageBlob | None) -> str:
    name = str(ref.get("name") or "image").replace("]", ")").replace("[", "(")
    if blob is None:
        return f"![{name}](sha256:{ref.get('sha256')})"
    encoded = base64.b64encode(blob[0]).decode("ascii")
    return f"![{name}](data:{blob[1]};base64,{encoded})"
