"""providers.py against a real HTTP fake upstream (no SDK mocks): presets, env overrides,
capabilities, streaming, the failure matrix, cancellation, key hygiene, the demo."""

from __future__ import annotations

import asyncio
import base64
import email.utils
import io
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

import demo_provider
import provider_errors
import providers as providers_module
from model_facts import reasoning_by_name, vision_by_name
from provider_errors import error_info, map_status, parse_retry_after
from providers import (
    ContentDelta,
    Finished,
    Provider,
    ProviderError,
    Providers,
    ReasoningDelta,
)
from tests.conftest import app_env
from tests.fake_upstream import (
    Exchange,
    FakeUpstream,
    cut,
    drop_connection,
    error,
    free_port,
    malformed,
    mid_error,
    reply,
    slow,
    stall,
    unaccepted_port,
)

ALL_IDS = [
    "openai", "deepseek", "doubao", "kimi", "qwen", "zhipu", "siliconflow", "openrouter",
    "ollama", "custom", "demo",
]  # fmt: skip
KEY = "sk-test-PLANTED-123"
USER = [{"role": "user", "content": "hello there"}]


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch):
    """Backoff between retries is 0.5 s doubling in production; tests only count attempts."""
    monkeypatch.setattr(providers_module, "RETRY_BASE_S", 0.01)


@pytest.fixture
def upstream():
    with FakeUpstream() as server:
        yield server


def openai_env(upstream: FakeUpstream, **extra: str) -> dict[str, str]:
    return app_env(upstream, **{"OPENAI_API_KEY": KEY, "DEFAULT_PROVIDER": None, **extra})


async def collect(
    registry: Providers, provider_id: str = "openai", model: str = "gpt-4o", messages=None, **kw
) -> list:
    return [e async for e in registry.stream(provider_id, model, messages or USER, **kw)]


async def failure(registry: Providers, provider_id: str = "openai", model: str = "gpt-4o"):
    """Stream, expecting a ProviderError; returns (error, events seen before it)."""
    seen: list = []
    with pytest.raises(ProviderError) as info:
        async for event in registry.stream(provider_id, model, USER):
            seen.append(event)
    return info.value, seen


def text_of(events: list, kind=ContentDelta) -> str:
    return "".join(e.text for e in events if isinstance(e, kind))


# --------------------------------------------------------------------------------------
# Presets and configuration


def test_all_ids_in_preset_order_demo_last():
    registry = Providers({})
    assert [p.id for p in registry.all()] == ALL_IDS


@pytest.mark.parametrize(
    ("pid", "base_url", "key_env", "default_model"),
    [
        ("openai", "https://api.openai.com/v1", "OPENAI_API_KEY", "gpt-4o"),
        ("deepseek", "https://api.deepseek.com", "DEEPSEEK_API_KEY", "deepseek-chat"),
        ("doubao", "https://ark.cn-beijing.volces.com/api/v3", "ARK_API_KEY",
         "doubao-seed-1-6-250615"),
        ("kimi", "https://api.moonshot.cn/v1", "MOONSHOT_API_KEY", "moonshot-v1-8k"),
        ("qwen", "https://dashscope.aliyuncs.com/compatible-mode/v1", "DASHSCOPE_API_KEY",
         "qwen-plus"),
        ("zhipu", "https://open.bigmodel.cn/api/paas/v4", "ZHIPUAI_API_KEY", "glm-4-plus"),
        ("siliconflow", "https://api.siliconflow.cn/v1", "SILICONFLOW_API_KEY",
         "deepseek-ai/DeepSeek-V3"),
        ("openrouter", "https://openrouter.ai/api/v1", "OPENROUTER_API_KEY", "openai/gpt-4o"),
    ],
)  # fmt: skip
def test_key_presets(pid, base_url, key_env, default_model):
    off = Providers({}).get(pid)
    assert (off.base_url, off.key_env, off.default_model) == (base_url, key_env, default_model)
    assert not off.enabled
    assert off.hint == f"Set {key_env} to enable {off.name}."
    on = Providers({key_env: "k-123"}).get(pid)
    assert on.enabled and on.hint == "" and on.default_model in on.models


def test_nothing_configured_means_demo_only():
    registry = Providers({})
    assert [p.id for p in registry.enabled()] == ["demo"]
    assert registry.default_id == "demo"
    assert registry.resolve() == (registry.get("demo"), "demo")
    assert "OLLAMA_BASE_URL" in registry.get("ollama").hint
    assert "CUSTOM_BASE_URL" in registry.get("custom").hint


def test_default_is_first_enabled_real_provider_in_preset_order():
    registry = Providers({"QWEN_X": "", "DASHSCOPE_API_KEY": "k1", "DEEPSEEK_API_KEY": "k2"})
    assert registry.default_id == "deepseek"
    assert [p.id for p in registry.enabled()] == ["deepseek", "qwen", "demo"]


