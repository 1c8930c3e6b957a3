"""Untrusted chat text -> Markdown that the Chatbot can only render harmlessly.

How Gradio 6.31's frontend renders a message (templates/frontend/assets/markdown-code-*.js):
it cuts the formulas out first (for each delimiter of app.py `LATEX` in turn, the regex
`left([\\s\\S]+?)right`), lexes the rest with marked (GFM), puts the formulas back HTML-escaped,
cleans the HTML with a DOMPurify that keeps forms, inputs, buttons and remote images, then
KaTeX renders the formulas (not inside <code>/<pre>) and mermaid draws ```mermaid blocks.

So what can hurt is every `<` that opens a tag for marked, every `![` (an image is fetched as
soon as it is shown), every formula KaTeX builds (a deep one crashes the tab) and mermaid
(its image shapes fetch URLs). `safe_markdown` therefore:

1. cuts the formulas exactly like the frontend; one nested deeper than MAX_MATH_DEPTH, longer
   than MAX_MATH_CHARS, defining macros, or past MAX_MATH_TOTAL_CHARS becomes code text (with
   look-alikes for `$ \\ { }`, so nothing can ever nest it);
2. finds code with markdown-it (CommonMark + GFM tables) with raw HTML off: the output has no
   HTML that could start an HTML block, so that is the structure marked sees too;
3. outside code keeps only attribute-less tags of ALLOWED_TAGS (not alone on a line) and
   https autolinks; any other `<` that would open a tag, comment or declaration is written
   `&lt;` (it reads "<form>"); `![` becomes a link unless the image is a data: image or one of
   the app's uploads; an entity for a delimiter or a brace (`&#36;`) is shown as typed;
4. inside code leaves the text exactly as it is, but only where marked surely agrees it is
   code: a closed fence that marked closes on the same line, not in a quote nor right under
   another container's text, its lines indented as markdown-it reads them; a one-line code
   span whose line pairs all its backticks, read as a whole line and as table cells, in a
   paragraph with no unpaired backtick, link or URL up to it; never an indented block. In
   other code, and in all code after the first place where the two could disagree (a tab in
   an indent, an empty list item, a lone "-" under text...), `<` gets a WORD JOINER (U+2060)
   after it: invisible, and inert in code and out alike, so a disagreement can never make a
   live tag;
5. writes ```mermaid as ``` mermaid (shown as code);
6. checks that the output cuts into exactly the formulas it kept, and that the message as a
   whole (KaTeX pairs delimiters its own way, and may build a formula the frontend never cut)
   is within the bounds; if not, everything is neutralised (`_inert`).

Text without `<`, `![` or a formula delimiter comes back unchanged, cheaply. The formulas'
part is markup_math.py, the reading of code (step 4) markup_code.py.
"""

from __future__ import annotations

import html
import re
import threading
from collections import OrderedDict
from functools import lru_cache

from config import upload_dir
from markup_code import Layout, code_spans
from markup_math import (
    LATEX_DELIMITERS,
    MAX_MATH_CHARS,
    MAX_MATH_DEPTH,
    MAX_MATH_TOTAL_CHARS,
    MAX_MATH_VIEW_CHARS,
    MathBudget,
    cut_math,
    defines_macros,
    math_chars,
    math_too_big,
    too_deep,
)

# The public names, importable from here as before the formulas and code got their modules.
__all__ = [
    "ALLOWED_TAGS",
    "JOINER",
    "LATEX_DELIMITERS",
    "MAX_MATH_CHARS",
    "MAX_MATH_DEPTH",
    "MAX_MATH_TOTAL_CHARS",
    "MAX_MATH_VIEW_CHARS",
    "MathBudget",
    "code_spans",
    "cut_math",
    "math_chars",
    "math_too_big",
    "safe_markdown",
    "unshown",
]

JOINER = "\u2060"  # WORD JOINER: invisible, not a letter, so `<` + JOINER never opens a tag
# Raw HTML kept outside code: inline-only tags (none can start an HTML block), no attributes.
ALLOWED_TAGS = ("b", "i", "em", "strong", "u", "s", "del", "ins", "sub", "sup", "br", "kbd",
                "mark", "small")  # fmt: skip

