"""Conversation history in Redis: conversations per browser, messages, images by hash, TTLs.

Key layout (P = prefix, default "chat:"):
    P conv:<cid>:meta      hash    title, role, provider, model, created, updated, browser, extras
    P conv:<cid>:msgs      list    one JSON object per message, oldest first, trimmed to N
    P browser:<bid>:convs  zset    cid -> updated (unix seconds), listed newest first
    P img:<sha256>         hash    mime, data (the optimised bytes; shared by every conversation)
    P stored:api:<ip>      string  bytes stored by API callers at that address (their quota)
    P app_secret           string  the BrowserState secret (the only key without a TTL)

Every write of a turn is one MULTI. Reads refresh the TTLs of what they read. Without a URL the
same code runs on fakeredis (embedded, in memory). Redis failures become `HistoryUnavailable`.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import logging
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.asyncio as aredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

log = logging.getLogger(__name__)

DEFAULT_TTL_SECONDS = 7 * 86400
DEFAULT_MAX_MESSAGES = 200
DEFAULT_IMAGE_CACHE_BYTES = 64 * 1024 * 1024
EMBEDDED_DISPLAY = "in-memory (embedded)"
EXPORT_FORMAT = "chat-history"
EXPORT_VERSION = 1

# Meta fields the store owns: callers may not set them through **extra / update_meta.
# "bytes" is the conversation's stored size (byte accounting, see `stored_bytes`).
RESERVED_META = frozenset({"id", "browser", "created", "updated", "bytes"})

_ID_RE = re.compile(r"[0-9a-f]{32}")
_SHA_RE = re.compile(r"[0-9a-f]{64}")
_FIELD_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")

# What a failed call means for the user, per kind of call: (unreachable, timed out).
_READ = ("try again in a moment.", "try again in a moment.")
_MESSAGE = (
    "your message was not saved. Try again in a moment.",
    "your message may not have been saved. Try again in a moment.",
)
_CHANGE = ("nothing was changed. Try again in a moment.", "try again in a moment.")

Message = dict[str, Any]
ImageBlob = tuple[bytes, str]


class HistoryUnavailable(RuntimeError):
    """Redis cannot serve the request; str() is a short message fit to show a user."""


class InvalidId(ValueError):
    """A malformed browser/conversation id (or one that does not belong to the caller)."""


class UnknownConversation(InvalidId):
    """A write aimed at a conversation that does not exist (deleted or expired)."""


def new_id() -> str:
    """A random 128-bit id as 32 lowercase hex characters."""
    return secrets.token_hex(16)


def is_valid_id(value: str) -> bool:
    return isinstance(value, str) and _ID_RE.fullmatch(value) is not None


def _check_id(value: str, what: str = "conversation id") -> str:
    if not is_valid_id(value):
        # Truncated repr: the id may come from an API caller and land in a log.
        raise InvalidId(f"Malformed {what}: expected 32 lowercase hex, got {value!r:.48}")
    return value


def _check_sha(value: str) -> str:
    if not isinstance(value, str) or _SHA_RE.fullmatch(value) is None:
        raise ValueError(f"Malformed image hash: expected 64 lowercase hex, got {value!r:.80}")
    return value


def display_url(url: str) -> str:
    """The URL without credentials or query (which may carry a password), for logs and the UI."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = f"{host}:{port}" if port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _now() -> str:
    return f"{time.time():.6f}"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _decode_hash(raw: dict) -> dict[str, str]:
    return {_text(k): _text(v) for k, v in raw.items()}


def _check_fields(fields: dict[str, Any]) -> dict[str, str]:
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
        _check_sha(ref.get("sha256"))
        if "data" in ref:
            # Bytes belong in img:<sha256>, stored once; inline data is what this design avoids.
            raise ValueError("image references must not carry 'data'; pass the bytes in `images`")
    return refs


def _encode_message(message: Message) -> str:
    if not isinstance(message, dict):
        raise ValueError(f"a message must be a dict, got {type(message).__name__}")
    _check_refs(message)
    try:
        text = json.dumps(message, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError) as err:
        raise ValueError(f"message is not JSON-serialisable: {err}") from err
    # A lone surrogate (invalid Unicode) would make Redis' UTF-8 encoding fail: U+FFFD.
    return text if text.isascii() else re.sub("[\\ud800-\\udfff]", "\ufffd", text)


