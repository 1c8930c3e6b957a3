"""What the history store accepts: ids, meta fields, messages and image blobs, checked before
anything is written; and the small LRU its caches use. Plain data: no Redis, no I/O."""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

from conversation_tree import walk

# Meta fields the store owns: callers may not set them through **extra / update_meta.
# "bytes" is the conversation's stored size (byte accounting, see `HistoryStore.stored_bytes`).
RESERVED_META = frozenset({"id", "browser", "created", "updated", "bytes"})

_ID_RE = re.compile(r"[0-9a-f]{32}")
_SHA_RE = re.compile(r"[0-9a-f]{64}")
_FIELD_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")

Message = dict[str, Any]
ImageBlob = tuple[bytes, str]


class InvalidId(ValueError):
    """A malformed browser/conversation id (or one that does not belong to the caller)."""


class UnknownConversation(InvalidId):
    """A write aimed at a conversation that does not exist (deleted or expired)."""


class ConversationChanged(ValueError):
    """A rewrite of messages found them changed by another tab since they were read."""


def new_id() -> str:
    """A random 128-bit id as 32 lowercase hex characters."""
    return secrets.token_hex(16)


def is_valid_id(value: str) -> bool:
    return isinstance(value, str) and _ID_RE.fullmatch(value) is not None


def check_id(value: str, what: str = "conversation id") -> str:
    if not is_valid_id(value):
        # Truncated repr: the id may come from an API caller and land in a log.
        raise InvalidId(f"Malformed {what}: expected 32 lowercase hex, got {value!r:.48}")
    return value


def check_sha(value: Any) -> str:
    if not isinstance(value, str) or _SHA_RE.fullmatch(value) is None:
        raise ValueError(f"Malformed image hash: expected 64 lowercase hex, got {value!r:.80}")
    return value


def timestamp() -> str:
    """Unix seconds with microseconds, as the meta hash keeps them."""
    return f"{time.time():.6f}"


def check_fields(fields: dict[str, Any]) -> dict[str, str]:
    """Extra meta fields: plain names, string values, never a field the store owns."""
    for name, value in fields.items():
        if name in RESERVED_META or not _FIELD_RE.fullmatch(name):
            raise ValueError(f"Meta field {name!r} cannot be set")
        if not isinstance(value, str):
            raise ValueError(f"Meta field {name!r} must be a string, got {type(value).__name__}")
    return dict(fields)


def _check_refs(message: Message) -> list[dict]:
    refs = message.get("images") or []
    if not isinstance(refs, list):
        raise ValueError("message 'images' must be a list of image references")
    for ref in refs:
        if not isinstance(ref, dict):
            raise ValueError("each image reference must be a dict with a 'sha256'")
        check_sha(ref.get("sha256"))
        if "data" in ref:
            # Bytes belong in img:<sha256>, stored once; inline data is what this design avoids.
            raise ValueError("image references must not carry 'data'; pass the bytes in `images`")
    return refs


def encode_message(message: Message) -> str:
    """A message as the compact JSON the store keeps (ValueError if it cannot be one)."""
    if not isinstance(message, dict):
        raise ValueError(f"a message must be a dict, got {type(message).__name__}")
    _check_refs(message)
    try:
        text = json.dumps(message, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError) as err:
        raise ValueError(f"message is not JSON-serialisable: {err}") from err
    # A lone surrogate (invalid Unicode) would make Redis' UTF-8 encoding fail: U+FFFD.
    return text if text.isascii() else re.sub("[\\ud800-\\udfff]", "\ufffd", text)


def check_images(images: dict[str, ImageBlob]) -> dict[str, ImageBlob]:
    """The hash is the key shared by every conversation, so it is recomputed, never trusted."""
    for sha, blob in images.items():
        check_sha(sha)
        if not (isinstance(blob, tuple) and len(blob) == 2):
            raise ValueError("images values must be (bytes, mime) tuples")
        data, mime = blob
        if not isinstance(data, bytes | bytearray) or hashlib.sha256(data).hexdigest() != sha:
            raise ValueError(f"image bytes do not match their sha256 {sha[:12]}...")
        if not isinstance(mime, str) or not mime.startswith("image/"):
            raise ValueError(f"image mime must be image/*, got {mime!r:.40}")
    return images


def image_shas(messages: Iterable[Message]) -> list[str]:
    """The hashes the messages reference (their other versions' too), once each, in order."""
    seen: dict[str, None] = {}
    for message in walk(list(messages)):
        for ref in message.get("images") or []:
            if isinstance(ref, dict) and isinstance(ref.get("sha256"), str):
                seen[ref["sha256"]] = None
    return list(seen)


def charge(encoded: list[str], blobs: dict[str, ImageBlob]) -> int:
    """Bytes a write adds: the encoded messages and the image blobs it carries."""
    return sum(len(e.encode()) for e in encoded) + sum(len(data) for data, _ in blobs.values())


class LRU:
    """A bounded LRU; `weigh` gives an entry's cost (1 per entry, or its bytes)."""

    def __init__(self, capacity: int, weigh: Callable[[Any], int] = lambda _: 1) -> None:
        self.capacity = capacity
        self._weigh = weigh
        self._items: OrderedDict[str, Any] = OrderedDict()
        self.size = 0

    def get(self, key: str) -> Any:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: str, value: Any) -> None:
        cost = self._weigh(value)
        if cost > self.capacity:
            return
        self.pop(key)
        self._items[key] = value
        self.size += cost
        while self.size > self.capacity:
            _, old = self._items.popitem(last=False)
            self.size -= self._weigh(old)

    def pop(self, key: str) -> None:
        old = self._items.pop(key, None)
        if old is not None:
            self.size -= self._weigh(old)

    def clear(self) -> None:
        self._items.clear()
        self.size = 0