def test_default_provider_env_wins_when_enabled():
    env = {"DEEPSEEK_API_KEY": "k", "DASHSCOPE_API_KEY": "k", "DEFAULT_PROVIDER": " Qwen "}
    assert Providers(env).default_id == "qwen"
    assert Providers({**env, "DEFAULT_PROVIDER": "demo"}).default_id == "demo"


@pytest.mark.parametrize("wanted", ["openai", "nonsense"])
def test_default_provider_not_usable_falls_back(wanted):
    # The startup warning for it: tests/test_startup_warnings.py.
    registry = Providers({"DEEPSEEK_API_KEY": "k", "DEFAULT_PROVIDER": wanted})
    assert registry.default_id == "deepseek"


def test_base_url_and_models_overrides():
    registry = Providers(
        {
            "DEEPSEEK_API_KEY": "k",
            "DEEPSEEK_BASE_URL": "http://127.0.0.1:9/v1",
            "DEEPSEEK_MODELS": " deepseek-reasoner , deepseek-chat,,deepseek-chat",
            "OPENAI_API_KEY": "k",
            "OPENAI_MODELS": "gpt-4o-mini,my-finetune,o3",
        }
    )
    deepseek = registry.get("deepseek")
    assert deepseek.base_url == "http://127.0.0.1:9/v1"
    assert deepseek.models == ("deepseek-reasoner", "deepseek-chat")
    assert deepseek.default_model == "deepseek-reasoner"  # first listed = default
    openai = registry.get("openai")
    # vision still detected by name on an overridden list
    assert openai.public_info()["vision_models"] == ["gpt-4o-mini", "o3"]


def test_vision_models_env_overrides_detection():
    registry = Providers({"ARK_API_KEY": "k", "ARK_VISION_MODELS": "ep-2025-abc"})
    doubao = registry.get("doubao")
    assert doubao.supports_vision("EP-2025-abc")
    assert not doubao.supports_vision("doubao-seed-1-6-250615")  # the list is the whole truth


def test_ollama_enabled_by_base_url_and_gets_v1():
    registry = Providers({"OLLAMA_BASE_URL": "http://localhost:11434"})
    ollama = registry.get("ollama")
    assert ollama.enabled and ollama.base_url == "http://localhost:11434/v1"
    assert ollama.key_env is None and ollama.default_model == "llama3.2"
    assert ollama.public_info()["vision_models"] == ["llava", "qwen2.5vl", "gemma3"]
    assert registry.default_id == "ollama"


def test_custom_provider_models_and_vision():
    env = {"CUSTOM_BASE_URL": "http://127.0.0.1:1/v1", "CUSTOM_MODELS": "a,b"}
    custom = Providers(env).get("custom")
    assert custom.enabled and custom.models == ("a", "b") and custom.default_model == "a"
    assert custom.supports_vision("a") and custom.supports_vision("anything")  # default: all
    listed = Providers({**env, "CUSTOM_VISION_MODELS": "b"}).get("custom")
    assert not listed.supports_vision("a") and listed.supports_vision("b")


def test_custom_without_models_asks_for_a_model():
    registry = Providers({"CUSTOM_BASE_URL": "http://127.0.0.1:1/v1"})
    custom = registry.get("custom")
    assert custom.enabled and custom.models == () and "CUSTOM_MODELS" in custom.hint
    with pytest.raises(ProviderError) as info:
        registry.resolve("custom", "")
    assert info.value.code == "unknown_model" and "CUSTOM_MODELS" in str(info.value)
    assert registry.resolve("custom", "typed-model")[1] == "typed-model"


@pytest.mark.parametrize("url", ["localhost:11434", "ftp://x/v1", "http://"])
def test_invalid_base_url_disables_with_hint(url):
    registry = Providers({"OLLAMA_BASE_URL": url})
    ollama = registry.get("ollama")
    assert not ollama.enabled and "OLLAMA_BASE_URL must be an http(s) URL" in ollama.hint
    with pytest.raises(ProviderError) as info:
        registry.resolve("ollama")
    assert info.value.code == "disabled"


VISION = [
    "gpt-4o", "gpt-4o-mini", "gpt-4.1-mini", "gpt-5", "gpt-5-nano", "o3", "o4-mini",
    "openai/gpt-4o", "anthropic/claude-sonnet-4", "google/gemini-2.5-flash",
    "doubao-seed-1-6-250615", "doubao-1-5-vision-pro-32k-250115",
    "moonshot-v1-8k-vision-preview", "kimi-k2.5", "qwen-vl-max", "qwen-vl-plus",
    "Qwen/Qwen2.5-VL-72B-Instruct", "glm-4v", "glm-4v-plus", "glm-4v-flash", "glm-4.5v",
    "llava", "llava:13b", "qwen2.5vl:7b", "qwen3-vl", "gemma3", "gemma3:4b",
    "llama3.2-vision",
]  # fmt: skip
TEXT_ONLY = [
    "deepseek-chat", "deepseek-reasoner", "deepseek-ai/DeepSeek-V3", "qwen-plus", "qwen-max",
    "glm-4-plus", "glm-4-flash", "moonshot-v1-8k", "kimi-k2-0905-preview",
    "doubao-1-5-pro-32k-250115", "llama3.2", "qwen3", "gpt-4o-audio-preview",
    "gpt-4o-mini-tts", "gemma3:1b", "o1-mini", "o1-preview", "o3-mini", "deepseek/deepseek-chat",
]  # fmt: skip


