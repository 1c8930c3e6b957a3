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

Text without `<`, `![` or a formula delimiter comes back unchanged, cheaply.
"""

from __future__ import annotations

import bisect
import html
import os
import re
import tempfile
import threading
from collections import OrderedDict
from functools import lru_cache
from pathlib import Path

from markdown_it import MarkdownIt

JOINER = "\u2060"  # WORD JOINER: invisible, not a letter, so `<` + JOINER never opens a tag
# The Chatbot's delimiters, in the order the frontend cuts them (keep equal to app.py LATEX).
LATEX_DELIMITERS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))
MAX_MATH_DEPTH = 24  # groups + \left + \begin + chained commands (Chromium died at ~150)
MAX_MATH_CHARS = 4000  # one formula
MAX_MATH_TOTAL_CHARS = 40_000  # all formulas of one message
# All formulas of the messages on screen together: KaTeX takes ~15 ms per 1,000 characters of
# deeply nested math, so a conversation of messages that are each within the bounds would
# freeze the tab for a minute on every load. Past this, older messages show formulas as code.
MAX_MATH_VIEW_CHARS = 40_000
# Raw HTML kept outside code: inline-only tags (none can start an HTML block), no attributes.
ALLOWED_TAGS = ("b", "i", "em", "strong", "u", "s", "del", "ins", "sub", "sup", "br", "kbd",
                "mark", "small")  # fmt: skip

_MATH = [re.compile(re.escape(a) + r"([\s\S]+?)" + re.escape(b)) for a, b in LATEX_DELIMITERS]
_HINTS = ("<", "![", "$", "\\(", "\\[", "```mermaid")
_RISKY = re.compile(r"<(?=[A-Za-z/!?])|!\[|&")  # one character for `<`: "<![" holds "!["
_TAG = re.compile(rf"</?(?:{'|'.join(ALLOWED_TAGS)})\s*/?>")
_TAG_LINE = re.compile(rf"[ \t>*+\-\d.)]*(?:{_TAG.pattern}[ \t]*)+")
_AUTOLINK = re.compile(r"<https?://[^\s<>`\\]+>")
_IMAGE_LINK = re.compile(r"!\[[^\]\n]*\]\(")
_TICK_OR_ESCAPE = re.compile(r"\\[\s\S]|`+")
_TICKS = re.compile(r"`+")
_TAB_LEAD = re.compile(r"[ >*+\-\d.)]*\t")
# Near these, a backtick may be no code span delimiter for one of the two readers: a link
# destination or definition, a URL (marked's GFM links it), a tilde next to a backtick.
_UNSURE = re.compile(r"\]\(|\]:|://|www\.|~`|`~", re.IGNORECASE)
_TEX_TOKEN = re.compile(r"\\(?:[A-Za-z]+|[\s\S])|[{}\[\]]")  # x^x^x is an error, not nesting
_TEX_MACRO = re.compile(
    r"\\(?:def|gdef|edef|xdef|let|futurelet|newcommand|renewcommand|providecommand"
    r"|expandafter|newenvironment)(?![A-Za-z])"
)
_OPEN = frozenset(("{", "[", "\\left", "\\begin"))
_CLOSE = frozenset(("}", "]", "\\right", "\\end"))
_MERMAID = re.compile(r"```mermaid(?=\s*\n)")
_DELIMITER_IN_CODE = re.compile(r"\\(?=[()\[\]])")
_LOOKALIKES = str.maketrans({"$": "\uff04", "\\": "\uff3c", "{": "\uff5b", "}": "\uff5d"})
# Entities the browser turns into a delimiter or a brace after marked (KaTeX would see those).
_MATH_ENTITY = re.compile(
    r"&(?=(?:#0*(?:36|92|40|41|91|93|123|125)|#[xX]0*(?:24|5[cC]|28|29|5[bBdD]|7[bBdD])"
    r"|dollar|bsol|lpar|rpar|lsqb|rsqb|lbrack|rbrack|lcub|rcub|lbrace|rbrace);)"
)

_MD = MarkdownIt("commonmark", {"html": False}).enable("table").disable(["inline", "text_join"])
_MD.parse("warm up")  # its rule chains are built on first use: not in two threads at once


@lru_cache(maxsize=1)
def _upload_url() -> re.Pattern:
    """Image URLs the chat may show: Gradio file URLs of the app's own upload dir."""
    root = Path(os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio")
    root = str(root).rstrip("/")
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


def math_chars(text: str) -> int:
    """How many characters of `text` the frontend hands to KaTeX (its formulas)."""
    if not text or not any(left in text for left, _ in LATEX_DELIMITERS):
        return 0
    return sum(end - start for start, end in cut_math(text)[0])


class MathBudget:
    """The formula characters left for the messages of one view, spent newest first: the
    messages a reader sees last keep their math, older ones past the budget show it as code."""

    def __init__(self, total: int = MAX_MATH_VIEW_CHARS) -> None:
        self.left = total

    def spend(self, *texts: str) -> int:
        """The budget for a message made of `texts`, taken from what is left."""
        allowed = min(self.left, MAX_MATH_TOTAL_CHARS)
        self.left = max(0, self.left - min(allowed, sum(math_chars(t) for t in texts)))
        return allowed


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
def cut_math(text: str) -> tuple[list[tuple[int, int]], str]:
    """The formulas the frontend cuts out ((start, end) in text order) and the text with each
    replaced by a same-length filler, which is what marked reads (as one plain word)."""
    segments: list[tuple[int, int]] = []
    work = text
    for pattern in _MATH:
        found = [(m.start(), m.end()) for m in pattern.finditer(work)]
        if found:
            parts, last = [], 0
            for start, end in found:
                parts += [work[last:start], "x" * (end - start)]
                last = end
            parts.append(work[last:])
            work = "".join(parts)
            segments += found
    segments.sort()
    return segments, work


def math_too_big(formula: str) -> bool:
    """True for a formula KaTeX should not build: too long, defining macros (which can nest
    without braces), or nested deeper than MAX_MATH_DEPTH (braces, brackets, \\left, \\begin,
    and commands chained without an atom between them, like \\sqrt\\sqrt x)."""
    if len(formula) > MAX_MATH_CHARS:
        return True
    if "\\" in formula and _TEX_MACRO.search(formula):
        return True
    return _too_deep(formula)


def _too_deep(formula: str) -> bool:
    depth = chain = 0
    end = 0
    for match in _TEX_TOKEN.finditer(formula):
        token = match.group()
        if token in _OPEN:
            depth, chain = depth + 1, 0
        elif token in _CLOSE:
            depth, chain = max(0, depth - 1), 0
        else:
            between = formula[end : match.start()]
            chain = chain + 1 if not between or between.isspace() else 1
        if depth + chain > MAX_MATH_DEPTH:
            return True
        end = match.end()
    return False


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
def code_spans(text: str) -> tuple[list[tuple[int, int]], bool]:
    """CommonMark code spans of one piece of inline text, as (content start, content end), and
    whether every backtick run found its partner."""
    spans: list[tuple[int, int]] = []
    balanced = True
    no_closer: dict[int, int] = {}
    pos = 0
    while (match := _TICK_OR_ESCAPE.search(text, pos)) is not None:
        pos = match.end()
        run = len(match.group())
        if match.group()[0] == "\\":
            continue
        if no_closer.get(run, len(text) + 1) <= pos:
            balanced = False
            continue
        closer = _closer(run).search(text, pos)
        if closer is None:
            no_closer[run] = pos
            balanced = False
            continue
        spans.append((pos, closer.start()))
        pos = closer.end()
    return spans, balanced


@lru_cache(maxsize=64)
def _closer(run: int) -> re.Pattern:
    return re.compile(rf"(?<!`)`{{{run}}}(?!`)")


def _line_spans(line: str) -> tuple[list[list[tuple[int, int]]], bool]:
    """The code spans of a line under each reading marked or markdown-it may give it (a plain
    line; table cells split at unescaped pipes; at every pipe), and if the line pairs all its
    backticks. A position is surely code only when it is inside a one-line span in all."""
    spans, balanced = code_spans(line)
    readings = [spans]
    if "|" in line:
        for splitter in (r"(?<!\\)\|", r"\|"):
            cells, offset = [], 0
            for cell in re.split(splitter, line):
                cells += [(a + offset, b + offset) for a, b in code_spans(cell)[0]]
                offset += len(cell) + 1
            readings.append(cells)
    return readings, balanced


def _inside(spans: list[tuple[int, int]], pos: int) -> bool:
    index = bisect.bisect_right(spans, (pos, float("inf"))) - 1
    return index >= 0 and spans[index][0] <= pos < spans[index][1]


# prefix -> (its line count, its code lines, its taint line, its lines with no span trusted)
_PREFIXES: OrderedDict[str, tuple[int, dict[int, bool], int, frozenset[int]]] = OrderedDict()
_PREFIX_SIZE = 64
_PREFIX_LOCK = threading.Lock()


class _Layout:
    """Per line of the filled text: which lines are code, and whether marked surely agrees."""

    def __init__(self, filled: str) -> None:
        self.lines = filled.split("\n")
        self.starts = [0]
        for line in self.lines[:-1]:
            self.starts.append(self.starts[-1] + len(line) + 1)
        self.code: dict[int, bool] = {}  # line -> trusted, for lines of code blocks
        self.taint = len(self.lines)  # from this line on nothing is trusted
        self._spans: dict[int, tuple[list[list[tuple[int, int]]], bool]] = {}
        self.unsure: set[int] = set()  # lines with no code span trusted
        first = self._resume(filled)
        self._read_blocks(filled[self.starts[first] :], first)
        self._taint_unsure(first)
        self._remember(filled)

    # Streaming re-renders a growing text every ~50 ms, and parsing it whole would cost ~2 ms
    # per 8 kB. What comes before a blank line followed by a line starting at column 0, outside
    # code, cannot change with what follows (every block before it is closed), so the reading
    # of that prefix is kept and only the rest is parsed again.
    def _resume(self, filled: str) -> int:
        with _PREFIX_LOCK:
            best = max((p for p in _PREFIXES if filled.startswith(p)), key=len, default=None)
            if best is None:
                return 0
            _PREFIXES.move_to_end(best)
            first, code, taint, unsure = _PREFIXES[best]
        self.code.update(code)
        self.unsure.update(unsure)
        self.taint = min(self.taint, taint)
        return first

    def _remember(self, filled: str) -> None:
        lines = self.lines
        for number in range(len(lines) - 1, 0, -1):
            if lines[number][:1] in ("", " ", "\t") or lines[number - 1].strip():
                continue
            if number - 1 in self.code:
                continue
            prefix = filled[: self.starts[number] + 1]  # and the first character of that line
            code = {n: t for n, t in self.code.items() if n < number}
            taint = self.taint if self.taint < number else len(filled)
            with _PREFIX_LOCK:
                unsure = frozenset(n for n in self.unsure if n < number)
                _PREFIXES[prefix] = (number, code, taint, unsure)
                _PREFIXES.move_to_end(prefix)
                while len(_PREFIXES) > _PREFIX_SIZE:
                    _PREFIXES.popitem(last=False)
            return

    def _read_blocks(self, tail: str, first: int) -> None:
        """Reads the text from line `first` on."""
        quotes = depth = 0  # open quotes; open quotes and list items
        depth_of: dict[int, int] = {}  # line -> depth of the block it is in (text blocks)
        opened: int | None = None  # the first line of a list item or quote just opened
        for token in _MD.parse(tail):
            kind = token.type
            if kind in ("blockquote_open", "list_item_open"):
                depth += 1
            elif kind in ("blockquote_close", "list_item_close"):
                depth -= 1
            if kind in ("paragraph_open", "heading_open", "table_open") and token.map:
                for number in range(token.map[0] + first, token.map[1] + first):
                    depth_of[number] = depth
            if opened is not None and token.map and kind not in ("list_item_open", "inline"):
                # The first line of a list item or quote holds no block (it is empty, or a link
                # definition): marked may take the lines after it in, markdown-it does not.
                if token.map[0] + first != opened or kind.endswith("_close"):
                    self.taint = min(self.taint, opened)
                opened = None
            if kind in ("list_item_open", "blockquote_open") and token.map:
                opened = token.map[0] + first
            elif kind in ("list_item_close", "blockquote_close") and opened is not None:
                self.taint = min(self.taint, opened)
                opened = None
            if kind == "blockquote_open":
                quotes += 1
            elif kind == "blockquote_close":
                quotes -= 1
            elif kind == "heading_open" and token.markup == "-" and token.map:
                # A lone "-" under a paragraph: markdown-it reads a heading, marked a list item.
                if self.lines[token.map[1] - 1 + first].strip() == "-":
                    self.taint = min(self.taint, token.map[0] + first)
            elif kind in ("fence", "code_block") and token.map:
                start, end = token.map[0] + first, token.map[1] + first
                if kind == "fence":
                    # Right under text of another container (a list item, a quote) marked may
                    # read the fence line as that text's lazy continuation.
                    lazy = depth_of.get(start - 1, depth) != depth
                    trusted = not quotes and not lazy and self._fence_agrees(token, start, end)
                else:  # indented code: what precedes it (a lone "-" is a setext underline
                    # to markdown-it, a list item to marked) decides, so it is never trusted
                    trusted = False
                if not trusted:
                    self.taint = min(self.taint, start)
                for number in range(start, end):
                    self.code[number] = trusted

    def _indent(self, number: int) -> str:
        line = self.lines[number]
        return line[: len(line) - len(line.lstrip(" \t"))]

    def _fence_agrees(self, token, start: int, end: int) -> bool:
        """A fence marked ends on the same line as markdown-it, with nothing read differently."""
        markup = token.markup
        opening = self.lines[start]
        column = opening.find(markup)
        if column < 0 or "\t" in opening[:column] or end - start < 2:
            return False
        nested = token.level > 0  # in a list item: lines must stay inside it, marked de-indents
        marked_close = re.compile(r" {0,3}" + re.escape(markup) + r"[~`]* *$")
        for number in range(start + 1, end):
            line = self.lines[number]
            indent = self._indent(number)
            if "\t" in indent:
                return False
            if nested and line.strip() and len(indent) < column:
                return False
            body = line[min(column, len(indent)) :] if nested else line
            if marked_close.match(body):
                return number == end - 1  # closed where markdown-it closes it
        return False  # not closed (still streaming, or cut by its container)

    def _taint_unsure(self, first: int) -> None:
        """Lines whose code spans marked may read differently: one with a backtick left
        unpaired, or near a link destination, a URL (marked's GFM links it, backticks and
        all) or a tilde run (marked's text rule takes [`~]+). From there to the end of the
        paragraph (a blank line or a code block: inline code never crosses those, in either
        reader) no code span is trusted. A tab in a line's indentation or list/quote markers
        (the two expand tabs differently) leaves nothing trusted from there on."""
        unsure = False
        for number in range(first, min(self.taint, len(self.lines))):
            line = self.lines[number]
            if number in self.code or not line.strip():
                unsure = False
                continue
            if _TAB_LEAD.match(line):
                self.taint = number
                return
            if "`" in line and (_UNSURE.search(line) or not self.spans(number)[1]):
                unsure = True
            if unsure:
                self.unsure.add(number)

    def spans(self, number: int) -> tuple[list[list[tuple[int, int]]], bool]:
        if number not in self._spans:
            self._spans[number] = _line_spans(self.lines[number])
        return self._spans[number]

    def where(self, pos: int) -> tuple[int, str]:
        """(line, "trusted" | "code" | "text") for a position of the filled text."""
        number = bisect.bisect_right(self.starts, pos) - 1
        if number in self.code:
            return number, "trusted" if self.code[number] and number < self.taint else "code"
        readings, _ = self.spans(number)
        column = pos - self.starts[number]
        inside = [_inside(spans, column) for spans in readings]
        if all(inside) and number < self.taint and number not in self.unsure:
            return number, "trusted"
        return number, "code" if any(inside) else "text"


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
    layout = _Layout(filled) if risky or bad else None
    neutered: set[tuple[int, int]] = set()
    shown = _rewrite(text, filled, risky, bad, neutered, layout) if layout else text
    shown = _MERMAID.sub("``` mermaid", shown)
    kept = [text[a:b] for a, b in segments if (a, b) not in neutered]
    if [shown[a:b] for a, b in cut_math(shown)[0]] != kept:
        return _inert(text)  # the output would not cut as planned: trust none of it
    if not _katex_safe(text, filled, neutered, layout):
        return _inert(text)
    return shown


def _katex_safe(text: str, filled: str, neutered: set, layout: _Layout | None) -> bool:
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
        return not _too_deep(joined) and not ("\\" in joined and _TEX_MACRO.search(joined))

    if fits(measured):
        return True
    layout = layout or _Layout(filled)
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
    layout: _Layout,
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
