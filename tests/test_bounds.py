"""Issue 13 items 1, 2 and 4: every resource a stranger can spend is bounded.

Each attack runs against the launched app (`python app.py`, a private redis-server, the fake
upstream) with small limits set by env, is refused with its message, and honest use still
works; the budgets' arithmetic and the storage quota are checked on the real stores too.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import io
import json
import os
import secrets
import time
from pathlib import Path

import httpx
import pytest
import redis
import redis.asyncio as aredis
from gradio_client import Client, handle_file
from PIL import Image

from chat import ChatError, ChatRateLimited, ChatService, TurnRequest, header_pixels
from config import load_settings
from history import new_id
from providers import Providers
from rate_limits import RateLimited, RateLimiter, storage_for
from tests.app_server import AppServer
from tests.conftest import app_env
from tests.fake_upstream import FakeUpstream, stall

KB, MB = 1024, 1024 * 1024


def png(width: int, height: int, colour=(0, 90, 200)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def export_with_image(raw: bytes, text: str = "look", mime: str = "image/png") -> str:
    return json.dumps(
        {
            "format": "chat-history",
            "version": 1,
            "meta": {"title": "imported"},
            "messages": [
                {
                    "role": "user",
                    "content": text,
                    "images": [
                        {
                            "sha256": "0" * 64,
                            "name": "photo.png",
                            "mime": mime,
                            "data": base64.b64encode(raw).decode(),
                        }
                    ],
                },
                {"role": "assistant", "content": "A photo."},
            ],
        }
    )


def used_memory(url: str) -> int:
    conn = redis.Redis.from_url(url)
    try:
        return int(conn.info("memory")["used_memory"])
    finally:
        conn.close()


def image_keys(url: str) -> list[bytes]:
    conn = redis.Redis.from_url(url)
    try:
        return list(conn.scan_iter("chat:img:*"))
    finally:
        conn.close()


# -- raw Gradio queue calls: what an attacker does with a private event's fn_index ----------
def event(url: str, elem_id: str) -> dict:
    """The event a component (by elem_id) triggers, from /config."""
    config = httpx.get(url + "config", timeout=10).json()
    ids = [c["id"] for c in config["components"] if c.get("props", {}).get("elem_id") == elem_id]
    for dep in config["dependencies"]:
        if any(target[0] in ids for target in dep.get("targets", [])):
            types = {c["id"]: c["type"] for c in config["components"]}
            return {**dep, "input_types": [types[i] for i in dep["inputs"]]}
    raise AssertionError(f"no event for #{elem_id}")


def fn_index(url: str, elem_id: str) -> int:
    return event(url, elem_id)["id"]


def event_data(url: str, elem_id: str, **by_type: object) -> list:
    """An event's raw input list, each input's value given by its component type (the order
    is Gradio's, not ours to assume)."""
    return [by_type.get(kind) for kind in event(url, elem_id)["input_types"]]


def queue_call(url: str, index: int, data: list, timeout: float = 30) -> tuple[dict, list[str]]:
    """POST /gradio_api/queue/join, then read the session's SSE stream to the end: returns
    (the process_completed message, the warning/info toasts logged on the way)."""
    session = secrets.token_hex(8)
    with httpx.Client(base_url=url, timeout=timeout) as http:
        joined = http.post(
            "gradio_api/queue/join",
            json={"data": data, "fn_index": index, "session_hash": session, "event_data": None},
        )
        assert joined.status_code == 200, joined.text
        toasts: list[str] = []
        with http.stream("GET", "gradio_api/queue/data", params={"session_hash": session}) as sse:
            for line in sse.iter_lines():
                if not line.startswith("data:"):
                    continue
                message = json.loads(line[5:])
                if message.get("msg") == "log":
                    toasts.append(message.get("log") or "")
                if message.get("msg") == "process_completed":
                    return message, toasts
    raise AssertionError("the queue stream ended without a result")


def browser_state() -> dict:
    return {"browser_id": new_id(), "conversation_id": ""}


# -- 1. imports --------------------------------------------------------------------------
def test_import_flood_is_refused_and_redis_stays_bounded(redis_url, upstream):
    """The attack: imports of random bytes posing as images, as fast as possible."""
    env = app_env(upstream, redis_url, IMPORTS_PER_MINUTE="3")
    with AppServer(env) as app:
        client = Client(app.url, verbose=False)
        before = used_memory(redis_url)
        junk = export_with_image(os.urandom(600 * KB))
        cid = client.predict(data=junk, api_name="/import_conversation")
        # not an image: dropped with a note, no blob stored
        history = client.predict(conversation_id=cid, api_name="/history")
        assert "images" not in history[0]
        assert (
            "photo.png" in history[0]["content"] and "left out on import" in history[0]["content"]
        )
        assert image_keys(redis_url) == []
        # an honest import in the same minute: its real image goes through the pipeline
        honest = client.predict(
            data=export_with_image(png(64, 48)), api_name="/import_conversation"
        )
        ref = client.predict(conversation_id=honest, api_name="/history")[0]["images"][0]
        assert (ref["width"], ref["height"], ref["mime"]) == (64, 48, "image/png")
        assert len(image_keys(redis_url)) == 1
        client.predict(data=junk, api_name="/import_conversation")
        refused = 0
        for _ in range(10):
            with pytest.raises(Exception, match=r"You are importing too fast: wait \d+ s"):
                client.predict(data=junk, api_name="/import_conversation")
            refused += 1
        assert refused == 10
        grown = used_memory(redis_url) - before
        assert grown < 1 * MB, f"Redis grew by {grown / MB:.1f} MB"
        assert len(image_keys(redis_url)) == 1


def test_imports_from_many_browsers_on_loopback_meet_the_global_ceiling(redis_url, upstream):
    """Fresh browser ids per import (the UI's import event, called raw): the per-browser
    limit never triggers, the global one does."""
    env = app_env(upstream, redis_url, IMPORTS_PER_MINUTE="100", IMPORTS_GLOBAL_PER_MINUTE="3")
    with AppServer(env) as app:
        index = fn_index(app.url, "import")
        export = json.dumps({"messages": [{"role": "user", "content": "hi"}]})
        uploaded = upload(app.url, [("export.json", export.encode())]).json()[0]
        file = {"path": uploaded, "meta": {"_type": "gradio.FileData"}, "orig_name": "e.json"}
        results = [
            queue_call(
                app.url,
                index,
                event_data(app.url, "import", uploadbutton=file, browserstate=browser_state()),
            )
            for _ in range(5)
        ]
        imported = [r for r, toasts in results if "Conversation imported." in toasts]
        refused = [t for _, t in results if any("Too many people are importing" in x for x in t)]
        assert len(imported) == 3 and len(refused) == 2


# -- 2. uploads --------------------------------------------------------------------------
def upload(url: str, files: list[tuple[str, bytes]]) -> httpx.Response:
    parts = [("files", (name, data, "application/octet-stream")) for name, data in files]
    return httpx.post(url + "gradio_api/upload", files=parts, timeout=30)


def test_upload_flood_is_refused_past_the_budget(redis_url, upstream):
    env = app_env(upstream, redis_url, UPLOADS_GLOBAL_PER_MINUTE="5")
    with AppServer(env) as app:
        statuses = [upload(app.url, [("x.bin", os.urandom(100 * KB))]) for _ in range(20)]
        assert [r.status_code for r in statuses].count(200) == 5
        refused = [r for r in statuses if r.status_code == 429]
        assert len(refused) == 15
        # from loopback (a share link's tunnel) only the global ceiling applies
        assert "Too many people are uploading right now: wait" in refused[0].json()["error"]
        assert int(refused[0].headers["retry-after"]) >= 1


def test_upload_megabytes_per_minute_are_bounded(redis_url, upstream):
    env = app_env(upstream, redis_url, UPLOAD_GLOBAL_MB_PER_MINUTE="1")
    with AppServer(env) as app:
        codes = [upload(app.url, [("x.bin", os.urandom(300 * KB))]).status_code for _ in range(6)]
        assert codes[:3] == [200, 200, 200] and set(codes[3:]) == {429}
        # without a Content-Length (chunked), the bytes are counted as they stream
        chunked = httpx.post(
            app.url + "gradio_api/upload",
            content=iter([b"x" * (256 * KB)] * 4),
            headers={"content-type": "multipart/form-data; boundary=zzz"},
            timeout=30,
        )
        assert chunked.status_code == 429


def test_upload_dir_total_is_honoured_and_old_files_go(redis_url, upstream, tmp_path):
    env = app_env(upstream, redis_url, MAX_UPLOAD_DISK_MB="1", UPLOAD_MAX_AGE_HOURS="1")
    server = AppServer(env)
    root = Path(server.env["GRADIO_TEMP_DIR"])
    old_time = time.time() - 2 * 3600
    leftovers = [root / ("a" * 40) / "old-upload.bin", root / "chat-images" / ("b" * 64 + ".png")]
    for path in leftovers:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(450 * KB))
        os.utime(path, (old_time, old_time))
    with server as app:
        first = upload(app.url, [("x.bin", os.urandom(300 * KB))])
        assert first.status_code == 200, first.text  # room made by deleting old files
        assert not any(path.exists() for path in leftovers)
        codes = [upload(app.url, [("x.bin", os.urandom(300 * KB))]).status_code for _ in range(5)]
        assert codes.count(200) == 2 and codes[-1] == 507
        full = upload(app.url, [("x.bin", os.urandom(300 * KB))])
        assert full.status_code == 507 and "no room" in full.json()["error"]
        total = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
        assert total <= 1 * MB + 300 * KB