@pytest.mark.parametrize("model", VISION)
def test_vision_names(model):
    assert vision_by_name(model)


@pytest.mark.parametrize("model", TEXT_ONLY)
def test_text_only_names(model):
    assert not vision_by_name(model)


def test_deepseek_never_takes_images_and_demo_always_does():
    registry = Providers({"DEEPSEEK_API_KEY": "k", "DEEPSEEK_MODELS": "deepseek-vl2"})
    assert not registry.get("deepseek").supports_vision("deepseek-vl2")
    assert registry.get("demo").supports_vision("demo")


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("deepseek-reasoner", True), ("deepseek-ai/DeepSeek-R1", True),
        ("deepseek/deepseek-r1-0528", True), ("deepseek-r1:7b", True), ("qwq-plus", True),
        ("qwen3", True), ("kimi-k2-thinking", True), ("deepseek-chat", False),
        ("gpt-4o", False), ("qwen-plus", False), ("moonshot-v1-8k", False),
    ],
)  # fmt: skip
def test_reasoning_names(model, expected):
    assert reasoning_by_name(model) is expected


def test_public_info_shape_and_no_key():
    registry = Providers({"OPENAI_API_KEY": KEY, "CUSTOM_API_KEY": KEY,
                          "CUSTOM_BASE_URL": "http://u:p@127.0.0.1:1/v1"})  # fmt: skip
    for provider in registry.all():
        info = provider.public_info()
        assert set(info) == {
            "id", "name", "enabled", "default_model", "models", "vision_models", "hint",
        }  # fmt: skip
        assert KEY not in repr(info) and KEY not in repr(provider) and KEY not in str(provider)
    assert registry.get("openai").api_key == KEY  # still usable by the client


def test_resolve_rules():
    registry = Providers({"ARK_API_KEY": "k"})
    doubao = registry.get("doubao")
    assert registry.resolve() == (doubao, "doubao-seed-1-6-250615")
    assert registry.resolve("doubao", " ep-20250101-xyz ") == (doubao, "ep-20250101-xyz")
    assert registry.resolve("demo", "gpt-4o")[1] == "demo"  # stale model choice is harmless
    with pytest.raises(ProviderError) as info:
        registry.resolve("openai")
    assert info.value.code == "disabled"
    assert str(info.value) == "OpenAI is not configured: set OPENAI_API_KEY."
    with pytest.raises(ProviderError) as info:
        registry.resolve("nope")
    assert info.value.code == "unknown_provider"
    for junk in ["x" * 201, "gpt\n4o", "bad\x00id"]:
        with pytest.raises(ProviderError) as info:
            registry.resolve("doubao", junk)
        assert info.value.code == "unknown_model"


@pytest.mark.anyio
async def test_client_is_cached_and_closed():
    registry = Providers({"OPENAI_API_KEY": KEY, "DEEPSEEK_API_KEY": "k2"}, timeout_s=7)
    first = registry.client("openai")
    assert registry.client("openai") is first
    assert registry.client("deepseek") is not first
    assert first.max_retries == 0
    assert first.timeout.read == 7 and first.timeout.connect == 5.0
    with pytest.raises(ProviderError):
        registry.client("demo")
    with pytest.raises(ProviderError):
        registry.client("kimi")  # disabled
    await registry.aclose()
    assert registry.client("openai") is not first  # a fresh one after aclose


# --------------------------------------------------------------------------------------
# Pure helpers: Retry-After and error shapes


def test_parse_retry_after():
    assert parse_retry_after({"Retry-After": "3"}) == 3
    assert parse_retry_after({"retry-after-ms": "250"}) == 0.25
    assert parse_retry_after({"Retry-After": "soon"}) is None
    assert parse_retry_after({}) is None
    now = time.time()
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert 28 <= parse_retry_after({"Retry-After": date}, now=now) <= 31
    past = email.utils.formatdate(now - 30, usegmt=True)
    assert parse_retry_after({"Retry-After": past}, now=now) == 0


