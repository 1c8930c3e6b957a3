"""Plain HTTP routes beside the Gradio app, on the same port: the seed service's API.

    POST /api/chat   {"messages": [...], "model"?, "provider"?, ...} -> text/event-stream
                     data: {"reasoning": "..."} / data: {"content": "..."} ...
                     data: {"error": {"message", "code"}}  (only when the answer failed)
                     data: [DONE]
    GET  /health     {"status", "version", "providers", "history": {"backend", "ok"}}

`app.py` passes `routes(service)` to Gradio's FastAPI app (`launch(app_kwargs={"routes": ...})`),
so they are matched before Gradio's own routes. Refusals known before anything is sent (bad
body, unknown provider, rejected image, no login, too many requests) are plain HTTP errors
with a JSON body `{"error": {"message", "code"}}`; once the stream started, a failure is a
`data: {"error": ...}` event followed by `data: [DONE]`.

Against strangers (issue 13): the body must be `application/json` (415), a login cookie must
come with the app's own Origin or Referer and any login with no foreign one (403: no CSRF),
wrong Basic passwords count as failed logins per address (429 after MAX_LOGIN_FAILURES), and
the body is capped at MAX_REQUEST_MB from its Content-Length and while it streams (413),
then checked for nesting (400) and invalid Unicode (replaced by U+FFFD) before it is parsed
into pydantic models (422 naming the fields): api_request.py.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import inspect
import json
import logging
import tempfile
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

import client_address
from api_request import (
    ApiError,
    BodyBudget,
    ChatBody,
    is_json,
    max_body_bytes,
    parse_body,
    read_body,
)
from chat import ChatError, ChatRateLimited, ChatService, InputMessage, TurnRequest, TurnUpdate
from config import VERSION
from history import HistoryUnavailable
from http_guards import client_ip

log = logging.getLogger("http_api")

HEALTH_TIMEOUT_S = 3.0  # a probe must get an answer even when Redis hangs
SSE_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # nginx and friends: pass each event on at once
}
NEW_CONVERSATION = ("", "new")


# -- auth: the same login as the Gradio UI --------------------------------------------------
async def login_method(request: Request) -> str | None:
    """How the request is logged in: "open" (the app has no login), "cookie" (Gradio's login
    cookie, or its auth_dependency: what a browser sends by itself), "basic" (HTTP Basic
    credentials for one of the `--auth` accounts), or None (not logged in).

    Reads Gradio's own App state (`auth`, `tokens`, `cookie_id`), so whatever configured the
    login (--auth, APP_AUTH) protects these routes the same way."""
    app = request.app
    auth = getattr(app, "auth", None)
    dependency = getattr(app, "auth_dependency", None)
    if auth is None and dependency is None:
        return "open"
    if dependency is not None:
        user = dependency(request)
        return "cookie" if (await user if inspect.isawaitable(user) else user) else None
    cookie_id = getattr(app, "cookie_id", "")
    tokens = getattr(app, "tokens", {}) or {}
    for name in (f"access-token-{cookie_id}", f"access-token-unsecure-{cookie_id}"):
        token = request.cookies.get(name)
        if token and token in tokens:
            return "cookie"
    credentials = basic_credentials(request.headers.get("authorization", ""))
    if credentials is None:
        return None
    user, password = credentials[0].strip(), credentials[1]  # as Gradio's login form does
    if callable(auth):
        result = auth(user, password)
        ok = bool(await result if inspect.isawaitable(result) else result)
    else:
        expected = auth.get(user) if isinstance(auth, dict) else None
        ok = expected is not None and hmac.compare_digest(password.encode(), expected.encode())
    return "basic" if ok else None


def cross_site(request: Request, method: str) -> bool:
    """A browser on another site using someone's login: sent by a page elsewhere with any
    login, or with the login cookie and nothing saying where from (a browser always sends
    Origin with a POST). Curl with -u sends neither, and needs none."""
    if method == "open":
        return False
    elsewhere = client_address.from_other_site(request)
    return method == "cookie" if elsewhere is None else elsewhere


def basic_credentials(header: str) -> tuple[str, str] | None:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        user, sep, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
    except (binascii.Error, ValueError):
        return None
    return (user, password) if sep else None


# -- streaming ------------------------------------------------------------------------------
def sse(payload: Any) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


class _Progress:
    """Turns cumulative TurnUpdates into delta events."""

    def __init__(self) -> None:
        self.answer = 0
        self.reasoning = 0

    def events(self, update: TurnUpdate) -> list[str]:
        out = []
        if len(update.reasoning) > self.reasoning:
            out.append(sse({"reasoning": update.reasoning[self.reasoning :]}))
            self.reasoning = len(update.reasoning)
        if len(update.answer) > self.answer:
            out.append(sse({"content": update.answer[self.answer :]}))
            self.answer = len(update.answer)
        if update.done and update.error:
            code = update.error_code or ("incomplete" if update.status == "incomplete" else "error")
            out.append(sse({"error": {"message": update.error, "code": code}}))
        return out


async def event_lines(
    first: TurnUpdate, updates: AsyncGenerator[TurnUpdate, None]
) -> AsyncGenerator[str, None]:
    progress = _Progress()
    try:
        for line in progress.events(first):
            yield line
        if not first.done:
            async for update in updates:
                for line in progress.events(update):
                    yield line
    except Exception:  # a bug, not a provider problem (those arrive as error updates)
        log.exception("/api/chat failed mid-stream")
        yield sse(
            {
                "error": {
                    "message": "The server failed while answering. Try again.",
                    "code": "internal",
                }
            }
        )
    finally:
        await updates.aclose()
    yield "data: [DONE]\n\n"


class EventStream(StreamingResponse):
    """An SSE response that notices a client hang-up at once, even while the upstream is silent,
    and then stops the turn with ONE plain task cancel.

    (Starlette's own disconnect handling cancels through an anyio scope, which re-cancels every
    await in the turn's cleanup, so closing the upstream, saving a partial answer and the log
    line could be cut short.)"""

    def __init__(self, lines: AsyncGenerator[str, None], headers: dict[str, str]) -> None:
        super().__init__(lines, headers={**SSE_HEADERS, **headers}, media_type="text/event-stream")
        self.lines = lines

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        writer = asyncio.create_task(self.stream_response(send))
        watcher = asyncio.create_task(self._wait_for_disconnect(receive))
        try:
            await asyncio.wait({writer, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            writer.cancel()  # no-op when it finished
            watcher.cancel()
            results = await asyncio.gather(writer, watcher, return_exceptions=True)
            await self.lines.aclose()
        if isinstance(results[0], Exception) and not isinstance(results[0], OSError):
            log.warning("/api/chat stream ended with %r", results[0])

    @staticmethod
    async def _wait_for_disconnect(receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass


# -- the endpoints --------------------------------------------------------------------------
async def start_turn(
    service: ChatService, body: ChatBody, messages: list[InputMessage], ip: str | None
) -> tuple[TurnUpdate, AsyncGenerator[TurnUpdate, None]]:
    """Begin the turn and take its first update, so refusals (the rate limit included: the
    service counts each turn per IP, as for the UI) become HTTP errors."""
    if body.conversation_id is None:
        updates = service.stream_messages(
            messages,
            role=body.role,
            provider=body.provider,
            model=body.model,
            detail=body.detail,
            temperature=body.temperature,
            max_tokens=body.max_tokens,
            client_ip=ip,
        )
        return await anext(updates), updates
    last = messages[-1]
    if last.role != "user":
        raise ChatError('The last message must be the user\'s (role "user").')
    system = "\n\n".join(m.text for m in messages if m.role == "system" and m.text.strip())
    cid = "" if body.conversation_id in NEW_CONVERSATION else body.conversation_id
    with tempfile.TemporaryDirectory(prefix="api-images-") as folder:
        # turn() takes uploads as files (like Gradio's) and reads them before its first update.
        paths = [str(Path(folder) / name) for name, _ in last.images]
        for path, (_, raw) in zip(paths, last.images, strict=True):
            await asyncio.to_thread(Path(path).write_bytes, raw)
        updates = service.turn(
            TurnRequest(
                text=last.text,
                images=paths,
                role=body.role,
                system_prompt=system,
                provider=body.provider,
                model=body.model,
                detail=body.detail,
                conversation_id=cid,
                temperature=body.temperature,
                max_tokens=body.max_tokens,
                client_ip=ip,
            )
        )
        return await anext(updates), updates


async def check_login(request: Request) -> str:
    """The login method (see login_method), or ApiError 401; wrong HTTP Basic passwords
    count as failed logins per address, like Gradio's /login form (client_address)."""
    credentials = basic_credentials(request.headers.get("authorization", ""))
    guessing = client_address.login_configured(request.app) and credentials is not None
    address = client_ip(request)
    if guessing:
        wait = client_address.failed_logins.retry_after(address)
        if wait:
            message = client_address.too_many_logins_message(wait)
            raise ApiError(429, "rate_limited", message, {"Retry-After": str(wait)})
    method = await login_method(request)
    if method is None:
        if guessing:
            client_address.failed_logins.failed(address)
        raise ApiError(
            401,
            "unauthorized",
            "Log in first: send HTTP Basic credentials (curl -u user:password) "
            "for an account given to --auth / APP_AUTH.",
            {"WWW-Authenticate": 'Basic realm="chat", charset="UTF-8"'},
        )
    return method


