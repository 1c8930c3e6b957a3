"""Provider presets, capabilities (vision, reasoning) and streaming from OpenAI-compatible APIs.

Every real provider speaks the chat-completions protocol, so one `AsyncOpenAI` client per
provider does the HTTP. What differs is configuration (base URL, key, models), which models
see images, which stream reasoning, and how each one says "no": this module turns all of
that into a `Provider` record, a stream of small events and `ProviderError`s whose message
is short, user-facing and never contains a key.

Nothing here imports gradio, chat, app or history. `images` is imported lazily, only by
the offline demo provider, with a Pillow fallback.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import email.utils
import hashlib
import importlib
import io
import json
import logging
import math
import os
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import openai
from openai import AsyncOpenAI
from openai import _streaming as openai_streaming  # the SSE decoder (see _TolerantStream)

log = logging.getLogger(__name__)

MAX_RETRIES = 2  # retries after the first attempt, only before the first token
RETRY_BASE_S = 0.5  # backoff 0.5 s, 1 s
MAX_CLIENTS = 64  # cached clients, one per provider plus one per user key (BYOK)
MAX_RETRY_AFTER_S = 10.0  # a longer Retry-After is reported to the user, not waited out
MAX_MODEL_CHARS = 200
MAX_PROVIDER_MESSAGE_CHARS = 200
DEFAULT_DEMO_DELAY_MS = 25.0
DEMO_ID = "demo"
CUSTOM_ID = "custom"
OLLAMA_ID = "ollama"


# --------------------------------------------------------------------------------------
# Presets


@dataclass(frozen=True)
class _Preset:
    id: str
    name: str
    prefix: str  # env prefix: <prefix>_API_KEY, <prefix>_BASE_URL, <prefix>_MODELS
    base_url: str | None
    models: tuple[str, ...]  # the first one is the default model
    vision: str = "patterns"  # "patterns" (name rules), "none" (text-only API) or "all"
    # stream_options.include_usage is sent only where the provider documents it: an
    # unknown field can be a 400 on strict servers, and a 400 is never retried.
    include_usage: bool = False
    needs_key: bool = True  # False: enabled by <prefix>_BASE_URL (ollama, custom)
    placeholder_key: str | None = None  # sent when no key is configured


PRESETS: tuple[_Preset, ...] = (
    _Preset(
        "openai",
        "OpenAI",
        "OPENAI",
        "https://api.openai.com/v1",
        (
            "gpt-4o",
            "gpt-4o-mini",
            "gpt-4.1",
            "gpt-4.1-mini",
            "gpt-4.1-nano",
            "gpt-5",
            "gpt-5-mini",
            "gpt-5-nano",
        ),
        include_usage=True,
    ),
    _Preset(
        "deepseek",
        "DeepSeek",
        "DEEPSEEK",
        "https://api.deepseek.com",
        ("deepseek-chat", "deepseek-reasoner"),
        vision="none",  # an image part is a 400 "unknown variant `image_url`"
        include_usage=True,
    ),
    _Preset(
        "doubao",
        "Doubao (Volcengine Ark)",
        "ARK",
        "https://ark.cn-beijing.volces.com/api/v3",  # /api/v3, not /v1 (a common 404)
        (
            "doubao-seed-1-6-250615",
            "doubao-seed-1-6-flash-250615",
            "doubao-1-5-vision-pro-32k-250115",
            "doubao-1-5-pro-32k-250115",
        ),
        include_usage=True,
    ),
    _Preset(
        "kimi",
        "Kimi (Moonshot)",
        "MOONSHOT",
        "https://api.moonshot.cn/v1",
        (
            "moonshot-v1-8k",
            "moonshot-v1-32k",
            "moonshot-v1-128k",
            "moonshot-v1-8k-vision-preview",
            "moonshot-v1-32k-vision-preview",
            "kimi-k2-0905-preview",
            "kimi-k2-turbo-preview",
        ),
    ),
    _Preset(
        "qwen",
        "Qwen (DashScope)",
        "DASHSCOPE",
        "https://dashscope.aliyuncs.com/compatible-mode/v1",
        ("qwen-plus", "qwen-max", "qwen-turbo", "qwen-vl-max", "qwen-vl-plus", "qwq-plus"),
        include_usage=True,
    ),
    _Preset(
        "zhipu",
        "Zhipu GLM",
        "ZHIPUAI",
        "https://open.bigmodel.cn/api/paas/v4",
        ("glm-4-plus", "glm-4-flash", "glm-4v-plus", "glm-4v", "glm-4v-flash"),
    ),
    _Preset(
        "siliconflow",
        "SiliconFlow",
        "SILICONFLOW",
        "https://api.siliconflow.cn/v1",
        (
            "deepseek-ai/DeepSeek-V3",
            "deepseek-ai/DeepSeek-R1",
            "Qwen/Qwen2.5-72B-Instruct",
            "Qwen/Qwen2.5-VL-72B-Instruct",
        ),
        include_usage=True,
    ),
    _Preset(
        "openrouter",
        "OpenRouter",
        "OPENROUTER",
        "https://openrouter.ai/api/v1",
        (
            "openai/gpt-4o",
            "openai/gpt-4o-mini",
            "anthropic/claude-sonnet-4",
            "google/gemini-2.5-flash",
            "deepseek/deepseek-chat",
            "deepseek/deepseek-r1",
        ),
        include_usage=True,
    ),
    _Preset(
        OLLAMA_ID,
        "Ollama",
        "OLLAMA",
        None,  # no default: enabled only when OLLAMA_BASE_URL is set
        ("llama3.2", "qwen3", "llava", "qwen2.5vl", "gemma3"),
        include_usage=True,  # supported since Ollama 0.5.2
        needs_key=False,
        placeholder_key="ollama",  # the SDK needs some key; Ollama ignores it
    ),
    _Preset(
        CUSTOM_ID,
        "Custom endpoint",
        "CUSTOM",
        None,
        (),
        vision="all",  # unknown server: trust the user unless CUSTOM_VISION_MODELS says less
        needs_key=False,
        placeholder_key="EMPTY",  # the vLLM convention for "no key"
    ),
)

# Vision by model name, so an overridden <P>_MODELS list still gets the eye icon for known
# names. Substring regexes on the lower-cased id (an "org/" prefix or ":tag" is harmless).
VISION_PATTERNS: tuple[str, ...] = (
    r"vision",  # moonshot-v1-8k-vision-preview, doubao-1-5-vision-pro, llama3.2-vision
    r"-vl",  # qwen-vl-max, Qwen2.5-VL-72B-Instruct, qwen3-vl
    r"vl-",
    r"qwen2\.5vl",  # Ollama's tag
    r"internvl",
    r"qvq",
    r"minicpm-v",
    r"pixtral",
    r"glm-4(\.\d+)?v",  # glm-4v, glm-4v-plus, glm-4.5v
    r"gpt-4o",
    r"gpt-4\.1",
    r"gpt-4-turbo",
    r"gpt-5",
    r"(^|/)o3($|-)",
    r"(^|/)o4-mini",
    r"llava",  # llava, bakllava
    r"gemma-?3",
    r"doubao-seed",  # the seed 1.6 family is multimodal
    r"claude",
    r"gemini",
    r"kimi-k2\.5",
)
# Names that match a vision pattern but are not image-reading chat models.
NOT_VISION_PATTERNS: tuple[str, ...] = (
    r"audio",
    r"realtime",
    r"tts",
    r"transcribe",
    r"embed",
    r"gemma-?3:(270m|1b)",  # the smallest Gemma 3 sizes are text-only
)
# Models that stream visible reasoning (`reasoning_content` / `reasoning`). Only a UI hint:
# the stream yields ReasoningDelta for any model that sends those fields.
REASONING_PATTERNS: tuple[str, ...] = (
    r"reasoner",  # deepseek-reasoner
    r"(^|[/\-_])r1($|[\-:_])",  # deepseek-r1, DeepSeek-R1, deepseek-r1:7b, R1 distills
    r"qwq",
    r"qvq",
    r"qwen3",
    r"thinking",  # kimi-k2-thinking, doubao-seed-1-6-thinking, glm-4.1v-thinking
    r"doubao-seed",  # thinks by default
    r"glm-z1",
    r"glm-4\.[5-9]",
    r"gpt-oss",
    r"magistral",
)


def _matches(patterns: tuple[str, ...], model: str) -> bool:
    name = model.strip().lower()
    return any(re.search(pattern, name) for pattern in patterns)


def vision_by_name(model: str) -> bool:
    """True when the model id looks like an image-reading chat model (name rules above)."""
    return _matches(VISION_PATTERNS, model) and not _matches(NOT_VISION_PATTERNS, model)


def reasoning_by_name(model: str) -> bool:
    return _matches(REASONING_PATTERNS, model)


# --------------------------------------------------------------------------------------
# Public records


@dataclass(frozen=True)
class Provider:
    id: str
    name: str
    base_url: str | None
    key_env: str | None
    api_key: str | None = field(repr=False)
    models: tuple[str, ...]
    default_model: str
    enabled: bool
    hint: str
    # Beyond the documented fields: how capabilities are decided and request details.
    env_prefix: str = ""
    vision_mode: str = "patterns"  # "patterns" | "none" | "all" | "listed"
    vision_list: tuple[str, ...] = ()  # <P>_VISION_MODELS, lower-cased (mode "listed")
    include_usage: bool = False
    setup_env: str = ""  # the variable that enables this provider (for messages)
    # True only for a preset's own public address: an operator's URL (an override, Ollama,
    # a custom server) may name an internal host and is never shown to users.
    url_is_public: bool = False

    @property
    def shown_url(self) -> str:
        """The base URL as a user may see it: the public preset address, else ""."""
        return display_url(self.base_url) if self.url_is_public and self.base_url else ""

    def supports_vision(self, model: str) -> bool:
        if self.vision_mode == "all":
            return True
        if self.vision_mode == "none":
            return False
        if self.vision_mode == "listed":
            return model.strip().lower() in self.vision_list
        return vision_by_name(model)

    def supports_reasoning(self, model: str) -> bool:
        if self.id == DEMO_ID:
            return True  # the demo shows a short "thinking" part when asked to think
        return reasoning_by_name(model)

    def public_info(self) -> dict:
        return {
            "id": self.id,
            "name": self.name,
            "enabled": self.enabled,
            "default_model": self.default_model,
            "models": list(self.models),
            "vision_models": [m for m in self.models if self.supports_vision(m)],
            "hint": self.hint,
        }


@dataclass(frozen=True)
class ContentDelta:
    text: str


@dataclass(frozen=True)
class ReasoningDelta:
    text: str


@dataclass(frozen=True)
class Finished:
    reason: str
    usage: dict | None = None  # {"prompt_tokens", "completion_tokens", "total_tokens"}


StreamEvent = ContentDelta | ReasoningDelta | Finished

# Codes where trying the same request again later can succeed (the UI's Retry).
RETRYABLE_CODES = frozenset(
    {"rate_limit", "server", "connection", "timeout", "incomplete", "malformed", "provider_error"}
)


class ProviderError(Exception):
    """A failure with a short user-facing message: `str(exc)` is safe to show."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.retry_after = retry_after
        # Set by the mapping when WE may retry automatically (before the first token).
        self.auto_retry = False

    @property
    def retryable(self) -> bool:
        """Whether pressing Retry later can succeed (not a config or input problem)."""
        return self.code in RETRYABLE_CODES

    def __repr__(self) -> str:
        return f"ProviderError(code={self.code!r}, message={self.message!r}, status={self.status})"


