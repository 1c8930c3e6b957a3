"""What a reader's browser makes of hostile chat text (issue 13, items 7 and 8), in Debian's
Chromium against `python app.py`: the model's reply (the fake upstream, real HTTP), the user's
own text and an imported export carry markup tricks; no live form control, embed or image may
appear in the chat and no URL they name may be fetched. A formula nested 150 deep must not
crash the tab, not even when the page reopens the stored conversation on a reload. Gradio's own
frontend (marked, DOMPurify, KaTeX) renders here, so this is the check that markup_text.py's reading
of Markdown agrees with the one that counts.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from urllib.parse import urlsplit

import gradio
import pytest
import redis

from markup_text import safe_markdown
from tests.app_server import AppServer
from tests.browser import (  # noqa: F401  (fixtures)
    BOT,
    USER,
    ChatPage,
    browser_fixture,
    context_factory,
    shot,
)
from tests.conftest import app_env
from tests.fake_upstream import FakeUpstream, reply
from tests.test_markup import ATTACKS, DEEP, PHISH, PIECES, assert_html_harmless

DB = 12  # this module's database on the private redis-server

# What must never be live inside a message (the code blocks' own copy buttons are Gradio's).
LIVE = (
    "form, input, textarea, select, option, iframe, frame, object, embed, img, video, audio, "
    "source, picture, link, style, meta, base, image, foreignObject, details, "
    "button:not(.copy_code_button)"
)
# Every URL the hostile texts name carries "leak" (or is the bare `x` of <img src=x>).
TRICKS = f"""Here you go.

    ```
{PHISH}
    ```

\\`not code\\` {PHISH} \\`

````
```
{PHISH}
````

