"""The provider check (check.py, `python app.py --check`) against a real HTTP fake upstream."""

from __future__ import annotations

import base64
import contextlib
import io
import logging
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator

import pytest
from PIL import Image

import check
import check_report
import providers as providers_module
from check import check_providers
from check_report import FAIL, PASS, SKIP, WARN, CheckResult, Step, format_table
from config import load_settings
from providers import Providers
from startup_checks import misconfigurations
from tests.app_server import PROVIDER_VARS, ROOT
from tests.conftest import app_env
from tests.fake_upstream import FakeUpstream, _Handler, error, free_port, reply, stall

KEY = "sk-test-PLANTED-check-0123456789"
IMAGE_ERROR = {
    "error": {
        "message": "Failed to deserialize the JSON body: unknown variant `image_url`, "
        "expected `text`",
        "type": "invalid_request_error",
    }
}


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch):
    """Production backoff between retries is 0.5 s doubling; the check's logic is the same."""
    monkeypatch.setattr(providers_module, "RETRY_BASE_S", 0.01)


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream(models=("gpt-4o", "gpt-4o-mini", "fake-model")) as server:
        yield server


class _NoModelsHandler(_Handler):
    """Like the fake upstream, but without /models (as some providers are)."""

    def do_GET(self) -> None:
        self._reply(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})


@contextlib.contextmanager
def upstream_without_models() -> Iterator[FakeUpstream]:
    with FakeUpstream() as server:
        server._server.RequestHandlerClass = _NoModelsHandler
        yield server


def openai_env(upstream: FakeUpstream, **extra: str) -> dict[str, str]:
    return app_env(upstream, **{"OPENAI_API_KEY": KEY, "DEFAULT_PROVIDER": None, **extra})


async def run_check(env: dict[str, str], **kwargs) -> dict[str, CheckResult]:
    registry = Providers(env, timeout_s=10)
    try:
        results = await check_providers(registry, **kwargs)
    finally:
        await registry.aclose()
    return {result.provider_id: result for result in results}


def statuses(result: CheckResult) -> dict[str, str]:
    return {name: step.status for name, step in result.steps.items()}


# ---- the happy path


