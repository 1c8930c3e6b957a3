"""The history store's foundation: its Redis clients, key names and TTL, images by hash (with
an LRU cache of their bytes), the app secret, and byte accounting. HistoryStore (history.py)
builds conversations and messages on it; this module is its half that knows no message."""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from typing import Any, Self

from redis.exceptions import RedisError

from history_records import LRU, ImageBlob, check_id, check_sha
from redis_connection import CHANGE, READ, Guard, as_text, close_clients, connect_clients

DEFAULT_TTL_SECONDS = 7 * 86400
DEFAULT_MAX_MESSAGES = 200
DEFAULT_IMAGE_CACHE_BYTES = 64 * 1024 * 1024


class HistoryBase:
    """Clients, keys, images and byte accounting of the store (see HistoryStore)."""

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
        self._images = LRU(image_cache_bytes, weigh=lambda blob: len(blob[0]))
        # A conversation's browser never changes, so cid -> browser is cacheable too.
        self._owners = LRU(10_000)

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
    ) -> Self:
        """url None/"" -> embedded fakeredis; else a Redis that must answer PING now."""
        if ttl_seconds <= 0 or max_messages <= 0:
            raise ValueError("ttl_seconds and max_messages must be positive")
        reader, writer, shown = await connect_clients(url)
        return cls(
            reader,
            writer,
            embedded=not url,
            url_for_display=shown,
            ttl_seconds=ttl_seconds,
            max_messages=max_messages,
            prefix=prefix,
            image_cache_bytes=image_cache_bytes,
        )

    async def close(self) -> None:
        await close_clients(self._r, self._w)

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
        with Guard(READ):
            pipe = self._w.pipeline(transaction=True)
            pipe.set(f"{self.prefix}app_secret", secrets.token_urlsafe(32), nx=True)
            pipe.get(f"{self.prefix}app_secret")
            return as_text((await pipe.execute())[1])

    # ---- images -------------------------------------------------------------------------

    async def get_image(self, sha256: str) -> ImageBlob | None:
        """(bytes, mime), or None if the image expired or never existed."""
        return (await self.get_images([sha256])).get(sha256)

    async def get_images(self, shas: Iterable[str]) -> dict[str, ImageBlob]:
        """Many images in one round trip (cache first); refreshes the TTLs of those fetched."""
        wanted = list(dict.fromkeys(check_sha(sha) for sha in shas))
        found = {sha: blob for sha in wanted if (blob := self._images.get(sha)) is not None}
        missing = [sha for sha in wanted if sha not in found]
        if not missing:
            return found
        with Guard(READ):
            pipe = self._r.pipeline(transaction=False)
            for sha in missing:
                pipe.hmget(self._image_key(sha), "mime", "data")
                pipe.expire(self._image_key(sha), self.ttl_seconds)
            results = await pipe.execute()
        for sha, (mime, data) in zip(missing, results[::2], strict=True):
            if data is not None:
                found[sha] = (data, as_text(mime))
                self._images.put(sha, found[sha])
        return found

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
        check_id(browser_id, "browser id")
        with Guard(READ):
            cids = await self._r.zrange(self._index_key(browser_id), 0, -1)
            if not cids:
                return 0
            pipe = self._r.pipeline(transaction=False)
            for cid in cids:
                pipe.hget(self._meta_key(as_text(cid)), "bytes")
            sizes = await pipe.execute()
        return sum(int(size) for size in sizes if size is not None and as_text(size).isdigit())

    def _api_key(self, client: str) -> str:
        return f"{self.prefix}stored:api:{client}"

    async def api_stored_bytes(self, client: str) -> int:
        """Bytes stored by API callers from one address (`client`, a limits.ip_key): API
        conversations belong to no browser, and the address is not kept with them, so this
        is a counter that only grows, and expires a TTL after the address last stored."""
        with Guard(READ):
            value = await self._r.get(self._api_key(client))
        return int(value) if value is not None and as_text(value).isdigit() else 0

    async def charge_api_bytes(self, client: str, size: int) -> None:
        if size <= 0:
            return
        with Guard(CHANGE):
            pipe = self._w.pipeline(transaction=True)
            pipe.incrby(self._api_key(client), size)
            pipe.expire(self._api_key(client), self.ttl_seconds)
            await pipe.execute()
