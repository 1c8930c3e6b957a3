"""The turn logic (chat.py) against a real redis-server and the fake upstream over HTTP."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import io
import itertools
import json
import logging
import time
from pathlib import Path

import pytest
from PIL import Image

from chat import ChatError, ChatService, InputMessage, Status, TurnRequest, conversation_title
from chat_stream import coalesce
from config import ROLES, load_settings
from model_facts import price_of
from providers import ContentDelta, Finished, Providers
from tests.conftest import app_env
from tests.fake_upstream import FakeUpstream, cut, error, reply, slow

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
def make_service(services, upstream, tmp_path):
    def make(redis_url: str | None, **env: str) -> ChatService:
        service = new_service(redis_url, upstream, tmp_path, **env)
        services.append(service)
        return service

    return make


def new_service(redis_url: str | None, upstream: FakeUpstream, tmp_path: Path, **env: str):
    environ = app_env(
        upstream,
        redis_url,
        DEFAULT_PROVIDER=None,  # turns name their provider
        DEEPSEEK_API_KEY="sk-test-deepseek",
        DEEPSEEK_BASE_URL=upstream.base_url,
        PROVIDER_TIMEOUT_SECONDS="5",
        **env,
    )
    settings = load_settings(environ)
    return ChatService(settings, Providers(environ, timeout_s=5), image_dir=tmp_path / "img")


async def run(service: ChatService, **request) -> list:
    """Every update as yielded (each is its own snapshot: no copies needed)."""
    return [update async for update in service.turn(TurnRequest(**request))]


def png_file(tmp_path: Path, name="red.png", size=(64, 48), colour=(255, 0, 0)) -> str:
    path = tmp_path / name
    Image.new("RGB", size, colour).save(path)
    return str(path)


async def test_turn_streams_and_persists(redis_url, upstream, tmp_path, make_service):
    service = make_service(redis_url)
    upstream.script(reply("Hello there, how are you today?", chunk_size=3, delay=0.01))
    updates = await run(service, text="hi", provider="openai", model="gpt-4o")
    final = updates[-1]
    assert final.done and final.status == "complete"
    assert final.answer == "Hello there, how are you today?"
    answers = [u.answer for u in updates]
    assert len(set(answers)) >= 3, f"the answer streams in several updates: {answers}"
    assert all(b.startswith(a) for a, b in itertools.pairwise(answers)), answers
    assert [u.done for u in updates] == [False] * (len(updates) - 1) + [True]
    stored = await service.history(final.conversation_id)
    assert [m["role"] for m in stored] == ["user", "assistant"]
    assert stored[0]["content"] == "hi"
    assert stored[1]["content"] == final.answer and stored[1]["status"] == "complete"


async def test_role_prompt_is_sent(redis_url, upstream, tmp_path, make_service):
    service = make_service(redis_url)
    await run(service, text="explain", role="teacher", provider="openai", model="gpt-4o")
    await run(
        service,
        text="x",
        role="custom",
        system_prompt="Talk like a pirate.",
        provider="openai",
        model="gpt-4o",
    )
    first, second = upstream.requests[-2], upstream.requests[-1]
    assert first["messages"][0] == {"role": "system", "content": ROLES["teacher"].prompt}
    assert second["messages"][0] == {"role": "system", "content": "Talk like a pirate."}


async def test_unknown_role_is_refused_before_anything_is_stored(
    redis_url, upstream, tmp_path, make_service
):
    service = make_service(redis_url)
    with pytest.raises(ChatError, match="Unknown role"):
        await run(service, text="x", role="wizard", provider="openai", model="gpt-4o")
    assert upstream.requests == []


async def test_multi_turn_context_is_bounded(redis_url, upstream, tmp_path, make_service):
    service = make_service(redis_url, HISTORY_CONTEXT_MESSAGES="4")
    cid = ""
    for i in range(4):
        updates = await run(
            service, text=f"message {i}", provider="openai", model="gpt-4o", conversation_id=cid
        )
        cid = updates[-1].conversation_id
    sent = upstream.requests[-1]["messages"]
    # the last 4 stored messages are a1 u2 a2 u3; a window never starts with an answer
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]
    assert sent[1] == {"role": "user", "content": "message 2"}
    assert sent[2]["content"] == "Echo: message 2"
    assert sent[3] == {"role": "user", "content": "message 3"}


async def test_images_reach_the_upstream_as_data_urls(redis_url, upstream, tmp_path, make_service):
    service = make_service(redis_url)
    paths = [png_file(tmp_path, "a.png"), png_file(tmp_path, "b.png", colour=(0, 0, 255))]
    updates = await run(
        service, text="what colours?", images=paths, provider="openai", model="gpt-4o"
    )
    parts = upstream.requests[-1]["messages"][-1]["content"]
    assert parts[0] == {"type": "text", "text": "what colours?"}
    urls = [p["image_url"]["url"] for p in parts[1:]]
    assert len(urls) == 2 and all(u.startswith("data:image/") for u in urls)
    decoded = Image.open(io.BytesIO(base64.b64decode(urls[1].split(",", 1)[1]))).convert("RGB")
    assert decoded.size == (64, 48) and decoded.getpixel((10, 10))[2] > 200
    stored = await service.history(updates[-1].conversation_id)
    refs = stored[0]["images"]
    assert [len(r["sha256"]) for r in refs] == [64, 64]
    assert "data:" not in str(stored), "history keeps image references, not base64"
    assert len(stored[0]["receipts"]) == 2


async def test_images_never_go_to_a_text_only_model(redis_url, upstream, tmp_path, make_service):
    service = make_service(redis_url)
    with pytest.raises(ChatError, match="cannot see images"):
        await run(
            service,
            text="look",
            images=[png_file(tmp_path)],
            provider="deepseek",
            model="deepseek-chat",
        )
    assert upstream.requests == []
    # an earlier image in the conversation is replaced by words for a text-only model
    updates = await run(
        service, text="look", images=[png_file(tmp_path)], provider="openai", model="gpt-4o"
    )
    await run(
        service,
        text="and now?",
        provider="deepseek",
        model="deepseek-chat",
        conversation_id=updates[-1].conversation_id,
    )
    sent = upstream.requests[-1]["messages"]
    assert "image_url" not in str(sent)
    assert "not shown to this model" in str(sent)


async def test_rejected_image_refuses_the_turn_with_the_file_name(
    redis_url, upstream, tmp_path, make_service
):
    service = make_service(redis_url)
    bad = tmp_path / "notes.png"
    bad.write_text("this is not an image")
    with pytest.raises(ChatError, match="notes.png"):
        await run(service, text="look", images=[str(bad)], provider="openai", model="gpt-4o")
    assert upstream.requests == []


async def test_provider_error_is_kept_once_and_retry_replaces_it(
    redis_url, upstream, tmp_path, make_service
):
    service = make_service(redis_url)
    upstream.script(error(401, {"error": {"message": "bad key", "code": "invalid_api_key"}}))
    updates = await run(service, text="hi", provider="openai", model="gpt-4o")
    final = updates[-1]
    assert final.status == "error" and "OPENAI_API_KEY" in final.error
    cid = final.conversation_id
    stored = await service.history(cid)
    assert [m["role"] for m in stored] == ["user", "assistant"]
    assert stored[1]["status"] == "error"
    again = TurnRequest(conversation_id=cid, provider="openai", model="gpt-4o")
    retried = [u async for u in service.retry(again)]
    assert retried[-1].status == "complete" and retried[-1].answer == "Echo: hi"
    stored = await service.history(cid)
    assert [(m["role"], m.get("status")) for m in stored] == [
        ("user", None),
        ("assistant", "complete"),
    ]
    # the error message was not sent to the model as context
    assert upstream.requests[-1]["messages"][1:] == [{"role": "user", "content": "hi"}]


async def test_cut_stream_keeps_the_partial_answer_marked_incomplete(
    redis_url, upstream, tmp_path, make_service
):
    service = make_service(redis_url)
    upstream.script(cut("Half an ans"))
    final = (await run(service, text="hi", provider="openai", model="gpt-4o"))[-1]
    assert final.status == "incomplete" and final.answer == "Half an ans"
    stored = await service.history(final.conversation_id)
    assert stored[-1]["status"] == "incomplete" and stored[-1]["content"] == "Half an ans"


async def test_stop_closes_the_upstream_and_keeps_the_partial(
    redis_url, upstream, tmp_path, make_service
):
    service = make_service(redis_url)
    upstream.script(slow("one two three four five six seven eight nine ten " * 5, delay=0.05))
    updates = service.turn(TurnRequest(text="count", provider="openai", model="gpt-4o"))

    async def consume():
        async for update in updates:
            if len(update.answer) > 10:
                return update  # a snapshot: it stays as seen now

    task = asyncio.create_task(consume())
    seen = await task
    # What a Stop does in Gradio: the task iterating the generator is cancelled and the
    # generator closed.
    await updates.aclose()
    deadline = time.monotonic() + 2
    while not upstream.disconnects and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert upstream.disconnects, "the upstream HTTP stream was closed"
    stored = await service.history(seen.conversation_id)
    assert stored[-1]["status"] == "incomplete"
    assert stored[-1]["content"].startswith(seen.answer)


async def test_undo_removes_the_last_exchange(redis_url, upstream, tmp_path, make_service):
    service = make_service(redis_url)
    cid = (await run(service, text="first", provider="openai", model="gpt-4o"))[-1].conversation_id
    await run(service, text="second", provider="openai", model="gpt-4o", conversation_id=cid)
    removed = await service.undo_last(cid)
    assert removed is not None and removed.text == "second"
    assert [m["content"] for m in await service.history(cid)] == ["first", "Echo: first"]


async def test_demo_provider_works_without_any_key(redis_url, tmp_path, services):
    settings = load_settings({"REDIS_URL": redis_url})
    service = ChatService(settings, Providers({"DEMO_DELAY_MS": "0"}), image_dir=tmp_path)
    services.append(service)
    final = (await run(service, text="hello demo", images=[png_file(tmp_path)]))[-1]
    assert final.status == "complete" and final.provider == "demo"
    assert "hello demo" in final.answer and "64" in final.answer


async def test_embedded_store_without_redis_url(upstream, tmp_path, make_service):
    service = make_service(None)
    final = (await run(service, text="hi", provider="openai", model="gpt-4o"))[-1]
    assert (await service.store()).embedded
    assert len(await service.history(final.conversation_id)) == 2


async def test_coalesce_batches_fast_tokens():
    async def tokens():
        for i in range(200):
            yield ContentDelta(f"t{i} ")
            if i % 10 == 0:
                await asyncio.sleep(0.01)
        yield Finished("stop")

    batches = [batch async for batch in coalesce(tokens(), 0.05)]
    events = [e for batch in batches for e in batch]
    assert len(events) == 201 and isinstance(events[-1], Finished)
    assert len(batches) < 20, "200 quick tokens are sent in a few updates, not 200"


async def test_coalesce_first_token_is_not_delayed():
    async def tokens():
        yield ContentDelta("first")
        await asyncio.sleep(0.5)
        yield ContentDelta("second")

    gen = coalesce(tokens(), 0.05)
    first = await gen.__anext__()
    assert [e.text for e in first] == ["first"]
    await gen.aclose()


def test_titles():
    assert conversation_title("  hello   world ", 0) == "hello world"
    assert conversation_title("", 1) == "Image"
    assert conversation_title("x" * 100, 0).endswith("…")


async def test_siliconflow_auto_detail_sends_a_legible_image(
    redis_url, upstream, tmp_path, services
):
    """SiliconFlow reads auto as low (448 px): auto is sent, and sized, as high there."""
    environ = {"SILICONFLOW_API_KEY": "sk-test-sf", "SILICONFLOW_BASE_URL": upstream.base_url}
    service = ChatService(load_settings({"REDIS_URL": redis_url}), Providers(environ), tmp_path)
    services.append(service)
    screenshot = tmp_path / "screen.png"
    Image.new("RGB", (1600, 1000), (250, 250, 250)).save(screenshot)
    await run(
        service,
        text="read this",
        images=[str(screenshot)],
        provider="siliconflow",
        model="Qwen/Qwen2.5-VL-72B-Instruct",
    )
    part = upstream.requests[-1]["messages"][-1]["content"][1]
    assert part["image_url"]["detail"] == "high"
    sent = Image.open(io.BytesIO(base64.b64decode(part["image_url"]["url"].split(",", 1)[1])))
    assert max(sent.size) > 448


@pytest.mark.anyio
async def test_a_conversation_of_heavy_formulas_keeps_math_only_within_the_view_budget(
    make_service,
):
    """Each message within its own bounds, but together they would freeze the reader's tab
    (KaTeX ~15 ms per 1,000 deep characters): the newest keep their math, older ones get
    code."""
    from markup_text import MAX_MATH_VIEW_CHARS, math_chars

    service = make_service(None)
    formula = "$" + "\\sqrt{" * 20 + "x" + "}" * 20 + "$"
    heavy = " ".join([formula] * 130)  # ~18,500 math characters: under every per-message bound
    messages = [
        {"role": role, "content": heavy} for _ in range(10) for role in ("user", "assistant")
    ]
    cid = await service.import_conversation(
        {"version": 1, "meta": {"title": "heavy"}, "messages": messages}, "b" * 32, None
    )
    shown = await service.display(cid)
    texts = [part["text"] for message in shown for part in message["content"] if "text" in part]
    rendered = sum(math_chars(text) for text in texts)
    assert 0 < rendered <= MAX_MATH_VIEW_CHARS
    assert math_chars(texts[-1]) > 0, "the newest message keeps its formulas"
    assert math_chars(texts[0]) == 0 and "＼sqrt" in texts[0], "older ones show it as code"


# -- snapshots, one read per turn, the stateless turn on the same path (issue 14) ----------


def count_calls(monkeypatch, store, *names: str) -> dict[str, int]:
    """How often the store's public methods `names` are called (they still run for real)."""
    counts = dict.fromkeys(names, 0)
    for name in names:
        method = getattr(store, name)

        async def counted(*args, _name=name, _method=method, **kwargs):
            counts[_name] += 1
            return await _method(*args, **kwargs)

        monkeypatch.setattr(store, name, counted)
    return counts