def test_error_info_shapes():
    openai = error_info({"message": "Bad key", "type": "invalid_request_error",
                         "code": "invalid_api_key"})  # fmt: skip
    assert openai.code == "invalid_api_key invalid_request_error" and openai.message == "Bad key"
    zhipu = error_info({"code": "1113", "message": "您的账户已欠费"})
    assert zhipu.code == "1113"
    zhipu_msg = error_info({"code": 1261, "msg": "Prompt 超长"})
    assert (zhipu_msg.code, zhipu_msg.message) == ("1261", "Prompt 超长")
    lm_studio = error_info({"error": "Model is not loaded"})
    assert lm_studio.message == "Model is not loaded"
    raw = (
        '{"error": {"message": "maximum context length is 8192",'
        ' "code": "context_length_exceeded"}}'
    )
    router = error_info({"message": "Provider returned error", "code": 400,
                         "metadata": {"raw": raw, "provider_name": "X"}})  # fmt: skip
    assert "context_length_exceeded" in router.code and router.message.startswith("maximum")
    html = error_info("<html><body><h1>502 Bad Gateway</h1></body></html>")
    assert html.message == "502 Bad Gateway"
    assert len(error_info({"message": "x" * 999}).message) <= 200


@pytest.mark.parametrize(
    ("status", "body", "code"),
    [
        (401, {"code": "invalid_api_key"}, "auth"),
        (403, {"message": "Forbidden"}, "auth"),
        (402, {"message": "Insufficient Balance"}, "quota"),
        (429, {"code": "insufficient_quota"}, "quota"),
        (429, {"code": "1113", "message": "您的账户已欠费"}, "quota"),
        (429, {"code": "1302", "message": "并发数过高"}, "rate_limit"),
        (429, {"code": "rate_limit_exceeded"}, "rate_limit"),
        (400, {"code": "context_length_exceeded"}, "context_length"),
        (400, {"code": "InvalidParameter", "message": "Range of input length should be [1, 30720]"},
         "context_length"),
        (400, {"code": "1261", "message": "Prompt 超长"}, "context_length"),
        (400, {"message": "Failed to deserialize: unknown variant `image_url`, expected `text`"},
         "image_rejected"),
        (400, {"message": "You uploaded an unsupported image. Please make sure..."},
         "image_rejected"),
        (400, {"message": "Model Not Exist"}, "model_not_found"),
        (400, {"code": "1211", "message": "模型不存在"}, "model_not_found"),
        (400, {"code": "Arrearage", "message": "Access denied, arrears on the account"}, "quota"),
        (400, {"message": "temperature must be <= 2"}, "bad_request"),
        (404, {"message": "The model `gpt-9` does not exist"}, "model_not_found"),
        (422, {"message": "field required"}, "bad_request"),
        (500, {"message": "oops"}, "server"),
        (503, "<html>Service Unavailable</html>", "server"),
    ],
)  # fmt: skip
def test_map_status_table(status, body, code):
    provider = Providers({"OPENAI_API_KEY": "k"}).get("openai")
    err = map_status(provider, "gpt-4o", status, error_info(body))
    assert err.code == code
    assert err.status == status
    assert err.auto_retry is (code in ("rate_limit", "server"))
    assert "Traceback" not in str(err) and len(str(err)) < 300


def test_retryable_property():
    assert ProviderError("server", "x").retryable
    assert not ProviderError("auth", "x").retryable
    assert not ProviderError("quota", "x").retryable


# --------------------------------------------------------------------------------------
# Streaming over HTTP


@pytest.mark.anyio
async def test_stream_content_usage_and_request(upstream):
    registry = Providers(openai_env(upstream))
    events = await collect(registry, messages=[{"role": "user", "content": "hello there"}])
    assert text_of(events) == "Echo: hello there"
    assert len([e for e in events if isinstance(e, ContentDelta)]) > 1  # really streamed
    final = events[-1]
    assert isinstance(final, Finished) and final.reason == "stop"
    assert final.usage and final.usage["total_tokens"] > 0
    body = upstream.requests[0]
    assert body["stream"] is True and body["model"] == "gpt-4o"
    assert body["stream_options"] == {"include_usage": True}
    assert upstream.headers[0]["authorization"] == f"Bearer {KEY}"
    assert not upstream.disconnects  # a finished stream is not a disconnect
    await registry.aclose()


@pytest.mark.anyio
async def test_a_message_after_a_pause_reuses_the_connection(upstream):
    """Idle connections to the provider are kept 30 s, not the HTTP client's default 5 s:
    a user who reads for a while does not pay a new TCP + TLS handshake per message."""
    registry = Providers(openai_env(upstream))
    await collect(registry)
    await asyncio.sleep(6)  # past the 5 s default
    await collect(registry)
    assert len(upstream.peers) == 2 and upstream.peers[0] == upstream.peers[1]
    await registry.aclose()


@pytest.mark.anyio
async def test_reasoning_is_separate_from_content(upstream):
    registry = Providers(openai_env(upstream))
    upstream.script(
        reply("The answer is 4.", reasoning="2+2, carry nothing."),
        reply("Done.", reasoning="OpenRouter style.", reasoning_field="reasoning"),
    )
    events = await collect(registry, model="deepseek-reasoner")
    assert text_of(events, ReasoningDelta) == "2+2, carry nothing."
    assert text_of(events) == "The answer is 4."
    first_content = next(i for i, e in enumerate(events) if isinstance(e, ContentDelta))
    assert all(isinstance(e, ReasoningDelta) for e in events[:first_content])
    events = await collect(registry)
    assert text_of(events, ReasoningDelta) == "OpenRouter style."
    assert text_of(events) == "Done."
    await registry.aclose()


