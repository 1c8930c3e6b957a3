"""Playwright helpers for the browser tests: Debian's Chromium, and a model of the chat page.

Chromium is Debian's `chromium` package (`.ci/run` installs it): `playwright install` cannot
download browsers here, so Playwright drives `/usr/bin/chromium` through `executable_path`.
A test module imports the fixtures it uses:

    from tests.browser import browser_fixture, context_factory  # noqa: F401

and gets `browser` (one Chromium per module) and `new_context(locale=..., width=...)`.
Screenshots go to tests/artifacts/ (gitignored): every context leaves its last state there
on close, so a failing test can be looked at.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TIMEOUT_MS = 30_000  # a generous ceiling for a busy 2-core machine; tests never wait it out

INPUT = "#chat-input textarea[data-testid=textbox]"
FILE_INPUT = "#chat-input input[data-testid=file-upload]"
SEND = "#chat-input button[data-testid=submit-button]"
USER = "#chatbot [data-testid=user]"
BOT = "#chatbot [data-testid=bot]"
TOAST = "[data-testid=toast-body]"


def chromium_executable() -> str:
    """Debian's Chromium; skip where it is missing (but never in CI, which installs it)."""
    path = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium")
    if path:
        return path
    if os.environ.get("CI"):
        pytest.fail("chromium is missing: .ci/run must install it (apt-get install chromium)")
    pytest.skip("chromium is not installed (apt-get install chromium)")


@pytest.fixture(scope="module", name="browser")
def browser_fixture():
    executable = chromium_executable()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(name="new_context")
def context_factory(browser, request) -> Iterator:
    """`new_context(locale="en-US", width=1280, height=860)`: a fresh "browser profile"
    (its own localStorage), closed after the test with a screenshot of each page."""
    made = []

    def make(locale: str = "en-US", width: int = 1280, height: int = 860, **options):
        context = browser.new_context(
            locale=locale, viewport={"width": width, "height": height}, **options
        )
        context.set_default_timeout(TIMEOUT_MS)
        made.append(context)
        return context

    yield make
    for number, context in enumerate(made):
        for index, page in enumerate(context.pages):
            shot(page, f"{request.node.name}-last-{number}-{index}")
        context.close()