def contents(messages) -> list[tuple[str, str]]:
    return [(m["role"], m["content"]) for m in messages]


async def test_updates_are_distinct_immutable_snapshots(redis_url, upstream, make_service):
    service = make_service(redis_url)
    upstream.script(reply("one two three four five six", chunk_size=2, delay=0.01))
    updates = await run(service, text="count", provider="openai", model="gpt-4o")
    assert len(updates) >= 4
    assert len({id(u) for u in updates}) == len(updates), "a new object per update"
    with pytest.raises(dataclasses.FrozenInstanceError):
        updates[0].answer = "changed"  # type: ignore[misc]
    answers = [u.answer for u in updates]
    assert answers[0] == "" and answers[-1] == "one two three four five six"
    assert all(b.startswith(a) for a, b in itertools.pairwise(answers)), answers
    assert [u.status for u in updates[:-1]] == [Status.STREAMING] * (len(updates) - 1)
    assert updates[-1].status == Status.COMPLETE == "complete"


async def test_first_and_last_updates_carry_the_stored_conversation(
    redis_url, upstream, make_service
):
    service = make_service(redis_url)
    updates = await run(service, text="hi", provider="openai", model="gpt-4o")
    first, last, cid = updates[0], updates[-1], updates[-1].conversation_id
    assert contents(first.messages) == [("user", "hi")]
    assert all(u.messages is None for u in updates[1:-1])
    assert last.done and list(last.messages) == await (await service.store()).get_messages(cid)

    again = await run(service, text="more", conversation_id=cid, provider="openai")
    assert contents(again[0].messages) == [*contents(last.messages), ("user", "more")]
    assert list(again[-1].messages) == await (await service.store()).get_messages(cid)

    retry = TurnRequest(conversation_id=cid, provider="openai", model="gpt-4o")
    retried = [u async for u in service.retry(retry)]
    assert contents(retried[0].messages) == contents(last.messages) + [("user", "more")]
    assert list(retried[-1].messages) == await (await service.store()).get_messages(cid)

    edit = TurnRequest(text="hello", conversation_id=cid, provider="openai")
    edited = [u async for u in service.edit_shown(edit, 0)]
    assert contents(edited[0].messages) == [("user", "hello")]
    assert contents(edited[-1].messages) == [("user", "hello"), ("assistant", "Echo: hello")]
    assert list(edited[-1].messages) == await (await service.store()).get_messages(cid)
    # The UI renders them without reading history again.
    shown = await service.display(cid, edited[-1].messages)
    assert shown == await service.display(cid)


