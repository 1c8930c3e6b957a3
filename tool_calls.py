"""Streamed tool calls put back together, and the messages that replay them (no I/O).

A model that wants tools run streams its calls as `ToolCallDelta` pieces (providers.py):
the first piece of a call usually carries its id and name, the later ones fragments of its
JSON arguments, and several calls interleave by index. The tool loop feeds every piece to a
`ToolCallCollector`, and after the stream's `Finished` takes `calls()`:

    collector = ToolCallCollector()
    async for event in providers.stream(..., tools=schemas):
        if isinstance(event, ToolCallDelta):
            collector.add(event)
    calls = collector.calls()            # index order; nameless calls in collector.dropped
    messages.append(assistant_message(answer_text, calls))
    for call in calls:
        messages.append(tool_message(call.id, run(call.name, call.json_arguments())))

Trust `calls()`, not only the finish reason: some compatible servers end a turn that has
calls with "stop". The replay shapes are OpenAI's (`assistant.tool_calls`, `tool`
messages), which every compatible provider accepts.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from provider_presets import StreamEvent, ToolCallDelta

# A model's arguments are small JSON objects; anything bigger is a runaway generation and
# would be replayed into every later request of the conversation.
MAX_ARGUMENT_CHARS = 100_000


@dataclass
class ToolCall:
    """One whole call: `arguments` is the JSON text the model sent ("{}" when it sent none)."""

    id: str
    name: str
    arguments: str

    def json_arguments(self) -> dict[str, Any]:
        """The arguments as a dict; ValueError with a short reason the model can act on
        (send it back as the tool's result) when they are not a JSON object."""
        try:
            value = json.loads(self.arguments or "{}")
        except ValueError as exc:
            raise ValueError(f"The arguments of {self.name} are not valid JSON: {exc}") from None
        if not isinstance(value, dict):
            raise ValueError(f"The arguments of {self.name} must be a JSON object.")
        return value

    def as_openai(self) -> dict[str, Any]:
        """The call as an entry of `assistant.tool_calls`."""
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


@dataclass
class _Pending:
    """A call being assembled from its pieces."""

    id: str | None = None
    name: str | None = None
    parts: list[str] = field(default_factory=list)
    chars: int = 0


class ToolCallCollector:
    """Assembles ToolCallDelta pieces into ToolCalls, one per stream index.

    Pieces of one index may come in any order: the first id and the first name seen win (a
    server that repeats them in every piece is fine), arguments are joined in arrival
    order. A call without an id gets a generated one (so its `tool` result can refer to
    it); two calls with the same id get distinct ids. A call without a name cannot be run
    and is dropped, its reason in `dropped`; so is one whose arguments pass
    `max_argument_chars`.
    """

    def __init__(self, *, max_argument_chars: int = MAX_ARGUMENT_CHARS) -> None:
        self.max_argument_chars = max_argument_chars
        self._pending: dict[int, _Pending] = {}
        self._oversized: set[int] = set()

    def add(self, delta: ToolCallDelta) -> None:
        """Take one piece."""
        pending = self._pending.setdefault(delta.index, _Pending())
        pending.id = pending.id or delta.id or None
        pending.name = pending.name or delta.name or None
        if delta.arguments and delta.index not in self._oversized:
            pending.chars += len(delta.arguments)
            if pending.chars > self.max_argument_chars:
                self._oversized.add(delta.index)
                pending.parts.clear()  # no need to keep what will be dropped
            else:
                pending.parts.append(delta.arguments)

    def feed(self, events: Iterable[StreamEvent]) -> None:
        """Take the ToolCallDelta events among any stream events (others are ignored)."""
        for event in events:
            if isinstance(event, ToolCallDelta):
                self.add(event)

    def __bool__(self) -> bool:
        """Whether any piece arrived (calls() may still be empty if all were dropped)."""
        return bool(self._pending)

    def calls(self) -> list[ToolCall]:
        """The whole calls in index order (the same ids on every call of this method)."""
        calls: list[ToolCall] = []
        seen: set[str] = set()
        for index in sorted(self._pending):
            pending = self._pending[index]
            if not pending.name or index in self._oversized:
                continue
            if not pending.id or pending.id in seen:
                pending.id = _new_id()  # stored, so a second calls() gives the same id
            seen.add(pending.id)
            arguments = "".join(pending.parts).strip() or "{}"
            calls.append(ToolCall(pending.id, pending.name, arguments))
        return calls

    @property
    def dropped(self) -> list[str]:
        """Why calls were left out of calls(), one short line each (for the log)."""
        reasons: list[str] = []
        for index in sorted(self._pending):
            pending = self._pending[index]
            label = f"tool call #{index}" + (f" ({pending.id})" if pending.id else "")
            if not pending.name:
                reasons.append(f"{label} came without a function name; dropped")
            elif index in self._oversized:
                reasons.append(
                    f"{label} to {pending.name}: arguments over "
                    f"{self.max_argument_chars} characters; dropped"
                )
        return reasons


def _new_id() -> str:
    # OpenAI's ids look like "call_" + 24 characters; some servers check the prefix.
    return f"call_{secrets.token_hex(12)}"


def assistant_message(content: str | None, calls: list[ToolCall]) -> dict[str, Any]:
    """The assistant's turn as replayed context: its text and its calls. Content is null
    when empty (the spec's form; some providers reject an empty string), and without calls
    the message has no `tool_calls` key at all (an empty list is rejected)."""
    message: dict[str, Any] = {"role": "assistant", "content": content or None}
    if calls:
        message["tool_calls"] = [call.as_openai() for call in calls]
    elif not content:
        message["content"] = ""  # a bare assistant message still needs some content
    return message


def tool_message(call_id: str, content: Any) -> dict[str, Any]:
    """A tool's result for the call `call_id`. Text goes as it is; anything else (a dict,
    a list, a number) as JSON text, since providers only take strings here."""
    text = content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)
    return {"role": "tool", "tool_call_id": call_id, "content": text}


__all__ = [
    "MAX_ARGUMENT_CHARS",
    "ToolCall",
    "ToolCallCollector",
    "assistant_message",
    "tool_message",
]
