"""Abuse limits: Redis rate limiters (named budgets per browser, per client IP and global),
and input-size guards.

A limiter keeps a sliding-window log per key (a sorted set of request times, each member
carrying its weight: 1 for a message, bytes or pixels for the weighted budgets) in the same
Redis as the history, so every replica shares one count and a restart forgets nothing. It uses
only MULTI (no Lua: the embedded fakeredis store has no scripting), and is still exact under
concurrency: each request adds itself first and then counts, inside one transaction, and a
refused request takes itself out again, so hammering never extends the wait. The budgets
themselves (turns, imports, checks, uploads, image pixels) are listed in chat.budgets.

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

from client_address import client_address

log = logging.getLogger(__name__)

WINDOW_S = 60.0
MAX_KEY_PART = 64
# Bodies larger than this are refused before they are read (uploads have their own limit,
# Gradio's max_file_size): a JSON call never needs more than the text limits plus overhead.
DEFAULT_MAX_BODY_BYTES = 2 * 1024 * 1024
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
        redis: Any,
        *,
        per_client: int,
        per_ip: int,
        per_global: int = 0,
        window_s: float = WINDOW_S,
        prefix: str = "rate:",
        clock: Callable[[], float] = time.time,
        action: str = "sending messages",
    ) -> None:
        self.redis = redis
        self.per_client = max(0, per_client)
        self.per_ip = max(0, per_ip)
        self.per_global = max(0, per_global)
        self.window_s = window_s
        self.prefix = prefix
        self.clock = clock
        self.action = action

    @property
    def enabled(self) -> bool:
        return bool(self.per_client or self.per_ip or self.per_global)

    def limits_for(self, browser_id: str | None, ip: str | None) -> list[tuple[str, int, str]]:
        """(redis key, limit, scope) for each limit that applies to this caller."""
        address = ip_key(ip)
        limits: list[tuple[str, int, str]] = []
        if self.per_client:
            if browser_id:
                key = f"{self.prefix}browser:{_key_part(browser_id)}"
                limits.append((key, self.per_client, "client"))
            elif address:  # an API caller has no browser: its address is its identity
                limits.append((f"{self.prefix}api:{address}", self.per_client, "client"))
        # Loopback is not one person: it is this machine, or a proxy/tunnel on it that sent no
        # X-Forwarded-For (a share link). Limiting it per IP would throttle everyone together;
        # the global ceiling below bounds it instead.
        if self.per_ip and address and not is_loopback(address):
            limits.append((f"{self.prefix}ip:{address}", self.per_ip, "ip"))
        if self.per_global:
            limits.append((f"{self.prefix}global", self.per_global, "global"))
        return limits

    async def hit(self, browser_id: str | None, ip: str | None, weight: int = 1) -> str | None:
        """Count one hit of `weight`, or raise RateLimited (and count nothing). Returns the
        hit's id (for `forget`), None when nothing was counted.

        Fails open: when Redis cannot answer, the hit is allowed and a warning logged;
        the history write that follows reports the outage to the user anyway.
        """
        limits = self.limits_for(browser_id, ip)
        weight = max(1, int(weight))
        if not limits:
            return None
        now = self.clock()
        member = f"{now:.6f}-{secrets.token_hex(4)}-{weight}"
        try:
            entries = await self._add_and_read(limits, member, now)
            waits = []
            for (_, limit, scope), found in zip(limits, entries, strict=True):
                used = sum(min(_weight_of(name), limit) for name, _ in found)
                if used > limit:
                    waits.append((self._wait(found, member, limit, now), scope))
            if waits:
                pipe = self.redis.pipeline(transaction=True)
                for key, _, _ in limits:
                    pipe.zrem(key, member)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            log.warning("rate limit not checked (Redis: %s); allowed", type(exc).__name__)
            return None
        if waits:
            wait, scope = max(waits)
            raise RateLimited(wait, scope, self.action)
        return member

    async def forget(self, member: str | None, browser_id: str | None, ip: str | None) -> None:
        """Take back a hit (`hit`'s return), e.g. when a second budget refused the same
        request. Best effort: a Redis error leaves the hit counted."""
        if not member:
            return
        try:
            pipe = self.redis.pipeline(transaction=True)
            for key, _, _ in self.limits_for(browser_id, ip):
                pipe.zrem(key, member)
            await pipe.execute()
        except (RedisError, OSError):
            pass

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
        """Seconds until the other hits inside the window leave room for this one."""
        mine = min(_weight_of(member), limit)
        others = sorted(
            (float(score), min(_weight_of(name), limit))
            for name, score in entries
            if _member_name(name) != member
        )
        used = sum(weight for _, weight in others)
        wait = 0.0
        for at, weight in others:  # oldest first: each one leaving the window frees its weight
            if used + mine <= limit:
                break
            used -= weight
            wait = at + self.window_s - now
        return max(0.0, wait)

    async def reset(self, browser_id: str | None, ip: str | None) -> None:
        """Forget the counts of this caller (tests, an operator unblocking someone); the
        global count is left alone."""
        keys = [key for key, _, scope in self.limits_for(browser_id, ip) if scope != "global"]
        if keys:
            await self.redis.delete(*keys)


def _member_name(name: Any) -> str:
    return name.decode() if isinstance(name, bytes) else str(name)


def _weight_of(name: Any) -> int:
    """A hit's weight, kept in its member name ("<time>-<random>-<weight>"); 1 for members
    written before weights existed ("<time>-<random>")."""
    parts = _member_name(name).split("-")
    try:
        return max(1, int(parts[2])) if len(parts) == 3 else 1
    except ValueError:
        return 1


# -- request size ----------------------------------------------------------------------------
def max_body_bytes(max_message_chars: int) -> int:
    """The largest Gradio API call body worth reading: the message and a custom system prompt,
    each at the limit and JSON-escaped (up to 6 bytes per character), plus 1 MiB for the rest."""
    return 1024 * 1024 + 2 * 6 * max_message_chars


async def send_json(
    send: Callable, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """A whole JSON response from an ASGI middleware (before the app answered)."""
    base = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": base + (headers or [])})
    await send({"type": "http.response.body", "body": body})


class WatchedSend:
    """An ASGI `send` that remembers whether the response has started: a middleware can
    answer an error itself only while nothing was sent yet."""

    def __init__(self, send: Callable) -> None:
        self.send = send
        self.started = False

    async def __call__(self, message: dict) -> None:
        self.started = self.started or message["type"] == "http.response.start"
        await self.send(message)


# -- JSON bodies: nesting and invalid Unicode, checked on the raw bytes before parsing ----------
# No request this app takes nests deeper than ~10; json.loads gives up (RecursionError) near
# 1000, and code walking a parsed value may give up sooner.
MAX_JSON_DEPTH = 100
MAX_JSON_BRACKETS = 200_000
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_ESCAPE = re.compile(
    rb"\\u([dD][89abAB][0-9a-fA-F]{2})\\u([dD][c-fC-F][0-9a-fA-F]{2})"  # a valid pair
    rb"|\\u[dD][89a-fA-F][0-9a-fA-F]{2}"  # a lone surrogate
    rb"|\\."  # any other escape (so an escaped backslash before "u" is not one)
)
_MAYBE_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")


def json_too_deep(raw: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when the JSON text nests arrays/objects deeper than `limit`, or holds more than
    MAX_JSON_BRACKETS of them (no request here comes near): a cheap scan of the brackets
    outside strings, no parsing, no recursion."""
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    # Drop escaped backslashes, then escaped quotes: what is left splits cleanly on quotes,
    # and every other piece is outside a string.
    text = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    brackets = b"".join(text.split(b'"')[::2]).translate(None, _NOT_BRACKETS)
    brackets = brackets.replace(b"{", b"[").replace(b"}", b"]")
    if len(brackets) > MAX_JSON_BRACKETS or b"[" * (limit + 1) in brackets:
        return True
    depth = 0
    for byte in brackets:  # at most MAX_JSON_BRACKETS steps
        depth += 1 if byte == 91 else -1  # "[" else "]"
        if depth > limit:
            return True
    return False


def clean_json_bytes(raw: bytes) -> bytes:
    """JSON bytes with invalid UTF-8 and lone surrogate escapes (`\\ud800`) replaced by
    U+FFFD, so no string parsed from them can fail to encode later (Redis, the SSE reply,
    the upstream request). Valid escape pairs and everything else stay as they are."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        raw = raw.decode("utf-8", errors="replace").encode("utf-8")
    if _MAYBE_SURROGATE.search(raw) is None:
        return raw

    def fix(match: re.Match) -> bytes:
        token = match.group(0)
        if match.group(1) is None and len(token) == 6 and token[1:2] in b"uU":
            return b"\\ufffd"
        return token

    return _ESCAPE.sub(fix, raw)


class BodySizeLimit:
    """ASGI middleware: refuse request bodies over `max_bytes` with a 413 and a short JSON
    message, before they are read into memory. Only paths under `prefixes` are checked, and
    uploads (`exempt`) are left to Gradio's own max_file_size check. A JSON body (what
    FastAPI parses as JSON: that type, or none) is also refused with a 400 when nested too
    deeply, and reaches Gradio with invalid Unicode replaced by U+FFFD."""

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
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        content_type = headers.get(b"content-type", b"").lower()
        has_body = scope.get("method") in ("POST", "PUT", "PATCH")
        if has_body and (not content_type or b"json" in content_type):  # FastAPI reads JSON
            await self._checked_json(scope, receive, send)
            return
        seen = 0
        watched = WatchedSend(send)

        async def counted_receive() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _BodyTooLarge
            return message

        try:
            await self.app(scope, counted_receive, watched)
        except Exception:
            # A chunked body that grew too large (the app may wrap our exception in its own).
            if seen > self.max_bytes and not watched.started:
                await self._refuse(send)
                return
            raise

    async def _checked_json(self, scope: dict, receive: Callable, send: Callable) -> None:
        """Read the (small) JSON body with the cap, refuse one nested too deeply (Gradio would
        answer json.loads' RecursionError with a 500), replace invalid Unicode by U+FFFD, and
        hand the app the checked body."""
        raw = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away before the body was in
            raw += message.get("body", b"")
            if len(raw) > self.max_bytes:
                await self._refuse(send)
                return
            more = message.get("more_body", False)
        body = bytes(raw)
        if json_too_deep(body):
            error = b'{"error": "The request is nested too deeply (over %d levels)."}'
            await send_json(send, 400, error % MAX_JSON_DEPTH)
            return
        cleaned = clean_json_bytes(body)
        if len(cleaned) != len(body):
            length = str(len(cleaned)).encode()
            scope = {
                **scope,
                "headers": [
                    (k, length if k == b"content-length" else v) for k, v in scope["headers"]
                ],
            }
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if replayed:
                return await receive()  # http.disconnect, when the client goes
            replayed = True
            return {"type": "http.request", "body": cleaned, "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, send: Callable) -> None:
        limit_mb = self.max_bytes / (1024 * 1024)
        body = b'{"error": "The request is too large (over %.1f MB). Send less text."}' % limit_mb
        await send_json(send, 413, body)


class _BodyTooLarge(Exception):
    pass


# -- what the browser may do with rendered content ---------------------------------------------
# Gradio's sanitiser stops scripts, event handlers and javascript: URLs in chat messages, but
# keeps forms, inputs and remote images. markup.safe_markdown is the first layer (no live form
# control, no image but data: and the app's uploads); this is the second: were a form or an
# image to get through, it could not post or load anywhere but this site.
CONTENT_SECURITY_POLICY = (
    "img-src 'self' data: blob:; media-src 'self' data: blob:; form-action 'self'; "
    "object-src 'none'; base-uri 'self'; "
    # Framed only by itself and Hugging Face (a Space shows the app in an iframe there).
    "frame-ancestors 'self' https://huggingface.co https://*.hf.space"
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
        watched = WatchedSend(send)
        try:
            await self.app(scope, receive, watched)
        except Exception as exc:  # only the two "no such function" errors are ours to answer
            unknown = type(exc).__name__ in ("FnIndexInferError", "KeyError")
            if watched.started or not unknown:
                raise
            log.info("unknown API endpoint requested: %s", scope.get("path", "")[:100])
            body = b'{"error": "No such API endpoint. The list is at /gradio_api/info."}'
            await send_json(send, 404, body)


# -- request arguments -------------------------------------------------------------------------
def client_ip(request: Any) -> str | None:
    """The caller's address from a gr.Request or a Starlette request (None when unknown).

    X-Forwarded-For counts only from the proxies in TRUSTED_PROXIES / TRUSTED_PROXY_HOPS,
    read from the right (client_address.py); uvicorn's own rewrite is off (app.main).
    """
    return client_address(request)


def as_text(value: object) -> str:
    """A text argument from an API caller: stripped, "" for None or anything not a string
    (so an id of 123 or ["x"] is refused as "not valid" instead of crashing)."""
    return value.strip() if isinstance(value, str) else ""