def test_old_uploads_are_deleted_and_the_example_stays(redis_url, upstream):
    env = app_env(upstream, redis_url, UPLOAD_MAX_AGE_HOURS="0.001")  # 3.6 s
    with AppServer(env) as app:
        uploaded = upload(app.url, [("x.bin", os.urandom(10 * KB))]).json()[0]
        assert Path(uploaded).exists()
        deadline = time.monotonic() + 30
        while Path(uploaded).exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not Path(uploaded).exists(), "an old upload is deleted"
        config = httpx.get(app.url + "config", timeout=10).json()
        chatbot = [c for c in config["components"] if c["props"].get("elem_id") == "chatbot"]
        example = chatbot[0]["props"]["examples"][0]["files"][0]["url"]
        assert httpx.get(example, timeout=10).status_code == 200, "the example image stays"


def test_a_browser_attaching_eight_images_works_at_the_defaults(redis_url, upstream, tmp_path):
    """What the browser does: one upload request with a message's 8 photos (~2.5 MB each),
    a few messages in a row; then the turn itself, with 8 real images."""
    with AppServer(app_env(upstream, redis_url)) as app:
        photos = [(f"p{i}.jpg", os.urandom(2500 * KB)) for i in range(8)]
        for _ in range(3):
            response = upload(app.url, photos)
            assert response.status_code == 200, response.text
            assert len(response.json()) == 8
        client = Client(app.url, verbose=False)
        paths = []
        for i in range(8):
            path = tmp_path / f"photo{i}.png"
            noise = Image.frombytes("RGB", (800, 600), os.urandom(800 * 600 * 3))
            noise.save(path)
            paths.append(handle_file(str(path)))
        reply, cid = client.predict(message="eight", images=paths, api_name="/chat")
        assert reply == "Echo: eight"
        assert len(client.predict(conversation_id=cid, api_name="/history")[0]["images"]) == 8