@pytest.mark.anyio
async def test_custom_endpoint_sends_placeholder_key_and_no_stream_options(upstream):
    registry = Providers({"CUSTOM_BASE_URL": upstream.base_url, "CUSTOM_MODELS": "local"})
    events = await collect(registry, "custom", "")
    assert text_of(events) == "Echo: hello there"
    assert events[-1] == Finished("stop", None)  # no usage asked, none given
    assert "stream_options" not in upstream.requests[0]
    assert upstream.requests[0]["model"] == "local"
    assert upstream.headers[0]["authorization"] == "Bearer EMPTY"
    await registry.aclose()


@pytest.mark.anyio
async def test_temperature_and_max_tokens(upstream):
    registry = Providers(openai_env(upstream))
    await collect(registry, temperature=0.3, max_tokens=50)
    await collect(registry, model="gpt-5-mini", temperature=0.3)
    first, second = upstream.requests
    # OPENAI_BASE_URL points elsewhere: the compatible spelling max_tokens is used
    assert first["temperature"] == 0.3 and first["max_tokens"] == 50
    assert "temperature" not in second  # gpt-5 accepts only the default
    await registry.aclose()


@pytest.mark.anyio
async def test_length_finish_reason_is_passed_on(upstream):
    registry = Providers(openai_env(upstream))
    upstream.script(reply("Partial", finish="length"))
    events = await collect(registry)
    assert events[-1].reason == "length"
    await registry.aclose()


@pytest.mark.anyio
async def test_finish_reason_then_dropped_socket_is_still_complete(upstream):
    def finish_then_drop(ex: Exchange) -> None:
        ex.start_stream()
        ex.send_text("All here")
        ex.send_delta({}, "stop")
        ex.drop()  # before the usage chunk and [DONE]

    registry = Providers(openai_env(upstream))
    upstream.script(finish_then_drop)
    events = await collect(registry)
    assert text_of(events) == "All here" and events[-1].reason == "stop"
    await registry.aclose()


# --------------------------------------------------------------------------------------
# The failure matrix


@pytest.mark.anyio
async def test_401_is_auth_and_not_retried(upstream):
    registry = Providers(openai_env(upstream))
    upstream.script(
        error(401, {"error": {"message": f"Incorrect API key provided: {KEY}.",
                              "type": "invalid_request_error", "code": "invalid_api_key"}})
    )  # fmt: skip
    err, seen = await failure(registry)
    assert err.code == "auth" and err.status == 401 and not seen
    assert str(err) == "OpenAI rejected the API key (401). Check OPENAI_API_KEY."
    assert len(upstream.requests) == 1
    await registry.aclose()


@pytest.mark.anyio
async def test_insufficient_quota_is_not_retried(upstream):
    registry = Providers(openai_env(upstream))
    upstream.script(
        error(429, {"error": {"message": "You exceeded your current quota, please check your "
                              "plan and billing details.", "type": "insufficient_quota",
                              "code": "insufficient_quota"}})
    )  # fmt: skip
    err, _ = await failure(registry)
    assert err.code == "quota" and "top up or switch provider" in str(err)
    assert len(upstream.requests) == 1
    await registry.aclose()


@pytest.mark.anyio
async def test_rate_limit_honours_short_retry_after(upstream):
    registry = Providers(openai_env(upstream))
    upstream.script(
        error(429, {"error": {"message": "Rate limit reached", "code": "rate_limit_exceeded"}},
              {"Retry-After": "0.3"}),
    )  # fmt: skip
    started = time.monotonic()
    events = await collect(registry)
    assert text_of(events) == "Echo: hello there"
    assert len(upstream.requests) == 2
    assert time.monotonic() - started >= 0.25  # waited as told, not the tiny test backoff
    await registry.aclose()


@pytest.mark.anyio
async def test_rate_limit_with_long_retry_after_is_reported_not_waited(upstream):
    registry = Providers(openai_env(upstream))
    upstream.script(error(429, {"error": {"message": "slow down"}}, {"Retry-After": "120"}))
    started = time.monotonic()
    err, _ = await failure(registry)
    assert time.monotonic() - started < 2
    assert err.code == "rate_limit" and err.retry_after == 120
    assert str(err) == "OpenAI is rate-limiting requests (429); wait 120 s and try again."
    assert len(upstream.requests) == 1
    await registry.aclose()


@pytest.mark.anyio
async def test_rate_limit_gives_up_after_two_retries(upstream):
    registry = Providers(openai_env(upstream))
    limited = error(429, {"error": {"message": "Rate limit", "code": "rate_limit_exceeded"}},
                    {"Retry-After": "0"})  # fmt: skip
    upstream.script(limited, limited, limited)
    err, _ = await failure(registry)
    assert err.code == "rate_limit" and err.retryable
    assert len(upstream.requests) == 3
    await registry.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize("status", [500, 502, 503])
