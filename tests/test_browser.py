"""The app in a real browser: Debian's Chromium driven by Playwright against `python app.py`.

One app per module (the fake upstream over real HTTP, history in the private redis-server),
a fresh browser context (its own localStorage: a different "browser") per test. Screenshots of
key states go to tests/artifacts/; the README's two screenshots are made here too, and copied
to docs/ with `UPDATE_SCREENSHOTS=1 python -m pytest tests/test_browser.py -k "readme or phone"`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from urllib.parse import unquote

import httpx
import pytest
import redis
from PIL import Image

import ui_text
from tests.app_server import AppServer
from tests.browser import (  # noqa: F401  (fixtures)
    ARTIFACTS,
    BOT,
    INPUT,
    ROOT,
    TOAST,
    USER,
    ChatPage,
    browser_fixture,
    context_factory,
    shot,
)
from tests.conftest import app_env
from tests.fake_upstream import FakeUpstream, error, reply, slow

DB = 7  # this module's database on the private redis-server


def browser_env(upstream: FakeUpstream, redis_url: str) -> dict[str, str]:
    return app_env(
        upstream,
        redis_url,
        DEEPSEEK_API_KEY="sk-test-browser-deepseek",
        DEEPSEEK_BASE_URL=upstream.base_url,
        PROVIDER_TIMEOUT_SECONDS="10",
        # One machine sends every message here: the limits have their own tests.
        RATE_LIMIT_PER_MINUTE="1000",
    )


@pytest.fixture(scope="module")
def redis_db(redis_server) -> str:
    url = redis_server.url.rsplit("/", 1)[0] + f"/{DB}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()
    return url


@pytest.fixture(scope="module")
def app(redis_db, upstream):
    with AppServer(browser_env(upstream, redis_db)) as server:
        yield server


@pytest.fixture
def chat(app, new_context, upstream) -> ChatPage:
    """A new browser (context) on the app, page loaded."""
    upstream.script()  # nothing left over from another test
    return ChatPage(new_context().new_page(), app.url).open()


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("browser-images")
    red, blue = folder / "red.png", folder / "blue.jpg"
    Image.new("RGB", (64, 48), (230, 20, 20)).save(red)
    Image.new("RGB", (80, 60), (20, 40, 230)).save(blue, quality=90)
    return {"red": red, "blue": blue}


def last_user_message(upstream: FakeUpstream) -> dict:
    return [m for m in upstream.requests[-1]["messages"] if m["role"] == "user"][-1]


def image_parts(message: dict) -> list[dict]:
    content = message["content"]
    return [p for p in content if p.get("type") == "image_url"] if isinstance(content, list) else []


def test_every_label_has_both_languages():
    assert set(ui_text.EN) == set(ui_text.ZH)
    assert all(ui_text.EN[k].strip() and ui_text.ZH[k].strip() for k in ui_text.EN)
    ui_sources = "".join(
        p.read_text(encoding="utf-8") for p in ROOT.glob("ui*.py") if p.name != "ui_text.py"
    )
    used = set(re.findall(r'i18n\(\s*"(\w+)"', ui_sources))
    assert used and used <= set(ui_text.EN), used - set(ui_text.EN)


# -- sending -------------------------------------------------------------------------------
def test_shift_enter_is_a_new_line_and_enter_sends(chat, upstream):
    chat.type("line one")
    chat.page.locator(INPUT).press("Shift+Enter")
    chat.page.locator(INPUT).press_sequentially("line two")
    assert chat.input_text() == "line one\nline two"
    assert chat.page.locator(USER).count() == 0, "Shift+Enter did not send"
    chat.page.locator(INPUT).press("Enter")
    chat.wait_for_answer("line two")
    assert "line one" in str(last_user_message(upstream)["content"])


def test_type_and_send_with_enter(chat, upstream):
    chat.send("Hello from Chromium")
    chat.wait_for_answer("Echo: Hello from Chromium")
    assert chat.user_texts() == ["Hello from Chromium"]
    assert chat.input_text() == "", "the input is cleared for the next message"
    assert last_user_message(upstream)["content"] in (
        "Hello from Chromium",
        [{"type": "text", "text": "Hello from Chromium"}],
    )
    assert chat.wait_titles("t => t.length === 1") == ["Hello from Chromium"]
    shot(chat.page, "sent-with-enter")


def test_two_images_show_in_the_chat_and_the_answer_streams(chat, upstream, images):
    answer = "The first picture is red and the second one is blue. " * 3
    upstream.script(slow(answer, delay=0.04))
    chat.send("What colours are these?", [images["red"], images["blue"]], wait=False)
    # Streaming: part of the answer is on screen before all of it.
    chat.page.wait_for_function(
        "([sel, full]) => { const b = [...document.querySelectorAll(sel)].map(e => e.innerText)"
        ".join(' '); return b.includes('The first picture') && !b.includes(full.trim()); }",
        arg=[BOT, answer],
    )
    shot(chat.page, "two-images-streaming")
    chat.wait_idle()
    chat.wait_for_answer(answer.strip())
    assert chat.page.locator(f"{USER} img").count() == 2, "both images are in the chat"
    parts = image_parts(last_user_message(upstream))
    assert len(parts) == 2 and all(
        p["image_url"]["url"].startswith("data:image/") for p in parts
    ), "both images went to the model"
    shot(chat.page, "two-images-answered")


def test_switch_role_provider_and_model(chat, upstream):
    chat.choose("role", "Teacher · 老师")
    chat.choose("provider", "DeepSeek")
    chat.choose("model", "deepseek-reasoner")
    chat.send("Why is the sky blue?")
    chat.wait_for_answer("Echo: Why is the sky blue?")
    request = upstream.requests[-1]
    assert request["model"] == "deepseek-reasoner"
    assert upstream.headers[-1]["authorization"] == "Bearer sk-test-browser-deepseek"
    system = request["messages"][0]
    assert system["role"] == "system" and "patient, encouraging teacher" in str(system["content"])
    shot(chat.page, "switched-role-provider-model")


# -- Stop, Retry, Undo -------------------------------------------------------------------------
def test_stop_mid_answer_keeps_the_partial_answer(chat, upstream):
    full = "This answer is long and slow, word after word, " * 20
    upstream.script(slow(full, delay=0.05))
    disconnects = len(upstream.disconnects)
    chat.send("Tell me a long story", wait=False)
    chat.wait_for_answer("This answer is long")
    chat.page.wait_for_selector("#stop", state="visible")
    shot(chat.page, "stop-visible-while-streaming")
    chat.click("stop")
    chat.wait_idle()
    assert upstream.wait_for_disconnect(timeout=10), "Stop closed the upstream stream"
    assert len(upstream.disconnects) > disconnects
    shown = chat.chat_text()
    assert "This answer is long" in shown and full.strip() not in shown, "the part that arrived"
    shot(chat.page, "stopped")
    # The input works again at once.
    chat.send("Are you still there?")
    chat.wait_for_answer("Echo: Are you still there?")


def test_retry_answers_the_last_message_again(chat, upstream):
    upstream.script(reply("First answer."))
    chat.send("Give me an answer")
    chat.wait_for_answer("First answer.")
    upstream.script(reply("A better second answer."))
    chat.click("retry")
    chat.wait_for_answer("A better second answer.")
    chat.wait_idle()
    assert "First answer." not in chat.chat_text(), "Retry replaced the answer"
    assert chat.user_texts() == ["Give me an answer"], "the question is asked once"
    assert last_user_message(upstream)["content"] in (
        "Give me an answer",
        [{"type": "text", "text": "Give me an answer"}],
    )


def test_undo_removes_the_exchange_and_gives_the_message_back(chat):
    chat.send("Keep this one")
    chat.wait_for_answer("Echo: Keep this one")
    chat.send("Oops, a typo in this one")
    chat.wait_for_answer("Echo: Oops, a typo")
    chat.click("undo")
    chat.page.wait_for_function("sel => document.querySelectorAll(sel).length === 1", arg=USER)
    chat.wait_idle()
    assert chat.user_texts() == ["Keep this one"]
    assert chat.input_text() == "Oops, a typo in this one", "the message is back in the box"
    shot(chat.page, "undone")


# -- conversations -----------------------------------------------------------------------------
def test_new_chat_and_switch_back(chat):
    chat.send("First conversation")
    chat.wait_for_answer("Echo: First conversation")
    chat.new_chat()
    chat.send("Second conversation")
    chat.wait_for_answer("Echo: Second conversation")
    titles = chat.wait_titles("t => t.length === 2")
    assert titles == ["Second conversation", "First conversation"], "newest first"
    chat.open_conversation("First conversation")
    chat.wait_for_answer("Echo: First conversation")
    assert chat.user_texts() == ["First conversation"]
    shot(chat.page, "switched-back")
    # The next message continues the conversation that is open.
    chat.send("More for the first")
    chat.wait_for_answer("Echo: More for the first")
    assert chat.user_texts() == ["First conversation", "More for the first"]
    assert chat.wait_titles("t => t[0] === 'First conversation'") == [
        "First conversation",
        "Second conversation",
    ], "the conversation just used moves to the top"


def test_reload_shows_the_same_list_and_conversation_with_images(chat, images):
    chat.send("An old chat")
    chat.new_chat()
    chat.send("Look at this", [images["red"]])
    chat.wait_for_answer("Echo: Look at this")
    before = chat.wait_titles("t => t.length === 2")
    chat.reload()
    chat.wait_for_answer("Echo: Look at this")
    assert chat.wait_titles("t => t.length === 2") == before
    assert chat.user_texts()[0].startswith("Look at this")
    image = chat.page.locator(f"{USER} img").first
    image.wait_for()
    # The image is really served (not a broken link).
    assert image.evaluate("img => img.decode().then(() => img.naturalWidth)") > 0
    shot(chat.page, "after-reload")


def test_the_address_names_the_open_conversation(app, new_context):
    """`?c=<id>` follows the open conversation; a bookmark or a second tab of the same browser
    opens it; another browser's link opens nothing of the other browser."""
    context = new_context()
    chat = ChatPage(context.new_page(), app.url).open()
    assert "c=" not in chat.page.url
    chat.send("The first chat")
    chat.page.wait_for_function("() => new URL(location).searchParams.get('c')")
    first = chat.page.evaluate("() => new URL(location).searchParams.get('c')")
    chat.new_chat()
    chat.page.wait_for_function("() => !new URL(location).searchParams.get('c')")
    chat.send("The second chat")
    chat.page.wait_for_function(f"() => new URL(location).searchParams.get('c') !== '{first}'")
    # A second tab of this browser, from a bookmark of the first chat.
    tab = ChatPage(context.new_page(), f"{app.url}?c={first}").open()
    tab.wait_for_answer("Echo: The first chat")
    assert tab.user_texts() == ["The first chat"]
    # Another browser with that link: not its conversation, so nothing of it shows.
    other = ChatPage(new_context().new_page(), f"{app.url}?c={first}").open()
    assert other.user_texts() == [] and "The first chat" not in other.chat_text()
    assert "does not have" in other.toast()
    # A junk id is ignored.
    junk = ChatPage(context.new_page(), f"{app.url}?c=../../etc").open()
    assert junk.page.locator(INPUT).is_enabled()