def check_request(request: Request, method: str) -> None:
    """Refuse cross-site use of a login (CSRF) and bodies that are not JSON."""
    if cross_site(request, method):
        raise ApiError(
            403,
            "cross_origin",
            "This request came from another site (or without an Origin header while using "
            "the login cookie): call the API from the app's own page, or with HTTP Basic.",
        )
    if not is_json(request.headers.get("content-type", "")):
        raise ApiError(
            415,
            "unsupported_media_type",
            "Send the body as JSON with the header Content-Type: application/json.",
        )


def rate_limited(exc: ChatRateLimited) -> ApiError:
    seconds = str(exc.retry_after)
    return ApiError(429, "rate_limited", str(exc), {"Retry-After": seconds})


def routes(service: ChatService) -> list[BaseRoute]:
    body_limit = max_body_bytes(service.settings)
    # Four bodies at the cap may be read at once (more wait for a 503's Retry-After).
    budget = BodyBudget(4 * body_limit)

    async def chat(request: Request) -> StreamingResponse | JSONResponse:
        try:
            # Cheap header checks first (login, origin, content type, declared size), then
            # the body, read with a cap, then parsed: nothing big is read for a refusal.
            check_request(request, await check_login(request))
            raw = await read_body(request, body_limit, budget)
            try:
                # A body with images takes a while to parse and decode: keep the loop free.
                parsed = await asyncio.to_thread(parse_body, raw) if len(raw) > 256_000 else None
            finally:
                budget.give_back(len(raw))
            body, messages = parsed or parse_body(raw)
            first, updates = await start_turn(service, body, messages, client_ip(request))
        except ApiError as exc:
            return exc.response()
        except ChatRateLimited as exc:
            return rate_limited(exc).response()
        except ChatError as exc:
            if isinstance(exc.__context__, HistoryUnavailable):
                return ApiError(503, "history_unavailable", str(exc)).response()
            return ApiError(400, "invalid_request", str(exc)).response()
        except HistoryUnavailable as exc:
            return ApiError(503, "history_unavailable", str(exc)).response()
        headers = {"X-Request-Id": first.request_id}
        if first.conversation_id:
            headers["X-Conversation-Id"] = first.conversation_id
        return EventStream(event_lines(first, updates), headers)

    async def health(request: Request) -> JSONResponse:
        return await health_response(service)

    return [
        Route("/api/chat", chat, methods=["POST"]),
        Route("/health", health, methods=["GET"]),
        # Gradio's deep link saves a session's component values (a user's own API key
        # among them) to a file anyone with its name can load: this app has no deep links.
        Route(DEEP_LINK_PATH, no_deep_links, methods=["GET", "POST"]),
    ]


DEEP_LINK_PATH = "/gradio_api/deep_link"


async def no_deep_links(request: Request) -> JSONResponse:
    return ApiError(404, "not_found", "This app does not offer deep links.").response()


async def health_response(service: ChatService) -> JSONResponse:
    """200 while serving; 503 when Redis is configured but does not answer. Never a key."""
    redis = bool(service.settings.redis_url)
    try:
        store = await asyncio.wait_for(service.store(), HEALTH_TIMEOUT_S)
        ok = await asyncio.wait_for(store.ping(), HEALTH_TIMEOUT_S)
    except (HistoryUnavailable, TimeoutError):
        ok = False
    providers = service.providers
    body: dict[str, Any] = {
        "status": "ok" if ok else "unavailable",
        "version": VERSION,
        "providers": [p.id for p in providers.enabled()],
        "default_provider": providers.default_id,
        "history": {"backend": "redis" if redis else "embedded", "ok": ok},
    }
    if not ok:
        body["message"] = "Redis does not answer: history cannot be read or saved. Check REDIS_URL."
    headers = {"Cache-Control": "no-store"}
    return JSONResponse(body, status_code=200 if ok else 503, headers=headers)


__all__ = ["routes"]
