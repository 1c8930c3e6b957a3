"""The turn logic (chat.py) against a real redis-server and the fake upstream over HTTP."""

from __future__ import annotations

import asyncio
import base64
import copy
import io
import itertools
import time
from pathlib import Path

import pytest
from PIL import Image

from chat import ChatError, ChatService, TurnRequest, coalesce, conversation_title
from config import ROLES, load_settings
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
    """Every update as it was when yielded (a copy: the service may reuse one object)."""
    return [copy.copy(update) async for update in service.turn(TurnRequest(**request))]


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
    retried = [copy.copy(u) async for u in service.retry(again)]
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
                return copy.copy(update)  # as seen now, before the generator is closed

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
    removed = await service.undo(cid)
    assert removed["content"] == "second"
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
    from markup import MAX_MATH_VIEW_CHARS, math_chars

    service = make_service(None)
    formula = "$" + "\\sqrt{" * 20 + "x" + "}" * 20 + "$"
    heavy = " ".join([formula] * 130)  # ~18,500 math characters: under every per-message bound
    messages = [
        {"role": role, "content": heavy}
        for _ in range(10)
        for role in ("user", "assistant")
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