def test_buttons_with_nothing_to_do_leave_the_page_as_it_is(app, chat):
    """Undo with no chat, saving a prompt without a name, renaming to nothing: each says why
    (or nothing) and changes nothing: no error in the log, no stray value in a field, the
    open chat still selected in the list."""
    tracebacks = app.log().count("Traceback")
    chat.click("undo")
    chat.page.wait_for_timeout(500)
    chat.choose("role", "Custom · 自定义")
    chat.page.locator("#custom-prompt textarea").fill("You are terse.")
    chat.click("save-prompt")
    assert "give it a name" in chat.toast()
    assert chat.page.locator("#custom-prompt textarea").input_value() == "You are terse."
    chat.send("Keep my title")
    before = chat.wait_titles("t => t.length === 1")
    assert chat.page.locator("#conversations .conv[aria-current]").count() == 1
    chat.open_chat_tools()
    chat.page.locator("#chat-title input").fill("   ")
    chat.page.locator("#chat-title input").press("Enter")
    chat.page.wait_for_timeout(800)
    assert chat.titles() == before
    assert chat.page.locator("#conversations .conv[aria-current]").count() == 1, "still open"
    assert app.log().count("Traceback") == tracebacks
    assert chat.page.locator(INPUT).is_enabled()


def test_two_browsers_never_see_each_others_conversations(app, new_context):
    alice = ChatPage(new_context().new_page(), app.url).open()
    bob = ChatPage(new_context().new_page(), app.url).open()
    alice.send("Alice's secret plan")
    bob.send("Bob's shopping list")
    assert alice.wait_titles("t => t.length === 1") == ["Alice's secret plan"]
    assert bob.wait_titles("t => t.length === 1") == ["Bob's shopping list"]
    bob.reload()
    assert bob.titles() == ["Bob's shopping list"]
    assert "Alice" not in bob.chat_text()