_HINTS = ("<", "![", "$", "\\(", "\\[", "```mermaid")
_RISKY = re.compile(r"<(?=[A-Za-z/!?])|!\[|&")  # one character for `<`: "<![" holds "!["
_TAG = re.compile(rf"</?(?:{'|'.join(ALLOWED_TAGS)})\s*/?>")
_TAG_LINE = re.compile(rf"[ \t>*+\-\d.)]*(?:{_TAG.pattern}[ \t]*)+")
_AUTOLINK = re.compile(r"<https?://[^\s<>`\\]+>")
_IMAGE_LINK = re.compile(r"!\[[^\]\n]*\]\(")
_TICKS = re.compile(r"`+")
_MERMAID = re.compile(r"```mermaid(?=\s*\n)")
_DELIMITER_IN_CODE = re.compile(r"\\(?=[()\[\]])")
_LOOKALIKES = str.maketrans({"$": "\uff04", "\\": "\uff3c", "{": "\uff5b", "}": "\uff5d"})
# Entities the browser turns into a delimiter or a brace after marked (KaTeX would see those).
_MATH_ENTITY = re.compile(
    r"&(?=(?:#0*(?:36|92|40|41|91|93|123|125)|#[xX]0*(?:24|5[cC]|28|29|5[bBdD]|7[bBdD])"
    r"|dollar|bsol|lpar|rpar|lsqb|rsqb|lbrack|rbrack|lcub|rcub|lbrace|rbrace);)"
)


@lru_cache(maxsize=1)
def _upload_url() -> re.Pattern:
    """Image URLs the chat may show: Gradio file URLs of the app's own upload dir."""
    root = str(upload_dir()).rstrip("/")
    return re.compile(
        r"!\[[^\[\]\n`]*\]\((?:data:image/(?:png|jpeg|gif|webp);base64,[A-Za-z0-9+/=]+"
        r"|/gradio_api/file=" + re.escape(root) + r"/(?:(?!\.\.)[A-Za-z0-9_.\-]+/)*"
        r"(?!\.\.)[A-Za-z0-9_.\-]+)\)"
    )


def safe_markdown(text: str, math_budget: int = MAX_MATH_TOTAL_CHARS) -> str:
    """`text` (any untrusted Markdown) as Markdown the Chatbot renders harmlessly: no live tag
    but a few inline ones, no image but data: URLs and the app's uploads, no formula too deep
    or too large for KaTeX, no mermaid. Normal Markdown, code and LaTeX come back unchanged.

    `math_budget`: the formula characters this message may have rendered (the rest, from the
    first formula past it on, are shown as code); see MathBudget for a whole view."""
    if not text or not any(hint in text for hint in _HINTS):
        return text
    if "\r" in text or "\0" in text:  # as markdown-it and marked read it
        text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\0", "\ufffd")
    budget = max(0, min(math_budget, MAX_MATH_TOTAL_CHARS))
    key = text if budget == MAX_MATH_TOTAL_CHARS else f"{budget}\0{text}"
    cached = _cache_get(key)
    if cached is not None:
        return cached
    shown = _render(text, budget)
    _cache_put(key, shown)
    return shown


def unshown(edited: str, original: str) -> str:
    """A message the user edited in the chat, whose edit box started from safe_markdown's
    view of `original`: the marks safe_markdown added (and `original` did not have) are taken
    out again, so that the stored text is what the user sees and typed."""
    if edited == safe_markdown(original):
        return original
    text = edited if JOINER in original else edited.replace(JOINER, "")
    for mark, plain in (
        ("&lt;", "<"),
        ("&amp;", "&"),
        ("[\U0001f5bc ", "!["),
        ("``` mermaid", "```mermaid"),
    ):
        if mark in text and mark not in original:
            text = text.replace(mark, plain)
    return text


# -- a small cache: streaming re-renders the same text, and Gradio renders values twice ------
_CACHE: OrderedDict[str, str] = OrderedDict()
_CACHE_SIZE = 128


_CACHE_LOCK = threading.Lock()


def _cache_get(text: str) -> str | None:
    with _CACHE_LOCK:
        shown = _CACHE.get(text)
        if shown is not None:
            _CACHE.move_to_end(text)
        return shown


def _cache_put(text: str, shown: str) -> None:
    if len(text) > 50_000:  # at most ~13 MB held
        return
    with _CACHE_LOCK:
        _CACHE[text] = shown
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)


# -- formulas --------------------------------------------------------------------------------
def _formula_as_text(formula: str) -> str:
    """A formula on one line, with look-alikes for `$ \\ { }`: no frontend cut finds it, and
    were KaTeX ever to get it, it holds no command and no group, so it nests nothing."""
    flat = " ".join(formula.split()).translate(_LOOKALIKES)
    return _neutralise(flat)


def _neutralise(text: str) -> str:
    return text.replace("<", "<" + JOINER).replace("![", "!" + JOINER + "[")


def _inert(text: str) -> str:
    """The last resort: no tag, image, formula or mermaid can come out of this, whatever the
    parser makes of the structure."""
    text = re.sub(r"<(?=[A-Za-z/!?])", "<" + JOINER, text).replace("![", "!" + JOINER + "[")
    text = _MATH_ENTITY.sub("&amp;", text)
    text = _DELIMITER_IN_CODE.sub("\\\\" + JOINER, text.replace("$", "\uff04"))
    return _MERMAID.sub("``` mermaid", text)