def _check_images(images: dict[str, ImageBlob]) -> dict[str, ImageBlob]:
    """The hash is the key shared by every conversation, so it is recomputed, never trusted."""
    for sha, blob in images.items():
        _check_sha(sha)
        if not (isinstance(blob, tuple) and len(blob) == 2):
            raise ValueError("images values must be (bytes, mime) tuples")
        data, mime = blob
        if not isinstance(data, bytes | bytearray) or hashlib.sha256(data).hexdigest() != sha:
            raise ValueError(f"image bytes do not match their sha256 {sha[:12]}...")
        if not isinstance(mime, str) or not mime.startswith("image/"):
            raise ValueError(f"image mime must be image/*, got {mime!r:.40}")
    return images


def _image_shas(messages: Iterable[Message]) -> list[str]:
    seen: dict[str, None] = {}
    for message in messages:
        for ref in message.get("images") or []:
            if isinstance(ref, dict) and isinstance(ref.get("sha256"), str):
                seen[ref["sha256"]] = None
    return list(seen)


class _LRU:
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


class _Guard:
    """Turns redis-py errors into HistoryUnavailable with a message a user can read."""

    def __init__(self, hints: tuple[str, str]) -> None:
        self.hints = hints

    def __enter__(self) -> _Guard:
        return self

    def __exit__(self, kind: type | None, err: BaseException | None, tb: object) -> bool:
        if err is None or not isinstance(err, RedisError | OSError):
            return False
        unreachable, timed_out = self.hints
        if isinstance(err, RedisTimeoutError):
            # A timed-out write may still have run, so the hint does not claim it did not.
            message = f"History store (Redis) did not answer in time; {timed_out}"
        elif isinstance(err, RedisConnectionError | OSError):
            message = f"History store (Redis) is unreachable; {unreachable}"
        else:
            message = f"History store (Redis) refused the request; {unreachable}"
        log.warning("history store error: %s: %s", type(err).__name__, err)
        raise HistoryUnavailable(message) from err


def _client(url: str, *, retry_timeouts: bool) -> aredis.Redis:
    """A client that reconnects by itself: a dead pooled connection is retried once.

    Reads also retry on a timeout (the modern form of `retry_on_timeout`). Writes do not: a MULTI
    whose EXEC timed out may have run, and running it again would store the turn twice.
    """
    errors: tuple[type[RedisError], ...] = (RedisConnectionError,)
    if retry_timeouts:
        errors += (RedisTimeoutError,)
    retry = Retry(ExponentialBackoff(cap=0.2, base=0.02), 1, supported_errors=errors)
    # Blocking: redis-py's default pool raises "Too many connections" past 100 commands in
    # flight, which 200 users starting at once reach (bench/bench_load.py). This one is
    # larger, and when even it is exhausted (an overloaded process) a command waits for a
    # free connection rather than failing the user's turn.
    pool = aredis.BlockingConnectionPool.from_url(
        url,
        max_connections=256,
        timeout=20,
        socket_connect_timeout=2,
        socket_timeout=5,
        health_check_interval=15,  # PING a connection idle this long, so a stale one is noticed
        retry=retry,
        client_name="chat-history",
    )
    return aredis.Redis.from_pool(pool)