# --------------------------------------------------------------------------------------
# Configuration helpers


def _env(environ: Mapping[str, str], name: str) -> str:
    return (environ.get(name) or "").strip()


def _csv(raw: str) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for item in raw.split(","):
        if item.strip():
            seen.setdefault(item.strip(), None)
    return tuple(seen)


def _valid_url(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


def display_url(url: str | None) -> str:
    """The base URL without userinfo or query, which can carry credentials."""
    if not url:
        return "(no URL)"
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"  # IPv6
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _ollama_url(url: str) -> str:
    # Users often paste Ollama's native root (http://localhost:11434); its OpenAI API is /v1.
    parts = urlsplit(url)
    if parts.path in ("", "/"):
        return url.rstrip("/") + "/v1"
    return url


def _build_provider(preset: _Preset, environ: Mapping[str, str]) -> Provider:
    prefix = preset.prefix
    key = _env(environ, f"{prefix}_API_KEY") or None
    url_override = _env(environ, f"{prefix}_BASE_URL")
    base_url = url_override or preset.base_url
    if base_url and preset.id == OLLAMA_ID:
        base_url = _ollama_url(base_url)
    models = _csv(_env(environ, f"{prefix}_MODELS")) or preset.models
    vision_list = tuple(m.lower() for m in _csv(_env(environ, f"{prefix}_VISION_MODELS")))
    vision_mode = "listed" if vision_list else preset.vision

    setup_env = f"{prefix}_API_KEY" if preset.needs_key else f"{prefix}_BASE_URL"
    configured = bool(key) if preset.needs_key else bool(url_override)
    url_ok = bool(base_url) and _valid_url(base_url)
    enabled = configured and url_ok
    hint = _hint(preset, setup_env, configured, url_ok, models)
    return Provider(
        id=preset.id,
        name=preset.name,
        base_url=base_url,
        key_env=f"{prefix}_API_KEY" if preset.id != OLLAMA_ID else None,
        api_key=key or preset.placeholder_key,
        models=models,
        default_model=models[0] if models else "",
        enabled=enabled,
        hint=hint,
        env_prefix=prefix,
        vision_mode=vision_mode,
        vision_list=vision_list,
        include_usage=preset.include_usage,
        setup_env=setup_env,
        url_is_public=not url_override and preset.id not in (OLLAMA_ID, CUSTOM_ID),
    )


def _hint(
    preset: _Preset, setup_env: str, configured: bool, url_ok: bool, models: tuple[str, ...]
) -> str:
    if configured and not url_ok:
        return f"{preset.prefix}_BASE_URL must be an http(s) URL to enable {preset.name}."
    if not configured and preset.id == OLLAMA_ID:
        return f"Set {setup_env} (e.g. http://localhost:11434/v1) to enable {preset.name}."
    if not configured and preset.id == CUSTOM_ID:
        return f"Set {setup_env} (and CUSTOM_MODELS) to enable any OpenAI-compatible server."
    if not configured:
        return f"Set {setup_env} to enable {preset.name}."
    if not models:
        return f"Set {preset.prefix}_MODELS to list the models (or type a model name)."
    return ""


def _demo_provider() -> Provider:
    return Provider(
        id=DEMO_ID,
        name="Demo (offline)",
        base_url=None,
        key_env=None,
        api_key=None,
        models=(DEMO_ID,),
        default_model=DEMO_ID,
        enabled=True,
        hint="Offline replies built from your input: no AI model is called.",
        vision_mode="all",
    )


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
        self.warnings: list[str] = []  # configuration problems worth one log line at startup
        self._providers: dict[str, Provider] = {
            preset.id: _build_provider(preset, env) for preset in PRESETS
        }
        self._providers[DEMO_ID] = _demo_provider()
        self._default_id = self._pick_default(_env(env, "DEFAULT_PROVIDER").lower())
        self._demo_delay_s = self._demo_delay(_env(env, "DEMO_DELAY_MS"))
        self._clients: dict[str, AsyncOpenAI] = {}
        # Only real keys from the environment (not placeholders like "ollama") are redacted.
        self._secrets = tuple(
            key for preset in PRESETS if (key := _env(env, f"{preset.prefix}_API_KEY"))
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
                return chosen.id
            reason = "unknown" if chosen is None else f"not configured ({chosen.hint})"
            self.warnings.append(f"DEFAULT_PROVIDER={wanted!r} is {reason}; ignoring it.")
        for provider in self._providers.values():
            if provider.enabled and provider.id != DEMO_ID:
                return provider.id
        return DEMO_ID

    def _demo_delay(self, raw: str) -> float:
        if not raw:
            return DEFAULT_DEMO_DELAY_MS / 1000
        try:
            return max(0.0, float(raw)) / 1000
        except ValueError:
            self.warnings.append(f"DEMO_DELAY_MS must be a number, got {raw!r}; using default.")
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
            raise ProviderError("disabled", _disabled_message(provider))
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
            raise ProviderError("disabled", _disabled_message(provider))
        cache_key = provider.id
        if api_key:
            digest = hashlib.sha256(api_key.encode()).hexdigest()[:16]
            cache_key = f"{provider.id}:{digest}"
            while len(self._clients) >= MAX_CLIENTS:  # oldest user client goes first
                self._clients.pop(next(k for k in self._clients if ":" in k))
        client = self._clients.get(cache_key)
        if client is None:
            client = AsyncOpenAI(
                api_key=provider.api_key or "EMPTY",
                base_url=provider.base_url,
                # Read timeout = longest silence allowed mid-stream; connect fails fast.
                timeout=httpx.Timeout(self.timeout_s, connect=self.connect_timeout_s),
                # WE retry: the SDK would also retry 429 insufficient_quota and mid-answer.
                max_retries=0,
                http_client=_http_client(),
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
    ) -> AsyncIterator[StreamEvent]:
        """Stream one answer as ContentDelta / ReasoningDelta events, then one Finished.

        Raises ProviderError. Closing the generator (aclose, task cancel) closes the
        upstream HTTP response at once, so the provider stops generating. `api_key` is a
        user's own key (never stored, never logged, redacted from error messages).
        """
        provider, model = self.resolve(provider_id, model, api_key=api_key)
        if provider.id == DEMO_ID:
            events = _demo_events(messages, self._demo_delay_s)
        else:
            params = self._params(provider, model, messages, temperature, max_tokens, top_p)
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
    ) -> dict[str, Any]:
        params: dict[str, Any] = {"model": model, "messages": messages, "stream": True}
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
    ) -> AsyncIterator[StreamEvent]:
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
    ) -> AsyncIterator[StreamEvent]:
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
        err = _map_exception(
            provider, model, exc, mid_stream=mid_stream, timeout_s=self.timeout_s, secrets=secrets
        )
        err.message = _redact(err.message, secrets)
        err.args = (err.message,)
        return err


