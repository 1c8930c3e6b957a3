"""What a stranger may spend: the per-minute budgets, one-at-a-time runs, the storage quota.

All limiter calls are in `ChatBudgets.limiter`/`check`/`forget`, so the limiter behind them
can change in one place. Everything fails open when Redis cannot answer: the history write
that follows a turn reports the outage to the user anyway.
"""

from __future__ import annotations

import contextlib
import io
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass

from redis.exceptions import RedisError

from chat_errors import ChatError, ChatRateLimited
from config import Settings
from history import HistoryStore, HistoryUnavailable, InvalidId
from images import ACCEPTED_FORMATS, MAX_PIXELS
from rate_limits import Hit, RateLimited, RateLimiter, ip_key, storage_for

log = logging.getLogger("chat")

_MB = 1024 * 1024
RUNNING_TTL_S = 120  # a "one at a time" mark outlives any run (a provider check: <= ~25 s)


@dataclass(frozen=True)
class Budget:
    """One budget of the rate limiter: units per minute per client (a browser, or an API
    caller's address), per IP (not loopback) and for everyone together; 0 = off."""

    per_client: int
    per_ip: int
    per_global: int
    action: str  # "You are <action> too fast: wait N s"


def budgets(s: Settings) -> dict[str, Budget]:
    """Every budget a stranger can spend by the minute (docs/security.md lists them)."""
    return {
        # a message, a retry, a compare and an edit each count as one turn
        "turns": Budget(
            s.rate_limit_per_minute,
            s.rate_limit_per_ip_per_minute,
            s.rate_limit_global_per_minute,
            "sending messages",
        ),
        "imports": Budget(
            s.imports_per_minute, 3 * s.imports_per_minute, s.imports_global_per_minute, "importing"
        ),
        "checks": Budget(
            s.checks_per_minute,
            3 * s.checks_per_minute,
            s.checks_global_per_minute,
            "checking providers",
        ),
        # uploads carry no browser id: per address (not loopback) and global (upload_limits.py)
        "uploads": Budget(0, s.uploads_per_minute, s.uploads_global_per_minute, "uploading"),
        "upload_bytes": Budget(
            0,
            int(s.upload_mb_per_minute * _MB),
            int(s.upload_global_mb_per_minute * _MB),
            "uploading",
        ),
        # Typing in the search box: a search reads the browser's whole index (and, cold,
        # its messages); far above what typing needs, far below what a script could send.
        "searches": Budget(120, 360, 3000, "searching"),
        # A shared link writes a snapshot of the conversation.
        "shares": Budget(20, 60, 600, "sharing"),
        "image_pixels": Budget(
            s.image_megapixels_per_minute * 1_000_000,
            3 * s.image_megapixels_per_minute * 1_000_000,
            s.image_megapixels_global_per_minute * 1_000_000,
            "sending large images",
        ),
    }


def megabytes(size: int) -> str:
    return f"{size / _MB:,.1f}" if size >= _MB else f"{size / _MB:.2f}"


