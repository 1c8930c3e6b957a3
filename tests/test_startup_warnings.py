"""Startup warnings (startup_checks.misconfigurations): one line per setting the app would
otherwise ignore or misuse silently, the same lines in the log, the UI and `--check`."""

from __future__ import annotations

import io
import logging

import pytest

import check
from config import load_settings
from providers import Providers
from startup_checks import looks_mistyped, misconfigurations
from tests.app_server import AppServer

KEY = "sk-test-PLANTED-startup-0123456789"


def warnings_for(**environ: str) -> list[str]:
    return misconfigurations(load_settings(environ), Providers(environ), environ)


def only_warning(**environ: str) -> str:
    found = warnings_for(**environ)
    assert len(found) == 1, found
    return found[0]


def test_a_clean_configuration_has_no_warnings():
    assert warnings_for() == []
    # .env.example leaves every key empty: that is "not configured", not a mistake.
    assert warnings_for(OPENAI_API_KEY="", DEFAULT_PROVIDER="", CUSTOM_BASE_URL="") == []
    good = {
        "OPENAI_API_KEY": KEY,
        "DEEPSEEK_API_KEY": KEY,
        "DEEPSEEK_MODELS": "deepseek-reasoner,deepseek-chat,my-finetune",
        "OPENAI_MODELS": "gpt-4.1-mini,gpt-4o,o3",
        "ARK_API_KEY": KEY,
        "ARK_BASE_URL": "https://ark.ap-southeast.bytepluses.com/api/v3/",
        "OLLAMA_BASE_URL": "http://localhost:11434",  # /v1 is added to a bare host
        "CUSTOM_BASE_URL": "http://vllm:8000/v1",
        "CUSTOM_MODELS": "qwen",
        "CUSTOM_API_KEY": "EMPTY",  # the vLLM convention, not a placeholder mistake
        "DEFAULT_PROVIDER": "DeepSeek",
        "DEMO_DELAY_MS": "0",
        "APP_AUTH": "admin:pa:ss",
    }
    assert warnings_for(**good) == []


def test_mistyped_default_provider_names_the_likely_one_and_the_enabled_ones():
    line = only_warning(DEFAULT_PROVIDER="opnai", DEEPSEEK_API_KEY=KEY)
    assert line.startswith("DEFAULT_PROVIDER='opnai' names no provider (did you mean openai?)")
    assert "using deepseek instead (enabled: deepseek, demo)" in line
    nonsense = only_warning(DEFAULT_PROVIDER="zzz")
    assert "choose one of: openai, deepseek" in nonsense and "using demo" in nonsense


def test_default_provider_that_is_not_enabled_says_how_to_enable_it():
    line = only_warning(DEFAULT_PROVIDER="kimi")
    assert line.startswith("DEFAULT_PROVIDER='kimi' is not enabled")
    assert "Set MOONSHOT_API_KEY to enable Kimi" in line and "using demo instead" in line


def test_base_url_that_is_not_http():
    line = only_warning(OLLAMA_BASE_URL="localhost:11434")
    assert line.startswith("OLLAMA_BASE_URL must be an http(s) URL")
    assert "http://localhost:11434/v1" in line and "Ollama stays disabled" in line
    # Credentials in a bad URL are not echoed.
    line = only_warning(OPENAI_API_KEY=KEY, OPENAI_BASE_URL="ftp://user:hunter2@host/v1")
    assert "hunter2" not in line and "ftp://host/v1" in line


def test_base_url_without_the_api_path():
    line = only_warning(ARK_API_KEY=KEY, ARK_BASE_URL="https://ark.cn-beijing.volces.com/v1")
    assert line.startswith("ARK_BASE_URL must end in /api/v3 (e.g. https://ark.cn-beijing")
    assert line.endswith("is not Doubao (Volcengine Ark)'s API path.")
    # (tests/test_check.py: the check's row for that provider is this very line.)


@pytest.mark.parametrize(
    "value", ["EMPTY", "ollama", "<your key>", "sk-...", "your_api_key", "changeme", "sk-xxxx"]
)
def test_placeholder_key(value):
    line = only_warning(OPENAI_API_KEY=value)
    assert line.startswith("OPENAI_API_KEY holds a placeholder") and "not a key" in line


