"""The settings panel in Chromium: sampling settings, bring-your-own-key, the provider check,
and the usage line under an answer (issue 8)."""

from __future__ import annotations

import pytest

from tests.app_server import AppServer
from tests.browser import ChatPage, browser_fixture, context_factory  # noqa: F401  (fixtures)
from tests.conftest import app_env

USER_KEY = "sk-browser-user-key-77"
KIMI = "Kimi (Moonshot) (your key)"


@pytest.fixture(scope="module")
def app(upstream):
    env = app_env(
        upstream,
        # Kimi has no key on the server: only a visitor's own key enables it.
        MOONSHOT_BASE_URL=upstream.base_url,
        RATE_LIMIT_PER_MINUTE="1000",
    )
    with AppServer(env) as server:
        yield server


@pytest.fixture
def chat(app, new_context, upstream) -> ChatPage:
    upstream.script()
    return ChatPage(new_context().new_page(), app.url).open()


def open_settings(chat: ChatPage) -> None:
    if not chat.page.locator("#key-kimi input").is_visible():
        chat.page.locator("#settings button").first.click()
        chat.page.wait_for_selector("#key-kimi input", state="visible")


def local_storage(chat: ChatPage) -> str:
    return chat.page.evaluate("() => JSON.stringify({...localStorage})")


def provider_options(chat: ChatPage) -> list[str]:
    chat.page.locator("#provider input[role=combobox]").click()
    # the selected option carries a "✓" line before its name
    options = [
        o.strip().splitlines()[-1] for o in chat.page.get_by_role("option").all_inner_texts()
    ]
    chat.page.keyboard.press("Escape")
    return options


def test_own_key_enables_a_provider_for_this_browser_only(chat, app, upstream, new_context):
    assert KIMI not in provider_options(chat)
    open_settings(chat)
    chat.page.locator("#temperature input[type=number]").fill("0.3")
    chat.page.locator("#temperature input[type=number]").press("Tab")
    chat.page.locator("#key-kimi input").fill(USER_KEY)
    chat.click("save-keys")
    chat.page.wait_for_function(
        "() => !document.querySelector('#key-kimi input').value"
    )  # the field is cleared once the key is kept
    chat.choose("provider", KIMI)
    chat.page.wait_for_function(
        "() => document.querySelector('#model input[role=combobox]').value === 'moonshot-v1-8k'"
    )
    chat.send("hello kimi")
    chat.wait_for_answer("Echo: hello kimi")
    body, headers = upstream.requests[-1], upstream.headers[-1]
    assert headers["authorization"] == f"Bearer {USER_KEY}"
    assert body["model"] == "moonshot-v1-8k" and body["temperature"] == 0.3
    # the line under the answer: who wrote it, and (Kimi reports no usage) an estimate, "~"
    chat.page.wait_for_selector("#chatbot >> text=/📊 moonshot-v1-8k · Kimi .* · ~\\d+→~\\d+ tok/")

    # "this tab only" by default: nothing in the browser's storage, gone after a reload
    assert USER_KEY not in local_storage(chat)
    chat.reload()
    assert KIMI not in provider_options(chat)

    # "remember on this device": kept across a reload, and in no other browser
    open_settings(chat)
    chat.page.locator("#remember-keys input").check()
    chat.page.locator("#key-kimi input").fill(USER_KEY)
    chat.click("save-keys")
    chat.page.wait_for_function("() => !document.querySelector('#key-kimi input').value")
    chat.page.wait_for_function(
        "() => Object.keys(localStorage).some(k => k.includes('keys') && "
        "localStorage.getItem(k).length > 40)"
    )
    chat.reload()
    assert KIMI in provider_options(chat)
    other = ChatPage(new_context().new_page(), app.url).open()
    assert KIMI not in provider_options(other)

    open_settings(chat)
    chat.click("forget-keys")
    chat.page.wait_for_function(
        "() => !document.querySelector('#provider input[role=combobox]').value.includes('Kimi')"
    )
    assert KIMI not in provider_options(chat)
    chat.reload()
    assert KIMI not in provider_options(chat), "forgotten on this device too"
    assert USER_KEY not in app.log(), "a user's key never reaches the server log"


def test_check_providers_button_shows_the_table(chat):
    open_settings(chat)
    chat.click("check-providers")
    chat.page.wait_for_selector("#check-result table")
    text = chat.page.locator("#check-result").inner_text()
    assert "openai" in text and "demo" in text and "providers passed" in text
    # OPENAI_BASE_URL is the operator's own address (here the fake upstream): not shown
    assert "127.0.0.1" not in text


def test_edit_a_message_then_compare_two_answers(chat, upstream):
    chat.send("first question")
    chat.wait_for_answer("Echo: first question")
    chat.page.locator("#chatbot [data-testid=user]").first.hover()
    chat.page.locator("#chatbot button[aria-label='Edit']").first.click()
    chat.page.locator("#chatbot textarea").first.fill("edited question")
    chat.page.locator("#chatbot button[aria-label='Submit']").first.click()
    chat.wait_for_answer("Echo: edited question")
    chat.wait_idle()
    assert upstream.requests[-1]["messages"][1:] == [{"role": "user", "content": "edited question"}]
    assert not any("first question" in text for text in chat.bot_texts())

    before = len(upstream.requests)
    chat.click("compare")
    chat.page.wait_for_selector("#compare-panel", state="visible")
    for side in ("left", "right"):
        chat.page.wait_for_function(
            "sel => (document.querySelector(sel)?.innerText || '').includes('Echo: edited')",
            arg=f"#compare-{side}",
        )
    chat.wait_idle()
    assert len(upstream.requests) == before + 1, "Compare asked the model once more"