class HistoryStore:
    """Async conversation store; one per process, shared by every request."""

    embedded: bool
    url_for_display: str

    def __init__(
        self,
        reader: Any,
        writer: Any,
        *,
        embedded: bool,
        url_for_display: str,
        ttl_seconds: int,
        max_messages: int,
        prefix: str,
        image_cache_bytes: int,
    ) -> None:
        self._r = reader
        self._w = writer
        self.embedded = embedded
        self.url_for_display = url_for_display
        self.ttl_seconds = ttl_seconds
        self.max_messages = max_messages
        self.prefix = prefix
        # Images are immutable by hash, so cached bytes never go stale, on any replica.
        self._images = _LRU(image_cache_bytes, weigh=lambda blob: len(blob[0]))
        # A conversation's browser never changes, so cid -> browser is cacheable too.
        self._owners = _LRU(10_000)

    # ---- construction -------------------------------------------------------------------

    @classmethod
    async def connect(
        cls,
        url: str | None,
        *,
        ttl_seconds: int = DEFAULT_TTL_SECONDS,
        max_messages: int = DEFAULT_MAX_MESSAGES,
        prefix: str = "chat:",
        image_cache_bytes: int = DEFAULT_IMAGE_CACHE_BYTES,
    ) -> HistoryStore:
        """url None/"" -> embedded fakeredis; else a Redis that must answer PING now."""
        if ttl_seconds <= 0 or max_messages <= 0:
            raise ValueError("ttl_seconds and max_messages must be positive")
        options = dict(
            ttl_seconds=ttl_seconds,
            max_messages=max_messages,
            prefix=prefix,
            image_cache_bytes=image_cache_bytes,
        )
        if not url:
            import fakeredis  # only the embedded mode needs it

            client = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
            return cls(client, client, embedded=True, url_for_display=EMBEDDED_DISPLAY, **options)
        shown = display_url(url)
        try:
            reader = _client(url, retry_timeouts=True)
            writer = _client(url, retry_timeouts=False)
        except ValueError as err:
            raise HistoryUnavailable(f"Invalid REDIS_URL {shown}: {err}") from err
        store = cls(reader, writer, embedded=False, url_for_display=shown, **options)
        try:
            await reader.ping()
        except (RedisError, OSError) as err:
            await store.close()
            raise HistoryUnavailable(
                f"Cannot reach Redis at {shown}: {err}. Check REDIS_URL or start Redis."
            ) from err
        # Drop the PING's connection: if connect() ran in a throwaway event loop (asyncio.run at
        # import), a pooled connection bound to that loop would break the app's loop later.
        await reader.connection_pool.disconnect()
        return store

    async def close(self) -> None:
        for client in {id(self._r): self._r, id(self._w): self._w}.values():
            with contextlib.suppress(RedisError, OSError):
                await client.aclose()

    async def ping(self) -> bool:
        try:
            return bool(await self._r.ping())
        except (RedisError, OSError):
            return False

    @property
    def redis(self) -> Any:
        """The writing client, for other app keys kept beside history (the rate limiter's),
        under `prefix` too; the same fakeredis instance on the embedded store."""
        return self._w

    # ---- keys ---------------------------------------------------------------------------

    def _meta_key(self, cid: str) -> str:
        return f"{self.prefix}conv:{cid}:meta"

    def _msgs_key(self, cid: str) -> str:
        return f"{self.prefix}conv:{cid}:msgs"

    def _index_key(self, browser_id: str) -> str:
        return f"{self.prefix}browser:{browser_id}:convs"

    def _image_key(self, sha: str) -> str:
        return f"{self.prefix}img:{sha}"

    # ---- app secret ---------------------------------------------------------------------

    async def get_or_create_app_secret(self) -> str:
        with _Guard(_READ):
            pipe = self._w.pipeline(transaction=True)
            pipe.set(f"{self.prefix}app_secret", secrets.token_urlsafe(32), nx=True)
            pipe.get(f"{self.prefix}app_secret")
            return _text((await pipe.execute())[1])

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
            _check_id(browser_id, "browser id")
        meta = _check_fields(dict(title=title, role=role, provider=provider, model=model, **extra))
        cid, now = new_id(), _now()
        meta.update(created=now, updated=now, browser=browser_id or "")
        with _Guard(_CHANGE):
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
        _check_id(cid)
        with _Guard(_READ):
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
        _check_id(cid)
        fields = _check_fields(fields)
        if not fields:
            return
        with _Guard(_CHANGE):
            owner = await self._owner(cid)
            if owner is None:
                return
            key = self._meta_key(cid)
            await self._transact(cid, owner, lambda p: p.hset(key, mapping=fields), bump=False)

    async def list_conversations(self, browser_id: str, *, limit: int | None = None) -> list[dict]:
        """This browser's conversations, newest first; drops index entries whose meta is gone."""
        _check_id(browser_id, "browser id")
        index = self._index_key(browser_id)
        with _Guard(_READ):
            cids = [_text(c) for c in await self._r.zrevrange(index, 0, (limit or 0) - 1)]
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
        _check_id(browser_id, "browser id")
        _check_id(cid)
        with _Guard(_READ):
            owner = await self._owner(cid, fresh=True)
        return owner == browser_id

    async def delete_conversation(self, cid: str) -> bool:
        """Removes meta, messages and the index entry; images are shared and expire alone."""
        _check_id(cid)
        with _Guard(_CHANGE):
            owner = await self._owner(cid)
            pipe = self._w.pipeline(transaction=True)
            pipe.delete(self._meta_key(cid))
            pipe.delete(self._msgs_key(cid))
            if owner:
                pipe.zrem(self._index_key(owner), cid)
            deleted = (await pipe.execute())[0]
        self._owners.pop(cid)
        return bool(deleted)

    async def _owner(self, cid: str, *, fresh: bool = False) -> str | None:
        """The conversation's browser ("" for API ones), None when it does not exist."""
        owner = None if fresh else self._owners.get(cid)
        if owner is None:
            raw = await self._r.hget(self._meta_key(cid), "browser")
            if raw is None:
                self._owners.pop(cid)
                return None
            owner = _text(raw)
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
        _check_id(cid)
        if browser_id is not None:
            _check_id(browser_id, "browser id")
        encoded = [_encode_message(m) for m in messages]
        blobs = _check_images(images or {})
        with _Guard(_MESSAGE):
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

            charged = _charge(encoded, blobs)
            if await self._transact(cid, owner, queue) is None:
                raise UnknownConversation(f"Unknown conversation {cid} (deleted or expired)")
        for sha, (data, mime) in blobs.items():
            self._images.put(sha, (bytes(data), mime))
        return charged

    async def get_messages(self, cid: str, limit: int | None = None) -> list[Message]:
        """Oldest first (limit = the last N); refreshes the TTLs of the conversation's keys, its
        browser index and the images those messages reference. [] for an unknown id."""
        _check_id(cid)
        if limit is not None and limit <= 0:
            return []
        with _Guard(_READ):
            pipe = self._r.pipeline(transaction=False)
            pipe.lrange(self._msgs_key(cid), -limit if limit else 0, -1)
            pipe.hget(self._meta_key(cid), "browser")
            self._queue_refresh(pipe, cid)
            raw, owner = (await pipe.execute())[:2]
            if owner is None:  # meta gone = conversation gone, even if the list lingers a moment
                return []
            messages = [json.loads(item) for item in raw]
            await self._refresh_related(_text(owner), _image_shas(messages))
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
        _check_id(cid)
        if count <= 0:
            return []
        key = self._msgs_key(cid)
        with _Guard(_CHANGE):
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

    async def replace_last_message(self, cid: str, message: Message) -> None:
        """Overwrite the newest message (e.g. mark an assistant reply complete).

        Raises UnknownConversation for an unknown cid (the message would be lost), ValueError when
        the conversation has no message yet.
        """
        _check_id(cid)
        encoded = _encode_message(message)
        key = self._msgs_key(cid)
        with _Guard(_MESSAGE):
            owner = await self._owner(cid)
            results = None
            if owner is not None:
                results = await self._transact(
                    cid, owner, lambda pipe: pipe.lset(key, -1, encoded), allow_errors=True
                )
            if results is None:
                raise UnknownConversation(f"Unknown conversation {cid} (deleted or expired)")
        if isinstance(results[0], ResponseError):
            raise ValueError(f"Conversation {cid} has no message to replace")

    async def _transact(
        self,
        cid: str,
        owner: str,
        queue: Callable[[Any], object],
        *,
        bump: bool = True,
        allow_errors: bool = False,
    ) -> list | None:
        """Run queue(pipe)'s commands plus the TTL refresh (and, with bump, the new `updated`
        and index score) in ONE MULTI. Returns their results, or None if the conversation did
        not exist: its meta is checked inside the same MULTI, and the commands, which would have
        recreated a ghost, are undone. Ids are random 128-bit, so nothing else can own that cid.
        allow_errors: queue's own command errors are returned (e.g. LSET on an empty list), since
        MULTI runs the other commands anyway; any other error is raised.
        """
        meta_key = self._meta_key(cid)
        pipe = self._w.pipeline(transaction=True)
        pipe.exists(meta_key)
        queue(pipe)
        first_touch = len(pipe.command_stack)
        if bump:
            pipe.hset(meta_key, "updated", now := _now())
        self._queue_refresh(pipe, cid)
        if owner:
            if bump:
                pipe.zadd(self._index_key(owner), {cid: float(now)})
            pipe.expire(self._index_key(owner), self.ttl_seconds)
        results = await pipe.execute(raise_on_error=False)
        if not results[0]:
            await self._undo_ghost(cid, owner)
            return None
        for result in results[1 if not allow_errors else first_touch :]:
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

    # ---- images -------------------------------------------------------------------------

    async def get_image(self, sha256: str) -> ImageBlob | None:
        """(bytes, mime), or None if the image expired or never existed."""
        return (await self.get_images([sha256])).get(sha256)

    async def get_images(self, shas: Iterable[str]) -> dict[str, ImageBlob]:
        """Many images in one round trip (cache first); refreshes the TTLs of those fetched."""
        wanted = list(dict.fromkeys(_check_sha(sha) for sha in shas))
        found = {sha: blob for sha in wanted if (blob := self._images.get(sha)) is not None}
        missing = [sha for sha in wanted if sha not in found]
        if not missing:
            return found
        with _Guard(_READ):
            pipe = self._r.pipeline(transaction=False)
            for sha in missing:
                pipe.hmget(self._image_key(sha), "mime", "data")
                pipe.expire(self._image_key(sha), self.ttl_seconds)
            results = await pipe.execute()
        for sha, (mime, data) in zip(missing, results[::2], strict=True):
            if data is not None:
                found[sha] = (data, _text(mime))
                self._images.put(sha, found[sha])
        return found

    # ---- export / import ----------------------------------------------------------------

    async def export_json(self, cid: str) -> dict | None:
        """{"format", "version", "meta", "messages"}; each image reference carries "data"
        (base64) and "mime". The conversation and browser ids are left out: they are access
        keys, and an export is meant to be shared."""
        meta = await self.get_meta(cid)
        if meta is None:
            return None
        messages = await self.get_messages(cid)
        blobs = await self.get_images(_image_shas(messages))
        for message in messages:
            for ref in message.get("images") or []:
                if (blob := blobs.get(ref.get("sha256"))) is not None:
                    ref["mime"] = blob[1]
                    ref["data"] = base64.b64encode(blob[0]).decode("ascii")
        public = {k: v for k, v in meta.items() if k not in ("id", "browser")}
        return {
            "format": EXPORT_FORMAT,
            "version": EXPORT_VERSION,
            "meta": public,
            "messages": messages,
        }

    async def export_markdown(self, cid: str, *, inline_images: bool = True) -> str | None:
        """Title, a meta line, then one `### Role` section per message. Images are data: URLs
        (self-contained) or, with inline_images=False or once expired, `![name](sha256:<hash>)`."""
        meta = await self.get_meta(cid)
        if meta is None:
            return None
        messages = await self.get_messages(cid)
        blobs = await self.get_images(_image_shas(messages)) if inline_images else {}
        lines = [f"# {meta.get('title') or 'Conversation'}", "", _meta_line(meta), ""]
        for message in messages:
            lines += [f"### {str(message.get('role') or 'message').capitalize()}", ""]
            lines += [_content_text(message.get("content")), ""]
            for ref in message.get("images") or []:
                lines += [_image_markdown(ref, blobs.get(ref.get("sha256"))), ""]
        return "\n".join(lines).rstrip() + "\n"

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
            _check_id(browser_id, "browser id")
        messages = messages[-self.max_messages :]
        referenced = set(_image_shas(messages))
        blobs = _check_images({sha: b for sha, b in blobs.items() if sha in referenced})
        cid, now = new_id(), _now()
        meta = dict(meta)
        meta.setdefault("created", now)
        meta.update(updated=now, browser=browser_id or "")
        encoded = [_encode_message(m) for m in messages]
        charged = _charge(encoded, blobs)
        meta["bytes"] = str(charged)
        with _Guard(_CHANGE):
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

    # ---- byte accounting ----------------------------------------------------------------
    # What a browser "stores" is the sum of its conversations' `bytes` meta field, kept in
    # the same MULTI as the writes: the encoded messages (JSON, UTF-8) plus the optimised
    # bytes of every image a write brings. Images are stored once by sha256 and shared, but
    # each conversation is charged for the images its messages carry, as if it kept its own
    # copy: simple, never an under-count, and deleting a conversation frees what it was
    # charged. Undo/retry/edit give the popped messages' text back (their images stay
    # counted); messages trimmed past max_messages stay counted too: small over-counts that
    # last until the conversation is deleted or expires. An
    # expired or deleted conversation drops out of the sum by itself (its meta is gone).

    async def stored_bytes(self, browser_id: str) -> int:
        """The bytes charged to this browser's conversations."""
        _check_id(browser_id, "browser id")
        with _Guard(_READ):
            cids = await self._r.zrange(self._index_key(browser_id), 0, -1)
            if not cids:
                return 0
            pipe = self._r.pipeline(transaction=False)
            for cid in cids:
                pipe.hget(self._meta_key(_text(cid)), "bytes")
            sizes = await pipe.execute()
        return sum(int(size) for size in sizes if size is not None and _text(size).isdigit())

    def _api_key(self, client: str) -> str:
        return f"{self.prefix}stored:api:{client}"

    async def api_stored_bytes(self, client: str) -> int:
        """Bytes stored by API callers from one address (`client`, a limits.ip_key): API
        conversations belong to no browser, and the address is not kept with them, so this
        is a counter that only grows, and expires a TTL after the address last stored."""
        with _Guard(_READ):
            value = await self._r.get(self._api_key(client))
        return int(value) if value is not None and _text(value).isdigit() else 0

    async def charge_api_bytes(self, client: str, size: int) -> None:
        if size <= 0:
            return
        with _Guard(_CHANGE):
            pipe = self._w.pipeline(transaction=True)
            pipe.incrby(self._api_key(client), size)
            pipe.expire(self._api_key(client), self.ttl_seconds)
            await pipe.execute()