def _http_client() -> Any:
    """The SDK's own HTTP client, keeping idle connections 30 s instead of its 5 s: someone
    who reads an answer for half a minute would otherwise pay a new TCP + TLS handshake to
    the provider with every message (2-3 round trips). A connection the server closed
    meanwhile is noticed before reuse; one closed just as it is reused fails before any text
    and is retried like any connection error."""
    client_class = openai.DefaultAsyncHttpxClient
    http = importlib.import_module(client_class.__mro__[1].__module__.split(".")[0])
    limits = http.Limits(max_connections=1000, max_keepalive_connections=100, keepalive_expiry=30)
    return client_class(limits=limits)


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
        reason = _field(choice, "finish_reason")
        if isinstance(reason, str) and reason:
            events.append(Finished(reason))
    return events


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


# --------------------------------------------------------------------------------------
# Error mapping (pure functions, unit-testable)

_QUOTA_WORDS = (
    "insufficient_quota",
    "exceeded your current quota",
    "insufficient balance",
    "insufficient_balance",
    "insufficient credit",
    "credits",
    "arrear",
    "欠费",
    "余额不足",
    "billing",
    "payment required",
    "top up",
)
_CONTEXT_WORDS = (
    "context_length",
    "context length",
    "maximum context",
    "context window",
    "too many tokens",
    "token limit",
    "prompt is too long",
    "input length",
    "too long",
    "超长",
    "上下文长度",
)
_IMAGE_WORDS = ("image", "vision", "multimodal", "图片", "图像")
_MODEL_MISSING_WORDS = (
    "model_not_found",
    "model not found",
    "model not exist",
    "model does not exist",
    "no such model",
    "invalid model",
    "unknown model",
    "模型不存在",
    "invalidendpointormodel",
)
_AUTH_WORDS = (
    "invalid_api_key",
    "invalid api key",
    "incorrect api key",
    "unauthorized",
    "authentication",
)
# Zhipu business codes (docs.bigmodel.cn/cn/api/api-code).
_ZHIPU_CODES = {
    **dict.fromkeys(("1000", "1001", "1002", "1003", "1004"), "auth"),
    **dict.fromkeys(
        ("1110", "1111", "1112", "1113", "1121", "1304", "1308", "1309", "1310"), "quota"
    ),
    "1211": "model_not_found",
    "1261": "context_length",
    **dict.fromkeys(("1302", "1303", "1305", "1312"), "rate_limit"),
}


