"""The upstream request of a turn: the system prompt, the last N messages in the OpenAI chat
format, image parts, and an estimate of the image tokens among them."""

from __future__ import annotations

import base64
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from chat_errors import ChatError
from config import CUSTOM_ROLE, DEFAULT_ROLE, ROLES
from history import HistoryStore
from images import DETAILS, PreparedImage, estimate_image_tokens
from providers import Provider


@dataclass(frozen=True)
class Context:
    """What goes upstream, and the estimated image tokens in it (None: the model's rule is
    unknown)."""

    messages: list[dict]
    image_tokens: int | None = 0


@dataclass
class InputMessage:
    """One message of a client-sent conversation (HTTP API, stateless turns)."""

    role: str  # system | user | assistant
    text: str = ""
    images: Sequence[tuple[str, bytes]] = ()  # (name, raw bytes); user messages only


def system_prompt_for(role: str, custom_prompt: str = "") -> str:
    """The system prompt actually sent (the seed service forgot to send it)."""
    if custom_prompt.strip():
        return custom_prompt.strip()
    if role == CUSTOM_ROLE:
        return ROLES[DEFAULT_ROLE].prompt
    if role not in ROLES:
        known = ", ".join([*ROLES, CUSTOM_ROLE])
        # Truncated: the role may be an API caller's junk, and the message is shown and logged.
        raise ChatError(f"Unknown role {str(role)[:40]!r}. Pick one of: {known}.")
    return ROLES[role].prompt


def effective_detail(provider_id: str, detail: str) -> str:
    """The detail level images are prepared and sent with.

    SiliconFlow reads "auto" (or no detail) as "low", 448 px, too small for screenshots: there
    auto means high, both for the size images.py prepares and for the detail sent.
    """
    detail = detail if detail in DETAILS else "auto"
    return "high" if detail == "auto" and provider_id == "siliconflow" else detail


def image_part(data: bytes, mime: str, *, detail: str) -> dict:
    """An OpenAI-style image part; `detail` is sent only when it is not the default."""
    url = f"data:{mime};base64,{base64.b64encode(data).decode()}"
    image_url: dict = {"url": url}
    if detail != "auto":
        image_url["detail"] = detail
    return {"type": "image_url", "image_url": image_url}


def text_part(text: str) -> dict:
    return {"type": "text", "text": text}


def add_image_tokens(total: int | None, tokens: int | None) -> int | None:
    """A running sum that becomes unknown (None) once one image's count is unknown."""
    return None if total is None or tokens is None else total + tokens


async def stored_context(
    store: HistoryStore,
    stored: Sequence[dict],
    *,
    limit: int,
    provider: Provider,
    model: str,
    system_prompt: str,
    detail: str,
) -> Context:
    """System prompt + the last `limit` of the stored messages, images fetched in one round
    trip (a model that cannot see gets words instead)."""
    window = list(stored[-limit:]) if limit > 0 else []
    while window and window[0]["role"] == "assistant":
        window = window[1:]  # some providers insist the first message is the user's
    vision = provider.supports_vision(model)
    refs = [ref for m in window if m["role"] == "user" for ref in m.get("images") or []]
    blobs = await store.get_images(ref["sha256"] for ref in refs) if vision and refs else {}
    messages: list[dict] = [{"role": "system", "content": system_prompt}]
    image_tokens: int | None = 0
    for position, message in enumerate(window):
        if message["role"] == "assistant":
            # Of answers side by side (regenerated to compare), only the newest goes on.
            later = window[position + 1 :]
            if message.get("content") and not (later and later[0]["role"] == "assistant"):
                messages.append({"role": "assistant", "content": message["content"]})
            continue
        if vision:
            for ref in message.get("images") or []:
                tokens = estimate_image_tokens(
                    ref.get("width", 0), ref.get("height", 0), provider.id, model, detail
                )
                image_tokens = add_image_tokens(image_tokens, tokens)
        content = user_content(message, blobs if vision else None, detail)
        messages.append({"role": "user", "content": content})
    return Context(messages, image_tokens)


def user_content(
    message: dict, blobs: dict[str, tuple[bytes, str]] | None, detail: str
) -> str | list[dict]:
    """A stored user message as OpenAI content; `blobs` None: the model cannot see."""
    refs = message.get("images") or []
    if not refs:
        return message.get("content", "")
    parts: list[dict] = []
    if message.get("content"):
        parts.append(text_part(message["content"]))
    for ref in refs:
        stored = blobs.get(ref["sha256"]) if blobs is not None else None
        if stored is None:
            # Never send an image to a model that cannot see (DeepSeek fails every later
            # turn if it does); say in words that there was one.
            reason = "expired" if blobs is not None else "not shown to this model"
            parts.append(text_part(f"[image {ref.get('name', '')}: {reason}]"))
            continue
        parts.append(image_part(*stored, detail=detail))
    return parts


def stateless_window(messages: Sequence[InputMessage], limit: int) -> list[InputMessage]:
    """The client's non-system messages that go upstream: the last `limit`, starting with a
    user's (the last one is the user's, so this ends)."""
    recent = [m for m in messages if m.role != "system"][-limit:]
    while recent and recent[0].role == "assistant":
        recent = recent[1:]
    return recent


def stateless_context(
    recent: Sequence[InputMessage],
    prepared: Sequence[PreparedImage],
    *,
    provider: Provider,
    model: str,
    system_prompt: str,
    detail: str,
) -> Context:
    """The client's messages in the OpenAI format; `prepared`: their images, validated and
    optimised, in order."""
    parts_of = (image_part(i.data, i.mime, detail=detail) for i in prepared)
    out: list[dict] = [{"role": "system", "content": system_prompt}]
    for message in recent:
        if not message.images:
            out.append({"role": message.role, "content": message.text})
            continue
        parts = [text_part(message.text)] if message.text else []
        parts += itertools.islice(parts_of, len(message.images))
        out.append({"role": message.role, "content": parts})
    image_tokens: int | None = 0
    if provider.supports_vision(model):
        for image in prepared:
            tokens = estimate_image_tokens(image.width, image.height, provider.id, model, detail)
            image_tokens = add_image_tokens(image_tokens, tokens)
    return Context(out, image_tokens)
