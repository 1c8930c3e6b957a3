"""Streamed tool calls: the real Providers.stream against the fake upstream's `tool_calls`
and `from_tool_results` behaviours, and tool_calls.py's collector and replay shapes."""

from __future__ import annotations

import json

import httpx
import pytest

from providers import ContentDelta, Finished, Providers, ToolCallDelta
from tests.conftest import app_env
from tests.fake_upstream import Exchange, FakeUpstream, from_tool_results, tool_calls
from tool_calls import ToolCall, ToolCallCollector, assistant_message, tool_message

KEY = "sk-test-tools-1"
USER = [{"role": "user", "content": "weather in Hangzhou?"}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


@pytest.fixture
def upstream():
    with FakeUpstream() as server:
        yield server


def registry_for(upstream: FakeUpstream) -> Providers:
    return Providers(app_env(upstream, OPENAI_API_KEY=KEY, DEFAULT_PROVIDER=None))


async def collect(registry: Providers, messages=None, **kw) -> list:
    return [e async for e in registry.stream("openai", "gpt-4o", messages or USER, **kw)]


def collected(events: list) -> ToolCallCollector:
    collector = ToolCallCollector()
    collector.feed(events)
    return collector


def text_of(events: list) -> str:
    return "".join(e.text for e in events if isinstance(e, ContentDelta))


# --------------------------------------------------------------------------------------
# Through the real stream


@pytest.mark.anyio
async def test_one_call_arrives_in_pieces_and_is_reassembled(upstream):
    registry = registry_for(upstream)
    arguments = {"city": "杭州", "units": "metric", "days": 3}
    upstream.script(tool_calls(("get_weather", arguments), split=4))
    events = await collect(registry, tools=[WEATHER])
    deltas = [e for e in events if isinstance(e, ToolCallDelta)]
    assert len(deltas) == 5  # the id + name piece, then 4 argument fragments
    assert deltas[0].id == "call_0_0" and deltas[0].name == "get_weather"
    assert all(d.id is None and d.name is None and d.arguments for d in deltas[1:])
    final = events[-1]
    assert isinstance(final, Finished) and final.reason == "tool_calls" and final.usage
    (call,) = collected(events).calls()
    assert call == ToolCall("call_0_0", "get_weather", json.dumps(arguments, ensure_ascii=False))
    assert call.json_arguments() == arguments
    assert upstream.requests[0]["tools"] == [WEATHER]
    await registry.aclose()


@pytest.mark.anyio
async def test_two_interleaved_calls_in_one_turn(upstream):
    registry = registry_for(upstream)
    upstream.script(
        tool_calls(("get_weather", {"city": "Beijing"}), ("search_poi", {"keywords": "tea"}))
    )
    events = await collect(registry, tools=[WEATHER])
    indexes = [e.index for e in events if isinstance(e, ToolCallDelta)]
    assert indexes[:4] == [0, 1, 0, 1]  # really interleaved, not one call after the other
    calls = collected(events).calls()
    assert [(c.id, c.name) for c in calls] == [
        ("call_0_0", "get_weather"),
        ("call_0_1", "search_poi"),
    ]
    assert [c.json_arguments() for c in calls] == [{"city": "Beijing"}, {"keywords": "tea"}]
    assert events[-1].reason == "tool_calls"
    await registry.aclose()


@pytest.mark.anyio
async def test_content_then_a_call(upstream):
    registry = registry_for(upstream)
    upstream.script(tool_calls(("get_weather", {"city": "Xi'an"}), content="Let me check."))
    events = await collect(registry, tools=[WEATHER])
    assert text_of(events) == "Let me check."
    last_text = max(i for i, e in enumerate(events) if isinstance(e, ContentDelta))
    first_call = min(i for i, e in enumerate(events) if isinstance(e, ToolCallDelta))
    assert last_text < first_call
    assert [c.name for c in collected(events).calls()] == ["get_weather"]
    await registry.aclose()


@pytest.mark.anyio
async def test_tools_sent_only_when_given_and_body_unchanged_otherwise(upstream):
    registry = registry_for(upstream)
    await collect(registry)
    await collect(registry, tools=None)
    await collect(registry, tools=[])
    await collect(registry, tools=[WEATHER])
    plain, none, empty, with_tools = upstream.requests
    assert "tools" not in plain and plain == none == empty
    assert with_tools.pop("tools") == [WEATHER] and with_tools == plain
    await registry.aclose()


@pytest.mark.anyio
async def test_replayed_calls_and_results_reach_the_model(upstream):
    registry = registry_for(upstream)
    upstream.script(
        tool_calls(("get_weather", {"city": "Beijing"}), ("get_weather", {"city": "Shanghai"})),
        from_tool_results(),
    )
    first = await collect(registry, tools=[WEATHER])
    calls = collected(first).calls()
    replay = [
        *USER,
        assistant_message("", calls),
        tool_message(calls[0].id, "Beijing: sunny, 21°C"),
        tool_message(calls[1].id, {"city": "Shanghai", "weather": "rain"}),
    ]
    second = await collect(registry, replay, tools=[WEATHER])
    assert text_of(second) == (
        'Result: Beijing: sunny, 21°C | {"city": "Shanghai", "weather": "rain"}'
    )
    assert second[-1].reason == "stop"
    sent = upstream.requests[1]["messages"]
    assert sent[1] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_0_0",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Beijing"}'},
            },
            {
                "id": "call_0_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Shanghai"}'},
            },
        ],
    }
    assert [m["tool_call_id"] for m in sent[2:]] == ["call_0_0", "call_0_1"]
    await registry.aclose()


