"""history.py against a real redis-server (tests/conftest.py) and, where it applies, embedded."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import time

import pytest
import redis
import redis.asyncio as aredis
from hypothesis import given, settings
from hypothesis import strategies as st

import history
from history import HistoryStore, HistoryUnavailable, InvalidId, UnknownConversation
from tests.servers import RedisServer, free_port

pytestmark = pytest.mark.anyio

TTL = 3600


def image(size: int = 2048, seed: bytes = b"") -> tuple[str, bytes]:
    data = seed + os.urandom(size)
    return hashlib.sha256(data).hexdigest(), data


def ref(sha: str, name: str = "pic.png") -> dict:
    return {"sha256": sha, "mime": "image/png", "width": 10, "height": 10, "name": name}


def user(text: str, *refs: dict) -> dict:
    message = {"role": "user", "content": text}
    if refs:
        message["images"] = list(refs)
    return message


# Tests look into Redis through `store.redis` and the key layout history.py documents (its
# docstring; docs/), never through the store's private helpers.
def meta_key(store: HistoryStore, cid: str) -> str:
    return f"{store.prefix}conv:{cid}:meta"


def msgs_key(store: HistoryStore, cid: str) -> str:
    return f"{store.prefix}conv:{cid}:msgs"


def index_key(store: HistoryStore, browser: str) -> str:
    return f"{store.prefix}browser:{browser}:convs"


def image_key(store: HistoryStore, sha: str) -> str:
    return f"{store.prefix}img:{sha}"


async def keys_of(store: HistoryStore) -> list[str]:
    return sorted([k.decode() async for k in store.redis.scan_iter(match=store.prefix + "*")])


def replica(store: HistoryStore) -> HistoryStore:
    """Another store on the same Redis (as another replica or a restarted app has): its
    in-process caches start cold. It shares the client, so only `store` is closed."""
    return HistoryStore(
        store.redis,
        store.redis,
        embedded=store.embedded,
        url_for_display=store.url_for_display,
        ttl_seconds=store.ttl_seconds,
        max_messages=store.max_messages,
        prefix=store.prefix,
        image_cache_bytes=history.DEFAULT_IMAGE_CACHE_BYTES,
    )


@pytest.fixture(params=[pytest.param("redis", marks=pytest.mark.e2e), "embedded"])
async def store(request):
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    store = await HistoryStore.connect(url, ttl_seconds=TTL, prefix="t:")
    yield store
    await store.close()


@pytest.fixture
async def real_store(redis_url):
    store = await HistoryStore.connect(redis_url, ttl_seconds=TTL, prefix="t:")
    yield store
    await store.close()


# ---- ids ---------------------------------------------------------------------------------


def test_new_id_is_128_bit_lowercase_hex():
    ids = {history.new_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(history.is_valid_id(i) and len(i) == 32 for i in ids)


@pytest.mark.parametrize("bad", ["", "nope", "A" * 32, "g" * 32, "a" * 31, "a" * 33, None, 5])
def test_is_valid_id_refuses_malformed(bad):
    assert not history.is_valid_id(bad)


@settings(max_examples=200)
@given(st.text())
def test_is_valid_id_never_raises(value):
    assert history.is_valid_id(value) == (
        len(value) == 32 and all(c in "0123456789abcdef" for c in value)
    )


async def test_malformed_ids_are_refused(store):
    bad = "../../etc"
    calls = [
        store.get_meta(bad),
        store.get_messages(bad),
        store.list_conversations(bad),
        store.owns(bad, history.new_id()),
        store.owns(history.new_id(), bad),
        store.append_turn(bad, [user("x")]),
        store.append_turn(history.new_id(), [user("x")], browser_id=bad),
        store.pop_messages(bad, 1),
        store.update_meta(bad, title="x"),
        store.delete_conversation(bad),
        store.export_json(bad),
        store.export_markdown(bad),
        store.create_conversation(bad),
        store.import_json({"messages": []}, bad),
    ]
    for call in calls:
        with pytest.raises(InvalidId, match="Malformed"):
            await call
    with pytest.raises(ValueError, match="image hash"):
        await store.get_image("not-a-hash")


async def test_unknown_ids_give_none_or_empty(store):
    cid, browser = history.new_id(), history.new_id()
    assert await store.get_meta(cid) is None
    assert await store.get_messages(cid) == []
    assert await store.list_conversations(browser) == []
    assert await store.owns(browser, cid) is False
    assert await store.pop_messages(cid, 2) == []
    assert await store.delete_conversation(cid) is False
    assert await store.export_json(cid) is None
    assert await store.export_markdown(cid) is None
    assert await store.get_image("0" * 64) is None
    await store.update_meta(cid, title="ghost")
    with pytest.raises(UnknownConversation, match="deleted or expired"):
        await store.append_turn(cid, [user("lost?")])
    assert await keys_of(store) == []  # nothing was created by any of these


# ---- conversations -------------------------------------------------------------------------


async def test_create_and_list_newest_first(store):
    browser = history.new_id()
    first = await store.create_conversation(browser, title="one", role="teacher", lang="fr")
    second = await store.create_conversation(browser, title="two", provider="demo", model="m")
    third = await store.create_conversation(browser, title="three")
    listed = await store.list_conversations(browser)
    assert [c["id"] for c in listed] == [third, second, first]
    assert listed[2]["title"] == "one" and listed[2]["role"] == "teacher"
    assert listed[2]["lang"] == "fr" and listed[2]["browser"] == browser
    assert float(listed[0]["updated"]) >= float(listed[0]["created"]) > 0
    # A turn moves a conversation to the top.
    await store.append_turn(first, [user("hello")], browser_id=browser)
    assert [c["id"] for c in await store.list_conversations(browser)] == [first, third, second]
    assert [c["id"] for c in await store.list_conversations(browser, limit=1)] == [first]
    meta = await store.get_meta(second)
    assert meta["id"] == second and meta["provider"] == "demo" and meta["model"] == "m"


async def test_browsers_are_isolated(store):
    alice, bob = history.new_id(), history.new_id()
    a = await store.create_conversation(alice, title="alice's")
    b = await store.create_conversation(bob, title="bob's")
    assert [c["id"] for c in await store.list_conversations(alice)] == [a]
    assert [c["id"] for c in await store.list_conversations(bob)] == [b]
    assert await store.owns(alice, a) and not await store.owns(alice, b)
    assert not await store.owns(bob, a)
    with pytest.raises(InvalidId, match="does not belong"):
        await store.append_turn(b, [user("intrusion")], browser_id=alice)
    assert await store.get_messages(b) == []


async def test_api_conversation_is_in_no_list(store):
    cid = await store.create_conversation(None, title="api")
    await store.append_turn(cid, [user("via API")])
    assert (await store.get_meta(cid))["browser"] == ""
    assert await store.get_messages(cid) == [user("via API")]
    assert not [k for k in await keys_of(store) if ":browser:" in k]


async def test_update_meta(store):
    browser = history.new_id()
    old = await store.create_conversation(browser, title="old")
    new = await store.create_conversation(browser, title="new")
    await store.update_meta(old, title="renamed", model="m2", extra_field="x")
    meta = await store.get_meta(old)
    assert (meta["title"], meta["model"], meta["extra_field"]) == ("renamed", "m2", "x")
    # Renaming does not reorder: the list is by last turn.
    assert [c["id"] for c in await store.list_conversations(browser)] == [new, old]
    for bad in ({"browser": history.new_id()}, {"created": "1"}, {"id": "x"}, {"title": 3}):
        with pytest.raises(ValueError):
            await store.update_meta(old, **bad)
    with pytest.raises(ValueError):
        await store.create_conversation(browser, updated="1")


async def test_delete(store):
    browser = history.new_id()
    keep = await store.create_conversation(browser)
    gone = await store.create_conversation(browser)
    await store.append_turn(gone, [user("bye")], browser_id=browser)
    assert await store.delete_conversation(gone) is True
    assert await store.delete_conversation(gone) is False
    assert await store.get_meta(gone) is None and await store.get_messages(gone) == []
    assert [c["id"] for c in await store.list_conversations(browser)] == [keep]
    assert not [k for k in await keys_of(store) if gone in k]
    assert await store.redis.zcard(index_key(store, browser)) == 1


# ---- messages ------------------------------------------------------------------------------


async def test_append_get_limit_and_unicode(store):
    browser = history.new_id()
    cid = await store.create_conversation(browser)
    turn = [user('你好 👋 "quotes" \n newline'), {"role": "assistant", "content": "ok", "x": [1]}]
    await store.append_turn(cid, turn, browser_id=browser)
    await store.append_turn(cid, [user("second")], browser_id=browser)
    assert await store.get_messages(cid) == [*turn, user("second")]
    assert await store.get_messages(cid, limit=2) == [turn[1], user("second")]
    assert await store.get_messages(cid, limit=0) == []


async def test_append_validates_input(store):
    cid = await store.create_conversation(None)
    sha, data = image()
    with pytest.raises(ValueError, match="do not match"):
        await store.append_turn(cid, [user("x", ref(sha))], {sha: (data + b"!", "image/png")})
    with pytest.raises(ValueError, match="mime"):
        await store.append_turn(cid, [user("x", ref(sha))], {sha: (data, "text/html")})
    with pytest.raises(ValueError, match="JSON"):
        await store.append_turn(cid, [{"role": "user", "content": b"bytes"}])
    with pytest.raises(ValueError, match="must not carry 'data'"):
        await store.append_turn(cid, [user("x", {**ref(sha), "data": "aGk="})])
    with pytest.raises(ValueError, match="image hash"):
        await store.append_turn(cid, [user("x", {"sha256": "abc"})])
    assert await store.get_messages(cid) == []
    assert not [k for k in await keys_of(store) if ":img:" in k]


async def test_trim_at_max_messages(store, request):
    url = None if store.embedded else request.getfixturevalue("redis_url")
    small = await HistoryStore.connect(url, max_messages=5, prefix="trim:")
    try:
        cid = await small.create_conversation(None)
        for i in range(8):
            await small.append_turn(cid, [user(f"m{i}")])
        await small.append_turn(cid, [user("a"), user("b")])
        assert [m["content"] for m in await small.get_messages(cid)] == ["m5", "m6", "m7", "a", "b"]
        assert await small.redis.llen(msgs_key(small, cid)) == 5
    finally:
        await small.close()


async def test_pop(store):
    cid = await store.create_conversation(history.new_id())
    assert await store.pop_messages(cid, 1) == []
    await store.append_turn(cid, [user("q1"), {"role": "assistant", "content": "a1"}])
    done = {"role": "assistant", "content": "a2 complete", "complete": True}
    await store.append_turn(cid, [user("q2"), done])
    assert await store.pop_messages(cid, 2) == [user("q2"), done]
    assert await store.get_messages(cid) == [user("q1"), {"role": "assistant", "content": "a1"}]
    assert await store.pop_messages(cid, 0) == []
    assert len(await store.pop_messages(cid, 10)) == 2
    assert await store.get_messages(cid) == []
    assert await store.get_meta(cid) is not None  # an empty conversation still exists


async def test_concurrent_appends_lose_nothing(store):
    browser = history.new_id()
    cid = await store.create_conversation(browser)
    await asyncio.gather(
        *(store.append_turn(cid, [user(f"m{i}")], browser_id=browser) for i in range(30))
    )
    contents = sorted(m["content"] for m in await store.get_messages(cid))
    assert contents == sorted(f"m{i}" for i in range(30))


async def test_deleted_while_streaming_leaves_no_ghost(store):
    """The store still believes the conversation exists (cached owner) when another tab deletes
    it: the append's MULTI sees the meta is gone and undoes what it recreated."""
    browser = history.new_id()
    cid = await store.create_conversation(browser)
    await store.append_turn(cid, [user("q")], browser_id=browser)
    await store.redis.delete(meta_key(store, cid), msgs_key(store, cid))  # another replica did
    with pytest.raises(UnknownConversation):
        await store.append_turn(cid, [{"role": "assistant", "content": "a"}], browser_id=browser)
    assert not [k for k in await keys_of(store) if cid in k]
    assert await store.redis.zscore(index_key(store, browser), cid) is None


