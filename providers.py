"""The provider registry and streaming from OpenAI-compatible APIs.

Every real provider speaks the chat-completions protocol, so one `AsyncOpenAI` client per
provider does the HTTP. What differs is configuration (provider_presets.py), what each model
can do (model_facts.py) and how each one says "no" (provider_errors.py): this module resolves
providers and models, streams an answer as small events, retries what can succeed, and
raises `ProviderError`s whose message is short, user-facing and never contains a key.

Nothing here imports gradio, chat, app or history.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
from collections.abc import AsyncGenerator, Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx2
import openai
from openai import AsyncOpenAI
from openai import _streaming as openai_streaming  # the SSE decoder (see _TolerantStream)

from demo_provider import demo_events, demo_reply
from provider_errors import ProviderError, disabled_message, error_info, map_exception, redact
from provider_presets import (
    DEMO_ID,
    PRESETS,
    ContentDelta,
    Finished,
    Provider,
    ReasoningDelta,
    StreamEvent,
    ToolCallDelta,
    build_provider,
    demo_provider_record,
    display_url,
    env_value,
)

# What callers import from here, whichever module defines it.
__all__ = [
    "DEFAULT_DEMO_DELAY_MS",
    "DEMO_ID",
    "PRESETS",
    "ContentDelta",
    "Finished",
    "Provider",
    "ProviderError",
    "Providers",
    "ReasoningDelta",
    "StreamEvent",
    "ToolCallDelta",
    "demo_reply",
    "display_url",
    "error_info",
]

log = logging.getLogger(__name__)

MAX_RETRIES = 2  # retries after the first attempt, only before the first token
RETRY_BASE_S = 0.5  # backoff 0.5 s, 1 s
MAX_CLIENTS = 64  # cached clients, one per provider plus one per user key (BYOK)
MAX_MODEL_CHARS = 200
DEFAULT_DEMO_DELAY_MS = 25.0
# Idle connections are kept 30 s instead of the SDK's 5 s: someone who reads an answer for
# half a minute would otherwise pay a new TCP + TLS handshake to the provider with every
# message (2-3 round trips). A connection the server closed meanwhile is noticed before
# reuse; one closed just as it is reused fails before any text and is retried like any
# connection error.
_LIMITS = httpx2.Limits(max_connections=1000, max_keepalive_connections=100, keepalive_expiry=30)


def _is_sane_model(model: str) -> bool:
    return len(model) <= MAX_MODEL_CHARS and not any(
        ord(ch) < 32 or 127 <= ord(ch) < 160 for ch in model
    )


# --------------------------------------------------------------------------------------
# The registry


class Providers:
    """The provider registry: presets resolved against the environment, clients, streams."""

    def __init__(
        self,
        environ: Mapping[str, str] | None = None,
        *,
        timeout_s: float = 60.0,
        connect_timeout_s: float = 5.0,
    ) -> None:
        env: Mapping[str, str] = os.environ if environ is None else environ
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self._providers: dict[str, Provider] = {
            preset.id: build_provider(preset, env) for preset in PRESETS
        }
        self._providers[DEMO_ID] = demo_provider_record()
        self._default_id = self._pick_default(env_value(env, "DEFAULT_PROVIDER").lower())
        self._demo_delay_s = self._demo_delay(env_value(env, "DEMO_DELAY_MS"))
        self._clients: dict[str, AsyncOpenAI] = {}
        # Only real keys from the environment (not placeholders like "ollama") are redacted.
        self._secrets = tuple(
            key for preset in PRESETS if (key := env_value(env, f"{preset.prefix}_API_KEY"))
        )

    # ---- lookup

    def get(self, provider_id: str) -> Provider:
        provider = self._providers.get((provider_id or "").strip().lower())
        if provider is None:
            known = ", ".join(self._providers)
            shown = str(provider_id)[:40]
            raise ProviderError(
                "unknown_provider", f"Unknown provider {shown!r}. Choose one of: {known}."
            )
        return provider

    def all(self) -> list[Provider]:
        return list(self._providers.values())

    def enabled(self) -> list[Provider]:
        return [p for p in self._providers.values() if p.enabled]

    @property
    def default_id(self) -> str:
        return self._default_id

    def _pick_default(self, wanted: str) -> str:
        # DEFAULT_PROVIDER wins when it is enabled; otherwise the first enabled real provider
        # in preset order (a key set means the user wants it); otherwise the offline demo.
        if wanted:
            chosen = self._providers.get(wanted)
            if chosen and chosen.enabled:
                return chosen.id  # else: startup_checks warns about it
        for provider in self._providers.values():
            if provider.enabled and provider.id != DEMO_ID:
                return provider.id
        return DEMO_ID

    def _demo_delay(self, raw: str) -> float:
        if not raw:
            return DEFAULT_DEMO_DELAY_MS / 1000
        try:
            return max(0.0, float(raw)) / 1000
        except ValueError:  # startup_checks warns about it
            return DEFAULT_DEMO_DELAY_MS / 1000

    def with_key(self, provider: Provider, api_key: str | None) -> Provider:
        """The provider as one user sees it with their own key (bring your own key)."""
        key = (api_key or "").strip()
        if not key or not provider.key_env or not provider.base_url:
            return provider
        return dataclasses.replace(provider, api_key=key, enabled=True)

    def resolve(
        self, provider_id: str = "", model: str = "", *, api_key: str | None = None
    ) -> tuple[Provider, str]:
        provider = self.get((provider_id or "").strip() or self._default_id)
        provider = self.with_key(provider, api_key)
        if not provider.enabled:
            raise ProviderError("disabled", disabled_message(provider))
        if provider.id == DEMO_ID:
            return provider, DEMO_ID  # the demo has one "model"; a stale choice is harmless
        chosen = (model or "").strip() if isinstance(model, str) else ""
        chosen = chosen or provider.default_model
        if not chosen:
            raise ProviderError(
                "unknown_model",
                f"No model chosen for {provider.name}: set {provider.env_prefix}_MODELS "
                "or type a model name.",
            )
        # Unlisted ids are fine (Ark endpoint ids "ep-...", new models), junk is not.
        if not _is_sane_model(chosen):
            raise ProviderError(
                "unknown_model",
                f"That model name is not valid for {provider.name}. Pick one from the list.",
            )
        return provider, chosen

    # ---- clients

    def client(self, provider_id: str, api_key: str | None = None) -> AsyncOpenAI:
        """The provider's client, made once and reused (one per user key with BYOK)."""
        provider = self.with_key(self.get(provider_id), api_key)
        if provider.id == DEMO_ID:
            raise ProviderError("disabled", "The demo provider runs offline and has no client.")
        if not provider.enabled:
            raise ProviderError("disabled", disabled_message(provider))
        cache_key = provider.id
        if api_key:
            digest = hashlib.sha256(api_key.encode()).hexdigest()[:16]
            cache_key = f"{provider.id}:{digest}"
            while len(self._clients) >= MAX_CLIENTS:  # oldest user client goes first
                self._clients.pop(next(k for k in self._clients if ":" in k))
        client = self._clients.get(cache_key)
        if client is None:
            # Read timeout = longest silence allowed mid-stream; connect fails fast.
            timeout = httpx2.Timeout(self.timeout_s, connect=self.connect_timeout_s)
            client = AsyncOpenAI(
                api_key=provider.api_key or "EMPTY",
                base_url=provider.base_url,
                timeout=timeout,
                # WE retry: the SDK would also retry 429 insufficient_quota and mid-answer.
                max_retries=0,
                # The SDK's documented hook, with its defaults plus our timeout and limits.
                http_client=openai.DefaultAsyncHttpx2Client(timeout=timeout, limits=_LIMITS),
            )
            if provider.id != "openai":
                # The SDK fills these from OPENAI_ORG_ID / OPENAI_PROJECT_ID; they are
                # OpenAI account ids and must not be sent to other companies' servers.
                client.organization = None
                client.project = None
            self._clients[cache_key] = client
        return client

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            with contextlib.suppress(Exception):
                await client.close()

    # ---- streaming

    async def stream(
        self,
        provider_id: str,
        model: str,
        messages: list[dict],
        *,
        temperature: float | None = None,
        max_tokens: int | None = None,
        top_p: float | None = None,
        api_key: str | None = None,
        tools: list[dict] | None = None,
    ) -> AsyncGenerator[StreamEvent, None]:
        """Stream one answer as ContentDelta / ReasoningDelta / ToolCallDelta events, then
        one Finished ("tool_calls" when the model wants its calls run).

        Raises ProviderError. Closing the generator (aclose, task cancel) closes the
        upstream HTTP response at once, so the provider stops generating. `api_key` is a
        user's own key (never stored, never logged, redacted from error messages).
        `tools` is the OpenAI `tools` list, sent as is when non-empty (None or [] sends
        nothing: the request stays as it was without tools); `messages` may then replay
        `assistant` messages with `tool_calls` and `tool` results (see tool_calls.py).
        The offline demo ignores `tools`.
        """
        provider, model = self.resolve(provider_id, model, api_key=api_key)
        if provider.id == DEMO_ID:
            events = demo_events(messages, self._demo_delay_s)
        else:
            params = self._params(
                provider, model, messages, temperature, max_tokens, top_p, tools=tools
            )
            events = self._stream_with_retries(provider, model, params, api_key)
        async with contextlib.aclosing(events) as inner:
            async for event in inner:
                yield event

    def _params(
        self,
        provider: Provider,
        model: str,
        messages: list[dict],
        temperature: float | None,
        max_tokens: int | None,
        top_p: float | None = None,
        *,
        tools: list[dict] | None = None,
    ) -> dict[str, Any]:
        params: dict[str, Any] = {"model": model, "messages": messages, "stream": True}
        if tools:  # OpenAI rejects an empty list ("[] is too short"): none means no key
            params["tools"] = tools
        # GPT-5 and o-series accept only the default sampling settings (400 otherwise).
        if not re.search(r"(^|/)(gpt-5|o\d)", model.lower()):
            if temperature is not None:
                params["temperature"] = temperature
            if top_p is not None:
                params["top_p"] = top_p
        if max_tokens is not None:
            # api.openai.com deprecated max_tokens (reasoning models reject it); the
            # compatible servers only know max_tokens.
            host = urlsplit(provider.base_url or "").hostname or ""
            name = "max_completion_tokens" if host == "api.openai.com" else "max_tokens"
            params[name] = max_tokens
        if provider.include_usage:
            params["stream_options"] = {"include_usage": True}
        return params

    async def _stream_with_retries(
        self, provider: Provider, model: str, params: dict[str, Any], api_key: str | None = None
    ) -> AsyncGenerator[StreamEvent, None]:
        attempt = 0
        while True:
            started = False
            try:
                attempt_events = self._attempt(provider, model, params, api_key)
                async with contextlib.aclosing(attempt_events) as events:
                    async for event in events:
                        started = True
                        yield event
                return
            except ProviderError as err:
                # Once text reached the user a retry would duplicate it: never retry then.
                if started or not err.auto_retry or attempt >= MAX_RETRIES:
                    raise
                delay = (
                    err.retry_after if err.retry_after is not None else (RETRY_BASE_S * 2**attempt)
                )
                attempt += 1
                log.info(
                    "%s: %s (status %s); retry %d/%d in %.1f s",
                    provider.id,
                    err.code,
                    err.status,
                    attempt,
                    MAX_RETRIES,
                    delay,
                )
                await asyncio.sleep(delay)

    async def _attempt(
        self, provider: Provider, model: str, params: dict[str, Any], api_key: str | None = None
    ) -> AsyncGenerator[StreamEvent, None]:
        client = self.client(provider.id, api_key)
        try:
            # The SDK's own request, retries off, errors and SSE decoding included, but each
            # chunk stays the JSON dict it was: building it into pydantic models costs
            # ~110 µs a chunk, a fifth of this app's CPU per streamed token (bench/).
            stream = await client.post(
                "/chat/completions",
                body=params,
                cast_to=object,
                stream=True,
                stream_cls=_TolerantStream,
            )
        except openai.APIError as exc:
            raise self._map(provider, model, exc, mid_stream=False, api_key=api_key) from exc
        finish: str | None = None
        usage: dict | None = None
        chunks = 0
        try:
            async for chunk in stream:
                chunks += 1
                usage = _usage(chunk) or usage
                for event in _chunk_events(chunk):
                    if isinstance(event, Finished):
                        finish = event.reason
                    else:
                        yield event
                if finish == "error":  # OpenRouter: the upstream failed mid-answer
                    raise ProviderError(
                        "provider_error",
                        f"{provider.name} reported an error mid-answer. Press Retry.",
                    )
        except openai.APIError as exc:
            # After a finish_reason the answer is whole: a late hiccup (a dropped socket
            # before the usage chunk) must not turn it into an error.
            if finish is None:
                raise self._map(provider, model, exc, mid_stream=True, api_key=api_key) from exc
        except ValueError as exc:  # json.JSONDecodeError from the SSE decoder
            if finish is None:
                raise ProviderError(
                    "malformed",
                    f"{provider.name} sent a response that could not be read. "
                    "Press Retry or switch provider.",
                ) from exc
        finally:
            # Closing the response is what tells the server to stop generating.
            await stream.close()
        if finish is None:
            raise _no_finish_error(provider, stream, chunks)
        yield Finished(finish, usage)

    # ---- error mapping

    def _map(
        self,
        provider: Provider,
        model: str,
        exc: openai.APIError,
        *,
        mid_stream: bool,
        api_key: str | None = None,
    ) -> ProviderError:
        secrets = (*self._secrets, api_key) if api_key else self._secrets
        err = map_exception(
            provider, model, exc, mid_stream=mid_stream, timeout_s=self.timeout_s, secrets=secrets
        )
        err.message = redact(err.message, secrets)
        err.args = (err.message,)
        return err


