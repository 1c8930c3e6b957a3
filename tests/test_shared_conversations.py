"""Shared conversations (read-only snapshots behind a link): the store on a real redis-server
and embedded, then the public Gradio API of a launched app.

Not the Gradio share *link* flag (`--share`): that is tests/test_share.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os

import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

import history
from history import HistoryStore, HistoryUnavailable, InvalidId
from tests.app_server import AppServer
from tests.conftest import app_env
from tests.servers import RedisServer
from tests.test_history import image_key

TTL = 3600
BAD_ID = "That conversation id is not valid (32 hexadecimal characters)."
NO_CONVERSATION = "No such conversation (it may have expired)."


# ---- helpers -------------------------------------------------------------------------------
# Redis is looked into through `store.redis` and the key layout history.py documents.


def share_key(store: HistoryStore, token: str) -> str:
    return f"{store.prefix}share:{token}"


def token_key(store: HistoryStore, cid: str) -> str:
    return f"{store.prefix}conv:{cid}:share"


def image() -> tuple[str, bytes]:
    data = os.urandom(1024)
    return hashlib.sha256(data).hexdigest(), data


def image_ref(sha: str) -> dict:
    return {
        "sha256": sha,
        "mime": "image/png",
        "width": 10,
        "height": 8,
        "name": "cat.png",
        "original_bytes": 4096,
    }


def user(text: str, *refs: dict) -> dict:
    message: dict = {"role": "user", "content": text, "created": 1.5}
    if refs:
        message["images"] = list(refs)
        message["receipts"] = ["sent as 10x8 PNG"]
    return message


def answer(text: str) -> dict:
    return {
        "role": "assistant",
        "content": text,
        "status": "complete",
        "provider": "openai",
        "model": "gpt-4o",
        "created": 2.5,
        "reasoning": "thinking",
        "usage": {"total_tokens": 12},
    }


async def shared_texts(store: HistoryStore, token: str) -> list[str]:
    snapshot = await store.get_shared(token)
    assert snapshot is not None
    return [m["content"] for m in snapshot["messages"]]


@pytest.fixture(params=[pytest.param("redis", marks=pytest.mark.e2e), "embedded"])
async def store(request):
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    store = await HistoryStore.connect(url, ttl_seconds=TTL, prefix="s:")
    yield store
    await store.close()


# ---- the store -----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_snapshot_keeps_display_fields_only(store):
    browser = history.new_id()
    cid = await store.create_conversation(
        browser, title="Cats", role="teacher", provider="openai", model="gpt-4o", temp="0.123456789"
    )
    sha, data = image()
    extra = {"versions": [{"content": "old"}], "version": 0, "feedback": "up", "edited": 3.0}
    messages = [
        {"role": "system", "content": "You are a secret prompt."},
        {**user("look", image_ref(sha)), **extra},
        {**answer("a cat"), **extra},
    ]
    await store.append_turn(cid, messages, {sha: (data, "image/png")}, browser_id=browser)
    token = await store.share_conversation(cid)
    assert history.is_valid_id(token) and token != cid

    snapshot = await store.get_shared(token)
    assert set(snapshot) == {"version", "title", "created", "messages"}
    assert snapshot["version"] == 1 and snapshot["title"] == "Cats"
    assert isinstance(snapshot["created"], float)
    assert snapshot["messages"] == [user("look", image_ref(sha)), answer("a cat")]
    stored = await store.redis.get(share_key(store, token))
    for private in (
        cid,
        browser,
        "teacher",
        "secret prompt",
        "0.123456789",
        "versions",
        "feedback",
    ):
        assert private not in stored.decode(), private


@pytest.mark.anyio
async def test_images_stay_readable_as_long_as_the_snapshot(store):
    cid = await store.create_conversation(None)
    sha, data = image()
    await store.append_turn(cid, [user("pic", image_ref(sha))], {sha: (data, "image/png")})
    await store.redis.expire(image_key(store, sha), 5)  # an image stored long ago
    token = await store.share_conversation(cid)
    assert await store.redis.ttl(image_key(store, sha)) > TTL - 10
    ref = (await store.get_shared(token))["messages"][0]["images"][0]
    assert await store.get_image(ref["sha256"]) == (data, "image/png")


@pytest.mark.anyio
async def test_ttl_is_set_and_a_view_does_not_extend_it(store):
    cid = await store.create_conversation(None)
    await store.append_turn(cid, [user("hi")])
    await store.redis.expire(f"{store.prefix}conv:{cid}:meta", 50)
    token = await store.share_conversation(cid)
    for key in (share_key(store, token), token_key(store, cid)):
        assert TTL - 10 < await store.redis.ttl(key) <= TTL
    # Sharing is use: the conversation lives as long as its link, so it can still revoke it.
    assert await store.redis.ttl(f"{store.prefix}conv:{cid}:meta") > TTL - 10
    await store.redis.expire(share_key(store, token), 100)
    assert await store.get_shared(token) is not None
    assert await store.redis.ttl(share_key(store, token)) <= 100


@pytest.mark.anyio
async def test_snapshot_is_frozen_until_reshared_under_the_same_token(store):
    cid = await store.create_conversation(None)
    await store.append_turn(cid, [user("one"), answer("first")])
    token = await store.share_conversation(cid)
    await store.append_turn(cid, [user("two"), answer("second")])
    await store.update_meta(cid, title="Renamed")
    assert await shared_texts(store, token) == ["one", "first"]

    await store.redis.expire(share_key(store, token), 100)
    assert await store.share_conversation(cid) == token  # the link given out keeps working
    assert await shared_texts(store, token) == ["one", "first", "two", "second"]
    assert (await store.get_shared(token))["title"] == "Renamed"
    assert await store.redis.ttl(share_key(store, token)) > TTL - 10  # a new lifetime
    assert await store.shared_token(cid) == token


@pytest.mark.anyio
async def test_unshare_revokes_at_once(store):
    cid = await store.create_conversation(None)
    await store.append_turn(cid, [user("hi")])
    assert await store.unshare_conversation(cid) is False
    token = await store.share_conversation(cid)
    assert await store.unshare_conversation(cid) is True
    assert await store.get_shared(token) is None
    assert await store.shared_token(cid) is None
    assert not await store.redis.exists(share_key(store, token), token_key(store, cid))
    assert await store.unshare_conversation(cid) is False
    assert await store.get_messages(cid) == [user("hi")], "the conversation itself stays"
    assert await store.share_conversation(cid) not in (None, token), "a new link after revoking"


@pytest.mark.anyio
async def test_delete_revokes_the_link(store):
    browser = history.new_id()
    cid = await store.create_conversation(browser)
    await store.append_turn(cid, [user("hi")], browser_id=browser)
    token = await store.share_conversation(cid)
    assert await store.delete_conversation(cid) is True
    assert await store.get_shared(token) is None
    assert not await store.redis.exists(share_key(store, token), token_key(store, cid))
    assert await store.share_conversation(cid) is None


@pytest.mark.anyio
async def test_concurrent_first_shares_make_one_link(store):
    cid = await store.create_conversation(None)
    await store.append_turn(cid, [user("hi")])
    await asyncio.gather(*(store.redis.ping() for _ in range(10)))  # connections ready: a race
    tokens = await asyncio.gather(*(store.share_conversation(cid) for _ in range(10)))
    assert len(set(tokens)) == 1 and await store.shared_token(cid) == tokens[0]
    assert await shared_texts(store, tokens[0]) == ["hi"]
    shares = [k async for k in store.redis.scan_iter(match=share_key(store, "*"))]
    assert len(shares) == 1, "no orphan snapshot that Stop sharing could not reach"


@pytest.mark.anyio
async def test_a_delete_racing_shares_leaves_no_link(store):
    await asyncio.gather(*(store.redis.ping() for _ in range(10)))
    for _ in range(5):
        cid = await store.create_conversation(None)
        await store.append_turn(cid, [user("hi")])
        await asyncio.gather(
            *(store.share_conversation(cid) for _ in range(4)), store.delete_conversation(cid)
        )
        assert await store.shared_token(cid) is None
        assert [k async for k in store.redis.scan_iter(match=share_key(store, "*"))] == []


@pytest.mark.anyio
async def test_unknown_and_bad_tokens_are_none(store):
    cid = await store.create_conversation(None)
    await store.append_turn(cid, [user("hi")])
    await store.share_conversation(cid)
    for bad in ["", "nope", "A" * 32, "../" * 11, "a" * 33, None, 5, history.new_id(), cid]:
        assert await store.get_shared(bad) is None, bad
    assert await store.share_conversation(history.new_id()) is None
    assert await store.shared_token(history.new_id()) is None
    await store.redis.set(share_key(store, "b" * 32), "not json")
    assert await store.get_shared("b" * 32) is None
    # The format is checked, not just looked up: only a well-formed token is ever read.
    await store.redis.set(share_key(store, "B" * 32), json.dumps({"version": 1}))
    assert await store.get_shared("B" * 32) is None


@pytest.mark.anyio
async def test_malformed_conversation_ids_are_refused(store):
    for call in (store.share_conversation, store.unshare_conversation, store.shared_token):
        with pytest.raises(InvalidId, match="Malformed"):
            await call("../../etc")


@pytest.mark.e2e  # its own redis-server
@pytest.mark.anyio
async def test_redis_down_is_history_unavailable():
    server = RedisServer().start()
    try:
        store = await HistoryStore.connect(server.url)
        cid = await store.create_conversation(None)
        token = await store.share_conversation(cid)
        server.stop()
        calls = [
            store.share_conversation(cid),
            store.unshare_conversation(cid),
            store.shared_token(cid),
            store.get_shared(token),
        ]
        for call in calls:
            with pytest.raises(HistoryUnavailable, match="unreachable"):
                await call
        await store.close()
    finally:
        server.close()


# ---- the public API ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def private_redis():
    server = RedisServer().start()
    yield server
    server.close()


@pytest.fixture(scope="module")
def app(private_redis, upstream):
    with AppServer(app_env(upstream, private_redis.url)) as server:
        yield server


@pytest.fixture(scope="module")
def client(app):
    return Client(app.url, verbose=False)


def chat(client: Client, **kwargs) -> tuple[str, str]:
    return client.predict(api_name="/chat", **kwargs)


def shared(app_redis_url: str, token: str) -> dict | None:
    """The snapshot as the read-only page will read it: a store on the app's Redis."""

    async def read() -> dict | None:
        store = await HistoryStore.connect(app_redis_url)
        try:
            snapshot = await store.get_shared(token)
            if snapshot is not None:
                shas = history.image_shas(snapshot["messages"])
                snapshot["blobs"] = await store.get_images(shas)
            return snapshot
        finally:
            await store.close()

    return asyncio.run(read())


