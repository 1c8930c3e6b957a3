"""Abuse limits: a Redis rate limiter per browser and per client IP, and input-size guards.

The limiter keeps a sliding-window log per key (a sorted set of request times) in the same
Redis as the history, so every replica shares one count and a restart forgets nothing. It uses
only MULTI (no Lua: the embedded fakeredis store has no scripting), and is still exact under
concurrency: each request adds itself first and then counts, inside one transaction, and a
refused request takes itself out again, so hammering never extends the wait.

Nothing here imports gradio, chat or app: `ChatService` and the plain HTTP API both use it.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import re
import secrets
import time
from collections.abc import Callable
from typing import Any

from redis.exceptions import RedisError

log = logging.getLogger(__name__)

WINDOW_S = 60.0
MAX_KEY_PART = 64
# Bodies larger than this are refused before they are read (uploads have their own limit,
# Gradio's max_file_size): a JSON call never needs more than the text limits plus overhead.
DEFAULT_MAX_BODY_BYTES = 2 * 1024 * 1024
_KEY_JUNK = re.compile(r"[^0-9A-Za-z.:_-]")


class RateLimited(Exception):
    """Too many messages; `str()` is the user-facing message, `retry_after` the wait in s."""

    def __init__(self, retry_after: float, scope: str = "client") -> None:
        self.retry_after = max(0.0, retry_after)
        self.scope = scope  # "client" (a browser or an API caller) or "ip"
        super().__init__(
            f"You are sending messages too fast: wait {self.wait_seconds} s and try again."
        )

    @property
    def wait_seconds(self) -> int:
        """Whole seconds, never 0: "wait 0 s" would invite an immediate, refused retry."""
        return max(1, math.ceil(self.retry_after))


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


def is_loopback(address: str) -> bool:
    """True for 127.0.0.0/8 and ::1 (as returned by ip_key)."""
    try:
        return ipaddress.ip_network(address, strict=False).network_address.is_loopback
    except ValueError:
        return False


def _key_part(value: str) -> str:
    return _KEY_JUNK.sub("_", value)[:MAX_KEY_PART]


class RateLimiter:
    """Sliding-window limits for one message: per client (browser, or an API caller's IP)
    and per IP (everything from one address, so rotating browser ids does not help).

    `per_client` / `per_ip` are messages per `window_s`; 0 turns that limit off.
    """

    def __init__(
        self,
        redis: Any,
        *,
        per_client: int,
        per_ip: int,
        window_s: float = WINDOW_S,
        prefix: str = "rate:",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = redis
        self.per_client = max(0, per_client)
        self.per_ip = max(0, per_ip)
        self.window_s = window_s
        self.prefix = prefix
        self.clock = clock

    @property
    def enabled(self) -> bool:
        return bool(self.per_client or self.per_ip)

    def limits_for(self, browser_id: str | None, ip: str | None) -> list[tuple[str, int, str]]:
        """(redis key, limit, scope) for each limit that applies to this caller."""
        address = ip_key(ip)
        limits: list[tuple[str, int, str]] = []
        if self.per_client:
            if browser_id:
                limits.append((f"{self.prefix}browser:{_key_part(browser_id)}", self.per_client))
            elif address:  # an API caller has no browser: its address is its identity
                limits.append((f"{self.prefix}api:{address}", self.per_client))
        # Loopback is not one person: it is this machine, or a proxy/tunnel on it that sent no
        # X-Forwarded-For (a share link). Limiting it per IP would throttle everyone together.
        if self.per_ip and address and not is_loopback(address):
            limits.append((f"{self.prefix}ip:{address}", self.per_ip))
        return [(key, limit, "ip" if ":ip:" in key else "client") for key, limit in limits]

    async def hit(self, browser_id: str | None, ip: str | None) -> None:
        """Count one message, or raise RateLimited (and count nothing).

        Fails open: when Redis cannot answer, the message is allowed and a warning logged;
        the history write that follows reports the outage to the user anyway.
        """
        limits = self.limits_for(browser_id, ip)
        if not limits:
            return
        now = self.clock()
        member = f"{now:.6f}-{secrets.token_hex(4)}"
        try:
            entries = await self._add_and_read(limits, member, now)
            waits = [
                (self._wait(found, member, limit, now), scope)
                for (_, limit, scope), found in zip(limits, entries, strict=True)
                if len(found) > limit
            ]
            if waits:
                pipe = self.redis.pipeline(transaction=True)
                for key, _, _ in limits:
                    pipe.zrem(key, member)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            log.warning("rate limit not checked (Redis: %s); message allowed", type(exc).__name__)
            return
        if waits:
            wait, scope = max(waits)
            raise RateLimited(wait, scope)

    async def _add_and_read(
        self, limits: list[tuple[str, int, str]], member: str, now: float
    ) -> list[list[tuple[bytes, float]]]:
        pipe = self.redis.pipeline(transaction=True)
        for key, _, _ in limits:
            pipe.zremrangebyscore(key, "-inf", now - self.window_s)
            pipe.zadd(key, {member: now})
            pipe.zrange(key, 0, -1, withscores=True)
            pipe.expire(key, math.ceil(self.window_s) + 1)
        results = await pipe.execute()
        return [results[4 * i + 2] for i in range(len(limits))]

    def _wait(self, entries: list[tuple[Any, float]], member: str, limit: int, now: float) -> float:
        """Seconds until fewer than `limit` of the other messages are inside the window."""
        others = sorted(
            float(score)
            for name, score in entries
            if (name.decode() if isinstance(name, bytes) else name) != member
        )
        if len(others) < limit:
            return 0.0
        return others[len(others) - limit] + self.window_s - now

    async def reset(self, browser_id: str | None, ip: str | None) -> None:
        """Forget the counts of this caller (tests, an operator unblocking someone)."""
        keys = [key for key, _, _ in self.limits_for(browser_id, ip)]
        if keys:
            await self.redis.delete(*keys)


# -- request size ----------------------------------------------------------------------------
def max_body_bytes(max_message_chars: int) -> int:
    """The largest Gradio API call body worth reading: the message and a custom system prompt,
    each at the limit and JSON-escaped (up to 6 bytes per character), plus 1 MiB for the rest."""
    return 1024 * 1024 + 2 * 6 * max_message_chars


async def send_json(send: Callable, status: int, body: bytes) -> None:
    """A whole JSON response from an ASGI middleware (before the app answered)."""
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class BodySizeLimit:
    """ASGI middleware: refuse request bodies over `max_bytes` with a 413 and a short JSON
    message, before they are read into memory. Only paths under `prefixes` are checked, and
    uploads (`exempt`) are left to Gradio's own max_file_size check."""

    def __init__(
        self,
        app: Any,
        max_bytes: int = DEFAULT_MAX_BODY_BYTES,
        prefixes: tuple[str, ...] = ("/gradio_api/",),
        exempt: tuple[str, ...] = ("/upload",),
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.prefixes = prefixes
        self.exempt = exempt

    def _applies(self, scope: dict) -> bool:
        path = scope.get("path", "")
        return (
            scope["type"] == "http"
            and path.startswith(self.prefixes)
            and not path.rstrip("/").endswith(self.exempt)
        )

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if not self._applies(scope):
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        seen = 0
        started = False

        async def counted_receive() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _BodyTooLarge
            return message

        async def tracked_send(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except Exception:
            # A chunked body that grew too large (the app may wrap our exception in its own).
            if seen > self.max_bytes and not started:
                await self._refuse(send)
                return
            raise

    async def _refuse(self, send: Callable) -> None:
        limit_mb = self.max_bytes / (1024 * 1024)
        body = b'{"error": "The request is too large (over %.1f MB). Send less text."}' % limit_mb
        await send_json(send, 413, body)


class _BodyTooLarge(Exception):
    pass


# -- what the browser may do with rendered content ---------------------------------------------
# Gradio's sanitiser stops scripts, event handlers and javascript: URLs in chat messages, but
# keeps forms, inputs and remote images. A prompt-injected answer could then show a fake
# "enter your API key" form posting elsewhere, or leak the chat through an image URL. The page
# itself needs none of these from other origins, so the browser is told to refuse them.
CONTENT_SECURITY_POLICY = (
    "img-src 'self' data: blob:; form-action 'self'; object-src 'none'; base-uri 'self'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
]


class SecurityHeaders:
    """ASGI middleware adding SECURITY_HEADERS to every HTTP response that lacks them."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers") or []}
                extra = [(k, v) for k, v in SECURITY_HEADERS if k not in present]
                message = {**message, "headers": [*(message.get("headers") or []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class UnknownEndpoint:
    """ASGI middleware: a call to an API name or function index that does not exist gets a
    404 with a short JSON message and one log line, instead of Gradio's bare 500 and a
    traceback in the log (Gradio raises FnIndexInferError / KeyError out of its routes)."""

    PATHS = ("/gradio_api/call/", "/gradio_api/run/", "/gradio_api/queue/join")

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or not scope.get("path", "").startswith(self.PATHS):
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked_send(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked_send)
        except Exception as exc:  # only the two "no such function" errors are ours to answer
            unknown = type(exc).__name__ in ("FnIndexInferError", "KeyError")
            if started or not unknown:
                raise
            log.info("unknown API endpoint requested: %s", scope.get("path", "")[:100])
            body = b'{"error": "No such API endpoint. The list is at /gradio_api/info."}'
            await send_json(send, 404, body)


# Raw HTML that sanitised Markdown would still render as live controls or embeds.
_ACTIVE_TAG = re.compile(
    r"<(?=/?\s*(?:form|input|button|textarea|select|option|iframe|frame|object|embed|base|meta"
    r"|link|style)\b)",
    re.IGNORECASE,
)
# Fenced code blocks (closed or still streaming) and inline code spans are left untouched.
_CODE = re.compile(r"(```[\s\S]*?(?:```|$)|~~~[\s\S]*?(?:~~~|$)|`[^`\n]*`)")


def inert_markup(text: str) -> str:
    """Model output for display: form controls and embeds written as raw HTML show as text
    ("&lt;form ...") instead of live elements; code blocks and spans keep their HTML as is."""
    if "<" not in text:
        return text
    pieces = _CODE.split(text)
    return "".join(
        piece if index % 2 else _ACTIVE_TAG.sub("&lt;", piece) for index, piece in enumerate(pieces)
    )


# -- request arguments -------------------------------------------------------------------------
def client_ip(request: Any) -> str | None:
    """The caller's address from a gr.Request or a Starlette request (None when unknown).

    Uvicorn already replaced it with X-Forwarded-For when the connection came from a trusted
    proxy (FORWARDED_ALLOW_IPS, default 127.0.0.1: a local reverse proxy or the share tunnel).
    """
    try:
        host = request.client.host
    except AttributeError:
        return None
    return host if isinstance(host, str) and host else None


def as_text(value: object) -> str:
    """A text argument from an API caller: stripped, "" for None or anything not a string
    (so an id of 123 or ["x"] is refused as "not valid" instead of crashing)."""
    return value.strip() if isinstance(value, str) else ""
