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
then checked for nesting (400) and invalid Unicode (replaced by U+FFFD) before it is parsed.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import inspect
import json
import logging
import mimetypes
import tempfile
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

import client_address
from chat import ChatError, ChatRateLimited, ChatService, InputMessage, TurnRequest, TurnUpdate
from config import DEFAULT_ROLE, VERSION
from history import HistoryUnavailable
from limits import MAX_JSON_DEPTH, clean_json_bytes, client_ip, json_too_deep

log = logging.getLogger("http_api")

HEALTH_TIMEOUT_S = 3.0  # a probe must get an answer even when Redis hangs
SSE_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # nginx and friends: pass each event on at once
}
NEW_CONVERSATION = ("", "new")


class ApiError(Exception):
    """An HTTP error answered as {"error": {"message", "code"}}."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


# -- the request body (OpenAI chat-completions style, as the seed service's clients send it) --
class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")  # "stream": true and other OpenAI fields


class ImageURL(_Body):
    url: str
    detail: str | None = None


class TextPart(_Body):
    type: Literal["text"]
    text: str


class ImagePart(_Body):
    type: Literal["image_url"]
    image_url: ImageURL | str  # some clients send the URL itself


Part = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class Message(_Body):
    role: Literal["system", "user", "assistant"]
    content: str | list[Part] | None = None


class ChatBody(_Body):
    messages: list[Message] = Field(min_length=1)
    model: str = Field("", max_length=200)
    provider: str = Field("", max_length=64)
    role: str = Field(DEFAULT_ROLE, max_length=64)
    temperature: float | None = Field(None, ge=0, le=2)
    max_tokens: int | None = Field(None, ge=1, le=1_000_000)
    conversation_id: str | None = Field(None, max_length=64)
    detail: Literal["auto", "low", "high"] = "auto"


def validation_message(exc: ValidationError) -> str:
    """pydantic's errors as one short sentence naming the fields, e.g. `messages.0.role: ...`."""
    parts = []
    for err in exc.errors()[:3]:
        where = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{where}: {err['msg']}")
    more = len(exc.errors()) - len(parts)
    return "Invalid request body: " + "; ".join(parts) + (f" (and {more} more)" if more else "")


# -- decoding messages ----------------------------------------------------------------------
def decode_data_url(url: str, name: str) -> bytes:
    if not url.startswith("data:"):
        raise ApiError(
            400,
            "invalid_image",
            f"{name}: only data: URLs are accepted (data:image/png;base64,...); "
            "this server does not fetch images from the web.",
        )
    header, sep, payload = url.partition(",")
    if not sep or not header.endswith(";base64"):
        raise ApiError(400, "invalid_image", f"{name}: the data URL must be base64-encoded.")
    try:
        return base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "invalid_image", f"{name}: the base64 data is damaged.") from None


def image_name(url: str, number: int) -> str:
    mime = url[5:].split(";", 1)[0].split(",", 1)[0].strip().lower()
    ext = (mimetypes.guess_extension(mime) or ".img") if mime.startswith("image/") else ".img"
    return f"image{number}{'.jpg' if ext == '.jpe' else ext}"


def to_input(messages: list[Message]) -> list[InputMessage]:
    """Body messages -> InputMessage: text joined, images decoded (numbered in order)."""
    out: list[InputMessage] = []
    count = 0
    for index, message in enumerate(messages):
        content = message.content
        parts = (
            [TextPart(type="text", text=content or "")]
            if not isinstance(content, list)
            else content
        )
        texts, images = [], []
        for part in parts:
            if isinstance(part, TextPart):
                texts.append(part.text)
                continue
            if message.role != "user":
                raise ApiError(
                    422,
                    "invalid_request",
                    f"messages.{index}: images can only be in user messages.",
                )
            count += 1
            url = part.image_url if isinstance(part.image_url, str) else part.image_url.url
            name = image_name(url, count)
            images.append((name, decode_data_url(url, f"messages.{index} ({name})")))
        out.append(InputMessage(role=message.role, text="\n".join(texts), images=images))
    return out


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
) -> AsyncIterator[str]:
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
def max_body_bytes(service: ChatService) -> int:
    """One message's worth of images (base64 is 4/3 of the bytes) plus room for text, at
    most MAX_REQUEST_MB (8 images resized in the browser fit in its 32 MB default)."""
    settings = service.settings
    per_image = settings.max_image_bytes * 4 // 3 + 1024
    needed = per_image * settings.max_images_per_message + 8 * 1024 * 1024
    return min(needed, int(settings.max_request_mb * 1024 * 1024))


def is_json(content_type: str) -> bool:
    """`application/json`, with or without parameters (`; charset=utf-8`)."""
    return content_type.split(";", 1)[0].strip().lower() == "application/json"


class BodyBudget:
    """The bytes of request bodies this process holds at once (read, not yet parsed): each
    body is capped, and so is their sum, or many large bodies in parallel could take the
    process's memory even though each one is under the cap."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.in_use = 0

    def take(self, size: int) -> None:
        if self.in_use + size > self.max_bytes:
            raise ApiError(
                503,
                "busy",
                "The server is receiving too many large requests at once: try again in a "
                "few seconds.",
                {"Retry-After": "5"},
            )
        self.in_use += size

    def give_back(self, size: int) -> None:
        self.in_use = max(0, self.in_use - size)


async def read_body(request: Request, limit: int, budget: BodyBudget | None = None) -> bytes:
    """The body, refused (413) past `limit` before or while it is read, and (503) when the
    process already holds `budget` bytes of other bodies; the caller gives back len(body)."""
    too_big = ApiError(
        413,
        "payload_too_large",
        f"The request is larger than {limit / (1024 * 1024):.3g} MB. "
        "Send fewer or smaller images.",
    )
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_big
    raw = bytearray()
    try:
        async for chunk in request.stream():
            if budget is not None:
                budget.take(len(chunk))
            raw += chunk
            if len(raw) > limit:
                raise too_big
    except BaseException:  # refused, or the client went away mid-body
        if budget is not None:
            budget.give_back(len(raw))
        raise
    return bytes(raw)


def parse_body(raw: bytes) -> tuple[ChatBody, list[InputMessage]]:
    """JSON -> validated body -> messages with decoded images (CPU-bound for big bodies).
    Nesting is checked on the bytes first, and invalid Unicode (a lone surrogate) becomes
    U+FFFD before anything reads the text."""
    too_deep = ApiError(
        400,
        "nested_too_deeply",
        f"The request is nested too deeply (over {MAX_JSON_DEPTH} levels).",
    )
    if json_too_deep(raw):
        raise too_deep
    try:
        data = json.loads(clean_json_bytes(raw))
    except RecursionError:
        raise too_deep from None
    except (ValueError, UnicodeDecodeError):
        raise ApiError(
            400, "invalid_json", 'The body must be JSON, e.g. {"messages": [...]}.'
        ) from None
    try:
        body = ChatBody.model_validate(data)
    except ValidationError as exc:
        raise ApiError(422, "invalid_request", validation_message(exc)) from None
    return body, to_input(body.messages)


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
    body_limit = max_body_bytes(service)
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