def _charge(encoded: list[str], blobs: dict[str, ImageBlob]) -> int:
    """Bytes a write adds: the encoded messages and the image blobs it carries."""
    return sum(len(e.encode()) for e in encoded) + sum(len(data) for data, _ in blobs.values())


def _meta_line(meta: dict) -> str:
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


def parse_export(data: Any) -> tuple[dict[str, str], list[Message], dict[str, ImageBlob]]:
    """Validate an export; returns (meta, messages without inline data, images by real hash)."""
    if not isinstance(data, dict):
        raise ValueError("Import: expected a JSON object from export_json")
    if data.get("format", EXPORT_FORMAT) != EXPORT_FORMAT or data.get("version", 1) != 1:
        raise ValueError("Import: unsupported format or version")
    meta_in = data.get("meta") or {}
    messages_in = data.get("messages")
    if not isinstance(meta_in, dict) or not isinstance(messages_in, list):
        raise ValueError("Import: 'meta' must be an object and 'messages' a list")
    meta = {k: v for k, v in meta_in.items() if k not in ("id", "browser", "updated", "bytes")}
    created = meta.pop("created", None)
    meta = _check_fields({k: v for k, v in meta.items() if isinstance(k, str)})
    for name in ("title", "role", "provider", "model"):
        meta.setdefault(name, "")
    if isinstance(created, str) and re.fullmatch(r"\d{1,12}(\.\d{1,9})?", created):
        meta["created"] = created
    blobs: dict[str, ImageBlob] = {}
    messages = [_parse_message(i, m, blobs) for i, m in enumerate(messages_in)]
    return meta, messages, blobs