@dataclass(frozen=True)
class _ErrorInfo:
    code: str  # provider's own code/type, lower-cased ("insufficient_quota", "1113", ...)
    message: str  # provider's own message, cleaned up


def error_info(body: object, fallback: str = "", secrets: tuple[str, ...] = ()) -> _ErrorInfo:
    """Code and message from the error shapes seen in the wild.

    OpenAI `{"error": {"message","type","code"}}` (the SDK hands us the inner object),
    Zhipu `{"code": "1210", "message"}` / `{"code", "msg"}`, LM Studio `{"error": "text"}`
    (inner: a string), OpenRouter "Provider returned error" with `metadata.raw`.
    """
    if isinstance(body, Mapping) and isinstance(body.get("error"), Mapping | str):
        body = body["error"]
    if isinstance(body, str):
        return _ErrorInfo("", _clean_text(body, secrets))
    if not isinstance(body, Mapping):
        return _ErrorInfo("", _clean_text(fallback, secrets))
    codes = [str(body.get(k)) for k in ("code", "type", "error_code") if body.get(k) is not None]
    message = str(body.get("message") or body.get("msg") or body.get("error_msg") or "")
    raw = (
        (body.get("metadata") or {}).get("raw")
        if isinstance(body.get("metadata"), Mapping)
        else None
    )
    if raw:  # OpenRouter: the real provider's error, often JSON in a string
        inner = _parse_json(raw) if isinstance(raw, str) else raw
        inner_info = (
            error_info(inner, str(raw), secrets)
            if inner is not None
            else _ErrorInfo("", _clean_text(str(raw), secrets))
        )
        codes.append(inner_info.code)
        message = inner_info.message or message
    code = _redact(" ".join(c for c in codes if c).lower(), secrets)
    return _ErrorInfo(code, _clean_text(message or fallback, secrets))