def test_share_and_unshare_through_the_api(client, private_redis, tmp_path):
    picture = tmp_path / "red.png"
    Image.new("RGB", (40, 30), (250, 10, 10)).save(picture)
    _, cid = chat(client, message="what is this", images=[handle_file(picture)])
    link = client.predict(conversation_id=cid, api_name="/share_conversation")
    assert link.startswith("/?share=")
    token = link.removeprefix("/?share=")
    assert history.is_valid_id(token) and token != cid

    snapshot = shared(private_redis.url, token)
    assert [m["content"] for m in snapshot["messages"]] == ["what is this", "Echo: what is this"]
    sha = snapshot["messages"][0]["images"][0]["sha256"]
    assert snapshot["blobs"][sha][1] == "image/png", "the image is readable by its hash"
    assert cid not in json.dumps(snapshot["messages"])

    chat(client, message="more", conversation_id=cid)
    assert client.predict(conversation_id=cid, api_name="/share_conversation") == link
    assert len(shared(private_redis.url, token)["messages"]) == 4

    assert client.predict(conversation_id=cid, api_name="/unshare_conversation") == (
        "Sharing stopped."
    )
    assert shared(private_redis.url, token) is None
    assert client.predict(conversation_id=cid, api_name="/unshare_conversation") == (
        "That conversation was not shared."
    )


