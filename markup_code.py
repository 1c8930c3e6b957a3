"""Code in chat Markdown, as the Chatbot's marked will read it: which lines are code blocks,
which positions are inside code spans, and where the two readers (markdown-it here, marked in
the browser) could disagree, so nothing from there on is trusted. Used by markup_text.safe_markdown.
"""

from __future__ import annotations

import bisect
import re
import threading
from collections import OrderedDict
from functools import lru_cache

from markdown_it import MarkdownIt

_TICK_OR_ESCAPE = re.compile(r"\\[\s\S]|`+")
_TAB_LEAD = re.compile(r"[ >*+\-\d.)]*\t")
# Near these, a backtick may be no code span delimiter for one of the two readers: a link
# destination or definition, a URL (marked's GFM links it), a tilde next to a backtick.
_UNSURE = re.compile(r"\]\(|\]:|://|www\.|~`|`~", re.IGNORECASE)

_MD = MarkdownIt("commonmark", {"html": False}).enable("table").disable(["inline", "text_join"])
_MD.parse("warm up")  # its rule chains are built on first use: not in two threads at once


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
PREFIXES: OrderedDict[str, tuple[int, dict[int, bool], int, frozenset[int]]] = OrderedDict()
_PREFIX_SIZE = 64
_PREFIX_LOCK = threading.Lock()


class Layout:
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
            best = max((p for p in PREFIXES if filled.startswith(p)), key=len, default=None)
            if best is None:
                return 0
            PREFIXES.move_to_end(best)
            first, code, taint, unsure = PREFIXES[best]
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
                PREFIXES[prefix] = (number, code, taint, unsure)
                PREFIXES.move_to_end(prefix)
                while len(PREFIXES) > _PREFIX_SIZE:
                    PREFIXES.popitem(last=False)
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
