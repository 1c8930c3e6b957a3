"""The provider check's results (one row per provider) and their Markdown table.

check.py fills `CheckResult`s; this turns them into the table `python app.py --check` prints
and the settings panel shows. Cells are escaped (a `|` or a newline in a fix cannot break the
table) and padded by display width, so the columns line up in a terminal with CJK text too.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field

PASS, FAIL, WARN, SKIP = "pass", "fail", "warn", "skip"
SYMBOLS = {PASS: "✓", FAIL: "✗", WARN: "⚠", SKIP: "–"}
STEPS = ("reachable", "key", "listed", "reply", "image")
HEADERS = ("provider", "model", "reachable", "key", "model listed", "reply (ttft)", "image", "fix")


@dataclass
class Step:
    status: str = SKIP
    note: str = ""  # a few words after the symbol: "0.3 s", "no /models", "401"

    def cell(self) -> str:
        return f"{SYMBOLS[self.status]} {self.note}".strip()


@dataclass
class CheckResult:
    """One provider's check; `passed` is what the exit code and the UI go by."""

    provider_id: str
    name: str
    model: str
    base_url: str = ""  # display form: no userinfo or query
    enabled: bool = True
    steps: dict[str, Step] = field(default_factory=lambda: {name: Step() for name in STEPS})
    fixes: list[str] = field(default_factory=list)
    offered: list[str] = field(default_factory=list)  # from /models, when it answered
    ttft_s: float | None = None
    reply_text: str = ""
    running: str = ""  # the step under way, for the timeout message

    @property
    def passed(self) -> bool:
        return self.enabled and all(step.status != FAIL for step in self.steps.values())

    @property
    def fix(self) -> str:
        return " ".join(self.fixes)


def format_table(results: Sequence[CheckResult]) -> str:
    """A Markdown table (columns padded so it also reads well in a terminal)."""
    rows = [list(HEADERS), *(_row(result) for result in results)]
    widths = [max(_width(row[i]) for row in rows) for i in range(len(HEADERS) - 1)]
    lines = []
    for index, row in enumerate(rows):
        cells = [_pad(cell, widths[i]) for i, cell in enumerate(row[:-1])] + [row[-1]]
        lines.append(("| " + " | ".join(cells)).rstrip() + " |")
        if index == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|-----|")
    return "\n".join(lines)


def format_summary(results: Sequence[CheckResult]) -> str:
    if not results:
        return "No provider to check."
    passed = sum(result.passed for result in results)
    text = f"{passed} of {len(results)} providers passed."
    if passed < len(results):
        text += " Apply the fixes above, then run the check again."
    return text


def format_report(results: Sequence[CheckResult]) -> str:
    return f"{format_table(results)}\n\n{format_summary(results)}"


def _row(result: CheckResult) -> list[str]:
    if result.enabled:
        cells = [result.steps[name].cell() for name in STEPS]
    else:
        cells = [SYMBOLS[SKIP]] * len(STEPS)
    values = [f"`{result.provider_id}`", result.model or SYMBOLS[SKIP], *cells, result.fix]
    return [_escape(value) for value in values]


def _escape(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _pad(text: str, width: int) -> str:
    return text + " " * (width - _width(text))
