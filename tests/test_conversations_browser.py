"""Conversations as a user meets them in Chromium (issue 15): the grouped list with its menu,
pins and Undo, search, versions and branches with their arrows, Compare side by side, who
wrote each answer, thumbs, "Load earlier", share links, and titles made by the model.
One app per module on the private redis-server; screenshots in tests/artifacts/ (and docs/
with UPDATE_SCREENSHOTS=1)."""

from __future__ import annotations

import json
import os
import shutil
import time

import pytest
import redis

from tests.app_server import AppServer
from tests.browser import (  # noqa: F401  (fixtures)
    ARTIFACTS,
    BOT,
    ROOT,
    USER,
    ChatPage,
    browser_fixture,
    context_factory,
    shot,
)
from tests.conftest import app_env
from tests.fake_upstream import reply

DB = 10
NAV = '#chatbot a[href^="#mmchat-version-"]'
PANEL = "#compare-panel"


@pytest.fixture(scope="module")
def redis_db(redis_server) -> str:
    url = redis_server.url.rsplit("/", 1)[0] + f"/{DB}"
    redis.Redis.from_url(url).flushdb()
    return url


@pytest.fixture(scope="module")
def app(redis_db, upstream):
    env = app_env(upstream, redis_db, RATE_LIMIT_PER_MINUTE="1000", PROVIDER_TIMEOUT_SECONDS="10")
    with AppServer(env) as server:
        yield server


@pytest.fixture
def chat(app, new_context, upstream) -> ChatPage:
    upstream.script()
    return ChatPage(new_context().new_page(), app.url).open()


def docs_shot(page, name: str) -> None:
    """A screenshot for the docs: in tests/artifacts/, and copied to docs/ on request."""
    path = shot(page, name)
    if os.environ.get("UPDATE_SCREENSHOTS") and path.exists():
        shutil.copy(path, ROOT / "docs" / f"screenshot-{name}.png")


def wait_text(chat: ChatPage, selector: str, text: str) -> None:
    chat.page.wait_for_function(
        "([sel, text]) => [...document.querySelectorAll(sel)]"
        ".some(e => (e.innerText || '').includes(text))",
        arg=[selector, text],
    )


def group_titles(chat: ChatPage) -> list[str]:
    return [
        t.strip() for t in chat.page.locator("#conversations .conv-group-title").all_inner_texts()
    ]


# -- the list --------------------------------------------------------------------------------
def test_the_list_is_grouped_by_date_with_pins_a_menu_and_undo(chat, app, redis_db):
    chat.send("Plan a trip to Beijing")
    chat.new_chat()
    chat.send("Write a haiku about rain")
    titles = chat.wait_titles("t => t.length === 2")
    assert titles == ["Write a haiku about rain", "Plan a trip to Beijing"]
    assert group_titles(chat) == ["Today · 今天"]
    # A conversation last changed three days ago is under "Previous 7 days".
    store = redis.Redis.from_url(redis_db, decode_responses=True)
    browser_key = next(k for k in store.scan_iter("chat:browser:*:convs"))
    old = next(
        cid for cid in store.zrange(browser_key, 0, -1)
        if store.hget(f"chat:conv:{cid}:meta", "title") == "Plan a trip to Beijing"
    )  # fmt: skip
    three_days_ago = time.time() - 3 * 86400
    store.zadd(browser_key, {old: three_days_ago})
    store.hset(f"chat:conv:{old}:meta", "updated", f"{three_days_ago:.6f}")
    chat.reload()
    assert group_titles(chat) == ["Today · 今天", "Previous 7 days · 7 天内"]

    # Pin from the chat's menu in the list: it goes to the top, under "Pinned".
    chat.list_menu("Plan a trip to Beijing", "pin")
    chat.page.wait_for_function(
        "() => document.querySelector('#conversations .conv-group')?.dataset.group === 'pinned'"
    )
    assert chat.titles()[0] == "Plan a trip to Beijing"
    chat.list_menu("Write a haiku about rain", "rename")
    chat.page.wait_for_function("() => document.activeElement?.closest('#chat-title')")
    docs_shot(chat.page, "list")

    # Delete from the menu: gone from the list at once, back with Undo.
    chat.list_menu("Write a haiku about rain", "delete")
    chat.wait_titles("t => t.length === 1")
    chat.page.wait_for_selector("#deleted-row", state="visible")
    assert "Write a haiku about rain" in chat.page.locator("#deleted-note").inner_text()
    chat.click("undo-delete")
    assert chat.wait_titles("t => t.length === 2")[1] == "Write a haiku about rain"
    chat.wait_for_answer("Echo: Write a haiku about rain")
    chat.page.wait_for_selector("#deleted-row", state="hidden")
    # Unpinned, it goes back among the dates; a reload keeps all of it.
    chat.list_menu("Plan a trip to Beijing", "unpin")
    chat.page.wait_for_function(
        "() => !document.querySelector('#conversations [data-group=pinned]')"
    )
    chat.reload()
    assert chat.titles() == ["Write a haiku about rain", "Plan a trip to Beijing"]


