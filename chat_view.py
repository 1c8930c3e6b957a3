"""How stored messages look in the Chatbot: plain dicts in Gradio's messages format.

No gradio import: the UI hands these dicts to its Chatbot as they are. Everything shown is
rendered harmlessly (markup_text.py): model output, error text, the user's own and imported text.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence

import conversation_tree as tree
from markup_text import MAX_MATH_TOTAL_CHARS, MathBudget, safe_markdown
from token_usage import compact_usage, usage_details

# A navigator arrow's link: #<VERSION_LINK><position>-<version> (ui_assets.PAGE_JS).
VERSION_LINK = "mmchat-version-"
LOAD_EARLIER = "mmchat-load-earlier"  # the link on the note above a long chat's window
FEEDBACK_SHOWN = {"up": "Like", "down": "Dislike"}  # the Chatbot's names for thumbs

STATUS_NOTES = {"incomplete": "⚠️ Incomplete", "error": "⚠️ Not answered"}


# Text goes in as {"type": "text"} parts: a plain string would pass through inspect.cleandoc,
# which strips indentation and breaks code blocks.
def text_part(text: str) -> dict:
    return {"type": "text", "text": text}


def earlier_note(hidden: int) -> dict:
    """The first line of a long conversation's Chatbot: how many messages are not shown, and
    the link that shows more (ui_assets.CHAT_LINKS_JS)."""
    return {
        "role": "assistant",
        "content": [
            text_part(
                f"⋯ {hidden} earlier messages · [↑ Load earlier · 加载更早的消息](#{LOAD_EARLIER})"
            )
        ],
    }


# The navigator as it comes back in an edit box (the box starts from the shown text).
_NAVIGATOR_TAIL = re.compile(
    r"\s*(?:\[‹\]\(#" + VERSION_LINK + r"\d+-\d+\)|‹) \d+ / \d+ "
    r"(?:\[›\]\(#" + VERSION_LINK + r"\d+-\d+\)|›)\s*$"
)


def without_navigator(text: str) -> str:
    """An edited message's text without the ‹ n / m › row its box started with."""
    return _NAVIGATOR_TAIL.sub("", text)


def navigator(position: int, message: Mapping) -> str:
    """`‹ 2 / 3 ›` under a message with versions: each arrow is a link the page's script
    turns into a version switch (ui_assets.PAGE_JS); an end of the row is plain text."""
    count = tree.version_count(message)
    if count < 2:
        return ""
    shown = tree.shown_version(message)

    def arrow(label: str, target: int) -> str:
        return f"[{label}](#{VERSION_LINK}{position}-{target})" if 0 <= target < count else label

    return f"{arrow('‹', shown - 1)} {shown + 1} / {count} {arrow('›', shown + 1)}"


def authorship(message: Mapping, names: Mapping[str, str]) -> str:
    """Who wrote an answer and when: "gpt-4o-mini · OpenAI · 14:32 UTC"."""
    provider = message.get("provider") or ""
    parts = [message.get("model") or "", names.get(provider, provider)]
    created = message.get("created")
    if isinstance(created, int | float) and created > 0:
        parts.append(clock(created))
    return " · ".join(p for p in parts if p)


def clock(created: float, now: float | None = None) -> str:
    when, today = time.gmtime(created), time.gmtime(time.time() if now is None else now)
    same_day = when[:3] == today[:3]
    return time.strftime("%H:%M UTC" if same_day else "%b %d %H:%M UTC", when)


def display_answer(
    answer: str,
    reasoning: str = "",
    *,
    status: str = "complete",
    error: str | None = None,
    streaming: bool = False,
    usage: dict | None = None,
    math_budget: int = MAX_MATH_TOTAL_CHARS,
    author: str = "",
    versions: str = "",
) -> list[dict]:
    """One assistant answer: a collapsible thought (reasoning), the answer (with its
    `versions` navigator), who wrote it and its usage on one line.
    `math_budget`: formula characters it may have rendered (markup_text.MathBudget)."""
    shown: list[dict] = []
    if reasoning:
        shown.append(
            {
                "role": "assistant",
                "content": [text_part(safe_markdown(reasoning, math_budget))],
                "metadata": {"title": "💭 Thinking", "status": "pending" if streaming else "done"},
            }
        )
    body = answer
    if error and status in STATUS_NOTES:
        note = f"**{STATUS_NOTES[status]}:** {error}"
        body = f"{body.rstrip()}\n\n---\n{note}" if answer.strip() else note
    # Model output and error text are untrusted: rendered harmlessly as a whole (markup_text.py).
    body = safe_markdown(body, math_budget)
    if versions:
        body = f"{body}\n\n{versions}" if body else versions
    if body or not shown:
        shown.append({"role": "assistant", "content": [text_part(body or "…")]})
    if (usage or author) and not streaming:
        line = " · ".join(p for p in (author, compact_usage(usage) if usage else "") if p)
        shown.append(
            {
                "role": "assistant",
                "content": [text_part(usage_details(usage) if usage else author)],
                "metadata": {"title": f"📊 {line}", "status": "done"},
            }
        )
    return shown