def test_blank_quoted_and_spaced_keys_never_echo_the_key():
    assert "set but blank" in only_warning(DEEPSEEK_API_KEY="   ")
    quoted = only_warning(DEEPSEEK_API_KEY=f'"{KEY}"')
    assert "wrapped in quotes" in quoted
    spaced = only_warning(DEEPSEEK_API_KEY=f"Bearer {KEY}")
    assert "contains spaces" in spaced
    assert all(KEY not in line for line in (quoted, spaced))


def test_mistyped_model_names():
    line = only_warning(DEEPSEEK_API_KEY=KEY, DEEPSEEK_MODELS="deepseek-chta,deepseek-reasoner")
    assert line.startswith("DEEPSEEK_MODELS has 'deepseek-chta' (the default model)")
    assert "did you mean 'deepseek-chat'?" in line
    assert "'GPT4o'" in only_warning(OPENAI_API_KEY=KEY, OPENAI_MODELS="o3,GPT4o")


@pytest.mark.parametrize(
    ("typed", "known", "mistyped"),
    [
        ("deepseek-chta", "deepseek-chat", True),  # swapped letters
        ("deepsek-chat", "deepseek-chat", True),  # a lost letter
        ("deepseek-chet", "deepseek-chat", True),  # a changed letter
        ("gpt4o", "gpt-4o", True),  # separators
        ("GPT-4O", "gpt-4o", True),  # case
        ("gpt-4", "gpt-4o", False),  # another model of the family
        ("glm-4", "glm-4v", False),
        ("o1", "o3", False),
        ("gemma2", "gemma3", False),
        ("gpt-4.1-mini", "gpt-4o-mini", False),
        ("qwen-max", "qwen-plus", False),
        ("gpt-4o", "gpt-4o", False),
    ],
)
def test_looks_mistyped(typed, known, mistyped):
    assert looks_mistyped(typed, known) is mistyped


def test_custom_endpoint_without_models():
    line = only_warning(CUSTOM_BASE_URL="http://vllm:8000/v1")
    assert line.startswith("CUSTOM_BASE_URL is set but CUSTOM_MODELS is empty")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("fast", "DEMO_DELAY_MS must be a number of milliseconds, got 'fast'; using 25."),
        ("-5", "DEMO_DELAY_MS must be 0 or a positive number of milliseconds, got '-5'."),
        ("inf", "DEMO_DELAY_MS must be 0 or a positive number of milliseconds, got 'inf'."),
    ],
)
def test_demo_delay(value, expected):
    assert only_warning(DEMO_DELAY_MS=value) == expected


@pytest.mark.parametrize("value", ["admin", "admin:", ":secret"])
def test_malformed_app_auth_is_named_but_not_echoed(value):
    line = only_warning(APP_AUTH=value)
    assert line.startswith("APP_AUTH must look like user:password")
    assert "admin" not in line and "secret" not in line


def test_numbers_the_app_would_silently_cap():
    line = only_warning(HISTORY_CONTEXT_MESSAGES="50", HISTORY_MAX_MESSAGES="10")
    assert "the model sees at most 10" in line
    assert "can never be uploaded" in only_warning(MAX_IMAGE_MB="20", UPLOAD_MB_PER_MINUTE="5")
    assert "MAX_UPLOAD_DISK_MB=10" in only_warning(MAX_UPLOAD_DISK_MB="10")
    assert warnings_for(UPLOAD_MB_PER_MINUTE="0") == []  # 0 = the limit is off


@pytest.fixture
def root_level():
    """check.cli quiets the root logger for its table; put it back for the other tests."""
    level = logging.getLogger().level
    yield
    logging.getLogger().setLevel(level)


def test_check_cli_prints_the_same_warnings_under_its_table(root_level):
    environ = {"DEFAULT_PROVIDER": "opnai", "DEMO_DELAY_MS": "0"}
    out = io.StringIO()
    registry = Providers(environ)
    code = check.cli(registry, out, settings=load_settings(environ), environ=environ)
    text = out.getvalue()
    assert code == 0 and "1 of 1 providers passed." in text  # the demo, offline
    warning = "Warning: DEFAULT_PROVIDER='opnai' names no provider (did you mean openai?)"
    assert warning in text and text.index(warning) > text.index("providers passed")


@pytest.mark.e2e  # launches `python app.py`
def test_app_logs_the_warning_at_startup():
    with AppServer({"DEFAULT_PROVIDER": "opnai"}) as app:
        log = app.log()
    assert "WARNING" in log and "DEFAULT_PROVIDER='opnai' names no provider" in log
    assert "did you mean openai?" in log and "using demo instead (enabled: demo)" in log