# -- 4. provider checks, output tokens, image pixels -----------------------------------------
@pytest.fixture
def counting_upstream():
    with FakeUpstream(models=["gpt-4o", "gpt-4o-mini"]) as server:
        yield server


def test_provider_checks_via_the_raw_queue_are_bounded(redis_url, counting_upstream):
    up = counting_upstream
    env = app_env(up, redis_url, CHECKS_PER_MINUTE="2", CHECKS_GLOBAL_PER_MINUTE="4")
    with AppServer(env) as app:
        index = fn_index(app.url, "check-providers")
        mine = browser_state()
        data = event_data(app.url, "check-providers", browserstate=mine)
        done, toasts = queue_call(app.url, index, data)
        assert done["success"] and "providers passed" in done["output"]["data"][0]
        per_check = len(up.requests)
        assert per_check >= 1
        queue_call(app.url, index, data)
        _, toasts = queue_call(app.url, index, data)
        assert any("You are checking providers too fast" in t for t in toasts)
        # fresh browser ids: the global ceiling
        outcomes = [
            queue_call(
                app.url, index, event_data(app.url, "check-providers", browserstate=browser_state())
            )[1]
            for _ in range(6)
        ]
        refused = [t for t in outcomes if any("Too many people are checking" in x for x in t)]
        assert len(refused) == 4
        assert len(up.requests) == 4 * per_check, "upstream requests are bounded"


def test_a_provider_check_runs_once_at_a_time_per_browser(redis_url, counting_upstream):
    up = counting_upstream
    up.script(stall("", seconds=3))
    with AppServer(app_env(up, redis_url)) as app:
        index = fn_index(app.url, "check-providers")
        data = event_data(app.url, "check-providers", browserstate=browser_state())

        async def both():
            first = asyncio.create_task(asyncio.to_thread(queue_call, app.url, index, data))
            await asyncio.sleep(0.8)
            second = await asyncio.to_thread(queue_call, app.url, index, data)
            return await first, second

        (_, first_toasts), (_, second_toasts) = asyncio.run(both())
        assert not any("already running" in t for t in first_toasts)
        assert any("A provider check is already running" in t for t in second_toasts)


