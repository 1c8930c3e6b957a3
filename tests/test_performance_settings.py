"""Concurrency settings and streaming behaviour that performance depends on.

Behaviour only: whether streams overlap, whether a limit serialises them, what a stream
yields. The numbers (wall time, CPU per token, TTFT) are measured by bench/bench_load.py,
never asserted here: this machine is shared and noisy.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from gradio_client import Client

import chat_stream
from chat import ChatService
from config import load_settings
from providers import ContentDelta, Finished, Providers
from tests.app_server import AppServer
from tests.conftest import app_env
from tests.fake_upstream import Exchange, reply

HANG_GUARD = 30  # s: only ever reached when the behaviour under test is broken


def rendezvous(parties: int, timeout: float = HANG_GUARD):
    """A behaviour that answers only once `parties` requests are in the upstream together;
    if they never are (the app serialised them), it answers "serialised" instead."""
    barrier = threading.Barrier(parties, timeout=timeout)

    def run(ex: Exchange) -> None:
        try:
            barrier.wait()
            reply("together")(ex)
        except threading.BrokenBarrierError:
            reply("serialised")(ex)

    return run


def held(release: threading.Event, ended: list[int]):
    """A behaviour that streams one chunk, then waits for `release` before finishing."""

    def run(ex: Exchange) -> None:
        ex.start_stream()
        ex.send_delta({"role": "assistant", "content": "first "})
        release.wait(HANG_GUARD)
        ex.send_delta({"content": "done"})
        ex.send_delta({}, "stop")
        ex.end_stream()
        ended.append(ex.index)

    return run


# Every test user comes from 127.0.0.1: keep the per-IP limit out of the way.
NO_RATE_LIMITS = {"RATE_LIMIT_PER_MINUTE": "0", "RATE_LIMIT_PER_IP_PER_MINUTE": "0"}


def chat_many(url: str, count: int) -> list[str]:
    """`count` /chat calls started at once, each from its own client (its own session)."""

    def one(i: int) -> str:
        client = Client(url, verbose=False)
        return client.predict(message=f"user {i}", api_name="/chat")[0]

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(one, range(count)))


@pytest.fixture(scope="module")
def default_app(upstream):
    """The app as shipped: no CONCURRENCY_LIMIT, no MAX_THREADS."""
    with AppServer(app_env(upstream, **NO_RATE_LIMITS)) as server:
        yield server


def test_a_turn_streams_into_the_chat_alone_with_busy_and_idle_in_the_browser(default_app):
    """A turn is two server steps: the stream, which updates only the Chatbot (and a
    server-side State), and the bookkeeping after it (the list, the conversation id, the
    usage). Moving the message out of the input box and the busy and idle states of the
    input and buttons happen in the browser."""
    config = httpx.get(f"{default_app.url}config", timeout=30).json()
    deps = config["dependencies"]
    components = {c["id"]: c for c in config["components"]}
    ids = {c.get("props", {}).get("elem_id"): c["id"] for c in config["components"]}

    def followers(dep: dict) -> list[dict]:
        return [d for d in deps if d.get("trigger_after") == dep["id"]]

    def in_browser(dep: dict, name: str) -> bool:  # transpiled Python, or JavaScript only
        return name in (dep.get("js_implementation") or "") or (
            not dep["backend_fn"] and name in (dep.get("js") or "")
        )

    (taken,) = [d for d in deps if [ids["chat-input"], "submit"] in d["targets"]]
    assert in_browser(taken, "message") and not taken["backend_fn"]
    (submit_busy,) = followers(taken)
    (retry_busy,) = [d for d in deps if [ids["retry"], "click"] in d["targets"]]
    for busy in (submit_busy, retry_busy):
        assert in_browser(busy, "show_busy")
        (stream,) = followers(busy)
        assert stream["backend_fn"] and stream["types"]["generator"]
        shown = [components[i]["type"] for i in stream["outputs"]]
        assert sorted(shown) == ["chatbot", "state"], shown
        (finish,) = followers(stream)
        assert finish["backend_fn"] and not finish["types"]["generator"]
        (idle,) = followers(finish)
        assert in_browser(idle, "show_idle")


def test_two_chats_stream_at_the_same_time(default_app, upstream):
    upstream.reset()
    meet = rendezvous(2)
    upstream.script(meet, meet)
    replies = chat_many(default_app.url, 2)
    assert replies == ["together", "together"]


def test_more_users_than_gradios_default_40_threads_stream_together(default_app, upstream):
    # Gradio runs at most max_threads (default 40) jobs at once: the 41st user would wait.
    upstream.reset()
    meet = rendezvous(45)
    upstream.script(*[meet] * 45)
    replies = chat_many(default_app.url, 45)
    assert replies == ["together"] * 45


@pytest.mark.parametrize("variable", ["CONCURRENCY_LIMIT", "MAX_THREADS"])
def test_a_limit_of_one_serialises_the_chats(upstream, variable):
    """With the limit at 1, a second chat reaches the provider only after the first ended."""
    upstream.reset()
    release, ended = threading.Event(), []
    upstream.script(held(release, ended), reply("second"))
    server = AppServer(app_env(upstream, **NO_RATE_LIMITS, **{variable: "1"}))
    with server, ThreadPoolExecutor(max_workers=2) as pool:
        first = pool.submit(chat_many, server.url, 1)
        assert upstream.wait_for_requests(1, timeout=HANG_GUARD)
        second = pool.submit(chat_many, server.url, 1)
        # Long enough for an unlimited app to pass the second chat on (it takes ms).
        assert not upstream.wait_for_requests(2, timeout=3)
        release.set()
        assert first.result(timeout=HANG_GUARD) == ["first done"]
        assert second.result(timeout=HANG_GUARD) == ["second"]
    assert ended == [0] and len(upstream.requests) == 2


@pytest.mark.anyio
async def test_coalesce_sends_the_first_token_without_waiting():
    """The first token goes out before the next one exists, even with a long interval."""
    sent_first = asyncio.Event()

    async def tokens():
        yield ContentDelta("first")
        await sent_first.wait()  # the consumer sets this once it has the first batch
        yield ContentDelta("second")
        yield Finished("stop")

    batches = chat_stream.coalesce(tokens(), 60)
    first = await asyncio.wait_for(batches.__anext__(), HANG_GUARD)
    assert [e.text for e in first] == ["first"]
    sent_first.set()
    rest = [e async for batch in batches for e in batch]
    assert [type(e) for e in rest] == [ContentDelta, Finished]


def test_updates_slow_down_when_many_streams_are_open(monkeypatch):
    monkeypatch.setattr(chat_stream, "_open_streams", 1)
    assert chat_stream.update_interval(0.05) == 0.05
    monkeypatch.setattr(chat_stream, "_open_streams", 4 * chat_stream.UPDATES_PER_SECOND)
    assert chat_stream.update_interval(0.05) == pytest.approx(4.0)


@pytest.mark.anyio
async def test_open_streams_are_counted_while_they_stream():
    gate = asyncio.Event()

    async def tokens():
        yield ContentDelta("a")
        await gate.wait()

    before = chat_stream._open_streams
    streams = [chat_stream.coalesce(tokens(), 0.05) for _ in range(3)]
    for stream in streams:
        await stream.__anext__()
    assert chat_stream._open_streams == before + 3
    gate.set()
    for stream in streams:
        assert [b async for b in stream] == []
    assert chat_stream._open_streams == before


@pytest.mark.anyio
async def test_a_long_conversation_shows_its_latest_messages_after_a_note(redis_url, tmp_path):
    """The Chatbot value stays bounded (every streamed update re-processes all of it), and
    each shown message still maps to its stored position (Edit relies on that)."""
    settings = load_settings({"REDIS_URL": redis_url})
    service = ChatService(settings, Providers({}), image_dir=tmp_path)
    try:
        store = await service.store()
        cid = await store.create_conversation(None, title="long")
        stored = [
            {"role": "user" if i % 2 == 0 else "assistant", "content": f"message {i}"}
            for i in range(100)
        ]
        await store.append_turn(cid, stored)
        shown, positions = await service.display_indexed(cid)
        hidden = 100 - service.display_limit
        assert shown[0]["content"][0]["text"].startswith(f"⋯ {hidden} earlier messages · ")
        assert positions[0] == -1
        texts = [m["content"][0]["text"] for m in shown[1:]]
        assert texts == [f"message {i}" for i in range(hidden, 100)]
        assert positions[1:] == list(range(hidden, 100))

        short = await store.create_conversation(None, title="short")
        await store.append_turn(short, stored[:6])
        shown, positions = await service.display_indexed(short)
        assert positions == list(range(6)) and "metadata" not in shown[0]
    finally:
        await service.aclose()