# --------------------------------------------------------------------------------------
# Stream parsing


class _TolerantSSEDecoder(openai_streaming.SSEDecoder):
    """The SDK's SSE decoder, but a line that is not valid UTF-8 becomes text with U+FFFD
    where the bad bytes were, instead of a UnicodeDecodeError that ends the answer. (Lines
    are split on bytes first, so a character is never cut in two here.)"""

    def _decode_lines(self, lines: Iterator[bytes]) -> Iterator[Any]:
        for raw_line in lines:
            sse = self.decode(raw_line.decode("utf-8", errors="replace"))
            if sse:
                yield sse


class _TolerantStream(openai.AsyncStream[object]):
    """openai.AsyncStream with the tolerant decoder (the SDK makes its decoder per stream)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._decoder = _TolerantSSEDecoder()


# A lone surrogate: JSON may escape one ("\ud800") and json.loads keeps it, but it cannot be
# encoded (the reply to the browser, Redis): U+FFFD instead, as for bad bytes.
_SURROGATE = re.compile("[\\ud800-\\udfff]")


def _valid_unicode(text: str) -> str:
    return text if text.isascii() else _SURROGATE.sub("\ufffd", text)


def _chunk_events(chunk: Any) -> list[StreamEvent]:
    """Events in one decoded chunk (a JSON object; anything else from a junk server is none)."""
    events: list[StreamEvent] = []
    # `choices` is [] on the usage chunk, and junk servers may send null.
    for choice in _field(chunk, "choices") or ():
        if _field(choice, "index", 0) not in (0, None):
            continue
        delta = _field(choice, "delta")
        if isinstance(delta, dict):
            # DeepSeek/Qwen/Ark/SiliconFlow: reasoning_content; OpenRouter/Ollama: reasoning.
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if isinstance(reasoning, str) and reasoning:
                events.append(ReasoningDelta(_valid_unicode(reasoning)))
            content = delta.get("content")
            if isinstance(content, str) and content:
                events.append(ContentDelta(_valid_unicode(content)))
            events.extend(_tool_call_deltas(delta.get("tool_calls")))
        reason = _field(choice, "finish_reason")
        if isinstance(reason, str) and reason:
            events.append(Finished(reason))
    return events


def _tool_call_deltas(raw: Any) -> list[ToolCallDelta]:
    """`delta.tool_calls` as events: `[{index, id?, type?, function: {name?, arguments?}}]`.
    A piece without `index` (some compatible servers send whole calls) takes its position
    in the list; arguments sent as a JSON object (Ollama-style) become JSON text; a piece
    with nothing in it is skipped."""
    deltas: list[ToolCallDelta] = []
    for position, piece in enumerate(raw if isinstance(raw, list) else ()):
        if not isinstance(piece, dict):
            continue
        index = piece.get("index")
        if not isinstance(index, int) or isinstance(index, bool):
            index = position
        function = _field(piece, "function") or {}
        call_id, name = piece.get("id"), _field(function, "name")
        arguments = _field(function, "arguments")
        if isinstance(arguments, dict | list):
            arguments = json.dumps(arguments, ensure_ascii=False)
        call_id = call_id if isinstance(call_id, str) and call_id else None
        name = _valid_unicode(name) if isinstance(name, str) and name else None
        arguments = _valid_unicode(arguments) if isinstance(arguments, str) else ""
        if call_id or name or arguments:
            deltas.append(ToolCallDelta(index, call_id, name, arguments))
    return deltas


def _field(data: object, name: str, default: Any = None) -> Any:
    return data.get(name, default) if isinstance(data, dict) else default


def _usage(chunk: Any) -> dict | None:
    # Standard: chunk.usage (include_usage or Zhipu's last chunk); Moonshot puts it on the
    # choice instead.
    data = _field(chunk, "usage")
    if data is None:
        for choice in _field(chunk, "choices") or ():
            data = _field(choice, "usage") or data
    if not isinstance(data, dict):
        return None
    try:
        usage = {
            k: int(data.get(k) or 0) for k in ("prompt_tokens", "completion_tokens", "total_tokens")
        }
    except (TypeError, ValueError):
        return None
    if not usage["total_tokens"]:
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
    return usage if usage["total_tokens"] else None


def _no_finish_error(provider: Provider, stream: Any, chunks: int) -> ProviderError:
    content_type = ""
    with contextlib.suppress(Exception):
        content_type = stream.response.headers.get("content-type", "")
    if not chunks and content_type and "event-stream" not in content_type:
        # e.g. an HTML page or a non-streaming JSON body from a wrong base URL or a proxy
        return ProviderError(
            "malformed",
            f"{provider.name} did not answer with a stream (got {content_type.split(';')[0]}). "
            f"Check {provider.env_prefix}_BASE_URL.",
        )
    return ProviderError(
        "incomplete",
        "The answer was cut off by the provider before it finished. Press Retry.",
    )
