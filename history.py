"""Conversation history in Redis: conversations per browser, messages, images by hash, TTLs.

Key layout (P = prefix, default "chat:"):
    P conv:<cid>:meta      hash    title, role, provider, model, created, updated, browser, extras
    P conv:<cid>:msgs      list    one JSON object per message, oldest first, trimmed to N
    P browser:<bid>:convs  zset    cid -> updated (unix seconds), listed newest first
    P browser:<bid>:trash  zset    cid -> when deleted: restorable (Undo) until purged
    P img:<sha256>         hash    mime, data (the optimised bytes; shared by every conversation)
    P share:<token>        string  a shared link's read-only snapshot (JSON: version, title,
                                   created, messages with display fields only; no ids)
    P conv:<cid>:share     string  that link's token (the same TTL as the snapshot)
    P stored:api:<ip>      string  bytes stored by API callers at that address (their quota)
    P app_secret           string  the BrowserState secret (the only key without a TTL)
    P account-ids:app_secret  string  the key signed-in accounts' ids are derived under
                                   (accounts.py; no TTL either)

Every write of a turn is one MULTI. Reads refresh the TTLs of what they read (not a shared
snapshot's: viewing a link never extends it). Without a URL the
same code runs on fakeredis (embedded, in memory). Redis failures become `HistoryUnavailable`.

Its parts: history_conversations.py (conversations and messages), history_base.py (clients,
keys, images, byte accounting), redis_connection.py (clients,
errors), history_records.py (what may be stored), history_export.py (export documents),
history_search.py (search: its cache and matching) and conversation_format.py (the export
file's format).
"""

from __future__ import annotations

import json
from typing import Any

from conversation_format import EXPORT_FORMAT, EXPORT_VERSION, parse_export
from history_base import DEFAULT_IMAGE_CACHE_BYTES, DEFAULT_MAX_MESSAGES, DEFAULT_TTL_SECONDS
from history_conversations import ConversationStore
from history_export import export_document, markdown_document
from history_records import (
    RESERVED_META,
    ConversationChanged,
    ImageBlob,
    InvalidId,
    Message,
    UnknownConversation,
    charge,
    check_id,
    check_images,
    encode_message,
    image_shas,
    is_valid_id,
    new_id,
    timestamp,
)
from history_search import ConversationSearch, SearchHit
from redis_connection import (
    CHANGE,
    EMBEDDED_DISPLAY,
    READ,
    Guard,
    HistoryUnavailable,
    app_secret_from_redis,
    as_text,
    display_url,
)

# The store's public names, importable from here as before the split.
__all__ = [
    "DEFAULT_IMAGE_CACHE_BYTES",
    "DEFAULT_MAX_MESSAGES",
    "DEFAULT_TTL_SECONDS",
    "EMBEDDED_DISPLAY",
    "EXPORT_FORMAT",
    "EXPORT_VERSION",
    "RESERVED_META",
    "HistoryStore",
    "HistoryUnavailable",
    "ImageBlob",
    "InvalidId",
    "Message",
    "SearchHit",
    "ConversationChanged",
    "UnknownConversation",
    "app_secret_from_redis",
    "display_url",
    "is_valid_id",
    "new_id",
    "parse_export",
]


# A shared snapshot keeps only what the page shows of a message; anything else (a future
# `versions`, `feedback`, `edited`) stays private until it is added here on purpose.
SHARED_FIELDS = frozenset(
    {"role", "content", "reasoning", "images", "receipts", "status", "error", "usage"}
    | {"provider", "model", "created", "time"}
)
SHARED_ROLES = frozenset({"user", "assistant"})  # not an imported "system" prompt
SHARE_VERSION = 1