def test_search_finds_titles_and_message_text_with_the_match_shown(chat, upstream):
    upstream.script(reply("The Forbidden City is the highlight of BEIJING in spring."))
    chat.send("Where should I go in China?")
    chat.new_chat()
    chat.send("北京天气怎么样")
    chat.new_chat()
    chat.send("A shopping list")
    chat.wait_titles("t => t.length === 3")
    search = chat.page.locator("#conversation-search input, #conversation-search textarea").first
    search.fill("forbidden city")  # in an answer, another case
    chat.page.wait_for_function(
        "() => document.querySelectorAll('#conversations .conv').length === 1"
    )
    assert chat.titles() == ["Where should I go in China?"]
    snippet = chat.page.locator("#conversations .conv-snippet").inner_text()
    assert "Forbidden City" in snippet
    search.fill("北京")  # a title, in Chinese
    chat.page.wait_for_function(
        "() => [...document.querySelectorAll('#conversations .conv-title')]"
        ".map(e => e.innerText).join() === '北京天气怎么样'"
    )
    search.fill("nothing like this")
    wait_text(chat, "#conversations", "No chat matches")
    search.fill("")
    chat.wait_titles("t => t.length === 3")


# -- versions ------------------------------------------------------------------------------
def test_retry_keeps_versions_and_the_arrows_switch_them(chat, upstream):
    upstream.script(reply("First take on it."), reply("Second take on it."))
    chat.send("Explain recursion")
    chat.wait_for_answer("First take on it.")
    chat.click("retry")
    chat.wait_idle()
    chat.wait_for_answer("Second take on it.")
    wait_text(chat, BOT, "2 / 2")
    chat.page.locator(NAV).first.click()  # ‹
    chat.wait_for_answer("First take on it.")
    wait_text(chat, BOT, "1 / 2")
    assert "Second take on it." not in chat.chat_text()
    chat.reload()
    chat.wait_for_answer("First take on it.")  # the version shown is kept
    # ...and it is what the model sees next.
    chat.send("Shorter please")
    sent = [m["content"] for m in upstream.requests[-1]["messages"][1:]]
    assert sent == ["Explain recursion", "First take on it.", "Shorter please"]


def test_an_edit_starts_a_branch_with_its_own_answers(chat, upstream):
    chat.send("one")
    chat.send("two")
    chat.wait_for_answer("Echo: two")
    chat.page.locator(USER).first.hover()
    chat.page.locator("#chatbot button[aria-label='Edit']").first.click()
    chat.page.locator("#chatbot textarea").first.fill("uno")
    chat.page.locator("#chatbot button[aria-label='Submit']").first.click()
    chat.wait_idle()
    chat.wait_for_answer("Echo: uno")
    assert chat.user_texts()[0].startswith("uno") and len(chat.user_texts()) == 1
    wait_text(chat, USER, "2 / 2")
    docs_shot(chat.page, "versions")
    chat.page.locator(NAV).first.click()  # back to the first version: its whole branch
    chat.wait_for_answer("Echo: two")
    assert [t.split("\n")[0] for t in chat.user_texts()] == ["one", "two"]


def test_compare_shows_two_models_side_by_side_and_the_pick_continues(chat, upstream):
    upstream.script(reply("Answer from the big model."), reply("Answer from the mini model."))
    chat.send("Name a colour")
    chat.wait_for_answer("Answer from the big model.")
    chat.choose("model", "gpt-4o-mini 👁")
    chat.click("compare")
    chat.page.wait_for_selector(PANEL, state="visible")
    wait_text(chat, "#compare-right", "Answer from the mini model.")
    chat.wait_idle()
    wait_text(chat, "#compare-left", "Answer from the big model.")
    assert "gpt-4o-mini" in chat.page.locator("#compare-right-label").inner_text()
    assert "OpenAI" in chat.page.locator("#compare-left-label").inner_text()
    left = chat.page.locator("#compare-left").bounding_box()
    right = chat.page.locator("#compare-right").bounding_box()
    assert left and right and right["x"] > left["x"] + left["width"] / 2, "side by side"
    docs_shot(chat.page, "compare")
    chat.click("pick-left")
    chat.page.wait_for_selector(PANEL, state="hidden")
    chat.wait_for_answer("Answer from the big model.")
    wait_text(chat, BOT, "1 / 2")
    chat.send("Why?")
    sent = [m["content"] for m in upstream.requests[-1]["messages"][1:]]
    assert sent == ["Name a colour", "Answer from the big model.", "Why?"]


def test_compare_stacks_on_a_phone(app, new_context, upstream):
    upstream.script(reply("Left."), reply("Right."))
    chat = ChatPage(new_context(width=390, height=844).new_page(), app.url).open()
    chat.send("Hi")
    chat.click("compare")
    wait_text(chat, "#compare-right", "Right.")
    chat.wait_idle()
    left = chat.page.locator("#compare-left").bounding_box()
    right = chat.page.locator("#compare-right").bounding_box()
    assert left and right and right["y"] >= left["y"] + left["height"] - 1, "one above the other"
    # The line saying who wrote an answer wraps here rather than push the page sideways.
    assert chat.page.evaluate("() => document.documentElement.scrollWidth") <= 390
    chat.page.locator(PANEL).scroll_into_view_if_needed()
    docs_shot(chat.page, "compare-phone")