def shot(page, name: str, *, full_page: bool = False) -> Path:
    """Save a screenshot under tests/artifacts/ (a test artifact, looked at by people)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    safe = re.sub(r"[^\w.-]+", "_", name)
    path = ARTIFACTS / f"{safe}.png"
    try:
        page.screenshot(path=str(path), full_page=full_page)
    except Exception as exc:  # a closed or crashed page must not hide the test's own failure
        print(f"screenshot {name} failed: {exc}")
    return path


class ChatPage:
    """The chat app as a person uses it, by the elem_ids of DESIGN.md."""

    def __init__(self, page, url: str) -> None:
        self.page = page
        self.url = url

    # -- opening -------------------------------------------------------------------------
    def open(self) -> ChatPage:
        self.page.goto(self.url)
        return self.wait_loaded()

    def reload(self) -> ChatPage:
        self.page.reload()
        return self.wait_loaded()

    def wait_loaded(self) -> ChatPage:
        """The input is enabled: the page's load event gave this browser its id (app.py)."""
        self.page.wait_for_selector(INPUT)
        self.wait_idle()
        return self

    # -- sending -------------------------------------------------------------------------
    def attach(self, images: Sequence[Path | str]) -> None:
        before = self.page.locator("#chat-input img").count()
        self.page.set_input_files(FILE_INPUT, [str(p) for p in images])
        self.page.wait_for_function(
            "n => document.querySelectorAll('#chat-input img').length >= n",
            arg=before + len(images),
        )

    def type(self, text: str) -> None:
        self.page.locator(INPUT).fill(text)

    def send(self, text: str, images: Sequence[Path | str] = (), *, wait: bool = True) -> None:
        """Type (and attach), press Enter, and see the message appear in the chat."""
        users = self.page.locator(USER).count()
        if images:
            self.attach(images)
        self.type(text)
        self.page.locator(INPUT).press("Enter")
        # The user's message shows as the turn starts (after the busy state was applied).
        self.page.wait_for_function(
            "([sel, n]) => document.querySelectorAll(sel).length > n", arg=[USER, users]
        )
        if wait:
            self.wait_idle()

    def wait_idle(self) -> None:
        """No answer streaming: Stop hidden, the input usable again and no progress spinner
        left over it (Gradio's would stay on a browser-side step's outputs if it had one)."""
        self.page.wait_for_selector("#stop", state="hidden")
        self.page.wait_for_function(
            "sel => { const t = document.querySelector(sel); return t && !t.disabled; }",
            arg=INPUT,
        )
        self.page.wait_for_function(
            "() => [...document.querySelectorAll('#chat-input .wrap')]"
            ".every(w => w.classList.contains('hide'))"
        )

    def wait_for_answer(self, text: str) -> None:
        self.page.wait_for_function(
            "([sel, text]) => [...document.querySelectorAll(sel)]"
            ".some(e => e.innerText.includes(text))",
            arg=[BOT, text],
        )

    # -- reading -------------------------------------------------------------------------
    def bot_texts(self) -> list[str]:
        return [t.strip() for t in self.page.locator(BOT).all_inner_texts()]

    def user_texts(self) -> list[str]:
        return [t.strip() for t in self.page.locator(USER).all_inner_texts()]

    def chat_text(self) -> str:
        return self.page.locator("#chatbot").inner_text()

    def input_text(self) -> str:
        return self.page.locator(INPUT).input_value()

    def titles(self) -> list[str]:
        """The sidebar's conversation titles, top to bottom."""
        titles = self.page.locator("#conversations .conv-title").all_inner_texts()
        return [t.strip() for t in titles]

    def wait_titles(self, predicate_js: str) -> list[str]:
        """Wait until `predicate_js` (a JS function of the titles array) holds."""
        self.page.wait_for_function(
            f"() => ({predicate_js})([...document.querySelectorAll('#conversations .conv-title')]"
            ".map(e => e.innerText.trim()))"
        )
        return self.titles()

    def scroll_to_message(self, index: int = 0) -> None:
        """Scroll the chat so that its `index`-th user message is at the top (for a screenshot)."""
        self.page.locator(USER).nth(index).evaluate(
            """e => {
                e.scrollIntoView({block: 'start'});
                let box = e.parentElement;
                while (box && box.scrollHeight <= box.clientHeight) box = box.parentElement;
                if (box) box.scrollTop -= 44;  // clear of the chat's own corner buttons
                window.scrollTo(0, 0);
            }"""
        )

    # -- controls ------------------------------------------------------------------------
    def choose(self, elem_id: str, option: str) -> None:
        """Pick an option of a dropdown by its shown name."""
        self.page.locator(f"#{elem_id} input[role=combobox]").click()
        self.page.get_by_role("option", name=option, exact=True).click()
        self.page.wait_for_function(
            "([sel, v]) => document.querySelector(sel).value === v",
            arg=[f"#{elem_id} input[role=combobox]", option],
        )

    def click(self, elem_id: str) -> None:
        self.page.locator(f"#{elem_id}").click()

    def new_chat(self) -> None:
        self.click("new-chat")
        self.page.wait_for_function("sel => document.querySelectorAll(sel).length === 0", arg=USER)

    def open_conversation(self, title: str) -> None:
        self.page.locator("#conversations .conv-open").filter(has_text=title).first.click()

    def list_menu(self, title: str, action: str) -> None:
        """A conversation's ⋯ menu in the list, then one of its actions (rename, pin, unpin,
        export, share, delete)."""
        item = self.page.locator("#conversations .conv").filter(has_text=title).first
        item.locator(".conv-menu-button").click()
        item.locator(f".conv-menu [data-action={action}]").click()

    def selected_title(self) -> str:
        """The title of the conversation the list marks as open ("" when none)."""
        found = self.page.locator("#conversations .conv[aria-current] .conv-title")
        return found.first.inner_text().strip() if found.count() else ""

    def open_chat_tools(self) -> None:
        """The chat's header (title, pin, share, export, delete) is always in view."""
        self.page.wait_for_selector("#chat-title", state="visible")

    def toast(self) -> str:
        self.page.wait_for_selector(TOAST)
        return " ".join(self.page.locator(TOAST).all_inner_texts())