async def test_the_last_messages_follow_the_store_s_trim(redis_url, upstream, make_service):
    service = make_service(redis_url, HISTORY_MAX_MESSAGES="3")
    cid = (await run(service, text="one", provider="openai"))[-1].conversation_id
    updates = await run(service, text="two", conversation_id=cid, provider="openai")
    assert contents(updates[0].messages) == [
        ("user", "one"),
        ("assistant", "Echo: one"),
        ("user", "two"),
    ]
    assert contents(updates[-1].messages) == [
        ("assistant", "Echo: one"),
        ("user", "two"),
        ("assistant", "Echo: two"),
    ]
    assert list(updates[-1].messages) == await (await service.store()).get_messages(cid)


async def test_a_turn_reads_the_conversation_once(redis_url, upstream, make_service, monkeypatch):
    service = make_service(redis_url)
    first = await run(service, text="one", provider="openai", model="gpt-4o")
    cid = first[-1].conversation_id
    store = await service.store()
    counts = count_calls(monkeypatch, store, "get_messages")

    await run(service, text="two", conversation_id=cid, provider="openai", model="gpt-4o")
    assert counts["get_messages"] == 1, "turn"
    retry = TurnRequest(conversation_id=cid, provider="openai", model="gpt-4o")
    [u async for u in service.retry(retry)]
    assert counts["get_messages"] == 2, "retry"
    edit = TurnRequest(text="uno", conversation_id=cid, provider="openai", model="gpt-4o")
    [u async for u in service.edit_shown(edit, 0)]
    assert counts["get_messages"] == 3, "edit"
    [u async for u in service.edit_shown(edit, 0)]
    assert counts["get_messages"] == 4, "edit_shown"
    await run(service, text="new chat", provider="openai", model="gpt-4o")
    assert counts["get_messages"] == 4, "a new conversation has nothing to read"
    # What was sent is the conversation as read plus the new message (its tail).
    assert contents(upstream.requests[-2]["messages"][1:]) == [("user", "uno")]