def test_max_tokens_is_clamped_everywhere(redis_url, upstream):
    upstream.reset()
    env = app_env(upstream, redis_url, MAX_OUTPUT_TOKENS="1000")
    with AppServer(env) as app:
        body = {"messages": [{"role": "user", "content": "long please"}], "max_tokens": 1_000_000}
        response = httpx.post(app.url + "api/chat", json=body, timeout=30)
        assert response.status_code == 200 and "[DONE]" in response.text
        assert upstream.requests[-1]["max_tokens"] == 1000
        honest = {"messages": [{"role": "user", "content": "short"}], "max_tokens": 200}
        httpx.post(app.url + "api/chat", json=honest, timeout=30)
        assert upstream.requests[-1]["max_tokens"] == 200
        # the settings panel's number box refuses more than MAX_OUTPUT_TOKENS
        config = httpx.get(app.url + "config", timeout=10).json()
        box = [c for c in config["components"] if c["props"].get("elem_id") == "max-tokens"][0]
        assert box["props"]["maximum"] == 1000


def test_image_pixels_per_minute_are_bounded(redis_url, upstream, tmp_path):
    env = app_env(upstream, redis_url, IMAGE_MEGAPIXELS_PER_MINUTE="30")
    huge = tmp_path / "huge.png"
    huge.write_bytes(png(5000, 4000))  # 20 megapixels, a small file
    with AppServer(env) as app:
        client = Client(app.url, verbose=False)
        reply, _ = client.predict(message="one", images=[handle_file(str(huge))], api_name="/chat")
        assert reply == "Echo: one"
        count = len(upstream.requests)
        with pytest.raises(Exception, match="You are sending large images too fast: wait"):
            client.predict(message="two", images=[handle_file(str(huge))], api_name="/chat")
        assert len(upstream.requests) == count, "refused before anything was decoded or sent"
        reply, _ = client.predict(message="text still works", api_name="/chat")
        assert reply == "Echo: text still works"


def test_api_callers_storage_quota(redis_url, upstream):
    env = app_env(upstream, redis_url, MAX_STORED_MB_PER_BROWSER="0.05")
    with AppServer(env) as app:
        client = Client(app.url, verbose=False)
        text = json.dumps({"messages": [{"role": "user", "content": "x" * 19_000}]})
        client.predict(data=text, api_name="/import_conversation")
        client.predict(data=text, api_name="/import_conversation")
        with pytest.raises(Exception, match=r"from your address take 0\.04 MB; the limit is 0\.05"):
            client.predict(data=text, api_name="/import_conversation")
        with pytest.raises(Exception, match="the limit is"):
            client.predict(message="y" * 19_000, api_name="/chat")


# -- the budgets and the quota on the real stores --------------------------------------------
@pytest.mark.anyio
async def test_weighted_hits_and_the_global_ceiling(redis_url):
    conn = aredis.from_url(redis_url)
    storage = storage_for(conn, "t:w")

    def limiter(name: str) -> RateLimiter:
        return RateLimiter(storage, per_client=100, per_ip=0, per_global=10, name=name)

    try:
        ceiling = limiter("ceiling")
        await ceiling.hit(new_id(), "127.0.0.1", weight=6)
        await ceiling.hit(new_id(), "::1", weight=4)  # another browser, same ceiling
        with pytest.raises(RateLimited) as refused:
            await ceiling.hit(new_id(), "127.0.0.1", weight=1)
        assert refused.value.scope == "global" and refused.value.wait_seconds == 60
        assert "Too many people" in str(refused.value)
        heavy = limiter("heavy")
        await heavy.hit(new_id(), "127.0.0.1", weight=50)  # heavier than the limit: fills it
        with pytest.raises(RateLimited):
            await heavy.hit(new_id(), "127.0.0.1")
        undone = limiter("undone")
        hit = await undone.hit(new_id(), "10.0.0.1", weight=10)
        await undone.forget(hit)  # taken back: room again
        await undone.hit(new_id(), "10.0.0.1", weight=10)
    finally:
        await conn.aclose()


def test_header_pixels_reads_only_the_header():
    assert header_pixels(png(300, 200)) == 60_000
    assert header_pixels(os.urandom(1000)) == 0
    assert header_pixels(b"") == 0