def test_rename_export_import_and_delete(chat, tmp_path):
    chat.send("A chat to manage")
    chat.wait_for_answer("Echo: A chat to manage")
    chat.open_chat_tools()
    title = chat.page.locator("#chat-title textarea, #chat-title input").first
    # As a user would: the box shows the conversation's title before it is edited (it is
    # filled in by its own event, which may still be on its way when the answer is done).
    chat.page.wait_for_function(
        "() => document.querySelector('#chat-title textarea, #chat-title input')"
        "?.value === 'A chat to manage'"
    )
    title.fill("Renamed by the test")
    title.press("Enter")
    assert chat.wait_titles("t => t[0] === 'Renamed by the test'") == ["Renamed by the test"]

    chat.click("export")
    links = chat.page.locator("#exported a")
    links.first.wait_for()
    hrefs = links.evaluate_all("links => links.map(a => a.href)")
    assert sorted(href.rsplit(".", 1)[-1] for href in hrefs) == ["json", "md"], hrefs
    for href in hrefs:  # named after the title, in a folder no one can guess
        path = unquote(href)
        assert re.search(r"/chat-exports/[0-9a-f]{32}/Renamed by the test\.(md|json)$", path)
        assert httpx.get(href, timeout=10).status_code == 200  # the link is the capability
    with chat.page.expect_download() as download:
        links.nth([href.endswith(".json") for href in hrefs].index(True)).click()
    exported = tmp_path / "export.json"
    download.value.save_as(exported)
    data = json.loads(exported.read_text(encoding="utf-8"))
    assert [m["content"] for m in data["messages"]] == [
        "A chat to manage",
        "Echo: A chat to manage",
    ]
    shot(chat.page, "exported")

    with chat.page.expect_file_chooser() as chooser:
        chat.click("import")
    chooser.value.set_files(str(exported))
    titles = chat.wait_titles("t => t.length === 2")
    assert titles == ["Renamed by the test (2)", "Renamed by the test"], "a new one, told apart"
    chat.wait_for_answer("Echo: A chat to manage")

    chat.click("delete-chat")
    assert chat.wait_titles("t => t.length === 1") == ["Renamed by the test"]
    chat.page.wait_for_function("sel => document.querySelectorAll(sel).length === 0", arg=USER)
    chat.reload()
    assert chat.titles() == ["Renamed by the test"]
    # Deleting the exported conversation takes its export files with it, once Undo is over.
    chat.open_conversation("Renamed by the test")
    chat.wait_for_answer("Echo: A chat to manage")
    chat.click("delete-chat")
    chat.wait_titles("t => t.length === 0")
    chat.page.wait_for_selector("#deleted-row", state="visible")
    chat.page.wait_for_selector("#deleted-row", state="hidden", timeout=20_000)
    gone = [httpx.get(href, timeout=10).status_code for href in hrefs]
    assert all(status in (403, 404) for status in gone), gone  # Gradio: 403 for a lost file


