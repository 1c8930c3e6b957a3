"""How stored messages look in the Chatbot: plain dicts in Gradio's messages format.

No gradio import: the UI hands these dicts to its Chatbot as they are. Everything shown is
rendered harmlessly (markup_text.py): model output, error text, the user's own and imported text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from markup_text import MAX_MATH_TOTAL_CHARS, MathBudget, safe_markdown
from token_usage import usage_details, usage_summary

STATUS_NOTES = {"incomplete": "⚠️ Incomplete", "error": "⚠️ Not answered"}


# Text goes in as {"type": "text"} parts: a plain string would pass through inspect.cleandoc,
# which strips indentation and breaks code blocks.
def text_part(text: str) -> dict:
    return {"type": "text", "text": text}


def earlier_note(hidden: int) -> dict:
    """The first line of a long conversation's Chatbot: how many messages are not shown."""
    return {
        "role": "assistant",
        "content": [
            text_part(
                "To stay fast, the chat shows the latest messages only. All of them are "
                "kept: export the conversation to read the earlier ones."
            )
        ],
        "metadata": {"title": f"⋯ {hidden} earlier messages", "status": "done"},
    }


def display_answer(
    answer: str,
    reasoning: str = "",
    *,
    status: str = "complete",
    error: str | None = None,
    streaming: bool = False,
    usage: dict | None = None,
    math_budget: int = MAX_MATH_TOTAL_CHARS,
) -> list[dict]:
    """One assistant answer: a collapsible thought (reasoning), the answer, its usage.
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
    if body or not shown:
        shown.append({"role": "assistant", "content": [text_part(body or "…")]})
    if usage and not streaming:
        shown.append(
            {
                "role": "assistant",
                "content": [text_part(usage_details(usage))],
                "metadata": {"title": f"📊 {usage_summary(usage)}", "status": "done"},
            }
        )
    return shown


def display_user(
    text: str,
    image_paths: Sequence[str],
    receipts: Sequence[str] = (),
    math_budget: int = MAX_MATH_TOTAL_CHARS,
) -> list[dict]:
    content: list[dict] = [{"path": path} for path in image_paths]
    if text:  # the user's own text (or an imported one) is as untrusted as a model's
        content.insert(0, text_part(safe_markdown(text, math_budget)))
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


def first_shown(count: int, limit: int) -> int:
    """The position of the first stored message shown when only the last `limit` are."""
    return max(0, count - limit)


def render_indexed(
    messages: Sequence[dict], image_paths: Mapping[int, Sequence[str]], limit: int
) -> tuple[list[dict], list[int]]:
    """Chatbot messages, and for each one the position of the stored message it shows
    (a stored message may show as several: thinking, answer, usage, image receipt).

    Only the last `limit` stored messages are shown, after a note (position -1): Gradio
    postprocesses and diffs the whole Chatbot value on every streamed update, so its cost
    grows with the chat (0.2 ms empty, 2.1 ms at 200 messages); capped, a long conversation
    streams as cheaply as a 40-message one. Export still has everything.
    `image_paths`: local files of a user message's images, by stored position."""
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
            )
        else:
            parts = display_answer(
                message.get("content", ""),
                message.get("reasoning", ""),
                status=message.get("status", "complete"),
                error=message.get("error"),
                usage=message.get("usage"),
                math_budget=budget,
            )
        shown += parts
        positions += [position] * len(parts)
    return shown, positions
