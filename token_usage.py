"""Tokens and cost of a reply: the provider's count where it gave one, else an estimate;
and how usage reads (one line per reply, one per conversation)."""

from __future__ import annotations

from collections.abc import Sequence

from model_facts import load_prices, price_of
from providers import Finished

CURRENCY_SIGNS = {"USD": "$", "CNY": "¥", "EUR": "€"}


def estimate_text_tokens(text: str) -> int:
    """A rough count when the provider reports none: ~4 characters a token, CJK ~1 each."""
    cjk = sum(1 for ch in text if "\u3000" <= ch <= "\u9fff" or "\uac00" <= ch <= "\ud7af")
    return cjk + max(0, len(text) - cjk + 3) // 4


def prompt_text(messages: Sequence[dict]) -> str:
    """The text of an upstream request's messages (image parts left out)."""
    texts = []
    for message in messages:
        content = message.get("content")
        for part in content if isinstance(content, list) else [{"text": content or ""}]:
            if part.get("type") != "image_url":
                texts.append(part.get("text") or "")
    return "".join(texts)


def usage_of(
    finished: Finished | None,
    messages: Sequence[dict],
    *,
    answer: str,
    model: str,
    provider: str = "",
    image_tokens: int | None,
) -> dict:
    """Tokens of one reply to the upstream request `messages`, and its cost when the model
    has a price. `answer`: everything it wrote (reasoning included), for the estimate."""
    reported = (finished.usage or {}) if finished else {}
    usage: dict = {
        "prompt_tokens": reported.get("prompt_tokens"),
        "completion_tokens": reported.get("completion_tokens"),
        "image_tokens": image_tokens or None,
        "estimated": not reported,
    }
    if not reported:
        usage["prompt_tokens"] = estimate_text_tokens(prompt_text(messages)) + (image_tokens or 0)
        usage["completion_tokens"] = estimate_text_tokens(answer)
    prompt, completion = usage["prompt_tokens"] or 0, usage["completion_tokens"] or 0
    usage["total_tokens"] = prompt + completion
    price = price_of(model, provider)
    if price:
        usage["cost"] = round((prompt * price.input + completion * price.output) / 1_000_000, 6)
        usage["currency"] = price.currency
    return usage


def format_cost(amount: float, currency: str) -> str:
    sign = CURRENCY_SIGNS.get(currency, f"{currency} ")
    return f"{sign}{amount:.4f}" if amount < 1 else f"{sign}{amount:,.2f}"


def usage_summary(usage: dict) -> str:
    """One short line: tokens in/out and the cost, '~' where it is an estimate."""
    approx = "~" if usage.get("estimated") else ""
    line = (
        f"{approx}{usage.get('prompt_tokens') or 0:,} in · "
        f"{approx}{usage.get('completion_tokens') or 0:,} out"
    )
    if "cost" in usage:
        cost = usage["cost"]
        line += f" · ≈ {format_cost(cost, usage.get('currency', 'USD'))}" if cost else " · free"
    return line


def compact_usage(usage: dict) -> str:
    """usage_summary short enough to share a line with the model's name: "1.2k→56 tok"
    (Markdown: an estimate's "~" is escaped, or two of them would strike the text through)."""
    approx = "\\~" if usage.get("estimated") else ""
    line = (
        f"{approx}{_compact(usage.get('prompt_tokens') or 0)}→"
        f"{approx}{_compact(usage.get('completion_tokens') or 0)} tok"
    )
    if "cost" in usage:
        cost = usage["cost"]
        # The code, not the sign: the chat's formula rendering breaks the line at a "$".
        currency = usage.get("currency", "USD")
        shown = format_cost(cost, currency).removeprefix(
            CURRENCY_SIGNS.get(currency, f"{currency} ")
        )
        line += f" · ≈ {shown.strip()} {currency}" if cost else " · free"
    return line


def _compact(count: int) -> str:
    if count < 1000:
        return str(count)
    return f"{count / 1000:.1f}k" if count < 100_000 else f"{count // 1000}k"


def usage_details(usage: dict) -> str:
    as_of, _ = load_prices()
    images = usage.get("image_tokens")
    rows = [
        f"- prompt tokens: {usage.get('prompt_tokens') or 0:,}",
        f"- completion tokens: {usage.get('completion_tokens') or 0:,}",
        f"- of which image tokens: ~{images:,}" if images else "- image tokens: none or unknown",
    ]
    if usage.get("estimated"):
        rows.append("- the provider reported no usage: counts are estimates (~4 characters/token)")
    if "cost" in usage:
        rows.append(f"- cost estimate from the price table of {as_of} (prices.json)")
    else:
        rows.append("- no price known for this model (add it to prices.json)")
    return "\n".join(rows)


def conversation_usage(messages: Sequence[dict]) -> str:
    """The summed usage of a conversation's answers, as one line (empty when none)."""
    answers = [m["usage"] for m in messages if m.get("role") == "assistant" and m.get("usage")]
    if not answers:
        return ""
    tokens = sum(u.get("total_tokens") or 0 for u in answers)
    estimated = any(u.get("estimated") for u in answers)
    line = f"{len(answers)} replies · {'~' if estimated else ''}{tokens:,} tokens"
    costs: dict[str, float] = {}
    for u in answers:
        if "cost" in u:
            currency = u.get("currency", "USD")
            costs[currency] = costs.get(currency, 0) + u["cost"]
    if costs:
        line += " · ≈ " + " + ".join(format_cost(v, k) for k, v in costs.items())
    return line
