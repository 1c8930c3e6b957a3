"""Rate limits: named budgets per client (a browser, or an API caller's address), per IP and
global, counted with the `limits` package (PyPI).

Each budget is a sliding-window counter (limits' `SlidingWindowCounterRateLimiter`): two
fixed-window counters per key, the previous one weighed by the share of it still inside the
sliding window. That costs one small counter per key whatever a hit weighs, which the
weighted budgets need (a hit of an image's pixels or an upload's bytes weighs millions:
limits' moving window would store one entry per unit). Each hit of a limit is one atomic Lua
script in Redis, so concurrent requests never pass a limit together.

Storage (`storage_for`): with REDIS_URL, the history's own Redis (its connection pool, keys
under its prefix), so every replica shares one count and a restart forgets nothing; embedded
(fakeredis, which has no Lua) limits' memory storage, exact for the one process there is.

What limits has no word for, kept here: the three scopes of one budget and their
all-or-nothing hit, the clamp of a hit heavier than a limit, taking a hit back (`forget`),
the wait in seconds for a weighted hit, and failing open when Redis cannot answer.
The budgets themselves (turns, imports, checks, uploads, image pixels) are in chat.budgets.

Nothing here imports gradio, chat or app: `ChatService` and the plain HTTP API both use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ipaddress
import logging
import math
import re
from dataclasses import dataclass
from typing import Any, NamedTuple, cast

from limits import RateLimitItem, RateLimitItemPerSecond
from limits.aio.storage import MemoryStorage, RedisStorage, SlidingWindowCounterSupport, Storage
from limits.aio.strategies import SlidingWindowCounterRateLimiter
from limits.errors import StorageError
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

WINDOW_S = 60
MAX_KEY_PART = 64
STORAGE_ERRORS = (StorageError, RedisError, OSError)
_KEY_JUNK = re.compile(r"[^0-9A-Za-z.:_-]")


class RateLimited(Exception):
    """Over a budget; `str()` is the user-facing message, `retry_after` the wait in s.

    `action` says what was done too fast ("sending messages", "importing"...), so the
    message names it; `scope` is which limit refused: "client" (a browser or an API caller),
    "ip" (one address) or "global" (everyone together)."""

    def __init__(
        self, retry_after: float, scope: str = "client", action: str = "sending messages"
    ) -> None:
        self.retry_after = max(0.0, retry_after)
        self.scope = scope
        self.action = action
        wait = self.wait_seconds
        if scope == "global":
            message = f"Too many people are {action} right now: wait {wait} s and try again."
        else:
            message = f"You are {action} too fast: wait {wait} s and try again."
        super().__init__(message)

    @property
    def wait_seconds(self) -> int:
        """Whole seconds, never 0: "wait 0 s" would invite an immediate, refused retry."""
        return max(1, math.ceil(self.retry_after))


@functools.lru_cache(maxsize=4096)
def ip_key(host: str | None) -> str | None:
    """The rate-limit identity of a client address, or None when there is none.

    IPv6 clients usually own a whole /64 (and can rotate inside it at will), so they are
    counted per /64; an IPv4-mapped IPv6 address counts as the IPv4 address.
    """
    if not host or not isinstance(host, str):
        return None
    try:
        address = ipaddress.ip_address(host.strip().strip("[]"))
    except ValueError:
        # Not an IP (a test client, a unix socket): still a stable identity, kept short.
        cleaned = _KEY_JUNK.sub("_", host.strip())[:MAX_KEY_PART]
        return cleaned or None
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        if address.is_loopback:
            return str(address)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


@functools.lru_cache(maxsize=4096)  # parsing an address is ~10 µs, and every hit asks
def is_loopback(address: str) -> bool:
    """True for 127.0.0.0/8 and ::1 (as returned by ip_key)."""
    try:
        return ipaddress.ip_network(address, strict=False).network_address.is_loopback
    except ValueError:
        return False


def _key_part(value: str) -> str:
    return _KEY_JUNK.sub("_", value)[:MAX_KEY_PART]


def storage_for(redis: Any | None, prefix: str = "rate") -> Storage:
    """Where the counts live: `redis` (a redis.asyncio client: its connection pool is shared,
    keys are `<prefix>:{...}`), or this process's memory when it is None (embedded mode)."""
    if redis is None:
        return MemoryStorage()
    # redis.asyncio (redis-py, already the history's client) rather than limits' default
    # coredis; the pool is passed in, so the URL here is only the scheme.
    options: dict[str, Any] = {"connection_pool": redis.connection_pool}
    return RedisStorage(
        "async+redis://",
        implementation="redispy",
        key_prefix=prefix,
        wrap_exceptions=True,
        **options,
    )


def seconds_until_room(
    limit: int, cost: int, window: int, window_counts: tuple[int, float, int, float]
) -> float:
    """How long until a hit of `cost` fits under `limit` (if nothing else is counted first),
    from limits' sliding-window state: (previous count, its weight left in seconds, current
    count, seconds until the current window expires, i.e. its remaining time + `window`).

    The counter refuses when floor(previous * weight_left / window) + current + cost > limit.
    While the current window lasts only the previous one's weight shrinks; after it, the
    current count becomes the previous one and shrinks the same way."""
    previous, previous_left, current, current_ttl = window_counts
    current_left = max(0.0, min(float(window), current_ttl - window))
    room = limit - cost - current
    if room >= 0:
        if previous <= 0:
            return 0.0
        wait = previous_left - (room + 1) * window / previous
        if wait < current_left:
            return max(0.0, wait)
    if current <= 0:
        return current_left
    return max(current_left, current_left + window - (limit - cost + 1) * window / current)