async def test_stateless_turn_counts_usage_and_cost_like_a_stored_one(
    redis_url, upstream, make_service, tmp_path, caplog
):
    service = make_service(
        redis_url, MOONSHOT_API_KEY="sk-test-kimi", MOONSHOT_BASE_URL=upstream.base_url
    )
    square = tmp_path / "square.png"
    Image.new("RGB", (1024, 1024), (10, 200, 10)).save(square)
    asked = [InputMessage("user", "what is it?", [("square.png", square.read_bytes())])]
    caplog.set_level(logging.INFO, logger="chat")
    updates = [
        u
        async for u in service.stream_messages(
            asked, provider="openai", model="gpt-4o", detail="high"
        )
    ]
    usage = updates[-1].usage
    assert usage["estimated"] is False and usage["image_tokens"] == 765
    price = price_of("gpt-4o")
    expected = usage["prompt_tokens"] * price.input + usage["completion_tokens"] * price.output
    assert usage["cost"] == pytest.approx(expected / 1_000_000, rel=1e-3)
    assert updates[0].messages is None and updates[-1].messages is None
    logged = [json.loads(r.getMessage()) for r in caplog.records if "chat_turn" in r.getMessage()]
    assert [(line["outcome"], line["images"]) for line in logged] == [("complete", 1)]
    assert logged[0]["tokens"] == usage["total_tokens"]

    # A provider that reports no usage: estimated, still priced.
    hello = [InputMessage("user", "hello")]
    updates = [u async for u in service.stream_messages(hello, provider="kimi")]
    usage = updates[-1].usage
    assert usage["estimated"] is True and usage["completion_tokens"] > 0
    assert usage["currency"] == "CNY" and usage["cost"] > 0