async def test_server_errors_are_retried_then_succeed(upstream, status):
    registry = Providers(openai_env(upstream))
    upstream.script(error(status, {"error": {"message": "upstream hiccup"}}))
    events = await collect(registry)
    assert text_of(events) == "Echo: hello there"
    assert len(upstream.requests) == 2
    await registry.aclose()


@pytest.mark.anyio
async def test_server_errors_fail_after_three_attempts(upstream):
    registry = Providers(openai_env(upstream))
    upstream.script(*[error(502, "<html><h1>502 Bad Gateway</h1></html>")] * 3)
    err, _ = await failure(registry)
    assert err.code == "server" and err.status == 502
    assert str(err) == "OpenAI is having trouble (502). Try again in a moment or switch provider."
    assert len(upstream.requests) == 3
    await registry.aclose()


@pytest.mark.anyio
async def test_connection_refused():
    url = f"http://127.0.0.1:{free_port()}/v1"
    registry = Providers({"DEEPSEEK_API_KEY": KEY, "DEEPSEEK_BASE_URL": url})
    err, _ = await failure(registry, "deepseek", "deepseek-chat")
    assert err.code == "connection"
    # The operator's own URL (it may name an internal host) is logged, not shown to users.
    assert str(err) == "Cannot reach DeepSeek. Check the network or DEEPSEEK_BASE_URL."
    await registry.aclose()


@pytest.mark.anyio
async def test_connect_timeout():
    with unaccepted_port() as port:
        url = f"http://127.0.0.1:{port}/v1"
        registry = Providers({"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": url}, connect_timeout_s=0.2)
        started = time.monotonic()
        err, _ = await failure(registry)
        assert err.code == "timeout" and "connection timed out" in str(err)
        assert time.monotonic() - started < 3  # 3 attempts x 0.2 s, not the read timeout
        await registry.aclose()


@pytest.mark.anyio
async def test_read_timeout_mid_stream(upstream):
    registry = Providers(openai_env(upstream), timeout_s=0.5)
    upstream.script(stall("Hel", seconds=10))
    started = time.monotonic()
    err, seen = await failure(registry)
    assert err.code == "timeout"
    assert str(err) == "OpenAI stopped responding (no data for 0.5 s). Try again."
    assert text_of(seen) == "Hel"
    assert time.monotonic() - started < 3
    assert len(upstream.requests) == 1
    await registry.aclose()


@pytest.mark.anyio
async def test_read_timeout_before_first_token_is_not_retried(upstream):
    registry = Providers(openai_env(upstream), timeout_s=0.3)
    upstream.script(stall("", seconds=10))
    err, seen = await failure(registry)
    assert err.code == "timeout" and not seen
    assert len(upstream.requests) == 1  # waiting another timeout_s would not help
    await registry.aclose()


@pytest.mark.anyio
async def test_cut_without_finish_reason_is_incomplete(upstream):
    registry = Providers(openai_env(upstream))
    upstream.script(cut("The first half"))
    err, seen = await failure(registry)
    assert err.code == "incomplete"
    assert str(err) == "The answer was cut off by the provider before it finished. Press Retry."
    assert text_of(seen) == "The first half"
    assert len(upstream.requests) == 1  # text reached the user: no silent retry
    await registry.aclose()


@pytest.mark.anyio
async def test_mid_stream_error_object(upstream):
    registry = Providers(openai_env(upstream))
    upstream.script(mid_error("Some ", {"message": "Model overloaded", "type": "server_error"}))
    err, seen = await failure(registry)
    assert err.code == "provider_error" and "Model overloaded" in str(err)
    assert text_of(seen) == "Some "
    await registry.aclose()


@pytest.mark.anyio
async def test_mid_stream_quota_error_is_recognised(upstream):
    registry = Providers(openai_env(upstream))
    upstream.script(mid_error("", {"message": "Insufficient credits", "code": 402}))
    err, _ = await failure(registry)
    assert err.code == "quota"
    await registry.aclose()


@pytest.mark.anyio
async def test_malformed_chunk(upstream):
    registry = Providers(openai_env(upstream))
    upstream.script(malformed("Good start"))
    err, seen = await failure(registry)
    assert err.code == "malformed" and text_of(seen) == "Good start"
    assert "Traceback" not in str(err) and "Expecting" not in str(err)
    await registry.aclose()


@pytest.mark.anyio
async def test_non_stream_answer_from_wrong_url(upstream):
    registry = Providers(openai_env(upstream))
    upstream.script(error(200, "<html>Welcome to nginx</html>"))
    err, _ = await failure(registry)
    assert err.code == "malformed" and "OPENAI_BASE_URL" in str(err)
    await registry.aclose()