def _parse_message(index: int, message: Any, blobs: dict[str, ImageBlob]) -> Message:
    where = f"Import: message {index}"
    if not isinstance(message, dict):
        raise ValueError(f"{where} is not an object")
    if not isinstance(message.get("role"), str) or not message["role"]:
        raise ValueError(f"{where} has no 'role' string")
    if not isinstance(message.get("content", ""), str | list):
        raise ValueError(f"{where}: 'content' must be a string or a list of parts")
    refs = message.get("images") or []
    if not isinstance(refs, list) or not all(isinstance(r, dict) for r in refs):
        raise ValueError(f"{where}: 'images' must be a list of objects")
    message = dict(message, images=[_parse_ref(where, ref, blobs) for ref in refs])
    if not refs:
        message.pop("images")
    return message


def _parse_ref(where: str, ref: dict, blobs: dict[str, ImageBlob]) -> dict:
    ref = dict(ref)
    encoded = ref.pop("data", None)
    if encoded is None:  # exported after the image expired: keep the reference as it was
        _check_sha(ref.get("sha256"))
        return ref
    mime = ref.get("mime")
    if not isinstance(mime, str) or not mime.startswith("image/"):
        raise ValueError(f"{where}: image 'mime' must be image/*")
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, TypeError, ValueError) as err:
        raise ValueError(f"{where}: image 'data' is not valid base64") from err
    # The hash is recomputed: a file's claim cannot point another conversation's key elsewhere.
    ref["sha256"] = hashlib.sha256(raw).hexdigest()
    blobs[ref["sha256"]] = (raw, mime)
    return ref


def app_secret_from_redis(url: str, prefix: str = "chat:") -> str:
    """Sync twin of get_or_create_app_secret, for import time (before the event loop runs)."""
    shown = display_url(url)
    key = f"{prefix}app_secret"
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
        try:
            pipe = client.pipeline(transaction=True)
            pipe.set(key, secrets.token_urlsafe(32), nx=True)
            pipe.get(key)
            return _text(pipe.execute()[1])
        finally:
            client.close()
    except (RedisError, OSError, ValueError) as err:
        raise HistoryUnavailable(
            f"Cannot reach Redis at {shown}: {err}. Check REDIS_URL or start Redis."
        ) from err