# ---- one MULTI per turn --------------------------------------------------------------------


async def test_append_turn_is_one_multi(real_store, redis_url):
    """MONITOR shows every command the server runs: the whole turn sits in one MULTI/EXEC."""
    browser = history.new_id()
    cid = await real_store.create_conversation(browser)
    sha, data = image()
    monitor_client, marker_client = aredis.from_url(redis_url), aredis.from_url(redis_url)
    stats_before = await marker_client.info("commandstats")
    seen: list[str] = []
    async with monitor_client.monitor() as monitor:

        async def collect() -> None:
            while "end-marker" not in (command := (await monitor.next_command())["command"]):
                seen.append(command)

        task = asyncio.create_task(collect())
        await asyncio.sleep(0.05)
        await real_store.append_turn(
            cid,
            [user("look", ref(sha)), {"role": "assistant", "content": "a cat"}],
            {sha: (data, "image/png")},
            browser_id=browser,
        )
        await marker_client.echo("end-marker")
        await asyncio.wait_for(task, 5)
    stats_after = await marker_client.info("commandstats")
    await monitor_client.aclose()
    await marker_client.aclose()

    names = [c.split()[0].upper() for c in seen if not c.startswith(("HELLO", "CLIENT"))]
    assert names[0] == "MULTI" and names[-1] == "EXEC" and names.count("EXEC") == 1
    assert {"RPUSH", "LTRIM", "HSET", "ZADD", "EXPIRE"} <= set(names[1:-1])
    assert "EXPIRE" in names and f"{real_store.prefix}img:{sha}" in " ".join(seen)
    assert stats_after["cmdstat_exec"]["calls"] - stats_before["cmdstat_exec"]["calls"] == 1