# -- code, as marked will see it ------------------------------------------------------------
def _render(text: str, math_budget: int = MAX_MATH_TOTAL_CHARS) -> str:
    segments, filled = cut_math(text)
    bad: list[tuple[int, int]] = []
    total = 0
    for start, end in segments:
        total += end - start
        if total > math_budget or math_too_big(text[start:end]):
            bad.append((start, end))
    risky = [
        match
        for match in _RISKY.finditer(filled)
        if match.group() != "&" or _MATH_ENTITY.match(filled, match.start())
    ]
    layout = Layout(filled) if risky or bad else None
    neutered: set[tuple[int, int]] = set()
    shown = _rewrite(text, filled, risky, bad, neutered, layout) if layout else text
    shown = _MERMAID.sub("``` mermaid", shown)
    kept = [text[a:b] for a, b in segments if (a, b) not in neutered]
    if [shown[a:b] for a, b in cut_math(shown)[0]] != kept:
        return _inert(text)  # the output would not cut as planned: trust none of it
    if not _katex_safe(text, filled, neutered, layout):
        return _inert(text)
    return shown


def _katex_safe(text: str, filled: str, neutered: set, layout: Layout | None) -> bool:
    """KaTeX's auto-render pairs delimiters in the rendered text its own way (leftmost first,
    after marked decoded entities and escapes), so it may build a formula out of text that
    was never one of the frontend's cuts. Whatever it picks is part of the message outside
    code: so the message as a whole (without the formulas made text and code marked agrees
    on) must be within the bounds, or nothing of it is rendered as math."""
    if not any(left in text for left in ("$", "\\(", "\\[")):
        return True
    measured = list(text)
    for start, end in neutered:
        measured[start:end] = " " * (end - start)

    def fits(chars: list[str]) -> bool:
        joined = "".join(chars)
        if "&" in joined:
            joined = html.unescape(joined)
        joined = joined.replace("\\{", "{").replace("\\}", "}")
        return not too_deep(joined) and not defines_macros(joined)

    if fits(measured):
        return True
    layout = layout or Layout(filled)
    for number, trusted in layout.code.items():
        if trusted and number < layout.taint:
            start = layout.starts[number]
            end = start + len(layout.lines[number])
            measured[start:end] = " " * (end - start)
    return fits(measured)


def _rewrite(
    text: str,
    filled: str,
    risky: list[re.Match],
    bad: list[tuple[int, int]],
    neutered: set[tuple[int, int]],
    layout: Layout,
) -> str:
    """`text` with the edits: joiners, images as links, formulas as text (added to `neutered`)."""
    edits: list[tuple[int, int, str]] = []  # (start, end, replacement) in text coordinates
    for match in risky:
        pos = match.start()
        number, place = layout.where(pos)
        if place == "trusted":
            continue
        if match.group() == "&":
            if _MATH_ENTITY.match(filled, pos):  # shown as typed, never a delimiter
                edits.append((pos, pos + 1, "&amp;" if place == "text" else "&" + JOINER))
            continue
        if match.group() == "![":
            if place == "code":
                edits.append((pos, pos + 2, "!" + JOINER + "["))
            elif not _upload_url().match(filled, pos):
                images = _IMAGE_LINK.match(filled, pos)
                edits.append((pos, pos + 2, "[\U0001f5bc " if images else "!" + JOINER + "["))
            continue
        if place == "text" and (
            _AUTOLINK.match(filled, pos)
            or (_TAG.match(filled, pos) and not _TAG_LINE.fullmatch(layout.lines[number]))
        ):
            continue
        # Out of code "&lt;" reads (and is found with Ctrl+F) as "<"; in code only the joiner
        # keeps the text as it was.
        edits.append((pos, pos + 1, "&lt;" if place == "text" else "<" + JOINER))
    if bad:
        ticks = max((len(run) for run in _TICKS.findall(text)), default=0) + 1
        fence = "`" * ticks
        for start, end in bad:
            _, place = layout.where(start)
            if place == "trusted":
                continue  # inside code marked agrees on: KaTeX never sees it
            formula = text[start:end]
            neutered.add((start, end))
            if place == "text":
                body = formula
                for left, right in LATEX_DELIMITERS:
                    if formula.startswith(left) and formula.endswith(right):
                        body = formula[len(left) : len(formula) - len(right)]
                        break
                # A backtick next to the span would join its run, a backslash escape it.
                before = " " if text[start - 1 : start] in ("`", "\\") else ""
                after = " " if text[end : end + 1] == "`" else ""
                span = f"{before}{fence} {_formula_as_text(body)} {fence}{after}"
                edits.append((start, end, span))
            else:
                edits.append((start, end, _formula_as_text(formula)))
    edits.sort()
    out, last = [], 0
    for start, end, replacement in edits:
        if start < last:  # never happens: risky positions are outside formulas
            continue
        out += [text[last:start], replacement]
        last = end
    out.append(text[last:])
    return "".join(out)