class HistoryStore(ConversationStore):
    """Async conversation store; one per process, shared by every request."""

    _search: ConversationSearch | None = None  # made on the first search (its cache)

    async def search_conversations(
        self, browser_id: str, query: str, *, limit: int = 50
    ) -> list[SearchHit]:
        """This browser's conversations whose title or messages hold every term of `query`
        (case-insensitive, NFKC), newest first, at most `limit`; [] for an empty query.
        Matching runs here on cached text (history_search.py: plain Redis has no search)."""
        check_id(browser_id, "browser id")
        with Guard(READ):
            return await self._searcher().search(browser_id, query, limit=limit)

    async def warm_search(self, browser_id: str) -> int:
        """Cache what searching this browser reads (history_search.ConversationSearch.warm)."""
        check_id(browser_id, "browser id")
        with Guard(READ):
            return await self._searcher().warm(browser_id)

    def _searcher(self) -> ConversationSearch:
        if self._search is None:
            self._search = ConversationSearch(
                self._r,
                meta_key=self._meta_key,
                msgs_key=self._msgs_key,
                index_key=self._index_key,
            )
        return self._search

    # Delete with Undo: a deleted conversation first moves to its browser's trash (a zset by
    # deletion time) and leaves the list; `purge_trash` deletes for real what stayed there
    # longer than the Undo window. The page purges on every list it shows.
    def _trash_key(self, browser_id: str) -> str:
        return f"{self.prefix}browser:{browser_id}:trash"

    async def trash_conversation(self, browser_id: str, cid: str) -> bool:
        """Take the conversation off the browser's list, restorable until purged."""
        check_id(browser_id, "browser id")
        check_id(cid)
        with Guard(CHANGE):
            pipe = self._w.pipeline(transaction=True)
            pipe.zrem(self._index_key(browser_id), cid)
            pipe.zadd(self._trash_key(browser_id), {cid: float(timestamp())})
            pipe.expire(self._trash_key(browser_id), self.ttl_seconds)
            removed = (await pipe.execute())[0]
        return bool(removed)

    async def restore_conversation(self, browser_id: str, cid: str) -> bool:
        """Put a trashed conversation back on the list (False once it was purged)."""
        check_id(browser_id, "browser id")
        check_id(cid)
        with Guard(CHANGE):
            if not await self._w.zscore(self._trash_key(browser_id), cid):
                return False
            meta = await self._r.hget(self._meta_key(cid), "updated")
            pipe = self._w.pipeline(transaction=True)
            pipe.zrem(self._trash_key(browser_id), cid)
            if meta is not None:
                pipe.zadd(self._index_key(browser_id), {cid: float(as_text(meta))})
            await pipe.execute()
        return meta is not None

    async def purge_trash(self, browser_id: str, older_than: float) -> int:
        """Delete for real the conversations trashed more than `older_than` seconds ago."""
        check_id(browser_id, "browser id")
        cutoff = float(timestamp()) - older_than
        with Guard(CHANGE):
            old = await self._w.zrangebyscore(self._trash_key(browser_id), "-inf", cutoff)
        for cid in (as_text(c) for c in old):
            await self.delete_conversation(cid)
            with Guard(CHANGE):
                await self._w.zrem(self._trash_key(browser_id), cid)
        return len(old)

    async def delete_conversation(self, cid: str) -> bool:
        """Removes meta, messages, the index entry and the shared link (it stops at once);
        images are shared and expire alone."""
        check_id(cid)
        with Guard(CHANGE):
            owner = await self._owner(cid)
            token = await self._stored_token(cid)
            pipe = self._w.pipeline(transaction=True)
            self._queue_unshare(pipe, cid, token)
            pipe.delete(self._meta_key(cid))
            pipe.delete(self._msgs_key(cid))
            if owner:
                pipe.zrem(self._index_key(owner), cid)
            found, _, deleted = (await pipe.execute())[:3]
            await self._drop_late_share(token, found)
        self._owners.pop(cid)
        return bool(deleted)

    # ---- shared links -------------------------------------------------------------------
    # A link is a token (new_id) naming a snapshot: copies of the messages' display fields,
    # never the conversation id, so the public API (which takes conversation ids) cannot
    # reach the conversation through it.

    def _share_key(self, token: str) -> str:
        return f"{self.prefix}share:{token}"

    def _token_key(self, cid: str) -> str:
        return f"{self.prefix}conv:{cid}:share"

    async def share_conversation(self, cid: str) -> str | None:
        """Snapshot the conversation now for a read-only link; returns its token, None if
        cid is unknown. Sharing again re-snapshots under the SAME token, so a link already
        given keeps working and shows the new state. The snapshot, the token key and the
        images it shows live ttl_seconds from now; the conversation's TTLs are refreshed
        too (sharing is use), so it outlives its link and can still revoke it."""
        check_id(cid)
        with Guard(CHANGE):
            pipe = self._w.pipeline(transaction=True)  # a consistent read of the three
            pipe.hmget(self._meta_key(cid), "title", "browser")
            pipe.lrange(self._msgs_key(cid), 0, -1)
            pipe.get(self._token_key(cid))
            (title, owner), raw, token = await pipe.execute()
            if owner is None:  # every meta has a browser field ("" for API conversations)
                return None
            snapshot = shared_snapshot(as_text(title or ""), [json.loads(m) for m in raw])
            token = as_text(token) if token is not None else new_id()
            return await self._write_share(cid, as_text(owner), token, snapshot)

    async def _write_share(self, cid: str, owner: str, token: str, snapshot: dict) -> str | None:
        """ONE MULTI, no WATCH (so concurrent shares never make each other retry): it checks
        the meta (a delete meanwhile) and reads the token key before setting it NX (another
        first share meanwhile) inside the MULTI, and mends either case after it."""
        ttl, token_key = self.ttl_seconds, self._token_key(cid)
        pipe = self._w.pipeline(transaction=True)
        pipe.exists(self._meta_key(cid))
        pipe.get(token_key)
        pipe.set(self._share_key(token), json.dumps(snapshot, ensure_ascii=False), ex=ttl)
        pipe.set(token_key, token, ex=ttl, nx=True)
        pipe.expire(token_key, ttl)
        self._queue_refresh(pipe, cid)
        if owner:
            pipe.expire(self._index_key(owner), ttl)
        for sha in image_shas(snapshot["messages"]):
            # Every image key's TTL is at most ttl_seconds (each write and read sets it to
            # that), so a plain EXPIRE gives it at least the snapshot's lifetime, as GT
            # would, on any Redis (EXPIRE ... GT needs Redis 7).
            pipe.expire(self._image_key(sha), ttl)
        exists, current = (await pipe.execute())[:2]
        if not exists:  # deleted meanwhile: its link must not outlive it
            await self._w.delete(self._share_key(token), token_key)
            return None
        if current is not None and as_text(current) != token:
            # Another share won the token key first: its link is the link, ours is dropped.
            await self._w.delete(self._share_key(token))
            return as_text(current)
        return token

    async def unshare_conversation(self, cid: str) -> bool:
        """Revoke the conversation's link at once (both keys); True if it was shared."""
        check_id(cid)
        with Guard(CHANGE):
            token = await self._stored_token(cid)
            pipe = self._w.pipeline(transaction=True)
            self._queue_unshare(pipe, cid, token)
            found = (await pipe.execute())[0]
            await self._drop_late_share(token, found)
        return found is not None

    async def shared_token(self, cid: str) -> str | None:
        """The token of the conversation's link, None when it is not shared."""
        check_id(cid)
        with Guard(READ):
            return await self._stored_token(cid)

    async def get_shared(self, token: str) -> dict | None:
        """The snapshot behind a link: {"version", "title", "created", "messages"}; None for a
        malformed, unknown, expired or revoked token (never an error: a link is user input).
        Refreshes nothing: viewing a link must not extend it."""
        if not is_valid_id(token):
            return None
        with Guard(READ):
            raw = await self._r.get(self._share_key(token))
        try:
            snapshot = json.loads(raw) if raw is not None else None
        except ValueError:
            return None
        return snapshot if isinstance(snapshot, dict) else None

    async def _stored_token(self, cid: str) -> str | None:
        token = await self._w.get(self._token_key(cid))
        return as_text(token) if token is not None else None

    def _queue_unshare(self, pipe: Any, cid: str, token: str | None) -> None:
        """Two commands, first in their MULTI: read the token key back, then delete it and
        `token`'s snapshot. The read-back catches a first share that landed after `token`
        was read (see _drop_late_share)."""
        pipe.get(self._token_key(cid))
        pipe.delete(self._token_key(cid), *([self._share_key(token)] if token else []))

    async def _drop_late_share(self, token: str | None, found: bytes | str | None) -> None:
        if found is not None and as_text(found) != token:
            await self._w.delete(self._share_key(as_text(found)))

    # ---- export / import ----------------------------------------------------------------

    async def export_json(self, cid: str) -> dict | None:
        """The conversation as conversation_format.ExportFile's JSON (history_export), images
        inline; None for an unknown conversation."""
        meta = await self.get_meta(cid)
        if meta is None:
            return None
        messages = await self.get_messages(cid)
        return export_document(meta, messages, await self.get_images(image_shas(messages)))

    async def export_markdown(self, cid: str, *, inline_images: bool = True) -> str | None:
        """Markdown (history_export): images as data: URLs (self-contained) or, with
        inline_images=False or once expired, `![name](sha256:<hash>)`."""
        meta = await self.get_meta(cid)
        if meta is None:
            return None
        messages = await self.get_messages(cid)
        blobs = await self.get_images(image_shas(messages)) if inline_images else {}
        return markdown_document(meta, messages, blobs)

    async def import_json(self, data: dict, browser_id: str | None) -> str:
        """A new conversation from export_json's shape; images re-stored by their real hash.
        ValueError (with what is wrong) for anything else. Keeps the last max_messages.
        (The app imports through ChatService.import_conversation, which also re-encodes the
        images, bounds the messages and checks the quotas: this stores what it is given.)"""
        meta, messages, blobs = parse_export(data)
        cid, _ = await self.import_parsed(meta, messages, blobs, browser_id)
        return cid

    async def import_parsed(
        self,
        meta: dict[str, str],
        messages: list[Message],
        blobs: dict[str, ImageBlob],
        browser_id: str | None,
    ) -> tuple[str, int]:
        """Store parse_export's result as a new conversation in ONE MULTI; returns its id and
        the bytes charged to it. Only the blobs its messages reference are stored."""
        if browser_id is not None:
            check_id(browser_id, "browser id")
        messages = messages[-self.max_messages :]
        referenced = set(image_shas(messages))
        blobs = check_images({sha: b for sha, b in blobs.items() if sha in referenced})
        cid, now = new_id(), timestamp()
        meta = dict(meta)
        meta.setdefault("created", now)
        meta.update(updated=now, browser=browser_id or "")
        encoded = [encode_message(m) for m in messages]
        charged = charge(encoded, blobs)
        meta["bytes"] = str(charged)
        with Guard(CHANGE):
            pipe = self._w.pipeline(transaction=True)
            for sha, (raw, mime) in blobs.items():
                pipe.hset(self._image_key(sha), mapping={"mime": mime, "data": raw})
                pipe.expire(self._image_key(sha), self.ttl_seconds)
            self._queue_meta(pipe, cid, meta)
            if encoded:
                pipe.rpush(self._msgs_key(cid), *encoded)
                pipe.expire(self._msgs_key(cid), self.ttl_seconds)
            await pipe.execute()
        self._owners.put(cid, browser_id or "")
        return cid, charged


def shared_snapshot(title: str, messages: list[Message]) -> dict:
    """A link's snapshot: the title and each shown message's display fields; nothing that
    names or steers the conversation (no ids, browser, persona, prompt or sampling)."""
    return {
        "version": SHARE_VERSION,
        "title": title,
        "created": float(timestamp()),
        "messages": [
            _display_copy(m)
            for m in messages
            if isinstance(m, dict) and m.get("role") in SHARED_ROLES
        ],
    }


def _display_copy(message: Message) -> Message:
    copy = {name: value for name, value in message.items() if name in SHARED_FIELDS}
    if "images" in copy:  # refs as they are (hash, name, mime, sizes); never bytes
        refs = copy["images"] if isinstance(copy["images"], list) else []
        copy["images"] = [{**ref} for ref in refs if isinstance(ref, dict)]
    return copy