@pytest.mark.anyio
async def test_all_good_with_vision_model_and_demo(upstream):
    results = await run_check(openai_env(upstream))
    assert list(results) == ["openai", "demo"]
    openai = results["openai"]
    assert statuses(openai) == dict.fromkeys(check_report.STEPS, PASS), openai.fix
    assert openai.passed and openai.fix == "" and openai.model == "gpt-4o"
    assert openai.ttft_s is not None and openai.ttft_s > 0
    assert openai.reply_text.startswith("Echo: Reply with the single word: OK")
    assert results["demo"].passed and results["demo"].steps["image"].status == PASS
    # Two real requests: the short reply and the image, both streamed with max 5 tokens.
    text, image = upstream.requests
    assert text["messages"] == [{"role": "user", "content": check.PROMPT}]
    assert text["stream"] is True and text["max_tokens"] == 5
    part = image["messages"][0]["content"][1]
    assert part["type"] == "image_url"
    url = part["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as img:
        assert (img.format, img.size) == ("PNG", (8, 8))


@pytest.mark.anyio
async def test_text_only_model_sends_no_image(upstream):
    results = await run_check(
        {"DEEPSEEK_API_KEY": KEY, "DEEPSEEK_BASE_URL": upstream.base_url},
        provider_ids=["deepseek"],
    )
    deepseek = results["deepseek"]
    assert deepseek.steps["image"] == Step(SKIP, "text-only")
    assert deepseek.passed and len(upstream.requests) == 1


@pytest.mark.anyio
async def test_demo_alone_passes_offline():
    results = await run_check({})
    assert list(results) == ["demo"] and results["demo"].passed
    assert results["demo"].steps["reachable"].note == "offline"


# ---- failures and their fixes


@pytest.mark.e2e  # starts a server in the test's body
@pytest.mark.anyio
async def test_rejected_key():
    with FakeUpstream(api_key="the-right-key-123") as upstream:
        results = await run_check(openai_env(upstream))
    openai = results["openai"]
    assert openai.steps["reachable"].status == PASS
    assert openai.steps["key"].status == FAIL and not openai.passed
    assert openai.steps["reply"].status == SKIP and openai.steps["image"].status == SKIP
    assert "The key in OPENAI_API_KEY was rejected" in openai.fix
    assert "console" in openai.fix
    assert KEY not in format_table(list(results.values()))


@pytest.mark.anyio
async def test_connection_refused_stops_at_reachable():
    port = free_port()
    results = await run_check(
        {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": f"http://127.0.0.1:{port}/v1"}
    )
    openai = results["openai"]
    assert openai.steps["reachable"] == Step(FAIL, "connection refused")
    assert [openai.steps[s].status for s in ("key", "listed", "reply", "image")] == [SKIP] * 4
    assert openai.fix == (
        f"Cannot reach http://127.0.0.1:{port}/v1 (connection refused): "
        "check the network or OPENAI_BASE_URL."
    )


@pytest.mark.anyio
async def test_no_models_endpoint_but_chat_works():
    with upstream_without_models() as upstream:
        results = await run_check(openai_env(upstream, OPENAI_MODELS="fake-model"))
        assert len(upstream.requests) == 1  # the chat step really ran
    openai = results["openai"]
    assert openai.steps["listed"] == Step(SKIP, "no /models")
    assert openai.steps["reply"].status == PASS and openai.steps["key"].status == PASS
    assert openai.passed


@pytest.mark.e2e  # starts a server in the test's body
@pytest.mark.anyio
async def test_default_model_missing_from_list_but_answering_is_a_warning():
    with FakeUpstream(models=("other-a", "other-b")) as upstream:
        results = await run_check(openai_env(upstream, OPENAI_MODELS="ep-20250101-abc"))
    openai = results["openai"]
    assert openai.steps["listed"].status == WARN and openai.passed
    assert "ep-20250101-abc is not in the endpoint's model list but it answered" in openai.fix


@pytest.mark.e2e  # starts a server in the test's body
@pytest.mark.anyio
async def test_default_model_missing_from_list_and_refused():
    models = tuple(f"model-{i}" for i in range(9))
    not_found = {
        "error": {"message": "The model `gpt-4o` does not exist", "code": "model_not_found"}
    }
    with FakeUpstream(models=models) as upstream:
        upstream.script(error(404, not_found))
        results = await run_check(openai_env(upstream))
    openai = results["openai"]
    assert openai.steps["listed"] == Step(FAIL, "not offered")
    assert openai.steps["reply"] == Step(FAIL, "404") and not openai.passed
    assert openai.offered == list(models)
    assert (
        "Model gpt-4o is not offered by this endpoint; pick one of: "
        "model-0, model-1, model-2, model-3, model-4, model-5 (+3 more)" in openai.fix
    )
    assert "OPENAI_MODELS" in openai.fix


@pytest.mark.parametrize(
    ("vision_env", "expected"),
    [
        ({}, "set OPENAI_VISION_MODELS to the models that can see images"),
        ({"OPENAI_VISION_MODELS": "gpt-4o"}, "remove it from OPENAI_VISION_MODELS"),
    ],
)
@pytest.mark.anyio
async def test_vision_model_whose_image_is_rejected(upstream, vision_env, expected):
    upstream.script(reply("OK"), error(400, IMAGE_ERROR))
    results = await run_check(openai_env(upstream, **vision_env))
    openai = results["openai"]
    assert openai.steps["reply"].status == PASS
    assert openai.steps["image"] == Step(FAIL, "400") and not openai.passed
    assert openai.fix == (
        f"gpt-4o cannot read images here: mark it as text-only ({expected}) or pick a vision model."
    )
    assert upstream.requests[1]["messages"][0]["content"][1]["type"] == "image_url"


@pytest.mark.parametrize(
    ("provider_id", "prefix", "path"),
    [
        ("doubao", "ARK", "/api/v3"),
        ("qwen", "DASHSCOPE", "/compatible-mode/v1"),
        ("zhipu", "ZHIPUAI", "/api/paas/v4"),
    ],
)
@pytest.mark.anyio
async def test_wrong_base_url_path_names_the_right_one(upstream, provider_id, prefix, path):
    env = {f"{prefix}_API_KEY": KEY, f"{prefix}_BASE_URL": f"{upstream.url}/wrong"}
    results = await run_check(env, provider_ids=[provider_id])
    result = results[provider_id]
    assert result.steps["reachable"].status == PASS  # the host answered
    assert result.steps["listed"] == Step(SKIP, "no /models")
    assert result.steps["reply"] == Step(FAIL, "404") and not result.passed
    assert result.fix.startswith(f"{prefix}_BASE_URL must end in {path} (e.g. https://")
    assert upstream.requests == []  # /wrong/chat/completions is a 404 route, never a chat
    # The startup warning is the same line (one place), so `--check` does not print it twice.
    assert result.fix in misconfigurations(load_settings(env), Providers(env), env)


@pytest.mark.anyio
async def test_wrong_path_on_a_generic_endpoint(upstream):
    results = await run_check(openai_env(upstream, OPENAI_BASE_URL=f"{upstream.url}/wrong"))
    openai = results["openai"]
    assert not openai.passed
    assert "404 (not found) for both /models and /chat/completions" in openai.fix
    assert "OPENAI_BASE_URL" in openai.fix and "/v1" in openai.fix


@pytest.mark.anyio
async def test_a_stalled_provider_times_out_without_holding_up_the_others(upstream):
    with FakeUpstream() as stalled:
        stalled.script(stall(seconds=30))
        env = {
            **openai_env(upstream, OPENAI_MODELS="fake-model"),
            "DEEPSEEK_API_KEY": KEY,
            "DEEPSEEK_BASE_URL": stalled.base_url,
        }
        results = await run_check(env, timeout_s=1.5)
        assert stalled.wait_for_disconnect(timeout=5)  # the stalled stream was closed
    assert results["openai"].passed
    deepseek = results["deepseek"]
    assert deepseek.steps["reply"] == Step(FAIL, "timeout")
    assert deepseek.fix.startswith("DeepSeek took longer than 1.5 s to answer")


@pytest.mark.anyio
async def test_quota_error_means_the_key_is_valid(upstream):
    upstream.script(error(429, {"error": {"message": "quota", "code": "insufficient_quota"}}))
    results = await run_check(openai_env(upstream, OPENAI_MODELS="fake-model"))
    openai = results["openai"]
    assert openai.steps["key"].status == PASS and openai.steps["reply"] == Step(FAIL, "429")
    assert "no credit left" in openai.fix


@pytest.mark.e2e  # starts a server in the test's body
@pytest.mark.anyio
async def test_typed_key_overrides_and_enables():
    with FakeUpstream(api_key=KEY) as upstream:
        env = openai_env(
            upstream,
            OPENAI_API_KEY="sk-stale-key-9876543210",
            OPENAI_MODELS="fake-model",
            DEEPSEEK_BASE_URL=upstream.base_url,  # no DEEPSEEK_API_KEY: disabled
        )
        before = await run_check(env)
        after = await run_check(env, api_keys={"openai": KEY, "deepseek": KEY})
    assert list(before) == ["openai", "demo"] and not before["openai"].passed
    assert list(after) == ["openai", "deepseek", "demo"]
    assert after["openai"].passed and after["deepseek"].passed
    rejected = await _rejected_typed_key()
    assert rejected.startswith("The key you entered for OpenAI was rejected")


async def _rejected_typed_key() -> str:
    with FakeUpstream(api_key="the-right-key-123") as upstream:
        results = await run_check(openai_env(upstream), api_keys={"openai": "typed-wrong-123"})
    return results["openai"].fix


@pytest.mark.anyio
async def test_disabled_and_unknown_providers_when_asked_for():
    results = await run_check({}, provider_ids=["kimi", "nope"])
    assert not results["kimi"].enabled and not results["kimi"].passed
    assert "MOONSHOT_API_KEY" in results["kimi"].fix
    assert "Unknown provider 'nope'" in results["nope"].fix


@pytest.mark.e2e  # starts a server in the test's body
@pytest.mark.anyio
async def test_keys_echoed_by_the_server_are_scrubbed():
    typed = "typed-key-PLANTED-5555"
    with FakeUpstream(models=(KEY, typed, "gpt-4o")) as upstream:
        upstream.script(
            reply("OK"),
            error(400, {"error": {"message": f"Bad parameter near {KEY} and {typed}"}}),
        )
        results = await run_check(openai_env(upstream), api_keys={"openai": typed})
    openai = results["openai"]
    assert openai.steps["image"].status == FAIL  # the image request got the 400
    text = format_table(list(results.values())) + repr(results)
    assert "Bad parameter near *** and ***" in text and openai.offered[:2] == ["***", "***"]
    assert KEY not in text and typed not in text


# ---- pure helpers


def test_ollama_latest_tag_counts_as_listed():
    assert check._offers(["llama3.2:latest", "llava:7b"], "llama3.2")
    assert check._offers(["llama3.2"], "llama3.2:latest")
    assert not check._offers(["llava:7b"], "llava")


def test_table_shape_and_alignment():
    good = CheckResult(
        "openai", "OpenAI", "gpt-4o", steps={s: Step(PASS) for s in check_report.STEPS}
    )
    bad = CheckResult("deepseek", "DeepSeek", "deepseek-chat", fixes=["Set X."])
    bad.steps["reachable"] = Step(FAIL, "connection refused")
    lines = format_table([good, bad]).splitlines()
    assert len(lines) == 4
    assert [cell.strip() for cell in lines[0].split("|")[1:-1]] == list(check_report.HEADERS)
    assert re.fullmatch(r"\|(-+\|){8}", lines[1])
    # Every column but the free-text fix starts at the same place on every line.
    columns = {tuple(i for i, ch in enumerate(line) if ch == "|")[:8] for line in lines}
    assert len(columns) == 1
    assert lines[2].endswith(" | |") and lines[3].endswith("| Set X. |")
    assert "✗ connection refused" in lines[3] and lines[3].count(" – ") == 4


def test_table_escapes_pipes_and_newlines():
    bad = CheckResult("custom", "Custom", "a|b", fixes=["Pipe | inside", "and\na newline."])
    row = format_table([bad]).splitlines()[2]
    assert "a\\|b" in row and row.endswith("Pipe \\| inside and a newline. |")


def test_summary_counts():
    ok = CheckResult("demo", "Demo", "demo", steps={s: Step(PASS) for s in check_report.STEPS})
    bad = CheckResult("kimi", "Kimi", "m", enabled=False, fixes=["Set MOONSHOT_API_KEY."])
    assert check_report.format_summary([ok]) == "1 of 1 providers passed."
    assert check_report.format_summary([ok, bad]).startswith("1 of 2 providers passed. Apply")


# ---- the CLI: python app.py --check


def run_cli(env: dict[str, str]) -> subprocess.CompletedProcess:
    # A clean environment and working directory: no developer keys, no stray .env.
    base = {
        k: v
        for k, v in os.environ.items()
        if k not in PROVIDER_VARS and not re.search(r"_(API_KEY|BASE_URL|MODELS)$", k)
    }
    return subprocess.run(
        [sys.executable, str(ROOT / "app.py"), "--check"],
        env={**base, "GRADIO_TEMP_DIR": tempfile.mkdtemp(prefix="check-gradio-"), **env},
        cwd=tempfile.mkdtemp(prefix="check-cwd-"),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_all_passed(upstream):
    done = run_cli(openai_env(upstream))
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("| provider ") and "| reply (ttft) |" in lines[0]
    assert any(line.startswith("| `openai` ") and "✓" in line for line in lines)
    assert any(line.startswith("| `demo` ") for line in lines)
    assert "2 of 2 providers passed." in done.stdout
    assert "Traceback" not in done.stderr and "HTTP Request" not in done.stderr
    assert KEY not in done.stdout + done.stderr
    assert len(upstream.requests) == 2  # reply + image: the check really talked to it


@pytest.mark.e2e  # `python app.py --check` against a fake upstream
def test_cli_bad_key_exits_1_with_the_fix():
    echoed = {"error": {"message": f"Incorrect API key provided: {KEY}", "code": "invalid_api_key"}}
    with FakeUpstream(api_key="the-right-key-123") as upstream:
        upstream.script(error(401, echoed))
        done = run_cli(openai_env(upstream))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "The key in OPENAI_API_KEY was rejected" in done.stdout
    assert "1 of 2 providers passed." in done.stdout
    assert "Traceback" not in done.stderr
    assert KEY not in done.stdout + done.stderr


def test_cli_says_a_startup_warning_once(upstream, capsys):
    """A misconfiguration the table already names as a fix is not repeated under it."""
    env = {"ARK_API_KEY": KEY, "ARK_BASE_URL": f"{upstream.url}/wrong", "DEFAULT_PROVIDER": "ark"}
    level = logging.getLogger().level
    try:
        code = check.cli(Providers(env), settings=load_settings(env), environ=env)
    finally:
        logging.getLogger().setLevel(level)  # cli quiets the root logger for its table
    out = capsys.readouterr().out
    assert code == 1
    assert out.count("ARK_BASE_URL must end in /api/v3") == 1
    assert "Warning: DEFAULT_PROVIDER='ark' names no provider (did you mean doubao?)" in out
