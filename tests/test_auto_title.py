"""Titles made by the model after the first answer (auto_title.py): real turns through
ChatService into a real store (redis-server or embedded), the fake upstream over HTTP."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from pathlib import Path

import pytest

from auto_title import (
    INPUT_CHARS,
    THINKING_MAX_TOKENS,
    TITLE_MAX_TOKENS,
    clean_title,
    generate_title,
    local_title,
    title_after_first_answer,
)
from chat import ChatService, TurnRequest
from config import Settings, load_settings
from history import HistoryStore
from providers import Providers
from tests.conftest import TEST_KEY, app_env
from tests.fake_upstream import FakeUpstream, error, reply, stall

pytestmark = pytest.mark.anyio


@pytest.fixture
def upstream():
    with FakeUpstream() as server:
        yield server


@pytest.fixture
async def services():
    """Closes every service a test made, on the test's own event loop."""
    made: list[ChatService] = []
    yield made
    for service in made:
        await service.aclose()


@pytest.fixture
def make_service(services, upstream, tmp_path: Path):
    def make(redis_url: str | None = None, **env: str) -> ChatService:
        # The service itself makes no title (AUTO_TITLE off) unless a test says so: these
        # tests call title_after_first_answer themselves, with titles on (`retitle`).
        environ = app_env(upstream, redis_url, DEMO_DELAY_MS="0", **env)
        service = ChatService(
            load_settings(environ), Providers(environ, timeout_s=5), image_dir=tmp_path / "img"
        )
        on = "AUTO_TITLE" not in env
        TITLE_SETTINGS[id(service)] = replace(service.settings, auto_title=True) if on else None
        services.append(service)
        return service

    return make


TITLE_SETTINGS: dict[int, Settings | None] = {}


async def first_turn(service: ChatService, text: str, **request) -> str:
    """One turn (a new conversation) to its end; its conversation id."""
    request = {"provider": "openai", "model": "gpt-4o", **request}
    updates = [u async for u in service.turn(TurnRequest(text=text, **request))]
    assert updates[-1].done
    return updates[-1].conversation_id


async def retitle(service: ChatService, cid: str, provider="openai", model="gpt-4o"):
    store = await service.store()
    settings = TITLE_SETTINGS.get(id(service)) or service.settings
    return await title_after_first_answer(
        store, service.providers, settings, cid, provider, model, None
    )


async def title_of(service: ChatService, cid: str) -> str:
    meta = await (await service.store()).get_meta(cid)
    assert meta is not None
    return meta["title"]


# ---- the request and its reply -------------------------------------------------------------


async def test_first_answer_gets_a_title_from_one_small_request(redis_url, upstream, make_service):
    service = make_service(redis_url)
    question = "Plan me a trip to Beijing " + "please " * 400  # longer than INPUT_CHARS
    upstream.script(reply("Day 1: the Forbidden City. " + "More. " * 400))
    cid = await first_turn(service, question)
    assert (await (await service.store()).get_meta(cid))["title_auto"] == "1"  # chat.py

    upstream.script(reply('"Trip to Beijing."'))
    assert await retitle(service, cid) == "Trip to Beijing"

    assert len(upstream.requests) == 2  # the turn, then exactly one title request
    body = upstream.requests[1]
    assert body["max_tokens"] == TITLE_MAX_TOKENS and body["temperature"] == 0.2
    assert [m["role"] for m in body["messages"]] == ["system", "user"]  # no history replayed
    shown = body["messages"][1]["content"]
    assert "Plan me a trip to Beijing" in shown and "Forbidden City" in shown
    assert len(shown) < 2 * INPUT_CHARS + 200, "both inputs are bounded"
    meta = await (await service.store()).get_meta(cid)
    assert meta["title"] == "Trip to Beijing" and meta["title_auto"] == "0"


@pytest.mark.parametrize(
    ("raw", "title"),
    [
        ('"Trip to Beijing."', "Trip to Beijing"),
        ("**Title:** “Trip to Beijing”!", "Trip to Beijing"),
        ("# Trip   to\tBeijing\nThis conversation is about...", "Trip to Beijing"),
        ("<think>The user wants a title.</think>\n\nTrip to Beijing", "Trip to Beijing"),
        ("标题：「北京旅行计划」。", "北京旅行计划"),
        ("《三体》读后感", "《三体》读后感"),
        ("`pandas` merge tips...", "pandas merge tips"),
        ("A" * 60, "A" * 47 + "…"),
        ("", None),
        ('"".', None),
        ("Title:", None),
        ("<think>still thinking", None),
    ],
)
def test_replies_are_cleaned(raw, title):
    assert clean_title(raw) == title


