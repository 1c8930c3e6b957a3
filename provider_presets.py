"""Provider presets and the records the registry hands out.

A `Preset` is what the app knows about a provider (its name, env prefix, public base URL,
request quirks); its models and what they can do are data in model_facts.py. `build_provider`
resolves a preset against the environment into a `Provider`; the stream events are what
`Providers.stream` yields.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from model_facts import facts_for, preset_models

DEMO_ID = "demo"
CUSTOM_ID = "custom"
OLLAMA_ID = "ollama"


# --------------------------------------------------------------------------------------
# Presets


@dataclass(frozen=True)
class Preset:
    id: str
    name: str
    prefix: str  # env prefix: <prefix>_API_KEY, <prefix>_BASE_URL, <prefix>_MODELS
    base_url: str | None
    # stream_options.include_usage is sent only where the provider documents it: an
    # unknown field can be a 400 on strict servers, and a 400 is never retried.
    include_usage: bool = False
    needs_key: bool = True  # False: enabled by <prefix>_BASE_URL (ollama, custom)
    placeholder_key: str | None = None  # sent when no key is configured

    @property
    def models(self) -> tuple[str, ...]:
        """The preset's models from the model table, the default first."""
        return preset_models(self.id)


PRESETS: tuple[Preset, ...] = (
    Preset("openai", "OpenAI", "OPENAI", "https://api.openai.com/v1", include_usage=True),
    Preset("deepseek", "DeepSeek", "DEEPSEEK", "https://api.deepseek.com", include_usage=True),
    Preset(
        "doubao",
        "Doubao (Volcengine Ark)",
        "ARK",
        "https://ark.cn-beijing.volces.com/api/v3",  # /api/v3, not /v1 (a common 404)
        include_usage=True,
    ),
    Preset("kimi", "Kimi (Moonshot)", "MOONSHOT", "https://api.moonshot.cn/v1"),
    Preset(
        "qwen",
        "Qwen (DashScope)",
        "DASHSCOPE",
        "https://dashscope.aliyuncs.com/compatible-mode/v1",
        include_usage=True,
    ),
    Preset("zhipu", "Zhipu GLM", "ZHIPUAI", "https://open.bigmodel.cn/api/paas/v4"),
    Preset(
        "siliconflow",
        "SiliconFlow",
        "SILICONFLOW",
        "https://api.siliconflow.cn/v1",
        include_usage=True,
    ),
    Preset(
        "openrouter", "OpenRouter", "OPENROUTER", "https://openrouter.ai/api/v1", include_usage=True
    ),
    Preset(
        OLLAMA_ID,
        "Ollama",
        "OLLAMA",
        None,  # no default: enabled only when OLLAMA_BASE_URL is set
        include_usage=True,  # supported since Ollama 0.5.2
        needs_key=False,
        placeholder_key="ollama",  # the SDK needs some key; Ollama ignores it
    ),
    Preset(
        CUSTOM_ID,
        "Custom endpoint",
        "CUSTOM",
        None,
        needs_key=False,
        placeholder_key="EMPTY",  # the vLLM convention for "no key"
    ),
)


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
    vision_mode: str = "facts"  # "facts" (model_facts.py) | "listed" (<P>_VISION_MODELS)
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
        if self.vision_mode == "listed":
            return model.strip().lower() in self.vision_list
        return facts_for(self.id, model).vision

    def supports_reasoning(self, model: str) -> bool:
        return facts_for(self.id, model).reasoning

    def supports_tools(self, model: str) -> bool:
        return facts_for(self.id, model).tools

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


@dataclass(frozen=True)
class ToolCallDelta:
    """One streamed piece of a tool call (OpenAI's `delta.tool_calls[i]`). The first piece
    of a call usually carries `id` and `name`, later ones only `arguments` fragments (JSON
    text cut anywhere); several calls interleave by `index`. tool_calls.ToolCallCollector
    puts the pieces back together."""

    index: int
    id: str | None
    name: str | None
    arguments: str = ""


StreamEvent = ContentDelta | ReasoningDelta | ToolCallDelta | Finished

# --------------------------------------------------------------------------------------
# Configuration helpers


def env_value(environ: Mapping[str, str], name: str) -> str:
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


def build_provider(preset: Preset, environ: Mapping[str, str]) -> Provider:
    prefix = preset.prefix
    key = env_value(environ, f"{prefix}_API_KEY") or None
    url_override = env_value(environ, f"{prefix}_BASE_URL")
    base_url = url_override or preset.base_url
    if base_url and preset.id == OLLAMA_ID:
        base_url = _ollama_url(base_url)
    models = _csv(env_value(environ, f"{prefix}_MODELS")) or preset.models
    vision_list = tuple(m.lower() for m in _csv(env_value(environ, f"{prefix}_VISION_MODELS")))
    vision_mode = "listed" if vision_list else "facts"

    setup_env = f"{prefix}_API_KEY" if preset.needs_key else f"{prefix}_BASE_URL"
    configured = bool(key) if preset.needs_key else bool(url_override)
    url_ok = bool(base_url) and _valid_url(base_url or "")
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
    preset: Preset, setup_env: str, configured: bool, url_ok: bool, models: tuple[str, ...]
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


def demo_provider_record() -> Provider:
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
    )