def odd_server_calls(ex: Exchange) -> None:
    """A compatible server's variants: no `index`, arguments as an object, junk pieces, and
    a finish reason of "stop" although it made a call."""
    ex.start_stream()
    whole = [
        {"id": "x1", "function": {"name": "f", "arguments": {"a": 1}}},
        {"id": "x2", "function": {"name": "g", "arguments": "{}"}},
    ]
    ex.send_delta({"tool_calls": whole})
    ex.send_delta({"tool_calls": ["junk", {"index": 1, "function": "junk"}, {"index": 2}]})
    ex.send_delta({"tool_calls": None})
    ex.send_delta({}, "stop")
    ex.end_stream()


@pytest.mark.anyio
async def test_odd_tool_call_shapes_are_read_or_skipped(upstream):
    registry = registry_for(upstream)
    upstream.script(odd_server_calls)
    events = await collect(registry, tools=[WEATHER])
    assert [e for e in events if isinstance(e, ToolCallDelta)] == [
        ToolCallDelta(0, "x1", "f", '{"a": 1}'),
        ToolCallDelta(1, "x2", "g", "{}"),
    ]
    assert events[-1].reason == "stop"  # the collector, not the reason, says there are calls
    await registry.aclose()


@pytest.mark.anyio
async def test_non_streaming_tool_calls_shape(upstream):
    """The fake's non-streaming answer (for callers that do not stream, e.g. a title)."""
    upstream.script(tool_calls(("get_weather", {"city": "Beijing"})))
    url = f"{upstream.base_url}/chat/completions"
    message = httpx.post(url, json={"messages": USER}).json()["choices"][0]["message"]
    assert message["content"] is None
    assert message["tool_calls"][0]["function"] == {
        "name": "get_weather",
        "arguments": '{"city": "Beijing"}',
    }


# --------------------------------------------------------------------------------------
# The collector and the replay shapes (unit)


def test_pieces_in_any_order_within_an_index():
    collector = ToolCallCollector()
    collector.add(ToolCallDelta(1, None, None, '{"q": '))
    collector.add(ToolCallDelta(0, None, None, "{}"))
    collector.add(ToolCallDelta(1, "b", None, '"tea"}'))
    collector.add(ToolCallDelta(0, "a", "first", ""))
    collector.add(ToolCallDelta(1, "b", "second", ""))  # id and name repeated: kept once
    collector.add(ToolCallDelta(1, "other", "renamed", ""))  # the first seen wins
    assert collector.calls() == [
        ToolCall("a", "first", "{}"),
        ToolCall("b", "second", '{"q": "tea"}'),
    ]
    assert collector.dropped == []


def test_missing_and_duplicate_ids_are_generated_and_stable():
    collector = ToolCallCollector()
    collector.add(ToolCallDelta(0, None, "a", ""))
    collector.add(ToolCallDelta(1, "same", "b", ""))
    collector.add(ToolCallDelta(2, "same", "c", ""))
    calls = collector.calls()
    assert calls[0].id.startswith("call_") and len(calls[0].id) == 29
    assert calls[1].id == "same" and calls[2].id not in ("same", calls[0].id)
    assert collector.calls() == calls  # the same ids on every call
    assert [c.arguments for c in calls] == ["{}", "{}", "{}"]  # none sent: an empty object


def test_nameless_and_oversized_calls_are_dropped_with_a_reason():
    collector = ToolCallCollector(max_argument_chars=10)
    collector.add(ToolCallDelta(0, "c0", None, '{"a": 1}'))
    collector.add(ToolCallDelta(1, "c1", "ok", '{"a": 1}'))
    collector.add(ToolCallDelta(2, "c2", "big", '{"a": "'))
    collector.add(ToolCallDelta(2, None, None, 'xxxxxxxx"}'))
    assert collector and [c.id for c in collector.calls()] == ["c1"]
    assert collector.dropped == [
        "tool call #0 (c0) came without a function name; dropped",
        "tool call #2 (c2) to big: arguments over 10 characters; dropped",
    ]


def test_empty_collector_and_feed_ignores_other_events():
    collector = ToolCallCollector()
    assert not collector and collector.calls() == []
    collector.feed([ContentDelta("hi"), Finished("stop"), ToolCallDelta(0, None, "f", "{}")])
    assert [c.name for c in collector.calls()] == ["f"]


def test_json_arguments_errors_are_short_and_clear():
    assert ToolCall("i", "f", "").json_arguments() == {}
    with pytest.raises(ValueError, match="arguments of f are not valid JSON"):
        ToolCall("i", "f", '{"a": ').json_arguments()
    with pytest.raises(ValueError, match="must be a JSON object"):
        ToolCall("i", "f", "[1, 2]").json_arguments()


def test_replay_shapes():
    call = ToolCall("call_1", "get_weather", '{"city": "Beijing"}')
    assert assistant_message("Checking.", [call]) == {
        "role": "assistant",
        "content": "Checking.",
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Beijing"}'},
            }
        ],
    }
    assert assistant_message("", [call])["content"] is None
    # No calls: no tool_calls key (providers reject an empty list)
    assert assistant_message("Hi", []) == {"role": "assistant", "content": "Hi"}
    assert assistant_message(None, []) == {"role": "assistant", "content": ""}
    assert tool_message("call_1", "sunny") == {
        "role": "tool",
        "tool_call_id": "call_1",
        "content": "sunny",
    }
    assert tool_message("call_1", {"t": "晴"})["content"] == '{"t": "晴"}'