@pytest.mark.anyio
async def test_context_length_exceeded(upstream):
    registry = Providers(openai_env(upstream))
    upstream.script(
        error(400, {"error": {"message": "This model's maximum context length is 128000 tokens.",
                              "type": "invalid_request_error", "code": "context_length_exceeded"}})
    )  # fmt: skip
    err, _ = await failure(registry)
    assert err.code == "context_length"
    assert str(err) == (
        "The conversation is too long for gpt-4o. Start a new chat or undo some messages."
    )
    assert len(upstream.requests) == 1
    await registry.aclose()


@pytest.mark.anyio
async def test_image_rejected_deepseek_style(upstream):
    registry = Providers({"DEEPSEEK_API_KEY": KEY, "DEEPSEEK_BASE_URL": upstream.base_url})
    upstream.script(
        error(400, {"error": {"message": "Failed to deserialize the JSON body into the target "
                              "type: messages[0]: unknown variant `image_url`, expected `text`",
                              "type": "invalid_request_error"}})
    )  # fmt: skip
    err, _ = await failure(registry, "deepseek", "deepseek-chat")
    assert err.code == "image_rejected"
    assert str(err) == (
        "deepseek-chat could not read the image(s). Remove the image or pick a vision model."
    )
    await registry.aclose()


@pytest.mark.anyio
async def test_model_not_found(upstream):
    registry = Providers(openai_env(upstream))
    upstream.script(
        error(404, {"error": {"message": "The model `gpt-9` does not exist",
                              "code": "model_not_found"}})
    )  # fmt: skip
    err, _ = await failure(registry, model="gpt-9")
    assert err.code == "model_not_found"
    assert str(err) == "Model gpt-9 is not available at OpenAI. Pick another model."
    assert len(upstream.requests) == 1
    await registry.aclose()


@pytest.mark.anyio
async def test_bare_404_also_points_at_base_url(upstream):
    registry = Providers({"ARK_API_KEY": KEY, "ARK_BASE_URL": upstream.url + "/v1/wrong"})
    err, _ = await failure(registry, "doubao", "doubao-seed-1-6-250615")
    assert err.code == "model_not_found" and "ARK_BASE_URL" in str(err)
    await registry.aclose()


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("body", "code", "fragment"),
    [
        ({"error": "Model is not loaded in LM Studio"}, "bad_request", "Model is not loaded"),
        ({"code": "1210", "msg": "API 调用参数有误"}, "bad_request", "API 调用参数有误"),
        ({"error": {"message": "Provider returned error", "code": 400,
                    "metadata": {"raw": '{"error":{"message":"prompt is too long"}}'}}},
         "context_length", "too long"),
    ],
)  # fmt: skip
async def test_other_400_shapes(upstream, body, code, fragment):
    registry = Providers(openai_env(upstream))
    upstream.script(error(400, body))
    err, _ = await failure(registry)
    assert err.code == code and fragment in str(err)
    assert len(upstream.requests) == 1
    await registry.aclose()


@pytest.mark.anyio
async def test_zhipu_shapes(upstream):
    env = {"ZHIPUAI_API_KEY": KEY, "ZHIPUAI_BASE_URL": upstream.base_url}
    registry = Providers(env)
    upstream.script(
        error(429, {"error": {"code": "1113", "message": "您的账户已欠费，请充值后重试"}})
    )
    err, _ = await failure(registry, "zhipu", "glm-4-flash")
    assert err.code == "quota" and len(upstream.requests) == 1
    upstream.script(error(429, {"error": {"code": "1302", "message": "并发数过高"}}))
    events = await collect(registry, "zhipu", "glm-4-flash")  # rate limit: retried, then ok
    assert text_of(events) == "Echo: hello there" and len(upstream.requests) == 3
    assert "stream_options" not in upstream.requests[-1]  # not documented for Zhipu
    await registry.aclose()


@pytest.mark.anyio
async def test_dropped_connection_before_response_is_retried(upstream):
    registry = Providers(openai_env(upstream))
    upstream.script(drop_connection())
    events = await collect(registry)
    assert text_of(events) == "Echo: hello there"
    assert len(upstream.requests) == 2
    await registry.aclose()


@pytest.mark.anyio
async def test_dropped_connection_mid_answer_is_not_retried(upstream):
    registry = Providers(openai_env(upstream))
    upstream.script(drop_connection(after_text="Half an ans"))
    err, seen = await failure(registry)
    assert err.code == "connection" and "before the answer finished" in str(err)
    assert text_of(seen) == "Half an ans"
    assert len(upstream.requests) == 1
    await registry.aclose()


# --------------------------------------------------------------------------------------
# Cancellation reaches the upstream


async def wait_for(predicate, timeout: float = 1.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.01)
    return predicate()


@pytest.mark.anyio
async def test_aclose_mid_stream_closes_upstream(upstream):
    registry = Providers(openai_env(upstream))
    upstream.script(slow("word " * 400, delay=0.02))
    events = registry.stream("openai", "gpt-4o", USER)
    assert isinstance(await events.__anext__(), ContentDelta)
    assert isinstance(await events.__anext__(), ContentDelta)
    closed_at = time.monotonic()
    await events.aclose()
    assert await wait_for(lambda: upstream.disconnects, timeout=1.0)
    record = upstream.disconnects[0]
    assert record.disconnected_at - closed_at < 1.0 and not record.finished
    await registry.aclose()