class Limit(NamedTuple):
    scope: str  # "client", "ip" or "global"
    item: RateLimitItem
    identifiers: tuple[str, ...]


@dataclass(frozen=True)
class Hit:
    """What one `RateLimiter.hit` counted (each limit and the cost it took), for `forget`."""

    charged: tuple[tuple[Limit, int], ...]


class RateLimiter:
    """One named budget over a sliding window: per client (a browser, or an API caller's
    IP), per IP (everything from one address, so rotating browser ids does not help) and
    global (all clients together: the only limit loopback traffic, i.e. a share link's
    tunnel or a local proxy, and a crowd of fresh browser ids cannot dodge).

    `per_client` / `per_ip` / `per_global` are units per `window_s`; 0 turns that limit off.
    A hit weighs 1 (a message, an import) or more (bytes, pixels): each limit caps the sum
    of the weights in the window. A single hit heavier than a limit counts as that limit,
    so it passes when its window is empty (and then fills it) instead of never passing.
    """

    def __init__(
        self,
        storage: Storage,
        *,
        per_client: int,
        per_ip: int,
        per_global: int = 0,
        window_s: int = WINDOW_S,
        name: str = "turns",
        action: str = "sending messages",
    ) -> None:
        self.storage = storage
        self.strategy = SlidingWindowCounterRateLimiter(storage)
        self.per_client = max(0, per_client)
        self.per_ip = max(0, per_ip)
        self.per_global = max(0, per_global)
        self.window_s = max(1, int(window_s))
        self.name = name
        self.action = action

    @property
    def enabled(self) -> bool:
        return bool(self.per_client or self.per_ip or self.per_global)

    def _item(self, amount: int) -> RateLimitItem:
        return RateLimitItemPerSecond(amount, self.window_s, namespace=self.name)

    def limits_for(self, browser_id: str | None, ip: str | None) -> list[Limit]:
        """Each limit that applies to this caller."""
        address = ip_key(ip)
        limits: list[Limit] = []
        if self.per_client:
            if browser_id:
                identity = ("browser", _key_part(browser_id))
                limits.append(Limit("client", self._item(self.per_client), identity))
            elif address:  # an API caller has no browser: its address is its identity
                limits.append(Limit("client", self._item(self.per_client), ("api", address)))
        # Loopback is not one person: it is this machine, or a proxy/tunnel on it that sent no
        # X-Forwarded-For (a share link). Limiting it per IP would throttle everyone together;
        # the global ceiling below bounds it instead.
        if self.per_ip and address and not is_loopback(address):
            limits.append(Limit("ip", self._item(self.per_ip), ("ip", address)))
        if self.per_global:
            limits.append(Limit("global", self._item(self.per_global), ("global",)))
        return limits

    async def hit(self, browser_id: str | None, ip: str | None, weight: int = 1) -> Hit | None:
        """Count one hit of `weight` on every limit, or raise RateLimited (and count
        nothing: the limits that took it give it back). Returns what was counted (for
        `forget`), None when nothing was.

        The limits are charged in turn, the caller's own first: a flood from one browser or
        address is refused there, and never fills (even for a moment) the shared per-IP and
        global counts that everyone else is measured by. The wait is the refusing limit's.

        Fails open: when Redis cannot answer, the hit is allowed and a warning logged;
        the history write that follows reports the outage to the user anyway.
        """
        weight = max(1, int(weight))
        charged: list[tuple[Limit, int]] = []
        try:
            for limit in self.limits_for(browser_id, ip):
                cost = min(weight, limit.item.amount)
                if not await self.strategy.hit(limit.item, *limit.identifiers, cost=cost):
                    await self._take_back(tuple(charged))
                    wait = await self._wait(limit, cost)
                    raise RateLimited(wait, limit.scope, self.action)
                charged.append((limit, cost))
        except STORAGE_ERRORS as exc:
            log.warning("rate limit not checked (storage: %s); allowed", type(exc).__name__)
            return None
        return Hit(tuple(charged)) if charged else None

    async def forget(self, hit: Hit | None) -> None:
        """Take back a hit (`hit`'s return), e.g. when a second budget refused the same
        request. Best effort: a storage error leaves the hit counted."""
        if hit is None:
            return
        with contextlib.suppress(*STORAGE_ERRORS):
            await self._take_back(hit.charged)

    async def _take_back(self, charged: tuple[tuple[Limit, int], ...]) -> None:
        # limits has no undo. A hit of negative cost is its increment of the current window's
        # counter by -cost (both storages; tests/test_rate_limits.py holds it to that), which
        # is what undoing means for a counter. A hit taken back after its window rolled over
        # frees its whole cost in the new window: slack of one hit, only at that boundary.
        await asyncio.gather(
            *(
                self.strategy.hit(limit.item, *limit.identifiers, cost=-cost)
                for limit, cost in charged
            )
        )

    async def _wait(self, limit: Limit, cost: int) -> float:
        counter = cast(SlidingWindowCounterSupport, self.storage)
        counts = await counter.get_sliding_window(
            limit.item.key_for(*limit.identifiers), limit.item.get_expiry()
        )
        return seconds_until_room(limit.item.amount, cost, self.window_s, counts)