async def test_stateless_turn_fails_open_while_redis_is_unreachable(upstream, make_service):
    """Nothing is stored: a dead Redis (behind the rate limits) does not stop the answer,
    where a stored turn is refused before anything is sent."""
    service = make_service("redis://127.0.0.1:1/0")
    hello = [InputMessage("user", "hello")]
    updates = [u async for u in service.stream_messages(hello, provider="openai")]
    assert updates[-1].status == Status.COMPLETE and updates[-1].answer == "Echo: hello"
    with pytest.raises(ChatError, match="not sent; send it again"):
        await run(service, text="hello", provider="openai")


async def test_a_provider_error_maps_the_same_on_both_paths(redis_url, upstream, make_service):
    service = make_service(redis_url)
    failure = error(401, {"error": {"message": "bad key", "code": "invalid_api_key"}})
    upstream.script(failure, failure)
    stored = (await run(service, text="hi", provider="openai"))[-1]
    hello = [InputMessage("user", "hi")]
    stateless = [u async for u in service.stream_messages(hello, provider="openai")][-1]
    for final in (stored, stateless):
        assert final.done and final.status == Status.ERROR and "OPENAI_API_KEY" in final.error
        assert final.usage is not None and final.usage["estimated"] is True
    assert stored.error_code == stateless.error_code