@pytest.mark.anyio
async def test_task_cancel_closes_upstream(upstream):
    registry = Providers(openai_env(upstream))
    upstream.script(slow("word " * 400, delay=0.02))
    first = asyncio.Event()

    async def consume() -> None:
        async for _event in registry.stream("openai", "gpt-4o", USER):
            first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await wait_for(lambda: upstream.disconnects, timeout=1.0)
    await registry.aclose()


# --------------------------------------------------------------------------------------
# Keys never leak


@pytest.mark.anyio
async def test_planted_key_never_appears(upstream):
    env = openai_env(upstream, CUSTOM_BASE_URL=upstream.base_url, CUSTOM_API_KEY=KEY)
    registry = Providers(env)
    upstream.script(
        error(401, {"error": {"message": f"Incorrect API key provided: {KEY}"}}),
        error(400, {"error": {"message": f"Bad request from key {KEY} (sk-other-SECRET-999)"}}),
        mid_error("x", {"message": f"boom {KEY}"}),
    )
    texts = []
    for _ in range(3):
        err, _ = await failure(registry)
        texts += [str(err), repr(err), err.message]
    for provider in registry.all():
        texts += [repr(provider), str(provider), repr(provider.public_info())]
    joined = "\n".join(texts)
    assert KEY not in joined and "PLANTED" not in joined and "SECRET-999" not in joined
    await registry.aclose()


@given(st.text(max_size=80), st.text(max_size=80))
def test_redaction_property(before, after):
    redacted = provider_errors.redact(f"{before}{KEY}{after}", (KEY,))
    assert KEY not in redacted


# --------------------------------------------------------------------------------------
# The demo provider


def data_url(colour: tuple[int, int, int], size=(80, 60), fmt="PNG") -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, fmt)
    mime = "jpeg" if fmt == "JPEG" else fmt.lower()
    return f"data:image/{mime};base64,{base64.b64encode(buffer.getvalue()).decode()}"


@pytest.mark.anyio
async def test_demo_echoes_text_role_and_images():
    registry = Providers({"DEMO_DELAY_MS": "0"})
    messages = [
        {"role": "system", "content": "You are a patient teacher.\nMore lines."},
        {"role": "user", "content": [
            {"type": "text", "text": "What is in this picture?"},
            {"type": "image_url", "image_url": {"url": data_url((20, 60, 230)), "detail": "auto"}},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,!!!!"}},
        ]},
    ]  # fmt: skip
    events = [e async for e in registry.stream("", "", messages)]
    text = text_of(events)
    assert text.startswith("**Demo mode**")
    assert "You said: “What is in this picture?”" in text
    assert "Role: You are a patient teacher." in text and "More lines" not in text
    assert "Image 1: 80×60 PNG" in text  # colour names may come from images.py
    assert "Image 2: could not be read" in text
    assert len([e for e in events if isinstance(e, ContentDelta)]) > 10  # word by word
    assert events[-1] == Finished("stop")


@pytest.mark.anyio
async def test_demo_samples_and_thinking():
    registry = Providers({"DEMO_DELAY_MS": "0"})
    messages = [{"role": "user", "content": "Think, then show me some markdown and code"}]
    events = await collect(registry, "demo", "demo", messages)
    assert text_of(events, ReasoningDelta)
    assert "```python" in text_of(events) and "$$" in text_of(events)
    plain = await collect(registry, "demo", "demo", [{"role": "user", "content": "hi"}])
    assert "```" not in text_of(plain) and not text_of(plain, ReasoningDelta)


@pytest.mark.anyio
async def test_demo_can_be_stopped():
    registry = Providers({"DEMO_DELAY_MS": "20"})
    events = registry.stream("demo", "", [{"role": "user", "content": "a b c d e f g h"}])
    started = time.monotonic()
    await events.__anext__()
    await events.aclose()
    assert time.monotonic() - started < 1


def test_demo_pillow_fallback_names_colours():
    half = Image.new("RGB", (40, 20), (255, 255, 255))
    half.paste((20, 60, 230), (0, 0, 20, 20))
    buffer = io.BytesIO()
    half.save(buffer, "JPEG")
    info = demo_provider._describe_with_pillow(buffer.getvalue())
    assert (info["width"], info["height"], info["format"]) == (40, 20, "JPEG")
    assert set(info["colours"]) == {"blue", "white"}
    assert demo_provider._colour_names([(250, 250, 250), "#1e46dc", "teal"]) == [
        "white", "blue", "teal",
    ]  # fmt: skip


def test_provider_record_is_frozen_with_hidden_key():
    provider = Providers({"OPENAI_API_KEY": KEY}).get("openai")
    assert isinstance(provider, Provider)
    with pytest.raises(AttributeError):
        provider.enabled = False  # type: ignore[misc]
    assert "api_key" not in repr(provider)