# -- errors (markup in replies: tests/test_faults_browser.py) ------------------------
def test_upstream_error_shows_a_readable_message_and_the_input_stays_usable(chat, upstream):
    upstream.script(
        error(401, {"error": {"message": "Incorrect API key provided", "code": "invalid_api_key"}})
    )
    chat.send("Will this work?")
    chat.wait_for_answer("OPENAI_API_KEY")
    assert "Traceback" not in chat.page.content()
    assert "OPENAI_API_KEY" in chat.toast()
    shot(chat.page, "upstream-error")
    chat.send("And now?")
    chat.wait_for_answer("Echo: And now?")


# -- a restart with REDIS_URL ------------------------------------------------------------------
def test_restart_with_redis_shows_the_same_list(redis_server, upstream, new_context, images):
    """No APP_SECRET: the BrowserState secret is kept in Redis, so ids survive a restart."""
    url = redis_server.url.rsplit("/", 1)[0] + f"/{DB + 2}"  # 8 is test_faults_browser's
    redis.Redis.from_url(url).flushdb()
    server = AppServer(browser_env(upstream, url)).start()
    try:
        chat = ChatPage(new_context().new_page(), server.url).open()
        chat.send("Before the restart", [images["blue"]])
        chat.wait_for_answer("Echo: Before the restart")
        chat.new_chat()
        chat.send("Also before")
        before = chat.wait_titles("t => t.length === 2")
        server.stop()
        server.start()  # the same port: the same origin, so the same localStorage
        chat.reload()
        assert chat.wait_titles("t => t.length === 2") == before
        chat.wait_for_answer("Echo: Also before")
        chat.open_conversation("Before the restart")
        chat.wait_for_answer("Echo: Before the restart")
        chat.page.locator(f"{USER} img").first.wait_for()  # the image, from Redis, after both
        assert chat.user_texts()[0].startswith("Before the restart")
        shot(chat.page, "after-app-restart")
    finally:
        server.stop()