# ---- images --------------------------------------------------------------------------------


async def test_images_stored_once_across_conversations(real_store):
    browser = history.new_id()
    images = [image(200_000) for _ in range(5)]
    blobs = {sha: (data, "image/jpeg") for sha, data in images}
    cids = []
    for _ in range(10):
        cid = await real_store.create_conversation(browser)
        refs = [ref(sha) for sha, _ in images]
        await real_store.append_turn(cid, [user("five pictures", *refs)], blobs)
        cids.append(cid)
    keys = await keys_of(real_store)
    image_keys = [k for k in keys if ":img:" in k]
    assert len(image_keys) == 5
    usage = {k: await real_store.redis.memory_usage(k) for k in keys}
    image_bytes = sum(usage[k] for k in image_keys)
    other_bytes = sum(v for k, v in usage.items() if k not in image_keys)
    assert 5 * 200_000 <= image_bytes < 5 * 260_000
    assert other_bytes < 30_000  # 10 conversations of references, not 10 copies of 1 MB
    sha, data = images[0]
    assert await real_store.get_image(sha) == (data, "image/jpeg")


async def test_image_cache_and_batch(store):
    cid = await store.create_conversation(None)
    (sha1, d1), (sha2, d2) = image(), image()
    await store.append_turn(cid, [user("x", ref(sha1), ref(sha2))], {sha1: (d1, "image/png")})
    await store.append_turn(cid, [], {sha2: (d2, "image/webp")})
    got = await store.get_images([sha1, sha2, "f" * 64, sha1])
    assert got == {sha1: (d1, "image/png"), sha2: (d2, "image/webp")}
    # Cold: a fresh cache goes to Redis; warm: bytes are served from the process.
    cold = replica(store)
    assert await cold.get_image(sha2) == (d2, "image/webp")
    await store.redis.delete(image_key(store, sha2))
    assert await cold.get_image(sha2) == (d2, "image/webp")
    assert await replica(store).get_image(sha2) is None  # really gone from Redis


