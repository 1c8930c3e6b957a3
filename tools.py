"""The tool registry (function calling, issue 16): what a model may call, and one safe way to
call it.

    registry = ToolRegistry([*builtin_tools(), *geo_tools(settings)])
    chosen = registry.select(request.tools, default=settings_default_names)
    payload = registry.openai_tools([t.name for t in chosen])   # -> `tools=` of the request
    result = await registry.call(name, arguments_json)          # one streamed tool call

`call` never raises for a tool's own trouble: bad JSON, a missing parameter, a timeout or an
exception all become a failed `ToolResult` whose `content` is a short sentence, because a tool
error goes back to the model as the tool's result (it can retry or explain), never crashes the
turn. Only cancellation (Stop) propagates, so the turn ends at once.

No gradio import, no I/O at import: the tools themselves live in tool_builtin.py (offline)
and tool_amap.py (AMap Web Service); MCP tools join later with group "mcp:<server>".
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

MAX_RESULT_CHARS = 8_000  # what one result may add to the context (a page of text)
MAX_ARGUMENTS_CHARS = 20_000  # a model's arguments beyond this are not parsed
DEFAULT_TIMEOUT_S = 10.0
# OpenAI's rule for function names (others accept the same or more).
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# JSON schema type -> the Python types that satisfy it (bool is not a number here).
_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
}


class ToolError(Exception):
    """A failure a tool explains itself: its message is the result the model (and the user)
    sees, so it must be short, say what to do, and carry no key or internal address."""


@dataclass(frozen=True)
class Tool:
    """One callable tool. `parameters` is a JSON schema object; `run` gets the parsed, checked
    arguments and returns the text the model reads (plain or JSON)."""

    name: str
    description: str
    parameters: dict
    run: Callable[[dict], Awaitable[str]] = field(repr=False, compare=False)
    timeout_s: float = DEFAULT_TIMEOUT_S
    group: str = "builtin"  # "builtin", "geo", "mcp:<server>"

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"tool name {self.name!r} must be 1-64 letters, digits, _ or -")
        if self.parameters.get("type") != "object":
            raise ValueError(f"tool {self.name}: parameters must be a JSON schema object")

    def openai_tool(self) -> dict:
        """This tool as one entry of the chat completions `tools` list."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }


@dataclass(frozen=True)
class ToolResult:
    """What one call produced; `content` goes back to the model as the `tool` message."""

    name: str
    arguments: dict  # parsed ({} when they could not be parsed)
    ok: bool
    content: str
    duration_ms: int


