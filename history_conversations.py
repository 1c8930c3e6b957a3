"""Conversations and their messages in Redis: create, read, list, delete, one MULTI per turn,
TTLs refreshed on read, rewrites of a conversation's tail (versions, feedback). HistoryStore
(history.py) adds search, the trash, shared links and export / import on top; the key layout
is in history.py's docstring."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from redis.exceptions import WatchError

from history_base import HistoryBase
from history_records import (
    ConversationChanged,
    ImageBlob,
    InvalidId,
    Message,
    UnknownConversation,
    charge,
    check_fields,
    check_id,
    check_images,
    encode_message,
    image_shas,
    new_id,
    timestamp,
)
from redis_connection import CHANGE, MESSAGE, READ, Guard, as_text


class ConversationStore(HistoryBase):
    """Conversations and messages (see HistoryStore for the whole store)."""

    # ---- conversations ------------------------------------------------------------------

    async def create_conversation(
        self,
        browser_id: str | None,
        *,
        title: str = "",
        role: str = "",
        provider: str = "",
        model: str = "",
        **extra: str,
    ) -> str:
        """A new conversation; browser_id None = an API conversation (in no browser's list)."""
        if browser_id is not None:
            check_id(browser_id, "browser id")
        meta = check_fields(dict(title=title, role=role, provider=provider, model=model, **extra))
        cid, now = new_id(), timestamp()
        meta.update(created=now, updated=now, browser=browser_id or "")
        with Guard(CHANGE):
            pipe = self._w.pipeline(transaction=True)
            self._queue_meta(pipe, cid, meta)
            await pipe.execute()
        self._owners.put(cid, browser_id or "")
        return cid

    def _queue_meta(self, pipe: Any, cid: str, meta: dict[str, str]) -> None:
        pipe.hset(self._meta_key(cid), mapping=meta)
        pipe.expire(self._meta_key(cid), self.ttl_seconds)
        if meta["browser"]:
            index = self._index_key(meta["browser"])
            pipe.zadd(index, {cid: float(meta["updated"])})
            pipe.expire(index, self.ttl_seconds)

    async def get_meta(self, cid: str) -> dict | None:
        check_id(cid)
        with Guard(READ):
            pipe = self._r.pipeline(transaction=False)
            pipe.hgetall(self._meta_key(cid))
            self._queue_refresh(pipe, cid)
            raw = (await pipe.execute())[0]
        if not raw:
            return None
        meta = _decode_hash(raw)
        self._owners.put(cid, meta.get("browser", ""))
        return {"id": cid, **meta}

    async def update_meta(self, cid: str, **fields: str) -> None:
        """Set meta fields (title, model...). Does not reorder the list: `updated` is per turn.
        A no-op for an unknown conversation."""
        check_id(cid)
        fields = check_fields(fields)
        if not fields:
            return
        with Guard(CHANGE):
            owner = await self._owner(cid)
            if owner is None:
                return
            key = self._meta_key(cid)
            await self._transact(cid, owner, lambda p: p.hset(key, mapping=fields), bump=False)

    async def list_conversations(self, browser_id: str, *, limit: int | None = None) -> list[dict]:
        """This browser's conversations, newest first; drops index entries whose meta is gone."""
        check_id(browser_id, "browser id")
        index = self._index_key(browser_id)
        with Guard(READ):
            cids = [as_text(c) for c in await self._r.zrevrange(index, 0, (limit or 0) - 1)]
            pipe = self._r.pipeline(transaction=False)
            for cid in cids:
                pipe.hgetall(self._meta_key(cid))
            pipe.expire(index, self.ttl_seconds)
            raws = (await pipe.execute())[:-1]
            listed, stale = [], []
            for cid, raw in zip(cids, raws, strict=True):
                meta = _decode_hash(raw)
                # The browser check is defence in depth: an index only ever gets its own ids.
                if not meta or meta.get("browser") != browser_id:
                    stale.append(cid)
                    continue
                self._owners.put(cid, browser_id)
                listed.append({"id": cid, **meta})
            if stale:
                await self._r.zrem(index, *stale)
        return listed

    async def owns(self, browser_id: str, cid: str) -> bool:
        """True when cid exists and belongs to browser_id (asks Redis: the answer gates access)."""
        check_id(browser_id, "browser id")
        check_id(cid)
        with Guard(READ):
            owner = await self._owner(cid, fresh=True)
        return owner == browser_id

    async def _owner(self, cid: str, *, fresh: bool = False) -> str | None:
        """The conversation's browser ("" for API ones), None when it does not exist."""
        owner = None if fresh else self._owners.get(cid)
        if owner is None:
            raw = await self._r.hget(self._meta_key(cid), "browser")
            if raw is None:
                self._owners.pop(cid)
                return None
            owner = as_text(raw)
            self._owners.put(cid, owner)
        return owner

    # ---- messages -----------------------------------------------------------------------

    async def append_turn(
        self,
        cid: str,
        messages: list[Message],
        images: dict[str, ImageBlob] | None = None,
        *,
        browser_id: str | None = None,
    ) -> int:
        """Store messages (+ new images) in ONE MULTI, trim, bump `updated` and the index.
        Returns the bytes charged to the conversation (see `stored_bytes`).

        Raises UnknownConversation (a ValueError) if cid was deleted or expired, and InvalidId if
        browser_id is given and is not the conversation's browser.
        """
        check_id(cid)
        if browser_id is not None:
            check_id(browser_id, "browser id")
        encoded = [encode_message(m) for m in messages]
        blobs = check_images(images or {})
        with Guard(MESSAGE):
            owner = await self._owner(cid)
            if owner is None:
                raise UnknownConversation(f"Unknown conversation {cid} (deleted or expired)")
            if browser_id is not None and owner != browser_id:
                raise InvalidId(f"Conversation {cid} does not belong to this browser")

            def queue(pipe: Any) -> None:
                for sha, (data, mime) in blobs.items():
                    pipe.hset(self._image_key(sha), mapping={"mime": mime, "data": bytes(data)})
                    pipe.expire(self._image_key(sha), self.ttl_seconds)
                if encoded:
                    pipe.rpush(self._msgs_key(cid), *encoded)
                    pipe.ltrim(self._msgs_key(cid), -self.max_messages, -1)
                if charged:
                    pipe.hincrby(self._meta_key(cid), "bytes", charged)

            charged = charge(encoded, blobs)
            if await self._transact(cid, owner, queue) is None:
                raise UnknownConversation(f"Unknown conversation {cid} (deleted or expired)")
        for sha, (data, mime) in blobs.items():
            self._images.put(sha, (bytes(data), mime))
        return charged

    async def get_messages(self, cid: str, limit: int | None = None) -> list[Message]:
        """Oldest first (limit = the last N); refreshes the TTLs of the conversation's keys, its
        browser index and the images those messages reference. [] for an unknown id."""
        check_id(cid)
        if limit is not None and limit <= 0:
            return []
        with Guard(READ):
            pipe = self._r.pipeline(transaction=False)
            pipe.lrange(self._msgs_key(cid), -limit if limit else 0, -1)
            pipe.hget(self._meta_key(cid), "browser")
            self._queue_refresh(pipe, cid)
            raw, owner = (await pipe.execute())[:2]
            if owner is None:  # meta gone = conversation gone, even if the list lingers a moment
                return []
            messages = [json.loads(item) for item in raw]
            await self._refresh_related(as_text(owner), image_shas(messages))
        return messages

    def _queue_refresh(self, pipe: Any, cid: str) -> None:
        pipe.expire(self._meta_key(cid), self.ttl_seconds)
        pipe.expire(self._msgs_key(cid), self.ttl_seconds)

    async def _refresh_related(self, owner: str, shas: list[str]) -> None:
        """Second round trip of a load: the keys named inside what was just read."""
        if not owner and not shas:
            return
        pipe = self._r.pipeline(transaction=False)
        if owner:
            pipe.expire(self._index_key(owner), self.ttl_seconds)
        for sha in shas:
            pipe.expire(self._image_key(sha), self.ttl_seconds)
        await pipe.execute()

    async def pop_messages(self, cid: str, count: int) -> list[Message]:
        """Remove and return the last `count` messages (oldest first), for undo/retry."""
        check_id(cid)
        if count <= 0:
            return []
        key = self._msgs_key(cid)
        with Guard(CHANGE):
            owner = await self._owner(cid)
            if owner is None:
                return []
            results = await self._transact(
                cid, owner, lambda p: (p.lrange(key, -count, -1), p.ltrim(key, 0, -count - 1))
            )
            if results and (freed := sum(len(item) for item in results[0])):
                # A second MULTI (the sizes are known only now); it checks the meta too, so a
                # conversation deleted meanwhile is not recreated as a ghost "bytes" field.
                meta = self._meta_key(cid)
                await self._transact(
                    cid, owner, lambda p: p.hincrby(meta, "bytes", -freed), bump=False
                )
        return [json.loads(item) for item in results[0]] if results else []

    async def replace_from(
        self, cid: str, position: int, messages: list[Message], *, length: int, bump: bool = True
    ) -> None:
        """Replace the stored messages from `position` on with `messages` in ONE MULTI (a
        new version, a branch switched to, feedback), if the conversation still holds
        `length` messages; ConversationChanged if another tab changed it meanwhile,
        UnknownConversation if it is gone. Charges or frees the difference in bytes."""
        check_id(cid)
        if not 0 <= position <= length:
            raise ValueError("position out of range")
        encoded = [encode_message(m) for m in messages]
        key = self._msgs_key(cid)
        with Guard(CHANGE):
            owner = await self._owner(cid)
            if owner is None:
                raise UnknownConversation(f"Unknown conversation {cid} (deleted or expired)")
            async with self._w.pipeline(transaction=True) as pipe:
                await pipe.watch(key)
                if await pipe.llen(key) != length:
                    raise ConversationChanged("The conversation changed meanwhile.")
                old = await pipe.lrange(key, position, -1) if position < length else []
                pipe.multi()
                pipe.exists(self._meta_key(cid))
                if position:
                    pipe.ltrim(key, 0, position - 1)
                else:
                    pipe.delete(key)
                if encoded:
                    pipe.rpush(key, *encoded)
                delta = charge(encoded, {}) - sum(len(item) for item in old)
                if delta:
                    pipe.hincrby(self._meta_key(cid), "bytes", delta)
                self._queue_refresh(pipe, cid)
                if bump:  # feedback does not move a conversation up the list
                    pipe.hset(self._meta_key(cid), "updated", now := timestamp())
                    if owner:
                        pipe.zadd(self._index_key(owner), {cid: float(now)})
                if owner:
                    pipe.expire(self._index_key(owner), self.ttl_seconds)
                try:
                    results = await pipe.execute()
                except WatchError:
                    raise ConversationChanged("The conversation changed meanwhile.") from None
            if not results[0]:
                await self._undo_ghost(cid, owner)
                raise UnknownConversation(f"Unknown conversation {cid} (deleted or expired)")

    async def _transact(
        self,
        cid: str,
        owner: str,
        queue: Callable[[Any], object],
        *,
        bump: bool = True,
    ) -> list | None:
        """Run queue(pipe)'s commands plus the TTL refresh (and, with bump, the new `updated`
        and index score) in ONE MULTI. Returns their results, or None if the conversation did
        not exist: its meta is checked inside the same MULTI, and the commands, which would have
        recreated a ghost, are undone. Ids are random 128-bit, so nothing else can own that cid.
        """
        meta_key = self._meta_key(cid)
        pipe = self._w.pipeline(transaction=True)
        pipe.exists(meta_key)
        queue(pipe)
        first_touch = len(pipe.command_stack)
        if bump:
            pipe.hset(meta_key, "updated", now := timestamp())
        self._queue_refresh(pipe, cid)
        if owner:
            if bump:
                pipe.zadd(self._index_key(owner), {cid: float(now)})
            pipe.expire(self._index_key(owner), self.ttl_seconds)
        results = await pipe.execute(raise_on_error=False)
        if not results[0]:
            await self._undo_ghost(cid, owner)
            return None
        for result in results[1:]:
            if isinstance(result, Exception):
                raise result
        return results[1:first_touch]

    async def _undo_ghost(self, cid: str, owner: str) -> None:
        pipe = self._w.pipeline(transaction=True)
        pipe.delete(self._meta_key(cid), self._msgs_key(cid))
        if owner:
            pipe.zrem(self._index_key(owner), cid)
        await pipe.execute()
        self._owners.pop(cid)


def _decode_hash(raw: dict) -> dict[str, str]:
    return {as_text(k): as_text(v) for k, v in raw.items()}