# ---- TTLs ----------------------------------------------------------------------------------


async def _make_busy_store(store: HistoryStore) -> tuple[str, str, str]:
    browser = history.new_id()
    cid = await store.create_conversation(browser, title="t")
    sha, data = image()
    await store.append_turn(cid, [user("pic", ref(sha))], {sha: (data, "image/png")})
    await store.create_conversation(None)
    await store.get_or_create_app_secret()
    return browser, cid, sha


async def test_every_key_has_a_ttl_except_the_secret(store):
    await _make_busy_store(store)
    keys = await keys_of(store)
    assert len(keys) == 6  # meta x2, msgs, index, image, secret
    for key in keys:
        ttl = await store.redis.ttl(key)
        if key == f"{store.prefix}app_secret":
            assert ttl == -1
        else:
            assert 0 < ttl <= TTL, key


async def test_reading_a_conversation_refreshes_its_ttls(store):
    browser, cid, sha = await _make_busy_store(store)
    related = [
        meta_key(store, cid),
        msgs_key(store, cid),
        index_key(store, browser),
        image_key(store, sha),
    ]
    for key in related:
        await store.redis.expire(key, 100)
    await store.get_messages(cid)
    for key in related:
        assert await store.redis.ttl(key) > TTL - 10, key
    # A write refreshes them too (the image because the turn re-sends it).
    for key in related:
        await store.redis.expire(key, 100)
    data = (await store.get_image(sha))[0]
    await store.append_turn(cid, [user("again", ref(sha))], {sha: (data, "image/png")})
    for key in related:
        assert await store.redis.ttl(key) > TTL - 10, key