class ToolRegistry:
    """The tools known to the app, by name (unique), in registration order."""

    def __init__(self, tools: Iterable[Tool] = (), max_result_chars: int = MAX_RESULT_CHARS):
        self._tools: dict[str, Tool] = {}
        self.max_result_chars = max_result_chars
        for tool in tools:
            self.register(tool)

    def register(self, tool: Tool) -> None:
        if tool.name in self._tools:
            raise ValueError(f"a tool named {tool.name!r} is already registered")
        self._tools[tool.name] = tool

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def names(self) -> list[str]:
        return list(self._tools)

    def __len__(self) -> int:
        return len(self._tools)

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def openai_tools(self, names: Iterable[str] | None = None) -> list[dict]:
        """The `tools=[{"type": "function", "function": {...}}]` payload for `names` (all
        tools when None). An unknown name is a ValueError (see `select`)."""
        chosen = self.names() if names is None else list(names)
        self._check_known(chosen)
        return [self._tools[name].openai_tool() for name in chosen]

    def select(self, spec: str, default: Sequence[str] = ()) -> list[Tool]:
        """The tools a request asks for: "" = `default`, "none" = no tools, else a comma
        list of names (blanks and repeats ignored). Unknown names: ValueError naming them
        and the known ones, so an API caller can fix the request."""
        spec = (spec or "").strip()
        if spec.lower() == "none":
            return []
        wanted = list(default) if not spec else [p.strip() for p in spec.split(",")]
        names = list(dict.fromkeys(name for name in wanted if name))
        self._check_known(names)
        return [self._tools[name] for name in names]

    def _check_known(self, names: Iterable[str]) -> None:
        unknown = [name for name in names if name not in self._tools]
        if unknown:
            known = ", ".join(self._tools) or "none are configured"
            raise ValueError(f"Unknown tool: {', '.join(unknown)[:200]}. Known tools: {known}.")

    async def call(self, name: str, arguments_json: str) -> ToolResult:
        """Run one call as the model asked for it. Never raises except CancelledError (Stop:
        `wait_for` cancels the tool's coroutine too)."""
        started = time.monotonic()
        tool = self._tools.get(name)
        arguments: dict = {}
        try:
            if tool is None:
                known = ", ".join(self._tools)
                raise ToolError(f"Unknown tool {name[:64]!r}. Available: {known}.")
            arguments = parse_arguments(arguments_json)
            check_arguments(tool, arguments)
            ok, content = True, await self._run(tool, arguments)
        except ToolError as exc:
            ok, content = False, f"Error: {exc}"
        except Exception as exc:  # a bug or an unexpected failure: logged, a short result
            log.warning("tool %s failed: %s", name, type(exc).__name__, exc_info=True)
            ok, content = False, f"Error: the tool {name} failed ({type(exc).__name__})."
        duration_ms = round((time.monotonic() - started) * 1000)
        return ToolResult(name, arguments, ok, cap(content, self.max_result_chars), duration_ms)

    @staticmethod
    async def _run(tool: Tool, arguments: dict) -> str:
        try:
            content = await asyncio.wait_for(tool.run(arguments), timeout=tool.timeout_s)
        except TimeoutError:
            raise ToolError(
                f"the tool {tool.name} did not finish within {tool.timeout_s:g} s."
            ) from None
        if not isinstance(content, str):
            raise TypeError(f"tool {tool.name} returned {type(content).__name__}, not str")
        return content


def parse_arguments(arguments_json: str | None) -> dict:
    """The model's arguments as a dict. "" (and None) mean no arguments: some models send
    that for a tool without parameters."""
    text = (arguments_json or "").strip()
    if not text:
        return {}
    if len(text) > MAX_ARGUMENTS_CHARS:
        raise ToolError(f"the arguments are too long (over {MAX_ARGUMENTS_CHARS} characters).")
    try:
        value = json.loads(text)
    except ValueError:
        raise ToolError("the arguments are not valid JSON; send a JSON object.") from None
    if not isinstance(value, dict):
        raise ToolError("the arguments must be a JSON object.")
    return value


def check_arguments(tool: Tool, arguments: dict) -> None:
    """Required parameters present, top-level types right: enough for a clear message back
    to the model; each tool still checks its own values."""
    schema = tool.parameters
    missing = [name for name in schema.get("required", ()) if name not in arguments]
    if missing:
        raise ToolError(f"missing required parameter(s): {', '.join(missing)}.")
    properties = schema.get("properties", {})
    if schema.get("additionalProperties") is False:
        extra = [name for name in arguments if name not in properties]
        if extra:
            raise ToolError(f"unknown parameter(s): {', '.join(extra)[:200]}.")
    for name, value in arguments.items():
        expected = properties.get(name, {}).get("type")
        if isinstance(expected, str) and not _is_type(value, expected):
            raise ToolError(f"parameter {name} must be a {expected}.")


def _is_type(value: object, expected: str) -> bool:
    types = _JSON_TYPES.get(expected)
    if types is None:
        return True
    if isinstance(value, bool) and expected != "boolean":
        return False
    return isinstance(value, types)


def cap(text: str, limit: int = MAX_RESULT_CHARS) -> str:
    """`text` cut to `limit` characters, saying so (the model should know it saw a part)."""
    if len(text) <= limit:
        return text
    note = f"\n… [truncated: {limit} of {len(text)} characters shown]"
    return text[: max(0, limit - len(note))] + note
