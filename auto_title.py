"""Conversation titles made by the model after the first answer (issue 15).

A new conversation starts with its first message as the title (chat.py
`conversation_title`) and `title_auto="1"` in its meta. Once the first answer is complete,
`title_after_first_answer` asks the same provider and model for a short title (one small
request through the provider registry: same client, key handling, retries and error mapping
as a turn), cleans it and stores it with `title_auto="0"`, so neither a later turn nor a
user's rename is ever overwritten. The offline demo provider gets a local title and makes no
request. A failed title is only logged: the first-message title stays and the turn is never
affected.

Nothing here imports gradio, chat or the UI: the caller decides when to call it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING

from providers import DEMO_ID, ContentDelta, ProviderError, StreamEvent
from redis_connection import HistoryUnavailable

if TYPE_CHECKING:
    from config import Settings
    from history import HistoryStore
    from providers import Provider, Providers

__all__ = [
    "TITLE_CHARS",
    "clean_title",
    "generate_title",
    "local_title",
    "title_after_first_answer",
]

log = logging.getLogger("auto_title")

TITLE_CHARS = 48  # as chat.TITLE_CHARS: the sidebar shows titles of this length
INPUT_CHARS = 1_000  # of the user's text and of the answer: a title needs the gist only
TITLE_MAX_TOKENS = 24
# Models that think before they answer spend their thinking from the same token budget
# (o-series / GPT-5 hidden, DeepSeek-R1 & co. visible): 24 tokens would leave no title.
THINKING_MAX_TOKENS = 1_024
TITLE_TEMPERATURE = 0.2
MAX_COLLECTED_CHARS = 2_000  # stop reading a model that rambles without a line break
DEMO_WORDS = 6
DEMO_CJK_CHARS = 16  # CJK text has no spaces: a title of about six words is ~16 characters

# The same names providers.py sends without sampling settings: they reason unseen.
_HIDDEN_REASONING = re.compile(r"(^|/)(gpt-5|o\d)")

SYSTEM_PROMPT = (
    "You name conversations. Reply with a title for the conversation the user shows you: "
    "at most 6 words (about 12 characters in Chinese or Japanese), in the same language as "
    "the user's message. Reply with the title only: no quotes, no final punctuation, "
    "no explanation."
)

# ---- cleaning ------------------------------------------------------------------------------

_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.S | re.I)
_LIST_OR_HEADING = re.compile(r"^\s*(#{1,6}\s*|>\s*|[-*+]\s+|\d{1,2}[.)]\s+)")
_LABEL = re.compile(r"^(title|conversation title|标题|題目|题目|标题是)\s*[:：]\s*", re.I)
_EMPHASIS = re.compile(r"\*\*|__|~~|[`*]")
_QUOTES = "\"'“”‘’«»「」『』＂＇"
_PAIRS = (("《", "》"), ("(", ")"), ("（", "）"), ("[", "]"), ("【", "】"))
_TRAILING = ".,;:!?。，；：！？、…·-–—_ "
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af\uf900-\ufaff]")
_SENTENCE_END = re.compile(r"[。！？!?；;]|\.(\s|$)")


def _visible(text: str) -> str:
    """The text without inline thinking (Ollama / vLLM put `<think>…</think>` in content)."""
    text = _THINK_BLOCK.sub("", text)
    opened = text.lower().find("<think>")
    return text if opened < 0 else text[:opened]


def _first_line(text: str) -> str:
    return next((line for line in text.splitlines() if line.strip()), "")


def _unwrap(text: str) -> str:
    """Quotes, a wrapping bracket pair and trailing punctuation off, until nothing changes."""
    while True:
        before = text
        text = text.strip().strip(_QUOTES).strip().rstrip(_TRAILING)
        for opening, closing in _PAIRS:
            if text.startswith(opening) and text.endswith(closing) and len(text) > 2:
                inner = text[1:-1]
                if opening not in inner and closing not in inner:
                    text = inner
        if text == before:
            return text


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def clean_title(raw: str) -> str | None:
    """A model's reply as a title: one line, no quotes, Markdown or final punctuation,
    whitespace collapsed, at most TITLE_CHARS characters (cut with "…"); None when empty."""
    line = _first_line(_visible(raw or ""))
    line = _LIST_OR_HEADING.sub("", line)
    line = _EMPHASIS.sub("", line)
    line = _LABEL.sub("", line.strip().strip(_QUOTES).strip())  # before ":" is stripped
    title = " ".join(_unwrap(line).split())
    # A label alone ("Title:") or punctuation alone is not a title.
    return _cut(title, TITLE_CHARS) if any(ch.isalnum() for ch in title) else None


def local_title(user_text: str) -> str | None:
    """The demo provider's title, made locally: the first words of the user's first
    sentence (CJK: its first characters), deterministic; None for no text (an image only)."""
    line = _LIST_OR_HEADING.sub("", _first_line(user_text or ""))
    line = _EMPHASIS.sub("", line)
    sentence = _SENTENCE_END.split(line, maxsplit=1)[0]
    sentence = sentence.strip() or line.strip()
    words = sentence.split()
    if len(words) > DEMO_WORDS:
        sentence = " ".join(words[:DEMO_WORDS])
    if _CJK.search(sentence) and len(sentence) > DEMO_CJK_CHARS:
        sentence = sentence[:DEMO_CJK_CHARS]
    return _capitalised(clean_title(sentence))


def _capitalised(title: str | None) -> str | None:
    """ "how do I ..." -> "How do I ..."; a word with capitals inside ("iPhone") stays."""
    if not title:
        return None
    first = title.split()[0]
    return title[0].upper() + title[1:] if first.islower() else title


# ---- the request ---------------------------------------------------------------------------


def _request_messages(user_text: str, answer: str) -> list[dict]:
    """The first exchange only, bounded, as material to name (not a chat to continue)."""
    exchange = (
        "Conversation to name:\n"
        f"<user>\n{(user_text or '').strip()[:INPUT_CHARS]}\n</user>\n"
        f"<assistant>\n{(answer or '').strip()[:INPUT_CHARS]}\n</assistant>\n"
        "Title:"
    )
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": exchange}]


def _token_budget(provider: Provider, model: str) -> int:
    if provider.supports_reasoning(model) or _HIDDEN_REASONING.search(model.lower()):
        return THINKING_MAX_TOKENS
    return TITLE_MAX_TOKENS


def _line_complete(text: str) -> bool:
    visible = _visible(text).strip()
    return "\n" in visible or len(text) > MAX_COLLECTED_CHARS


async def _read_title(events: AsyncGenerator[StreamEvent, None]) -> str:
    """The answer's content (reasoning ignored), up to its first whole line: closing the
    stream early tells the provider to stop generating."""
    content = ""
    async with contextlib.aclosing(events) as stream:
        async for event in stream:
            if isinstance(event, ContentDelta):
                content += event.text
                if _line_complete(content):
                    break
    return content


async def generate_title(
    providers: Providers,
    provider_id: str,
    model: str,
    api_key: str | None,
    user_text: str,
    answer: str,
    *,
    timeout: float = 8.0,
) -> str | None:
    """A short title for a conversation's first exchange, or None when none could be made.

    One small streamed request through `providers` (the demo provider: a local title, no
    request). Never raises for a provider failure or a timeout: it logs one INFO line (the
    provider, model and error code only: no key, no URL) and returns None.
    """
    try:
        provider, chosen = providers.resolve(provider_id, model, api_key=api_key)
    except ProviderError as err:
        log.info("title: provider %.40r not usable (%s)", provider_id, err.code)
        return None
    if provider.id == DEMO_ID:
        return local_title(user_text)
    events = providers.stream(
        provider.id,
        chosen,
        _request_messages(user_text, answer),
        temperature=TITLE_TEMPERATURE,
        max_tokens=_token_budget(provider, chosen),
        api_key=api_key,
    )
    try:
        async with asyncio.timeout(timeout):
            raw = await _read_title(events)
    except ProviderError as err:
        log.info("title: %s %s failed: %s (status %s)", provider.id, chosen, err.code, err.status)
        return None
    except TimeoutError:
        log.info("title: %s %s gave no title within %.1f s", provider.id, chosen, timeout)
        return None
    except Exception as exc:  # a title is a nicety: whatever went wrong, the turn stands
        log.info("title: %s %s failed: %s", provider.id, chosen, type(exc).__name__)
        return None
    title = clean_title(raw)
    if title is None:
        log.info("title: %s %s answered no usable title", provider.id, chosen)
    return title


# ---- after the first answer ----------------------------------------------------------------


async def _wants_title(store: HistoryStore, cid: str) -> bool:
    """Still titled from its first message: not renamed, not titled automatically yet."""
    meta = await store.get_meta(cid)
    return meta is not None and meta.get("title_auto") == "1"


def _first_exchange(messages: list[dict]) -> tuple[str, str] | None:
    """(user text, answer) when the conversation is exactly its first, complete exchange."""
    if len(messages) != 2:
        return None
    question, answer = messages
    if question.get("role") != "user" or answer.get("role") != "assistant":
        return None
    if answer.get("status") != "complete":
        return None
    text, reply = question.get("content"), answer.get("content")  # reasoning stays out
    return (text if isinstance(text, str) else "", reply if isinstance(reply, str) else "")


async def title_after_first_answer(
    store: HistoryStore,
    providers: Providers,
    settings: Settings,
    cid: str,
    provider_id: str,
    model: str,
    api_key: str | None,
) -> str | None:
    """Title the conversation from its first exchange and store it; the title, or None when
    it is off (AUTO_TITLE), not wanted (renamed, already titled, not the first answer, not
    complete) or failed. Never raises for a provider or Redis failure."""
    if not settings.auto_title:
        return None
    try:
        if not await _wants_title(store, cid):
            return None
        # The last three are enough to tell "exactly one exchange" apart from more.
        exchange = _first_exchange(await store.get_messages(cid, limit=3))
        if exchange is None:
            return None
        title = await generate_title(providers, provider_id, model, api_key, *exchange)
        # A rename while the model was asked wins: look again right before writing.
        if title is None or not await _wants_title(store, cid):
            return None
        await store.update_meta(cid, title=title, title_auto="0")
    except HistoryUnavailable:
        log.info("title: history unavailable; the first message stays the title")
        return None
    return title