def service_for(**env: str) -> ChatService:
    """The embedded store (fakeredis) and the offline demo provider."""
    environ = {"DEMO_DELAY_MS": "0", **env}
    settings = load_settings(environ)
    return ChatService(settings, Providers(environ, timeout_s=5), image_dir=Path("/tmp/bc-img"))


async def run(turn) -> list:
    return [copy.copy(update) async for update in turn]


@pytest.mark.anyio
async def test_stored_bytes_per_browser_refuse_and_free():
    service = service_for(MAX_STORED_MB_PER_BROWSER="0.1")  # ~105 kB, embedded fakeredis
    browser = new_id()
    try:
        await run(service.turn(TurnRequest(text="a" * 19_000, browser_id=browser)))
        await run(service.turn(TurnRequest(text="b" * 19_000, browser_id=browser)))
        store = await service.store()
        used = await store.stored_bytes(browser)
        assert 38_000 < used < 60_000
        big = {"messages": [{"role": "user", "content": "c" * 19_000}] * 4}
        with pytest.raises(
            ChatError, match=r"This browser stores 0\.\d+ MB of chats; the limit is 0\.10 MB"
        ):
            await service.import_conversation(big, browser, "203.0.113.9")
        with pytest.raises(ChatError, match="Delete old conversations to free space"):
            for _ in range(5):  # the quota is reached within a few turns
                await run(service.turn(TurnRequest(text="d" * 19_000, browser_id=browser)))
        other = new_id()  # another browser is not affected
        await run(service.turn(TurnRequest(text="hello", browser_id=other)))
        for conversation in await store.list_conversations(browser):
            await store.delete_conversation(conversation["id"])
        assert await store.stored_bytes(browser) == 0
        await service.import_conversation(big, browser, "203.0.113.9")
    finally:
        await service.aclose()


@pytest.mark.anyio
async def test_undo_gives_the_bytes_back():
    service = service_for()
    browser = new_id()
    try:
        updates = await run(service.turn(TurnRequest(text="x" * 5000, browser_id=browser)))
        cid = updates[-1].conversation_id
        store = await service.store()
        before = await store.stored_bytes(browser)
        assert before > 5000
        await service.undo_last(cid)
        assert await store.stored_bytes(browser) == 0
    finally:
        await service.aclose()


@pytest.mark.anyio
async def test_turn_kinds_each_count_as_a_turn():
    service = service_for(RATE_LIMIT_PER_MINUTE="3")
    browser = new_id()
    try:
        updates = await run(service.turn(TurnRequest(text="one", browser_id=browser)))
        cid = updates[-1].conversation_id
        await run(service.retry(TurnRequest(conversation_id=cid, browser_id=browser)))
        await run(service.retry(TurnRequest(conversation_id=cid, browser_id=browser)))
        with pytest.raises(ChatRateLimited, match="You are sending messages too fast"):
            await run(
                service.edit_shown(
                    TurnRequest(text="e", conversation_id=cid, browser_id=browser), 0
                )
            )
    finally:
        await service.aclose()


@pytest.mark.anyio
async def test_import_bounds_messages_and_images():
    service = service_for(MAX_MESSAGE_CHARS="100", MAX_IMAGES_PER_MESSAGE="2")
    image = base64.b64encode(png(20, 20)).decode()
    refs = [{"sha256": "0" * 64, "name": "i.png", "mime": "image/png", "data": image}]
    data = {
        "meta": {"title": "t" * 5000, **{f"f{i}": "v" for i in range(100)}},
        "messages": [
            {"role": "user", "content": "u" * 500, "images": refs * 3},
            {"role": "assistant", "content": "a" * 400},
        ],
    }
    try:
        cid = await service.import_conversation(data, new_id(), None)
        store = await service.store()
        messages = await store.get_messages(cid)
        assert messages[0]["content"].startswith("u" * 100 + "\n\n[content cut on import")
        assert "image(s) left out on import: at most 2 per message" in messages[0]["content"]
        assert len(messages[0]["images"]) == 2
        assert messages[1]["content"] == "a" * 400  # answers may be longer (5x)
        meta = await store.get_meta(cid)
        assert len(meta["title"]) == 200 and len(meta) < 45
    finally:
        await service.aclose()


def test_the_embedded_mode_limits_weighted_hits_in_memory():
    async def go():
        limiter = RateLimiter(storage_for(None), per_client=5, per_ip=0)
        await limiter.hit(new_id(), None, weight=5)
        return True

    assert asyncio.run(go())
