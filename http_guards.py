"""HTTP guards: ASGI middlewares and helpers in front of Gradio and the plain HTTP routes.

- `BodySizeLimit`: request bodies over a cap are refused (413) before they are read; JSON
  bodies nested too deeply are refused (400) and reach Gradio with invalid Unicode replaced;
- `SecurityHeaders`: a Content-Security-Policy and friends on every response;
- `UnknownEndpoint`: a call to an API name that does not exist gets a 404, not a 500;
- helpers: `send_json` (a whole JSON answer from a middleware), `WatchedSend`, the raw JSON
  checks (`json_too_deep`, `clean_json_bytes`), `client_ip` and `as_text` for handlers.

Rate limits are in rate_limits.py, client addresses in client_address.py. Nothing here
imports gradio, chat or app.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from typing import Any

import client_address

log = logging.getLogger(__name__)

# Bodies larger than this are refused before they are read (uploads have their own limit,
# Gradio's max_file_size): a JSON call never needs more than the text limits plus overhead.
DEFAULT_MAX_BODY_BYTES = 2 * 1024 * 1024


# A look at a checked JSON body (the request path, its bytes): None lets it through, a
# (status, JSON body) pair is the refusal sent instead (api_arguments.FileArgumentCheck).
BodyCheck = Callable[[str, bytes], "tuple[int, bytes] | None"]


# -- request size ----------------------------------------------------------------------------
def max_gradio_body_bytes(max_message_chars: int) -> int:
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
    deeply, and reaches Gradio with invalid Unicode replaced by U+FFFD. `checks` look at that
    checked body (path, bytes) and may refuse it: (status, JSON body) or None."""

    def __init__(
        self,
        app: Any,
        max_bytes: int = DEFAULT_MAX_BODY_BYTES,
        prefixes: tuple[str, ...] = ("/gradio_api/",),
        exempt: tuple[str, ...] = ("/upload",),
        checks: Sequence[BodyCheck] = (),
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.prefixes = prefixes
        self.exempt = exempt
        self.checks = tuple(checks)

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
        for check in self.checks:
            refusal = check(scope.get("path", ""), cleaned)
            if refusal is not None:
                await send_json(send, *refusal)
                return
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
# keeps forms, inputs and remote images. markup_text.safe_markdown is the first layer (no live form
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
    traceback in the log. `errors`: what Gradio's routes raise for them
    (gradio_compat.unknown_endpoint_errors)."""

    PATHS = ("/gradio_api/call/", "/gradio_api/run/", "/gradio_api/queue/join")

    def __init__(self, app: Any, errors: tuple[type[BaseException], ...] = (KeyError,)) -> None:
        self.app = app
        self.errors = errors

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or not scope.get("path", "").startswith(self.PATHS):
            await self.app(scope, receive, send)
            return
        watched = WatchedSend(send)
        try:
            await self.app(scope, receive, watched)
        except Exception as exc:  # only the two "no such function" errors are ours to answer
            if watched.started or not isinstance(exc, self.errors):
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
    return client_address.client_address(request)


def as_text(value: object) -> str:
    """A text argument from an API caller: stripped, "" for None or anything not a string
    (so an id of 123 or ["x"] is refused as "not valid" instead of crashing)."""
    return value.strip() if isinstance(value, str) else ""