def header_pixels(raw: bytes) -> int:
    """An image's declared width × height from its header (nothing decoded; 0 when it is
    not an accepted image), capped at images.MAX_PIXELS (larger ones are refused unread)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(raw), formats=ACCEPTED_FORMATS) as img:
            width, height = img.size
    except Image.DecompressionBombError:
        return MAX_PIXELS
    except Exception:  # junk: prepare_images refuses it without decoding
        return 0
    return max(0, min(width * height, MAX_PIXELS))


class ChatBudgets:
    """The budgets of one ChatService, on the same Redis (or fakeredis) as its history."""

    def __init__(self, settings: Settings, store: Callable[[], Awaitable[HistoryStore]]) -> None:
        self.settings = settings
        self._store = store  # opened lazily on the serving event loop (ChatService.store)
        self._limiters: dict[str, RateLimiter] = {}

    async def limiter(self, name: str) -> RateLimiter:
        """The named budget's limiter (made once per process)."""
        if name not in self._limiters:
            store = await self._store()
            spec = budgets(self.settings)[name]
            self._limiters[name] = RateLimiter(
                storage_for(None if store.embedded else store.redis, f"{store.prefix}rate"),
                per_client=spec.per_client,
                per_ip=spec.per_ip,
                per_global=spec.per_global,
                name=name,
                action=spec.action,
            )
        return self._limiters[name]

    async def check(
        self, name: str, browser_id: str | None, client_ip: str | None, weight: int = 1
    ) -> Hit | None:
        """Count `weight` against the named budget or raise ChatRateLimited ("wait N s").
        Returns what was counted, for `forget`."""
        try:
            limiter = await self.limiter(name)
        except HistoryUnavailable:
            return None
        try:
            return await limiter.hit(browser_id, client_ip, weight)
        except RateLimited as exc:
            log.info("rate limited (%s %s): wait %d s", name, exc.scope, exc.wait_seconds)
            raise ChatRateLimited(str(exc), exc.wait_seconds) from None

    async def forget(self, name: str, hit: Hit | None) -> None:
        """Take back a hit (`check`'s return), e.g. when a second budget refused the request."""
        if hit:
            await (await self.limiter(name)).forget(hit)

    async def charge_pixels(
        self, items: Sequence[tuple[str, bytes]], browser_id: str | None, client_ip: str | None
    ) -> None:
        """Decoding costs CPU by the pixel: count the images' declared sizes (their headers,
        read without decoding) against IMAGE_MEGAPIXELS_PER_MINUTE before any is decoded."""
        pixels = sum(header_pixels(raw) for _, raw in items)
        if pixels:
            await self.check("image_pixels", browser_id, client_ip, pixels)

    @contextlib.asynccontextmanager
    async def one_at_a_time(
        self, name: str, browser_id: str | None, client_ip: str | None, busy: str
    ) -> AsyncIterator[None]:
        """Run the block only if this client (browser, else address) is not running `name`
        already, on any replica (a Redis key, SET NX, that expires by itself should the
        process die); ChatError(`busy`) otherwise. Fails open when Redis cannot answer."""
        who = browser_id or ip_key(client_ip)
        key = token = None
        store = None
        if who:
            store = await self._store()
            key, token = f"{store.prefix}running:{name}:{who[:64]}", secrets.token_hex(8)
            try:
                if not await store.redis.set(key, token, nx=True, ex=RUNNING_TTL_S):
                    raise ChatError(busy)
            except (RedisError, OSError):
                key = None
        try:
            yield
        finally:
            if key and store is not None and token is not None:
                with contextlib.suppress(RedisError, OSError):
                    if await store.redis.get(key) == token.encode():
                        await store.redis.delete(key)

    async def check_storage(
        self, browser_id: str | None, client_ip: str | None, adding: int = 0
    ) -> None:
        """Refuse (ChatError) a write that would take this browser (or, for an API caller,
        its address) past MAX_STORED_MB_PER_BROWSER."""
        limit = self.settings.max_stored_bytes_per_browser
        address = ip_key(client_ip)
        if not limit or not (browser_id or address):
            return
        try:
            store = await self._store()
            if browser_id:
                used = await store.stored_bytes(browser_id)
            else:  # no browser: an API caller, whose address the check above ensures
                used = await store.api_stored_bytes(address or "")
        except (HistoryUnavailable, InvalidId):
            return
        if used + adding <= limit:
            return
        log.info("storage quota reached (%s)", "browser" if browser_id else "api")
        if browser_id:
            raise ChatError(
                f"This browser stores {megabytes(used)} MB of chats; the limit is "
                f"{megabytes(limit)} MB. Delete old conversations to free space."
            )
        raise ChatError(
            f"Conversations stored through the API from your address take {megabytes(used)} "
            f"MB; the limit is {megabytes(limit)} MB. They expire "
            f"{self.settings.history_ttl_days} days after your last one."
        )

    async def charge_api(self, browser_id: str | None, client_ip: str | None, size: int) -> None:
        """An API caller's writes count against its address (API conversations have no
        browser); best effort."""
        address = ip_key(client_ip)
        if browser_id or not address or size <= 0:
            return
        with contextlib.suppress(HistoryUnavailable):
            await (await self._store()).charge_api_bytes(address, size)
