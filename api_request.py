"""The /api/chat request: its JSON body as pydantic models (OpenAI chat-completions style,
as the seed service's clients send it), read with a cap and parsed, images decoded.

Every refusal is an `ApiError`, answered as `{"error": {"message", "code"}}`: 413 past the
size cap (declared or while it streams), 503 while the process holds too many large bodies,
400 for JSON that is not JSON or nests too deeply, 422 for a body pydantic refuses (the
message names the fields) and 400 for an image that is not a base64 data: URL. Nesting is
checked on the raw bytes and invalid Unicode replaced by U+FFFD before anything parses them.
"""

from __future__ import annotations

import base64
import binascii
import json
import mimetypes
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse

from chat_context import InputMessage
from config import DEFAULT_ROLE, Settings
from http_guards import MAX_JSON_DEPTH, clean_json_bytes, json_too_deep


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


# -- reading and parsing ----------------------------------------------------------------------
def max_body_bytes(settings: Settings) -> int:
    """One message's worth of images (base64 is 4/3 of the bytes) plus room for text, at
    most MAX_REQUEST_MB (8 images resized in the browser fit in its 32 MB default)."""
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
        f"The request is larger than {limit / (1024 * 1024):.3g} MB. Send fewer or smaller images.",
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