def _parse_json(raw: str) -> object | None:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _clean_text(text: str, secrets: tuple[str, ...] = ()) -> str:
    text = re.sub(r"<[^>]+>", " ", text)  # an HTML error page says little; keep its words
    # Redacted before it is cut: a key cut in half would no longer match and half of it
    # would be shown (and stored with the failed answer).
    text = _redact(" ".join(text.split()), secrets)
    # A provider's own words may name where it runs (a proxy's internal URL): not shown.
    text = _URL_LIKE.sub("(a URL)", text)
    if len(text) > MAX_PROVIDER_MESSAGE_CHARS:
        text = text[: MAX_PROVIDER_MESSAGE_CHARS - 1].rstrip() + "…"
    return text


_KEY_LIKE = re.compile(r"\b((?:sk|ak|pk|rk)-[A-Za-z0-9]{0,8})[A-Za-z0-9_\-]{8,}")
# Keys without a known prefix (Ark's are UUIDs, Zhipu's "id.secret", Bearer tokens): any long
# run of letters, digits and - _ . that mixes letters and digits, and bearer credentials.
_TOKEN_LIKE = re.compile(r"(?<![\w.-])(?=[\w.-]*\d)(?=[\w.-]*[A-Za-z])[\w.-]{32,}")
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[\w.~+/=-]{8,}")
# Addresses that say where the server's own services live (an internal host, a port).
_URL_LIKE = re.compile(r"(?i)\b(?:https?|wss?|redis|rediss)://[^\s'\"<>)]+")