def test_deleting_stops_the_link(client, private_redis):
    _, cid = chat(client, message="soon gone")
    token = client.predict(conversation_id=cid, api_name="/share_conversation")[len("/?share=") :]
    client.predict(conversation_id=cid, api_name="/delete_conversation")
    assert shared(private_redis.url, token) is None


@pytest.mark.parametrize("bad", ["", "nope", "A" * 32, "../../etc/passwd", "a" * 5000])
@pytest.mark.parametrize("api_name", ["/share_conversation", "/unshare_conversation"])
def test_junk_ids_are_refused_clearly(client, api_name, bad):
    with pytest.raises(AppError) as caught:
        client.predict(conversation_id=bad, api_name=api_name)
    assert str(caught.value) == BAD_ID


@pytest.mark.parametrize("api_name", ["/share_conversation", "/unshare_conversation"])
def test_unknown_conversations_are_refused(client, api_name):
    with pytest.raises(AppError) as caught:
        client.predict(conversation_id=history.new_id(), api_name=api_name)
    assert str(caught.value) == NO_CONVERSATION


def test_a_token_opens_nothing_in_the_api(client, private_redis):
    """The token is 32 hex like a conversation id, but names no conversation: nothing that
    takes an id can read, continue, change, list or revoke through it."""
    _, cid = chat(client, message="private")
    token = client.predict(conversation_id=cid, api_name="/share_conversation")[len("/?share=") :]

    assert client.predict(conversation_id=token, api_name="/history") == []
    with pytest.raises(AppError, match="no longer exists"):
        chat(client, message="hijack", conversation_id=token)
    with pytest.raises(AppError, match="No such conversation"):
        client.predict(conversation_id=token, format="json", api_name="/export_conversation")
    for api_name in ("/share_conversation", "/unshare_conversation"):
        with pytest.raises(AppError, match="No such conversation"):
            client.predict(conversation_id=token, api_name=api_name)
    assert "nothing deleted" in client.predict(
        conversation_id=token, api_name="/delete_conversation"
    )
    snapshot = shared(private_redis.url, token)
    assert [m["content"] for m in snapshot["messages"]] == ["private", "Echo: private"]
    assert len(client.predict(conversation_id=cid, api_name="/history")) == 2, "untouched"


def test_redis_down_is_refused_clearly(client, private_redis):
    _, cid = chat(client, message="hello")
    private_redis.stop()
    try:
        for api_name in ("/share_conversation", "/unshare_conversation"):
            with pytest.raises(AppError) as caught:
                client.predict(conversation_id=cid, api_name=api_name)
            message = str(caught.value)
            assert message.startswith("History store (Redis) is unreachable;"), message
            assert "127.0.0.1" not in message and "Traceback" not in message
    finally:
        private_redis.start()  # empty again (no persistence): later tests make their own