async def test_index_entry_dropped_when_meta_expired(store):
    browser = history.new_id()
    alive = await store.create_conversation(browser)
    dead = await store.create_conversation(browser)
    await store.redis.pexpire(meta_key(store, dead), 1)
    await asyncio.sleep(0.05)
    assert [c["id"] for c in await store.list_conversations(browser)] == [alive]
    assert await store.redis.zrange(index_key(store, browser), 0, -1) == [alive.encode()]
    assert await store.owns(browser, dead) is False


# ---- export / import -----------------------------------------------------------------------


async def test_export_import_round_trip(store):
    browser, other = history.new_id(), history.new_id()
    cid = await store.create_conversation(browser, title="Cats", role="teacher", model="m", x="1")
    sha, data = image()
    turn = [user("what is this?", ref(sha, "cat.png")), {"role": "assistant", "content": "A cat."}]
    await store.append_turn(cid, turn, {sha: (data, "image/png")})

    exported = await store.export_json(cid)
    assert exported["meta"]["title"] == "Cats" and "browser" not in exported["meta"]
    inline = exported["messages"][0]["images"][0]
    assert base64.b64decode(inline["data"]) == data and inline["mime"] == "image/png"

    await store.redis.delete(image_key(store, sha))  # import must re-store the bytes
    new = await store.import_json(exported, other)
    assert new != cid and history.is_valid_id(new)
    assert await store.owns(other, new) and not await store.owns(browser, new)
    assert await store.get_messages(new) == turn
    assert await replica(store).get_image(sha) == (data, "image/png")  # from Redis, not a cache
    meta = await store.get_meta(new)
    assert (meta["title"], meta["role"], meta["model"], meta["x"]) == ("Cats", "teacher", "m", "1")

    markdown = await store.export_markdown(new)
    assert markdown.startswith("# Cats\n")
    assert "### User" in markdown and "### Assistant" in markdown and "A cat." in markdown
    assert f"![cat.png](data:image/png;base64,{inline['data']})" in markdown
    short = await store.export_markdown(new, inline_images=False)
    assert f"![cat.png](sha256:{sha})" in short


async def test_import_recomputes_image_hashes(store):
    sha, data = image()
    forged = {
        "messages": [
            user("x", {"sha256": "0" * 64, "mime": "image/png", "data": base64.b64encode(data)})
        ]
    }
    forged["messages"][0]["images"][0]["data"] = forged["messages"][0]["images"][0]["data"].decode()
    cid = await store.import_json(forged, None)
    assert (await store.get_messages(cid))[0]["images"][0]["sha256"] == sha
    assert await store.get_image("0" * 64) is None


@pytest.mark.parametrize(
    ("garbage", "says"),
    [
        ("a string", "expected a JSON object"),
        ([], "expected a JSON object"),
        ({"messages": "nope"}, "'messages' must be a list"),
        ({"messages": [1]}, "message 0: not an object"),
        ({"messages": [{"content": "no role"}]}, "message 0: 'role': field required"),
        (
            {"messages": [{"role": "user", "content": 5}]},
            "message 0: 'content' must be a string or a list of parts",
        ),
        (
            {"messages": [{"role": "user", "images": [{"data": "!!", "mime": "x"}]}]},
            "message 0, image 0: an image's 'mime' must be image/*",
        ),
        (
            {"messages": [{"role": "user", "images": [{"data": "!!!", "mime": "image/png"}]}]},
            "message 0, image 0: an image's 'data' is not valid base64",
        ),
        (
            {"messages": [{"role": "user", "content": "", "images": [{"sha256": "short"}]}]},
            "message 0, image 0: an image without 'data' needs its 'sha256' (image hash)",
        ),
        ({"messages": [], "meta": {"title": 5}}, "meta field 'title' must be a string"),
        ({"messages": [], "format": "something-else"}, "unsupported format or version"),
        ({"messages": [], "version": 3}, "unsupported format or version"),
    ],
)
async def test_import_refuses_garbage(store, garbage, says):
    with pytest.raises(ValueError) as refused:
        await store.import_json(garbage, history.new_id())
    assert str(refused.value).startswith(says)
    assert await keys_of(store) == []


# ---- embedded ------------------------------------------------------------------------------


async def test_embedded_flag_and_display(store, redis_url):
    if store.embedded:
        assert store.url_for_display == "in-memory (embedded)"
    else:
        assert store.url_for_display == redis_url
    assert await store.ping() is True