def _redact(text: str, secrets: tuple[str, ...]) -> str:
    # Longest first, so a key that contains another is replaced whole.
    for secret in sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True):
        text = text.replace(secret, "***")
    text = _BEARER.sub(r"\1 ***", text)
    text = _KEY_LIKE.sub(r"\1***", text)
    return _TOKEN_LIKE.sub("***", text)


def parse_retry_after(headers: Mapping[str, str] | None, now: float | None = None) -> float | None:
    """Seconds to wait from Retry-After-Ms / Retry-After (seconds or an HTTP date)."""
    if not headers:
        return None
    lowered = {k.lower(): v for k, v in headers.items()}
    with contextlib.suppress(TypeError, ValueError):
        if lowered.get("retry-after-ms"):
            return max(0.0, float(lowered["retry-after-ms"]) / 1000)
    raw = (lowered.get("retry-after") or "").strip()
    if not raw:
        return None
    with contextlib.suppress(ValueError):
        return max(0.0, float(raw))
    with contextlib.suppress(TypeError, ValueError, IndexError, OverflowError):
        when = email.utils.parsedate_to_datetime(raw).timestamp()
        return max(0.0, when - (time.time() if now is None else now))
    return None


def _map_exception(
    provider: Provider,
    model: str,
    exc: openai.APIError,
    *,
    mid_stream: bool,
    timeout_s: float,
    secrets: tuple[str, ...] = (),
) -> ProviderError:
    name, prefix = provider.name, provider.env_prefix
    # Users see the public preset address; an operator's own URL stays in the log.
    where = f" at {provider.shown_url}" if provider.shown_url else ""
    if not provider.shown_url and not mid_stream and isinstance(exc, openai.APIConnectionError):
        log.warning("%s unreachable at %s: %s", name, display_url(provider.base_url), exc)
    if isinstance(exc, openai.APITimeoutError):
        if type(exc.__cause__).__name__ in ("ConnectTimeout", "PoolTimeout"):
            # Checked by class name: the SDK wraps its own HTTP library's exception types.
            err = ProviderError(
                "timeout",
                f"Cannot reach {name}{where}: the connection timed out. "
                f"Check the network or {prefix}_BASE_URL.",
            )
            err.auto_retry = True
            return err
        return ProviderError(
            "timeout", f"{name} stopped responding (no data for {timeout_s:g} s). Try again."
        )
    if isinstance(exc, openai.APIConnectionError):
        if mid_stream:
            err = ProviderError(
                "connection",
                f"The connection to {name} broke before the answer finished. Press Retry.",
            )
        else:
            err = ProviderError(
                "connection",
                f"Cannot reach {name}{where}. Check the network or {prefix}_BASE_URL.",
            )
        err.auto_retry = True
        return err
    if isinstance(exc, openai.APIStatusError):
        headers = dict(exc.response.headers) if exc.response is not None else {}
        info = error_info(exc.body, exc.message, secrets)
        return map_status(provider, model, exc.status_code, info, parse_retry_after(headers))
    # A `data: {"error": ...}` chunk: the SDK raises a bare APIError.
    return _map_stream_error(provider, model, error_info(exc.body, exc.message, secrets))


def _map_stream_error(provider: Provider, model: str, info: _ErrorInfo) -> ProviderError:
    kind = _classify_text(info)
    if kind in ("quota", "context_length", "auth", "image_rejected"):
        return _status_error(provider, model, kind, None, info, None)
    detail = f": {info.message}" if info.message else ""
    return ProviderError(
        "provider_error", f"{provider.name} reported an error mid-answer{detail}. Press Retry."
    )


def _classify_text(info: _ErrorInfo) -> str:
    """Best guess from the provider's own code and words; "" when nothing specific."""
    text = f"{info.code} {info.message}".lower()
    for code in info.code.split():
        if code in _ZHIPU_CODES:
            return _ZHIPU_CODES[code]
    if "context_length_exceeded" in text:
        return "context_length"
    if any(word in text for word in _QUOTA_WORDS):
        return "quota"
    if any(word in text for word in _IMAGE_WORDS):
        return "image_rejected"
    if any(word in text for word in _MODEL_MISSING_WORDS):
        return "model_not_found"
    if any(word in text for word in _CONTEXT_WORDS):
        return "context_length"
    if any(word in text for word in _AUTH_WORDS):
        return "auth"
    return ""