# -- the zero-configuration app: what a new user (or a fresh Space) sees ---------------------
@pytest.fixture(scope="module")
def demo_app():
    """`python app.py` with nothing set: the offline demo provider and the embedded store."""
    with AppServer() as server:
        yield server


def publish(path: Path, name: str) -> None:
    """Copy a screenshot to docs/ (README's) when UPDATE_SCREENSHOTS=1: a few pixels differ on
    every run, so copying each time would change the committed files for nothing."""
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        shutil.copyfile(path, ROOT / "docs" / name)


def test_readme_screenshot_the_app_answering_about_an_image(demo_app, new_context):
    chat = ChatPage(new_context(width=1280, height=960).new_page(), demo_app.url).open()
    assert "in memory" in chat.page.locator("#status").inner_text(), "the UI says so"
    shot(chat.page, "empty-chat-with-examples")
    # The example with a picture: a click fills the input, Enter sends it.
    chat.page.locator("#chatbot button.example").first.click()
    chat.page.wait_for_selector("#chat-input img")
    assert chat.input_text().startswith("What is in this picture?")
    chat.page.locator(INPUT).press("Enter")
    chat.page.wait_for_function("sel => document.querySelectorAll(sel).length > 0", arg=USER)
    chat.wait_idle()
    chat.wait_for_answer("960×640 JPEG")
    text = chat.chat_text()
    assert "Demo mode" in text and "mostly" in text
    image = chat.page.locator(f"{USER} img").first
    assert image.bounding_box()["height"] <= 190, "chat images are previews, not full size"
    chat.scroll_to_message(0)
    path = shot(chat.page, "readme-desktop")
    publish(path, "screenshot.png")


def test_phone_width_layout_works(demo_app, new_context):
    context = new_context(
        width=390, height=844, device_scale_factor=2, is_mobile=True, has_touch=True
    )
    chat = ChatPage(context.new_page(), demo_app.url).open()
    page = chat.page
    sidebar_open = "() => document.querySelector('#sidebar').classList.contains('open')"
    sidebar_closed = "() => !document.querySelector('#sidebar').classList.contains('open')"
    # The sidebar starts closed on a phone: open, it would cover the whole chat.
    page.wait_for_function(sidebar_closed)
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 390, "no sideways scroll"
    for elem_id in ("chatbot", "chat-input", "role", "provider", "model", "retry", "undo"):
        box = page.locator(f"#{elem_id}").bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= 390, elem_id
    chat.send("Hello from a phone")
    chat.wait_for_answer("Hello from a phone")

    # New chat from the sidebar: it closes again, and the examples are back.
    page.locator("#sidebar .toggle-button").click()
    page.wait_for_function(sidebar_open)
    page.locator("#new-chat").click()
    page.wait_for_function(sidebar_closed)
    page.locator("#chatbot button.example").first.click()
    page.wait_for_selector("#chat-input img")
    page.locator(INPUT).press("Enter")
    page.wait_for_function("sel => document.querySelectorAll(sel).length > 0", arg=USER)
    chat.wait_idle()
    chat.wait_for_answer("960×640 JPEG")
    assert page.evaluate("() => document.documentElement.scrollWidth") <= 390
    chat.scroll_to_message(0)
    path = shot(page, "readme-phone")
    publish(path, "screenshot-mobile.png")

    # Switch back from the sidebar: picking a conversation closes it.
    page.locator("#sidebar .toggle-button").click()
    page.wait_for_function(sidebar_open)
    titles = chat.wait_titles("t => t.length === 2")
    assert titles[0].startswith("What is in this picture") and titles[1] == "Hello from a phone"
    shot(page, "phone-sidebar-open")
    chat.open_conversation("Hello from a phone")
    page.wait_for_function(sidebar_closed)
    chat.wait_for_answer("Hello from a phone")
    assert chat.user_texts() == ["Hello from a phone"]


@pytest.mark.parametrize(
    ("locale", "new_chat", "role", "status"),
    [
        ("en-US", "New chat", "Role", "in memory"),
        ("zh-CN", "新对话", "角色", "保存在内存中"),
    ],
)
def test_the_ui_speaks_the_browsers_language(demo_app, new_context, locale, new_chat, role, status):
    chat = ChatPage(new_context(locale=locale).new_page(), demo_app.url).open()
    page = chat.page
    assert new_chat in page.locator("#new-chat").inner_text()
    assert page.locator("#role").get_by_text(role, exact=True).is_visible()
    assert status in page.locator("#status").inner_text()
    shown = page.locator("body").inner_text()
    assert "__i18n__" not in shown and "translation_metadata" not in shown, "all translated"
    shot(page, f"language-{locale}")
