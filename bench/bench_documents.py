"""Benchmark documents.prepare_document: a 100-page PDF and 1 MB text files.

Run: python bench/bench_documents.py   (no arguments, a few seconds). Builds its inputs (the
PDF with tests/test_documents.py's make_pdf: Helvetica text, Flate-compressed pages, ~2,000
characters a page) and prints a Markdown table: median wall and CPU time of RUNS runs each.
"""

from __future__ import annotations

import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import documents
from tests.test_documents import make_pdf

RUNS = 5
MB = 1024 * 1024
REAL_PDFS = (
    "/usr/share/doc/libtasn1-doc/libtasn1.pdf",
    "/usr/share/doc/shared-mime-info/shared-mime-info-spec.pdf",
)
WORDS = [
    "revenue",
    "quarter",
    "growth",
    "margin",
    "customer",
    "market",
    "report",
    "analysis",
    "region",
    "product",
    "team",
    "forecast",
    "budget",
    "cost",
    "sales",
    "increase",
    "decrease",
    "strategy",
    "risk",
    "plan",
    "data",
    "result",
]


def page_text(rng: random.Random, chars: int = 2_000) -> str:
    """About `chars` characters of words in 80-column lines, like a typeset page."""
    lines, line, size = [], [], 0
    while size < chars:
        word = rng.choice(WORDS)
        line.append(word)
        size += len(word) + 1
        if sum(len(w) + 1 for w in line) > 80:
            lines.append(" ".join(line))
            line = []
    lines.append(" ".join(line))
    return "\n".join(lines)


def timed(work: Callable[[], object]) -> tuple[float, float]:
    """Median wall ms and CPU ms (this thread) of RUNS runs, after one warm-up."""
    work()
    wall, cpu = [], []
    for _ in range(RUNS):
        start, start_cpu = time.perf_counter(), time.thread_time()
        work()
        wall.append((time.perf_counter() - start) * 1000)
        cpu.append((time.thread_time() - start_cpu) * 1000)
    return statistics.median(wall), statistics.median(cpu)


def main() -> None:
    rng = random.Random(16)
    pdf = make_pdf([page_text(rng) for _ in range(100)], compress=True)
    english = ("\n".join(page_text(rng) for _ in range(560))).encode()[:MB]
    chinese_line = "季度报告：收入增长百分之十二，成本下降，客户满意度提高。\n"
    chinese = (chinese_line * (MB // len(chinese_line.encode("gb18030")) + 1)).encode("gb18030")
    chinese = chinese[: MB - MB % 2]
    cases = [
        ("100-page PDF, default MAX_DOCUMENT_CHARS (stops at 100,000)", pdf, "r.pdf", 100_000),
        ("100-page PDF, every page read", pdf, "r.pdf", 10_000_000),
        ("1 MB UTF-8 text", english, "notes.txt", 10_000_000),
        ("1 MB GB18030 Chinese text (charset detection)", chinese, "中文.txt", 10_000_000),
    ]
    # Real PDFs (embedded fonts, ToUnicode maps) cost more per page than make_pdf's; Debian's
    # docs ship two, used when present.
    for path in REAL_PDFS:
        if Path(path).is_file():
            cases.append((f"real: {Path(path).name}", Path(path).read_bytes(), path, 10_000_000))
    print(f"| input ({RUNS} runs, median) | size | chars sent | pages read | wall | CPU |")
    print("|---|---|---|---|---|---|")
    for label, raw, name, max_chars in cases:
        doc = documents.prepare_document(raw, name, max_bytes=10 * MB, max_chars=max_chars)

        def work(raw: bytes = raw, name: str = name, max_chars: int = max_chars) -> object:
            return documents.prepare_document(raw, name, max_bytes=10 * MB, max_chars=max_chars)

        wall, cpu = timed(work)
        pages = f"{doc.pages_read}/{doc.pages}" if doc.pages else "-"
        per_page = f" ({wall / doc.pages_read:.1f} ms/page)" if doc.pages_read else ""
        print(
            f"| {label} | {len(raw) / 1024:,.0f} KB | {len(doc.text):,} | {pages} "
            f"| {wall:,.0f} ms{per_page} | {cpu:,.0f} ms |"
        )


if __name__ == "__main__":
    main()