def map_status(
    provider: Provider,
    model: str,
    status: int,
    info: _ErrorInfo,
    retry_after: float | None = None,
) -> ProviderError:
    """An HTTP error status plus the provider's code/message -> ProviderError."""
    kind = _classify_text(info)
    if status in (401, 403):
        code = "quota" if kind == "quota" else "auth"
    elif status == 402:
        code = "quota"
    elif status == 429:
        code = "quota" if kind == "quota" else "rate_limit"
    elif status == 404:
        code = "model_not_found"
    elif status in (400, 413, 422):
        code = (
            kind
            if kind in ("context_length", "image_rejected", "model_not_found", "quota", "auth")
            else "bad_request"
        )
    elif status == 408 or status >= 500:
        code = "server" if kind not in ("quota", "rate_limit") else kind
    else:
        code = kind if kind in ("quota", "rate_limit", "auth") else "bad_request"
    return _status_error(provider, model, code, status, info, retry_after)


def _status_error(
    provider: Provider,
    model: str,
    code: str,
    status: int | None,
    info: _ErrorInfo,
    retry_after: float | None,
) -> ProviderError:
    name, prefix = provider.name, provider.env_prefix
    shown = f" ({status})" if status else ""
    wait = f"wait {math.ceil(retry_after)} s" if retry_after else "wait a moment"
    if code == "auth":
        check = f"Check {provider.key_env}." if provider.key_env else "Check the server's setup."
        message = f"{name} rejected the API key{shown}. {check}"
    elif code == "quota":
        message = f"Your {name} account has no credit left{shown}; top up or switch provider."
    elif code == "rate_limit":
        message = f"{name} is rate-limiting requests{shown}; {wait} and try again."
    elif code == "server":
        message = f"{name} is having trouble{shown}. Try again in a moment or switch provider."
        if retry_after and retry_after > MAX_RETRY_AFTER_S:
            message = f"{name} is having trouble{shown}; {wait} and try again."
    elif code == "context_length":
        message = (
            f"The conversation is too long for {model}. Start a new chat or undo some messages."
        )
    elif code == "image_rejected":
        message = f"{model} could not read the image(s). Remove the image or pick a vision model."
    elif code == "model_not_found":
        message = f"Model {model} is not available at {name}. Pick another model"
        if status == 404 and "model" not in f"{info.code} {info.message}".lower():
            message += f" or check {prefix}_BASE_URL"  # a wrong path also gives a bare 404
        message += "."
    else:
        detail = f": {info.message}" if info.message else "."
        message = f"{name} refused the request{shown}{detail}"
    err = ProviderError(code, message, status=status, retry_after=retry_after)
    # Only what can succeed is retried, and never a wait longer than MAX_RETRY_AFTER_S.
    err.auto_retry = code in ("rate_limit", "server") and (
        retry_after is None or retry_after <= MAX_RETRY_AFTER_S
    )
    return err


def _disabled_message(provider: Provider) -> str:
    if provider.hint and "must be" in provider.hint:
        return f"{provider.name} is not configured: {provider.hint}"
    return f"{provider.name} is not configured: set {provider.setup_env}."


# --------------------------------------------------------------------------------------
# The offline demo provider

_DEMO_SAMPLE = """

Here is a sample so you can see how answers render:

| Item | Value |
|---|---|
| **bold** | `inline code` |
| formula | $E = mc^2$ |

```python
def greet(name: str) -> str:
    return f"Hello, {name}!"
```

$$\\int_0^1 x^2\\,dx = \\frac{1}{3}$$
"""
_SAMPLE_TRIGGER = re.compile(r"\b(markdown|code|latex|math|formula|table)\b|代码|公式|表格", re.I)
_THINK_TRIGGER = re.compile(r"\b(think|thinking|reason|reasoning)\b|思考|推理", re.I)


async def _demo_events(messages: list[dict], delay_s: float) -> AsyncIterator[StreamEvent]:
    text, images = _last_user_message(messages)
    if _THINK_TRIGGER.search(text):
        thought = "The user asked me to think. In demo mode there is no model, so I only echo."
        for piece in _pieces(thought):
            yield ReasoningDelta(piece)
            await asyncio.sleep(delay_s)
    # describe_image can take a few ms per image: keep the event loop free.
    reply = await asyncio.to_thread(demo_reply, messages, text, images)
    for piece in _pieces(reply):
        yield ContentDelta(piece)
        await asyncio.sleep(delay_s)  # also a cancellation point, so Stop works
    yield Finished("stop")


def _pieces(text: str) -> list[str]:
    # Word by word; CJK text has no spaces, so long runs are cut every few characters.
    return re.findall(r"\s*\S{1,6}|\s+", text)


def _last_user_message(messages: list[dict]) -> tuple[str, list[str]]:
    for message in reversed(messages):
        if isinstance(message, Mapping) and message.get("role") == "user":
            return _parts(message.get("content"))
    return "", []