# -- who wrote it, thumbs, the whole conversation --------------------------------------------
def test_every_answer_says_who_wrote_it_and_takes_a_thumb(chat):
    chat.send("Hello")
    chat.wait_for_answer("Echo: Hello")
    wait_text(chat, BOT, "gpt-4o · OpenAI ·")
    assert "UTC" in chat.chat_text()
    # Who, when and the usage fit on one line.
    title = chat.page.locator("#chatbot .thought-group .title p").filter(has_text="gpt-4o · OpenAI")
    box = title.bounding_box()
    assert box and box["height"] < 30, (box, title.evaluate("e => e.outerHTML"))
    chat.page.locator("#chatbot button[aria-label='Like']").last.click()
    wait_text(chat, "#usage-total", "👍 1")
    chat.reload()
    assert "👍 1" in chat.page.locator("#usage-total").inner_text()
    chat.page.wait_for_selector("#chatbot button[aria-label='Liked']")


def test_earlier_messages_load_on_demand(chat, tmp_path):
    messages = []
    for number in range(30):
        messages += [
            {"role": "user", "content": f"question {number}"},
            {"role": "assistant", "content": f"answer {number}", "status": "complete"},
        ]
    exported = tmp_path / "long.json"
    exported.write_text(
        json.dumps(
            {
                "format": "chat-history",
                "version": 2,
                "meta": {"title": "Long"},
                "messages": messages,
            }
        ),  # fmt: skip
        encoding="utf-8",
    )
    with chat.page.expect_file_chooser() as chooser:
        chat.click("import")
    chooser.value.set_files(str(exported))
    chat.wait_for_answer("answer 29")
    shown = chat.page.locator(USER).count()
    assert shown == 20 and "question 0" not in chat.chat_text()
    chat.page.locator('#chatbot a[href="#mmchat-load-earlier"]').click()
    chat.page.wait_for_function(
        "([sel, n]) => document.querySelectorAll(sel).length > n", arg=[USER, shown]
    )
    assert chat.page.locator(USER).count() == 30
    assert "question 0" in chat.chat_text()
    assert not chat.page.locator('#chatbot a[href="#mmchat-load-earlier"]').count()


# -- share -----------------------------------------------------------------------------------
def test_a_shared_link_is_read_only_and_stops_at_once(chat, app, new_context, tmp_path):
    from PIL import Image

    picture = tmp_path / "green.png"
    Image.new("RGB", (64, 48), (20, 200, 30)).save(picture)
    chat.send("What colour is this?", [picture])
    chat.wait_for_answer("Echo: What colour is this?")
    chat.click("share-chat")
    chat.page.wait_for_selector("#share-row", state="visible")
    box = chat.page.locator("#share-link textarea, #share-link input").first
    chat.page.wait_for_function("el => el.value.startsWith('http')", arg=box.element_handle())
    link = box.input_value()
    assert link.startswith(app.url.rstrip("/")) and "?share=" in link
    docs_shot(chat.page, "share")

    reader = new_context(width=390, height=844).new_page()
    reader.goto(link)
    reader.wait_for_selector("#shared-view", state="visible")
    reader.wait_for_function(
        "() => (document.querySelector('#shared-chat')?.innerText || '')"
        ".includes('Echo: What colour is this?')"
    )
    assert reader.locator("#shared-chat img").count() >= 1, "the image came with it"
    assert not reader.locator("#chat-input").is_visible()
    assert not reader.locator("#conversations").is_visible()
    assert not reader.locator("#new-chat").is_visible()
    docs_shot(reader, "shared-phone")

    chat.click("unshare-chat")
    chat.page.wait_for_selector("#share-row", state="hidden")
    again = new_context().new_page()
    again.goto(link)
    again.wait_for_function(
        "() => (document.querySelector('#shared-title')?.innerText || '').includes('not available')"
    )
    assert "Echo: What colour" not in again.locator("body").inner_text()


# -- titles made by the model ------------------------------------------------------------------
@pytest.fixture(scope="module")
def titled_app(redis_server, upstream):
    url = redis_server.url.rsplit("/", 1)[0] + f"/{DB + 1}"
    redis.Redis.from_url(url).flushdb()
    env = app_env(upstream, url, AUTO_TITLE="true", RATE_LIMIT_PER_MINUTE="1000")
    with AppServer(env) as server:
        yield server


def test_the_model_titles_a_chat_after_its_first_answer(titled_app, new_context, upstream):
    upstream.script(reply("Spring, for the blossoms."), reply("Best time to visit Kyoto"))
    chat = ChatPage(new_context(locale="zh-CN").new_page(), titled_app.url).open()
    chat.send("When is the best time of year to go to Kyoto, and why?")
    assert chat.wait_titles("t => t[0] === 'Best time to visit Kyoto'")
    assert chat.page.locator("#chat-title input").input_value() == "Best time to visit Kyoto"
    docs_shot(chat.page, "title-zh")