async def test_edit_shown_edits_by_the_chatbot_s_index(
    redis_url, upstream, make_service, tmp_path, monkeypatch
):
    service = make_service(redis_url)
    first = await run(service, text="look", images=[png_file(tmp_path)], provider="openai")
    cid = first[-1].conversation_id
    await run(service, text="is <div> ok?", conversation_id=cid, provider="openai")
    stored = await (await service.store()).get_messages(cid)
    shown, positions = await service.display_indexed(cid)
    # The image's receipt and the answers' usage lines sit between the stored messages.
    index = positions.index(2)
    assert index > 2 and shown[index]["role"] == "user"
    counts = count_calls(monkeypatch, await service.store(), "get_messages")
    # The edit box starts from the shown text, which markup_text.py made safe.
    box = shown[index]["content"][0]["text"] + " now"
    assert box == "is &lt;div> ok? now"
    edit = TurnRequest(text=box, conversation_id=cid, provider="openai")
    updates = [u async for u in service.edit_shown(edit, index)]
    assert counts["get_messages"] == 1
    assert contents(updates[-1].messages) == [
        *contents(stored[:2]),
        ("user", "is <div> ok? now"),
        ("assistant", "Echo: is <div> ok? now"),
    ]
    for not_yours in (index - 1, len(positions), -1, positions.index(1)):
        with pytest.raises(ChatError, match="Only your own messages"):
            [u async for u in service.edit_shown(edit, not_yours)]
    kept = await (await service.store()).get_messages(cid)
    assert kept == list(updates[-1].messages), "refusals change nothing"


async def test_undo_last_gives_back_the_text_images_and_what_is_left(
    redis_url, upstream, make_service, tmp_path
):
    service = make_service(redis_url)
    cid = (await run(service, text="first", provider="openai"))[-1].conversation_id
    photo = png_file(tmp_path, colour=(0, 255, 0))
    await run(service, text="second", images=[photo], conversation_id=cid, provider="openai")
    undone = await service.undo_last(cid)
    assert undone.text == "second"
    assert len(undone.image_paths) == 1 and Path(undone.image_paths[0]).is_file()
    assert Image.open(undone.image_paths[0]).convert("RGB").getpixel((1, 1)) == (0, 255, 0)
    assert contents(undone.messages) == [("user", "first"), ("assistant", "Echo: first")]
    assert list(undone.messages) == await (await service.store()).get_messages(cid)
    assert (await service.undo_last(cid)).messages == ()
    assert await service.undo_last(cid) is None, "nothing left to undo"


async def test_open_gives_the_conversation_to_its_browser_only(
    redis_url, upstream, make_service, monkeypatch
):
    service = make_service(redis_url)
    browser, other = "b" * 32, "c" * 32
    updates = await run(service, text="mine", browser_id=browser, provider="openai")
    cid = updates[-1].conversation_id
    counts = count_calls(monkeypatch, await service.store(), "get_meta", "get_messages")
    opened = await service.open(browser, cid)
    assert counts == {"get_meta": 1, "get_messages": 1}
    assert opened.meta["title"] == "mine" and opened.meta["id"] == cid
    assert opened.messages == updates[-1].messages
    assert await service.open(other, cid) is None
    assert await service.open(browser, "f" * 32) is None
    assert await service.open("not an id", cid) is None
    assert await service.open(browser, "../etc") is None
