"""Formulas in chat text, as the Chatbot's frontend cuts them out and KaTeX builds them: where
they are (`cut_math`), which are too big or too deep to build (`math_too_big`), and the budget
of formula characters a view may render (`MathBudget`). Used by markup_text.safe_markdown."""

from __future__ import annotations

import re

# The Chatbot's delimiters, in the order the frontend cuts them (= ui_assets.py LATEX).
LATEX_DELIMITERS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"))
MAX_MATH_DEPTH = 24  # groups + \left + \begin + chained commands (Chromium died at ~150)
MAX_MATH_CHARS = 4000  # one formula
MAX_MATH_TOTAL_CHARS = 40_000  # all formulas of one message
# All formulas of the messages on screen together: KaTeX takes ~15 ms per 1,000 characters of
# deeply nested math, so a conversation of messages that are each within the bounds would
# freeze the tab for a minute on every load. Past this, older messages show formulas as code.
MAX_MATH_VIEW_CHARS = 40_000

_MATH = [re.compile(re.escape(a) + r"([\s\S]+?)" + re.escape(b)) for a, b in LATEX_DELIMITERS]
_TEX_TOKEN = re.compile(r"\\(?:[A-Za-z]+|[\s\S])|[{}\[\]]")  # x^x^x is an error, not nesting
TEX_MACRO = re.compile(
    r"\\(?:def|gdef|edef|xdef|let|futurelet|newcommand|renewcommand|providecommand"
    r"|expandafter|newenvironment)(?![A-Za-z])"
)
_OPEN = frozenset(("{", "[", "\\left", "\\begin"))
_CLOSE = frozenset(("}", "]", "\\right", "\\end"))


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
    if defines_macros(formula):
        return True
    return too_deep(formula)


def too_deep(formula: str) -> bool:
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


def defines_macros(formula: str) -> bool:
    """True when the TeX defines macros (which can nest without braces)."""
    return "\\" in formula and TEX_MACRO.search(formula) is not None