async def test_reasoning_is_ignored_and_given_room(upstream):
    providers = Providers(app_env(upstream), timeout_s=5)
    upstream.script(reply("Trip to Beijing", reasoning="Hmm, a short title. Maybe Beijing?"))
    try:
        title = await generate_title(
            providers, "openai", "deepseek-reasoner", None, "Beijing trip?", "Sure."
        )
    finally:
        await providers.aclose()
    assert title == "Trip to Beijing"
    assert upstream.requests[0]["max_tokens"] == THINKING_MAX_TOKENS  # thinking spends tokens


async def test_chinese_conversation(redis_url, upstream, make_service):
    service = make_service(redis_url)
    upstream.script(reply("北京三日游可以这样安排：第一天故宫……"))
    cid = await first_turn(service, "我想去北京旅游三天，怎么安排？")
    upstream.script(reply("北京三日游行程。"))
    assert await retitle(service, cid) == "北京三日游行程"
    assert "我想去北京旅游三天" in upstream.requests[-1]["messages"][1]["content"]
    assert await title_of(service, cid) == "北京三日游行程"


# ---- failures never touch the turn ---------------------------------------------------------


@pytest.mark.parametrize(
    "failure",
    [
        error(400, {"error": {"message": "bad request", "type": "invalid_request_error"}}),
        error(401, {"error": {"message": "Incorrect API key", "code": "invalid_api_key"}}),
        error(500, {"error": {"message": "boom", "type": "server_error"}}),
        reply("  \n\n"),  # nothing usable
    ],
)
async def test_a_failed_title_keeps_the_first_message(upstream, make_service, caplog, failure):
    service = make_service()  # the embedded store
    cid = await first_turn(service, "What is a monad?")
    upstream.script(failure, failure, failure)  # the registry retries a 500 twice
    with caplog.at_level(logging.INFO, logger="auto_title"):
        assert await retitle(service, cid) is None
    assert await title_of(service, cid) == "What is a monad?"
    messages = await service.history(cid)
    assert [m["status"] for m in messages if m["role"] == "assistant"] == ["complete"]
    logged = caplog.text
    assert "title:" in logged
    assert TEST_KEY not in logged and upstream.base_url not in logged and "127.0.0.1" not in logged


async def test_a_stalled_provider_times_out_and_is_hung_up_on(upstream):
    providers = Providers(app_env(upstream), timeout_s=30)
    upstream.script(stall("Trip to", seconds=20))
    started = time.monotonic()
    try:
        title = await generate_title(
            providers, "openai", "gpt-4o", None, "Beijing?", "Yes.", timeout=0.5
        )
    finally:
        await providers.aclose()
    assert title is None
    assert time.monotonic() - started < 3
    assert upstream.wait_for_disconnect(5), "the upstream stream is closed on timeout"


async def test_an_unknown_or_disabled_provider_is_no_title(upstream):
    providers = Providers(app_env(upstream), timeout_s=5)
    try:
        assert await generate_title(providers, "nope", "", None, "x", "y") is None
        assert await generate_title(providers, "kimi", "", None, "x", "y") is None  # no key
    finally:
        await providers.aclose()
    assert upstream.requests == []


# ---- the demo provider ---------------------------------------------------------------------


async def test_demo_makes_a_local_title_without_any_request(upstream, make_service):
    service = make_service()
    cid = await first_turn(
        service, "how do I plan a trip to Beijing in spring?", provider="demo", model=""
    )
    assert await retitle(service, cid, "demo", "demo") == "How do I plan a trip"
    assert upstream.requests == []
    assert await title_of(service, cid) == "How do I plan a trip"


@pytest.mark.parametrize(
    ("text", "title"),
    [
        ("What is a monad? Explain simply.", "What is a monad"),
        ("iPhone battery tips", "iPhone battery tips"),
        ("我想去北京旅游，有什么建议吗？顺便问问天气。", "我想去北京旅游，有什么建议吗"),
        (
            "请详细解释一下量子纠缠的基本原理以及它在量子通信中的应用",
            "请详细解释一下量子纠缠的基本原理",
        ),
        ("## **Refactor** this function\n```py\nx = 1\n```", "Refactor this function"),
        ("", None),
        ("   ", None),
    ],
)
def test_local_titles(text, title):
    assert local_title(text) == title
    assert local_title(text) == local_title(text)  # deterministic


# ---- when a title is (not) made ------------------------------------------------------------


async def test_auto_title_false_makes_no_request(redis_url, upstream, make_service):
    service = make_service(redis_url, AUTO_TITLE="false")
    cid = await first_turn(service, "Tell me about Beijing")
    assert await retitle(service, cid) is None
    assert len(upstream.requests) == 1  # the turn only
    assert await title_of(service, cid) == "Tell me about Beijing"