def test_connect_then_use_from_another_event_loop(redis_server):
    """The lead may connect with asyncio.run at import and use the store in Gradio's loop."""
    store = asyncio.run(HistoryStore.connect(redis_server.url, prefix=f"loop{free_port()}:"))

    async def use() -> list[dict]:
        cid = await store.create_conversation(None)
        await store.append_turn(cid, [user("across loops")])
        messages = await store.get_messages(cid)
        await store.close()
        return messages

    assert asyncio.run(use()) == [user("across loops")]


# ---- failures and durability ---------------------------------------------------------------


async def test_connect_to_nothing_is_a_clear_error():
    url = f"redis://:s3cret-pw@127.0.0.1:{free_port()}/0"
    with pytest.raises(HistoryUnavailable) as caught:
        await HistoryStore.connect(url)
    message = str(caught.value)
    assert message.startswith(f"Cannot reach Redis at redis://127.0.0.1:{url.split(':')[-1]}")
    assert "Check REDIS_URL or start Redis." in message and "s3cret" not in message
    with pytest.raises(HistoryUnavailable, match="Cannot reach Redis"):
        history.app_secret_from_redis(url)


@pytest.mark.e2e  # its own redis-server
async def test_redis_down_mid_session_then_back():
    server = RedisServer().start()
    try:
        store = await HistoryStore.connect(server.url)
        browser = history.new_id()
        cid = await store.create_conversation(browser)
        await store.append_turn(cid, [user("before")], browser_id=browser)
        server.stop()

        started = time.monotonic()
        calls = [
            store.append_turn(cid, [user("during")], browser_id=browser),
            store.get_messages(cid),
            store.get_meta(cid),
            store.list_conversations(browser),
            store.create_conversation(browser),
            store.owns(browser, cid),
            store.pop_messages(cid, 1),
            store.update_meta(cid, title="x"),
            store.delete_conversation(cid),
            store.get_image("1" * 64),
            store.export_json(cid),
            store.import_json({"messages": []}, browser),
            store.get_or_create_app_secret(),
        ]
        messages = []
        for call in calls:
            with pytest.raises(HistoryUnavailable) as caught:
                await call
            messages.append(str(caught.value))
        assert all(m.startswith("History store (Redis) is unreachable;") for m in messages)
        assert messages[0].endswith("your message was not saved. Try again in a moment.")
        assert messages[8].endswith("nothing was changed. Try again in a moment.")  # delete
        assert await store.ping() is False
        assert time.monotonic() - started < 10  # fails fast, not after long timeouts

        server.start()  # empty again: this server does not persist
        assert await store.ping() is True
        cid = await store.create_conversation(browser)
        await store.append_turn(cid, [user("after")], browser_id=browser)
        assert await store.get_messages(cid) == [user("after")]
        await store.close()
    finally:
        server.close()


@pytest.mark.e2e  # its own redis-server
async def test_aof_keeps_turns_across_a_restart():
    server = RedisServer(aof=True).start()
    try:
        store = await HistoryStore.connect(server.url)
        browser = history.new_id()
        cid = await store.create_conversation(browser, title="durable")
        sha, data = image()
        await store.append_turn(cid, [user("keep me", ref(sha))], {sha: (data, "image/png")})
        server.restart()
        await store.close()
        store = await HistoryStore.connect(server.url)  # the app restarted too: nothing cached
        assert await store.get_messages(cid) == [user("keep me", ref(sha))]
        assert [c["title"] for c in await store.list_conversations(browser)] == ["durable"]
        assert await store.get_image(sha) == (data, "image/png")
        await store.close()
    finally:
        server.close()


async def test_app_secret_is_stable(redis_url):
    first = await HistoryStore.connect(redis_url, prefix="s:")
    second = await HistoryStore.connect(redis_url, prefix="s:")
    secret = await first.get_or_create_app_secret()
    assert len(secret) >= 32
    assert await second.get_or_create_app_secret() == secret
    assert history.app_secret_from_redis(redis_url, prefix="s:") == secret
    assert history.app_secret_from_redis(redis_url, prefix="other:") != secret
    client = redis.Redis.from_url(redis_url)
    assert client.ttl("s:app_secret") == -1
    client.close()
    await first.close()
    await second.close()
    embedded = await HistoryStore.connect(None)
    assert await embedded.get_or_create_app_secret() == await embedded.get_or_create_app_secret()