def display_user(
    text: str,
    image_paths: Sequence[str],
    receipts: Sequence[str] = (),
    math_budget: int = MAX_MATH_TOTAL_CHARS,
    versions: str = "",
) -> list[dict]:
    content: list[dict] = [{"path": path} for path in image_paths]
    if text or versions:  # the user's own text (or an imported one) is as untrusted as a model's
        shown_text = safe_markdown(text, math_budget)
        content.insert(0, text_part(f"{shown_text}\n\n{versions}" if versions else shown_text))
    shown: list[dict] = [{"role": "user", "content": content or [text_part("")]}]
    if receipts:
        lines = "\n".join(f"- {line}" for line in receipts)  # image names come from the client
        shown.append(
            {
                "role": "assistant",
                "content": [text_part(safe_markdown(lines))],
                "metadata": {"title": f"📎 Sent {len(receipts)} image(s)", "status": "done"},
            }
        )
    return shown


def feedback_values(
    messages: Sequence[dict], shown: Sequence[dict], positions: Sequence[int]
) -> list[str | None]:
    """The thumbs the Chatbot shows, one per group of consecutive assistant messages (its
    `feedback_value`): the feedback of the group's first stored answer."""
    values: list[str | None] = []
    previous_role = ""
    for message, position in zip(shown, positions, strict=True):
        role = message["role"]
        if role == "assistant" and previous_role != "assistant":
            values.append(None)
        if role == "assistant" and position >= 0 and values[-1] is None:
            stored = messages[position]
            if stored["role"] == "assistant":
                values[-1] = FEEDBACK_SHOWN.get(stored.get("feedback") or "")
        previous_role = role
    return values


def answer_at(
    messages: Sequence[dict], shown: Sequence[dict], positions: Sequence[int], index: int
) -> int:
    """The stored answer a like on the Chatbot's message `index` is about: the first stored
    answer in the group of assistant messages starting there (it may start with the image
    receipt of a user message); -1: none."""
    for at in range(index, len(shown)) if index >= 0 else ():
        if shown[at]["role"] != "assistant":
            break
        position = positions[at]
        if position >= 0 and messages[position]["role"] == "assistant":
            return position
    return -1


def first_shown(count: int, limit: int) -> int:
    """The position of the first stored message shown when only the last `limit` are."""
    return max(0, count - limit)


def render_indexed(
    messages: Sequence[dict],
    image_paths: Mapping[int, Sequence[str]],
    limit: int,
    names: Mapping[str, str] | None = None,
) -> tuple[list[dict], list[int]]:
    """Chatbot messages, and for each one the position of the stored message it shows
    (a stored message may show as several: thinking, answer, usage, image receipt).

    Only the last `limit` stored messages are shown, after a note (position -1): Gradio
    postprocesses and diffs the whole Chatbot value on every streamed update, so its cost
    grows with the chat (0.2 ms empty, 2.1 ms at 200 messages); capped, a long conversation
    streams as cheaply as a 40-message one. "Load earlier" widens `limit`.
    `image_paths`: local files of a user message's images, by stored position; `names`:
    provider names by id, for the line saying who wrote an answer."""
    shown: list[dict] = []
    positions: list[int] = []
    start = first_shown(len(messages), limit)
    if start:
        shown.append(earlier_note(start))
        positions.append(-1)
    # Formulas cost the reader's tab: the newest messages keep theirs, older ones past
    # the view's budget show them as code (markup_text.MathBudget).
    math = MathBudget()
    budgets = [
        math.spend(message.get("content", ""), message.get("reasoning", ""))
        for message in reversed(messages[start:])
    ][::-1]
    for (position, message), budget in zip(
        enumerate(messages[start:], start), budgets, strict=True
    ):
        if message["role"] == "user":
            parts = display_user(
                message.get("content", ""),
                image_paths.get(position, ()),
                message.get("receipts", ()),
                budget,
                versions=navigator(position, message),
            )
        else:
            parts = display_answer(
                message.get("content", ""),
                message.get("reasoning", ""),
                status=message.get("status", "complete"),
                error=message.get("error"),
                usage=message.get("usage"),
                math_budget=budget,
                author=authorship(message, names or {}),
                versions=navigator(position, message),
            )
        shown += parts
        positions += [position] * len(parts)
    return shown, positions