def _parts(content: object) -> tuple[str, list[str]]:
    if isinstance(content, str):
        return content, []
    texts: list[str] = []
    images: list[str] = []
    for part in content if isinstance(content, list) else ():
        if not isinstance(part, Mapping):
            continue
        if part.get("type") == "text":
            texts.append(str(part.get("text") or ""))
        elif part.get("type") == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, Mapping) else image
            images.append(str(url or ""))
    return "\n".join(texts), images


def demo_reply(messages: list[dict], text: str, images: list[str]) -> str:
    """The demo's answer: a plainly labelled echo of the input."""
    lines = [
        "**Demo mode** — offline replies, no AI model is called. To chat with a real model, "
        "set e.g. `OPENAI_API_KEY` or `DEEPSEEK_API_KEY` (see README).",
        "",
    ]
    said = " ".join(text.split())
    if len(said) > 300:
        said = said[:299] + "…"
    lines.append(f"You said: “{said}”." if said else "You sent no text.")
    role = _system_first_line(messages)
    if role:
        lines.append(f"Role: {role}")
    for number, url in enumerate(images, 1):
        lines.append(f"- Image {number}: {describe_data_url(url)}")
    reply = "\n".join(lines)
    if _SAMPLE_TRIGGER.search(text):
        reply += _DEMO_SAMPLE
    return reply


def _system_first_line(messages: list[dict]) -> str:
    for message in messages:
        if isinstance(message, Mapping) and message.get("role") == "system":
            text, _ = _parts(message.get("content"))
            first = text.strip().splitlines()[0] if text.strip() else ""
            return first if len(first) <= 120 else first[:119] + "…"
    return ""


def describe_data_url(url: str) -> str:
    """'800×600 JPEG, mostly blue and white' for a data URL; never raises."""
    match = re.match(r"data:([^;,]*)(;base64)?,(.*)", url, re.S)
    if not match:
        return "a link (not downloaded in demo mode)"
    try:
        raw = base64.b64decode(match.group(3), validate=False)
        info = _describe_bytes(raw)
    except (binascii.Error, ValueError, OSError):
        return "could not be read"
    except Exception:  # images.py or Pillow failing on a strange file must not break the demo
        log.debug("demo: image description failed", exc_info=True)
        return "could not be read"
    described = f"{info.get('width')}×{info.get('height')} {info.get('format') or 'image'}"
    named = _colour_names(info.get("colours"))[:2]
    return f"{described}, mostly {' and '.join(named)}" if named else described


def _describe_bytes(raw: bytes) -> dict:
    try:
        import images  # lazy: written by another module owner; the demo must work without it

        describe = images.describe_image
    except (ImportError, AttributeError):
        describe = _describe_with_pillow
    return describe(raw)


_PALETTE = {
    "black": (0, 0, 0),
    "white": (255, 255, 255),
    "grey": (128, 128, 128),
    "red": (220, 30, 30),
    "orange": (245, 140, 20),
    "yellow": (240, 220, 40),
    "green": (40, 160, 60),
    "cyan": (40, 200, 220),
    "blue": (30, 70, 220),
    "purple": (130, 50, 170),
    "pink": (240, 130, 180),
    "brown": (120, 75, 35),
}


def _describe_with_pillow(raw: bytes) -> dict:
    from PIL import Image

    with Image.open(io.BytesIO(raw)) as img:
        width, height, fmt, mode = img.width, img.height, img.format, img.mode
        small = img.convert("RGB").resize((24, 24))
        data = small.tobytes()
    pixels = [tuple(data[i : i + 3]) for i in range(0, len(data), 3)]
    counts = Counter(_nearest_colour(p) for p in pixels)
    colours = [name for name, n in counts.most_common(2) if n >= len(pixels) * 0.15]
    return {"width": width, "height": height, "format": fmt, "mode": mode, "colours": colours}


def _colour_names(colours: object) -> list[str]:
    """Names for whatever shape images.describe_image uses: names, (r, g, b) or "#rrggbb"."""
    if isinstance(colours, str) or (
        isinstance(colours, tuple)
        and len(colours) == 3
        and all(isinstance(v, int) for v in colours)
    ):
        colours = [colours]
    names: list[str] = []
    for colour in colours if isinstance(colours, list | tuple) else ():
        if isinstance(colour, list | tuple) and len(colour) >= 3:
            names.append(_nearest_colour(tuple(int(v) for v in colour[:3])))
        elif isinstance(colour, str) and re.fullmatch(r"#[0-9a-fA-F]{6}", colour):
            names.append(_nearest_colour(tuple(int(colour[i : i + 2], 16) for i in (1, 3, 5))))
        elif isinstance(colour, str) and colour:
            names.append(colour)
    return names


def _nearest_colour(rgb: tuple[int, int, int]) -> str:
    return min(
        _PALETTE,
        key=lambda name: sum((a - b) ** 2 for a, b in zip(rgb, _PALETTE[name], strict=True)),
    )