```
x
```~
{PHISH}
```

$
```
$
{PHISH}
```

<img src=x> <img src="/gradio_api/info?leak=img"> <IMG SRC="//127.0.0.1:9/leak-remote">
![a](/gradio_api/startup-events?leak=md) ![b](http://127.0.0.1:9/leak-md-remote)
![c][ref] <video src="/leak-video"></video> <svg><image href="/leak-svg"/></svg>
<div style="background:url(/leak-style)">styled</div>

[ref]: /gradio_api/startup-events?leak=ref

```mermaid
graph TD
A@{{ img: "/leak-mermaid" }}
```

Normal `<b>` code and <b>bold</b>, $x^2$. end-of-tricks"""


@pytest.fixture(scope="module")
def redis_db(redis_server) -> redis.Redis:
    url = redis_server.url.rsplit("/", 1)[0] + f"/{DB}"
    conn = redis.Redis.from_url(url)
    conn.flushdb()
    yield conn
    conn.close()


@pytest.fixture(scope="module")
def app(redis_db, upstream: FakeUpstream):
    kwargs = redis_db.connection_pool.connection_kwargs
    env = app_env(
        upstream,
        f"redis://{kwargs['host']}:{kwargs['port']}/{DB}",
        RATE_LIMIT_PER_MINUTE="1000",
        RATE_LIMIT_PER_IP_PER_MINUTE="1000",
    )
    with AppServer(env) as server:
        yield server


@pytest.fixture
def chat(app, new_context, upstream) -> ChatPage:
    upstream.reset()
    page = new_context().new_page()
    page.requested = []
    page.on("request", lambda req: page.requested.append(req.url))
    page.crashed = []
    page.on("crash", lambda p: page.crashed.append(True))
    return ChatPage(page, app.url).open()


def leaks(page) -> list[str]:
    """Requests for a URL that a hostile text named."""
    return [
        url
        for url in page.requested
        if "leak" in url or urlsplit(url).path.rstrip("/").endswith("/x")
    ]


def assert_nothing_live(chat: ChatPage) -> None:
    page = chat.page
    page.wait_for_timeout(500)  # let any image that wrongly exists start loading
    assert page.locator("#chatbot .message-content").count() >= 2
    found = page.locator(f"#chatbot .message-content :is({LIVE})").evaluate_all(
        "els => els.map(e => e.outerHTML.slice(0, 120))"
    )
    assert found == []
    assert leaks(page) == []
    assert page.evaluate("1 + 1") == 2 and not page.crashed


def test_a_reply_with_markup_tricks_renders_as_text_and_fetches_nothing(chat, upstream):
    upstream.script(reply(TRICKS, chunk_size=40))
    chat.send("Show me some HTML")
    chat.wait_for_answer("end-of-tricks")
    assert_nothing_live(chat)
    shown = chat.chat_text()
    # The markup reads as the model wrote it; normal Markdown and LaTeX still render.
    assert '<input name=key placeholder="API key">' in shown.replace("\u2060", "")
    assert chat.page.locator(f"{BOT} b", has_text="bold").count() == 1
    assert chat.page.locator(f"{BOT} .katex").count() >= 1
    codes = chat.page.locator(f"{BOT} code").all_inner_texts()
    assert "<b>" in [code.replace("\u2060", "") for code in codes]
    assert chat.page.locator(f"{BOT} a[href*='leak=md']").count() == 1  # an image: now a link
    chat.scroll_to_message(0)
    shot(chat.page, "render-tricks-reply")
    chat.reload()  # the stored conversation, rendered again from Redis
    chat.wait_for_answer("end-of-tricks")
    assert_nothing_live(chat)


def test_the_users_own_text_with_markup_tricks_is_shown_as_text(chat, upstream):
    upstream.script(reply("Fine. end-of-answer"))
    chat.send(TRICKS)
    chat.wait_for_answer("end-of-answer")
    assert_nothing_live(chat)
    assert 'placeholder="API key"' in chat.user_texts()[0].replace("\u2060", "")
    chat.reload()
    chat.wait_for_answer("end-of-answer")
    assert_nothing_live(chat)


def test_editing_a_message_with_markup_keeps_what_the_user_wrote(chat, upstream):
    chat.send("Is <div> or <span> right here?")
    chat.wait_for_answer("Echo: Is <div> or <span> right here?")
    assert_nothing_live(chat)
    chat.page.locator(USER).first.hover()
    chat.page.locator("#chatbot button[aria-label='Edit']").first.click()
    box = chat.page.locator("#chatbot textarea").first
    box.fill(box.input_value() + " Thanks!")  # the box holds the displayed (made safe) text
    chat.page.locator("#chatbot button[aria-label='Submit']").first.click()
    chat.wait_for_answer("Thanks!")
    chat.wait_idle()
    sent = upstream.requests[-1]["messages"][-1]["content"]
    assert sent == "Is <div> or <span> right here? Thanks!"
    assert "Is <div> or <span> right here? Thanks!" in chat.user_texts()[0]
    assert_nothing_live(chat)


def test_an_imported_export_with_every_attack_opens_safely(chat, tmp_path):
    names = list(ATTACKS)
    chunks = [names[i : i + 15] for i in range(0, len(names), 15)]  # the chat shows 40
    for number, chunk in enumerate(chunks):
        messages = []
        for name in chunk:
            messages += [
                {"role": "user", "content": f"{ATTACKS[name]}\n\nuser-{name}"},
                {"role": "assistant", "content": f"{ATTACKS[name]}\n\nbot-{name}"},
            ]
        messages[-1]["content"] += f"\n\nend-of-import-{number}"
        export = {
            "format": "chat-history",
            "version": 1,
            "meta": {"title": f"Crafted <img src=/leak-title> export {number}"},
            "messages": messages,
        }
        crafted = tmp_path / f"crafted-{number}.json"
        crafted.write_text(json.dumps(export), encoding="utf-8")
        chat.open_chat_tools()
        with chat.page.expect_file_chooser() as chooser:
            chat.click("import")
        chooser.value.set_files(str(crafted))
        chat.wait_for_answer(f"end-of-import-{number}")
        assert chat.page.locator(USER).count() == len(chunk)
        assert_nothing_live(chat)
        shot(chat.page, f"render-imported-attacks-{number}")
    chat.reload()
    chat.wait_for_answer(f"end-of-import-{len(chunks) - 1}")
    assert_nothing_live(chat)


def test_a_deep_formula_does_not_crash_the_tab_now_or_after_a_reload(chat, upstream):
    answer = f"Deep: {DEEP}\n\nand a normal one: $\\frac{{a}}{{\\sqrt{{b^2}}}}$ end-of-deep"
    upstream.script(reply(answer, chunk_size=200))
    chat.send("Nest some roots")
    chat.wait_for_answer("end-of-deep")
    chat.page.wait_for_timeout(500)
    assert chat.page.evaluate("1 + 1") == 2 and not chat.page.crashed
    assert chat.page.locator(f"{BOT} .katex").count() == 1  # the normal one
    # shown as code text, with look-alike \ { } so that nothing could ever nest it
    assert chat.page.locator(f"{BOT} code", has_text="\uff3csqrt\uff5b\uff3csqrt").count() == 1
    chat.reload()  # the page reopens the stored conversation
    chat.wait_for_answer("end-of-deep")
    chat.page.wait_for_timeout(500)
    assert chat.page.evaluate("1 + 1") == 2 and not chat.page.crashed
    shot(chat.page, "render-deep-formula")


NORMAL_ANSWER = r"""## Quadratic equations

Solve $x^2 - 5x + 6 = 0$: it factors as $(x-2)(x-3)=0$. In general
$$x = \frac{-b \pm \sqrt{b^2-4ac}}{2a}$$

| input | output |
|---|---|
| `a < b` | **bold** and <sub>sub</sub> |

```html
<form action="/search"><input name="q"><button>Go</button></form>
```

A phishing try written out: <form><input placeholder="API key"><button>Send</button></form>
end-of-normal"""


def test_normal_markdown_latex_and_code_still_render_nicely(chat, upstream):
    upstream.script(reply(NORMAL_ANSWER, chunk_size=30))
    chat.send("Explain quadratics")
    chat.wait_for_answer("end-of-normal")
    bot = chat.page.locator(BOT).filter(has_text="end-of-normal").last
    assert bot.locator("h2").count() == 1 and bot.locator("table td").count() == 2
    assert bot.locator(".katex").count() >= 3 and bot.locator("sub").count() == 1
    code = bot.locator("pre code").inner_text()
    assert '<form action="/search"><input name="q"><button>Go</button></form>' in code
    assert "\u2060" not in code, "code marked agrees on is left exactly as it is"
    phish = '<form><input placeholder="API key"><button>Send</button></form>'
    assert phish in bot.inner_text()
    assert_nothing_live(chat)
    chat.scroll_to_message(0)
    shot(chat.page, "render-normal-answer")


# -- the frontend's own marked, on many more texts than a chat could show ----------------------
# Gradio bundles marked into one asset; its code runs alone in a blank page. The messages are
# rendered as the Chatbot does (formulas cut out first, GFM with line breaks, mermaid blocks,
# formulas put back escaped), before DOMPurify: what marked itself makes must be harmless.
def marked_source() -> str:
    assets = Path(gradio.__file__).parent / "templates" / "frontend" / "assets"
    (bundle,) = assets.glob("markdown-code-*.js")
    code = bundle.read_text(encoding="utf-8")
    start, end = code.index("function p(){return{async:"), code.index(";function Pe(")
    return code[start:end] + ";window.__Marked = Ne;"


RENDER_LIKE_THE_CHATBOT = r"""texts => {
    const marked = new window.__Marked();
    const mermaid = {
        name: "mermaid", level: "block",
        start(src) { return src.match(/^```mermaid\s*\n/)?.index; },
        tokenizer(src) {
            const m = /^```mermaid\s*\n([\s\S]*?)```\s*(?:\n|$)/.exec(src);
            if (m) return { type: "mermaid", raw: m[0], text: m[1].trim() };
        },
        renderer(token) { return `<div class="mermaid">${token.text}</div>\n`; },
    };
    marked.use({ gfm: true, pedantic: false, breaks: true }, { extensions: [mermaid] });
    const cuts = [["$$", "$$"], ["$", "$"], ["\\(", "\\)"], ["\\[", "\\]"]];
    const quote = s => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
    const escape = s => s.replace(/[&<>"']/g, c =>
        ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
    return texts.map(text => {
        const held = [];
        let work = text;
        for (const [left, right] of cuts) {
            const pattern = new RegExp(`${quote(left)}([\\s\\S]+?)${quote(right)}`, "g");
            const hold = m => (held.push(m), `%%%LATEX_BLOCK_${held.length - 1}%%%`);
            work = work.replace(pattern, hold);
        }
        const html = marked.parse(work);
        return html.replace(/%%%LATEX_BLOCK_(\d+)%%%/g, (m, i) => escape(held[Number(i)]));
    });
}"""


def corpus(count: int, seed: int) -> list[str]:
    """Random mixes of tricky pieces and whole attacks, in lists and quotes too."""
    rng = random.Random(seed)
    attacks = list(ATTACKS.values())
    texts = []
    for _ in range(count):
        parts = [rng.choice(PIECES if rng.random() < 0.85 else attacks) for _ in range(30)]
        text = "".join(parts[: rng.randint(1, 30)])
        wrap = rng.random()
        if wrap < 0.15:
            text = "- " + text.replace("\n", "\n  ")
        elif wrap < 0.25:
            text = "> " + text.replace("\n", "\n> ")
        texts.append(text)
    return texts


def test_what_gradios_marked_makes_of_the_output_is_harmless(browser):
    page = browser.new_page()
    try:
        page.add_script_tag(content=marked_source())
        texts = [*ATTACKS.values(), TRICKS, NORMAL_ANSWER, *corpus(4000, seed=13)]
        shown = [safe_markdown(text) for text in texts]
        rendered = page.evaluate(RENDER_LIKE_THE_CHATBOT, shown)
        # The harness itself: the unmade text renders live controls and a mermaid diagram.
        raw = page.evaluate(RENDER_LIKE_THE_CHATBOT, [ATTACKS["fence marked closes early"]])
        assert "<form" in raw[0]
        raw = page.evaluate(RENDER_LIKE_THE_CHATBOT, [ATTACKS["mermaid html"]])
        assert '<div class="mermaid">' in raw[0]
    finally:
        page.close()
    for text, out, html in zip(texts, shown, rendered, strict=True):
        assert 'class="mermaid"' not in html, text
        assert_html_harmless(text, out, html)