@pytest.mark.parametrize(
    ("raw", "value"),
    [("false", False), ("0", False), ("No", False), (" off ", False), ("", True), ("true", True)],
)
def test_auto_title_setting(raw, value):
    assert load_settings({"AUTO_TITLE": raw}).auto_title is value


def test_auto_title_setting_refuses_junk():
    with pytest.raises(SystemExit, match="AUTO_TITLE must be true or false"):
        load_settings({"AUTO_TITLE": "sometimes"})


async def test_a_renamed_conversation_is_never_retitled(redis_url, upstream, make_service):
    service = make_service(redis_url)
    cid = await first_turn(service, "Tell me about Beijing")
    store = await service.store()
    await store.update_meta(cid, title="My trip", title_auto="0")  # what rename stores
    assert await retitle(service, cid) is None
    assert len(upstream.requests) == 1
    assert await title_of(service, cid) == "My trip"


async def test_a_rename_during_the_request_wins(redis_url, upstream, make_service):
    service = make_service(redis_url)
    cid = await first_turn(service, "Tell me about Beijing")
    store = await service.store()
    upstream.script(reply("Beijing travel guide", chunk_size=2, delay=0.1))
    titling = asyncio.create_task(retitle(service, cid))
    await asyncio.to_thread(upstream.wait_for_requests, 2)
    await store.update_meta(cid, title="My trip", title_auto="0")
    assert await titling is None
    assert await title_of(service, cid) == "My trip"


async def test_only_after_the_first_answer(redis_url, upstream, make_service):
    service = make_service(redis_url)
    cid = await first_turn(service, "Tell me about Beijing")
    second = TurnRequest(text="And Shanghai?", conversation_id=cid, provider="openai", model="m")
    [u async for u in service.turn(second)]
    assert await retitle(service, cid) is None
    assert len(upstream.requests) == 2  # the two turns, no title request
    assert await title_of(service, cid) == "Tell me about Beijing"


async def test_not_after_a_failed_first_answer(upstream, make_service):
    service = make_service()
    upstream.script(error(400, {"error": {"message": "bad", "type": "invalid_request_error"}}))
    cid = await first_turn(service, "Tell me about Beijing")
    assert (await service.history(cid))[-1]["status"] == "error"
    assert await retitle(service, cid) is None
    assert len(upstream.requests) == 1


async def test_imported_and_api_store_conversations_are_left_alone(upstream):
    """Only conversations a turn created say title_auto="1"; others keep their title."""
    store = await HistoryStore.connect(None)
    settings = load_settings(app_env(upstream, AUTO_TITLE="true"))
    providers = Providers(app_env(upstream), timeout_s=5)
    try:
        cid = await store.create_conversation(None, title="Imported")
        await store.append_turn(
            cid,
            [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello", "status": "complete"},
            ],
        )
        assert (
            await title_after_first_answer(store, providers, settings, cid, "openai", "m", None)
            is None
        )
    finally:
        await providers.aclose()
        await store.close()
    assert upstream.requests == []


async def test_the_sidebar_rename_stops_automatic_titles(upstream, make_service, tmp_path):
    """ui_conversations' rename handler itself (components stood in for by names)."""
    from types import SimpleNamespace

    from ui_conversations import ConversationHandlers

    service = make_service()
    browser = "b" * 32
    cid = await first_turn(service, "Tell me about Beijing", browser_id=browser)
    names = (
        "browser conversation_id title conversations role provider model temperature search tz"
        " deleted_row deleted_note deleted undo_timer"
    )
    ui = SimpleNamespace(**{name: name for name in (*names.split(), "top_p", "max_tokens")})
    handlers = ConversationHandlers(ui, service, service.settings, tmp_path / "exports")
    data = {
        "browser": {"browser_id": browser},
        "conversation_id": cid,
        "title": " My  trip ",
        "search": "",
        "tz": 0,
    }
    await handlers.rename(data)
    assert await title_of(service, cid) == "My trip"
    assert await retitle(service, cid) is None
    assert len(upstream.requests) == 1  # the turn only
    assert await title_of(service, cid) == "My trip"


async def test_the_service_titles_its_first_answer_in_the_background(
    redis_url, upstream, make_service
):
    """With AUTO_TITLE on, a turn starts the title itself; the page waits for it briefly."""
    service = make_service(redis_url, AUTO_TITLE="true")
    upstream.script(reply("Go in spring."), reply("Spring in Beijing"))
    cid = await first_turn(service, "When should I visit Beijing?")
    await service.title_ready(cid, timeout=10)
    assert await title_of(service, cid) == "Spring in Beijing"
    second = TurnRequest(text="And Shanghai?", conversation_id=cid, provider="openai")
    [u async for u in service.turn(second)]
    await service.title_ready(cid, timeout=10)
    assert len(upstream.requests) == 3, "one title request, after the first answer only"
    assert await title_of(service, cid) == "Spring in Beijing"
